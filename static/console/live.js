// The live scoreboard: applies the stream's change events to the rows the server
// rendered, in place. A game the page does not show yet (it just started) or one that
// left play makes the page fetch its boards again (an htmx fragment of the same template).
(function () {
  "use strict";

  var state = document.getElementById("stream-state");
  if (!state || !window.EventSource) { return; }
  var refreshUrl = state.getAttribute("data-refresh-url");
  var url = state.getAttribute("data-stream-url") + "?channels=" +
    encodeURIComponent(state.getAttribute("data-channels"));
  var refreshTimer = null;

  function refreshBoards() {
    if (refreshTimer || !window.htmx) { return; }
    refreshTimer = setTimeout(function () {
      refreshTimer = null;
      window.htmx.ajax("GET", refreshUrl, { target: "#boards", swap: "outerHTML" });
    }, 1000);
  }

  function show(cell, value) {
    var text = value === null || value === undefined ? "-" : String(value);
    if (cell.textContent === text) { return; }
    cell.textContent = text;
    cell.classList.remove("changed");
    void cell.offsetWidth; // restart the highlight
    cell.classList.add("changed");
  }

  // the long name of the row's status code, from its board's table (a tooltip)
  function nameStatus(row) {
    var cell = row.querySelector('[data-field="status.code"]');
    var board = row.closest("[data-status-names]");
    if (!cell || !board) { return; }
    var names;
    try { names = JSON.parse(board.getAttribute("data-status-names")); } catch (e) { return; }
    cell.setAttribute("title", names[cell.textContent] || cell.textContent);
  }

  function rowOf(data) {
    return document.getElementById("game-" + data.sport + "-" + data.game_id);
  }

  function applyChanges(data) {
    var row = rowOf(data);
    if (!row) { refreshBoards(); return; }
    var changes = data.changes || {};
    Object.keys(changes).forEach(function (path) {
      var cell = row.querySelector('[data-field="' + path + '"]');
      if (cell) { show(cell, changes[path]); }
    });
    if ("status.code" in changes) { nameStatus(row); }
    if (data.seq) { row.setAttribute("data-seq", data.seq); }
  }

  function applySnapshot(game) {
    var row = document.getElementById("game-" + game.sport + "-" + game.id);
    if (!row) { return; } // not in play: the boards show games in play only
    row.querySelectorAll("[data-field]").forEach(function (cell) {
      var value = cell.getAttribute("data-field").split(".").reduce(function (obj, key) {
        return obj === null || obj === undefined ? obj : obj[key];
      }, game);
      show(cell, value === undefined ? null : value);
    });
    nameStatus(row);
  }

  function on(name, handler) {
    source.addEventListener(name, function (event) {
      var data;
      try { data = JSON.parse(event.data); } catch (e) { return; }
      handler(data);
    });
  }

  var source = new EventSource(url); // same origin: the session cookie goes along
  // A boosted navigation replaces the body without unloading the page: stop streaming
  // once this page's board is gone, so the connection is not held open in the background.
  var watch = setInterval(function () {
    if (!document.body.contains(state)) { source.close(); clearInterval(watch); }
  }, 1000);
  on("game.score", applyChanges);
  on("game.status", applyChanges);
  on("game.updated", applyChanges);
  on("game.event", function () {});
  on("game.started", function (data) { applyChanges(data); refreshBoards(); });
  on("game.finished", function (data) { applyChanges(data); refreshBoards(); });
  on("game.snapshot", applySnapshot);
  source.addEventListener("open", function () {
    state.textContent = "Live: changes appear here as they happen.";
    state.setAttribute("data-state", "open");
  });
  source.addEventListener("error", function () {
    state.textContent = "Connection lost; reconnecting…";
    state.setAttribute("data-state", "reconnecting");
  });
})();
