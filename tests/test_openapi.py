"""`/openapi.json` and `/docs`: the document matches the routes `make_app` serves, the
docs page works offline. (Schemathesis against the live app, the hostile-input run, is in
tests/security/test_fuzz_rest.py.)"""

from __future__ import annotations

import re
from pathlib import Path

from btsguru.openapi import PATHS, openapi_document
from tests.test_raw_proxy import relay

# Routes that are not REST and are described in `info.description` instead (streams,
# the Pusher endpoints), or that are not API at all (the console, static files, docs).
NOT_REST = re.compile(r"^(/console|/static|/\((robots|favicon)|/v1/ws$|/v1/stream$|/docs$|"
                      r"/openapi\.json$|/$|\(\?:/\[\^/\]\+\)\*/apps?/)")
SAMPLES = {"sport": "football", "id": "1035037", "endpoint": "fixtures"}


def concrete(template: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: SAMPLES[m.group(1)], template)


def served_patterns(app) -> list[tuple[str, type]]:
    found = []
    for rule in app.wildcard_router.rules:
        regex = getattr(rule.matcher, "regex", None)
        if regex is not None:
            found.append((regex.pattern.rstrip("$"), rule.target))
    return found


async def test_the_document_and_the_routes_agree(tmp_path):
    from btsguru.app import make_app

    async with relay(tmp_path) as r:
        served = served_patterns(make_app(r.services))
    rest = [(p, h) for p, h in served if not NOT_REST.match(p)]
    assert len(rest) >= 10
    for template, item in PATHS.items():
        matches = [h for p, h in served if re.fullmatch(p, concrete(template))]
        assert matches, f"{template} is documented but not served"
        for method in item:
            assert method.upper() in matches[0].SUPPORTED_METHODS and \
                getattr(matches[0], method) is not getattr(
                    matches[0].__mro__[-2], method, None), (template, method)
    for pattern, _handler in rest:
        assert any(re.fullmatch(pattern, concrete(t)) for t in PATHS), \
            f"{pattern} is served but not in the OpenAPI document"
    doc = openapi_document()
    assert doc["openapi"] == "3.1.0"
    for word in ("/v1/ws", "/v1/stream", "/app/{REVERB_APP_KEY}", "Last-Event-ID"):
        assert word in doc["info"]["description"]


async def test_openapi_json_and_the_docs_page_are_served_offline(tmp_path):
    async with relay(tmp_path) as r:
        async with r.session.get(r.url + "/openapi.json") as resp:
            assert resp.status == 200
            doc = await resp.json()
        assert doc["servers"] == [{"url": r.url}]
        assert set(doc["paths"]) == set(PATHS)
        async with r.session.get(r.url + "/docs") as resp:
            assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/html")
            page = await resp.text()
        assert "http://" not in page and "https://" not in page  # no CDN
        assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', page)
        assert len(assets) == 4
        for asset in assets:
            async with r.session.get(r.url + asset) as resp:
                assert resp.status == 200, asset
                assert len(await resp.read()) > 100
    licence = Path(__file__).parent.parent / "static" / "swagger-ui" / "LICENSE"
    assert "Apache License" in licence.read_text()



def test_the_history_window_is_one_figure_everywhere():
    """The docs, the README and the landing page give the window the history store keeps
    (store.history), not figures of their own."""
    from btsguru.store.history import HISTORY_RETENTION_S, HISTORY_WINDOW_TEXT

    assert f"{HISTORY_RETENTION_S // 60} minutes" == HISTORY_WINDOW_TEXT
    description = openapi_document("http://x")["info"]["description"]
    assert f"history window ({HISTORY_WINDOW_TEXT})" in description
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    figures = re.findall(r"history window \(([^)]*)\)", readme)
    assert figures and set(figures) == {HISTORY_WINDOW_TEXT}, figures
