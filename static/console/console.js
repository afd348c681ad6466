// The console's one behaviour that needs JavaScript: copying a new key's secret.
// Everything else is forms and htmx; without JavaScript the key is still shown, selectable.
(function () {
  "use strict";

  function copyText(input) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(input.value);
    }
    input.select(); // plain http on another host: the older API still works
    return document.execCommand("copy") ? Promise.resolve() : Promise.reject();
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-copy]");
    if (!button) { return; }
    var input = document.getElementById(button.getAttribute("data-copy"));
    if (!input) { return; }
    copyText(input).then(function () {
      button.textContent = "Copied";
    }, function () {
      input.select();
      button.textContent = "Press Ctrl+C to copy";
    });
  });
})();
