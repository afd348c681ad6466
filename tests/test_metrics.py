"""`GET /metrics` over the whole app (real Redis, SQLite, the simulator): the token guard,
every name under `btsguru_`, and values that move with the traffic that caused them."""

from __future__ import annotations

import re

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from btsguru import metrics
from tests.test_raw_proxy import relay

LEAGUES = "/v1/football/raw/leagues"

TOKEN = "scrape-token-0123456789"


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(r, token: str | None = TOKEN) -> tuple[int, str, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with r.session.get(r.url + "/metrics", headers=headers) as resp:
        return resp.status, resp.headers["Content-Type"], await resp.text()


async def test_metrics_need_the_token_when_set(tmp_path):
    async with relay(tmp_path, METRICS_TOKEN=TOKEN) as r:
        status, ctype, body = await scrape(r, token=None)
        assert status == 401 and ctype.startswith("application/json")
        assert '"code":"unauthorized"' in body.replace(" ", "")
        status, _, _ = await scrape(r, token="wrong-token")
        assert status == 401
        status, ctype, body = await scrape(r)
        assert status == 200 and ctype.startswith("text/plain")
        assert TOKEN not in body


async def test_a_scrape_after_traffic_shows_it(tmp_path):
    async with relay(tmp_path, METRICS_TOKEN=TOKEN) as r:
        _, _, before_text = await scrape(r)
        before = parse(before_text)
        assert (await r.get(LEAGUES))[0] == 200  # a miss: one upstream call
        assert (await r.get(LEAGUES))[0] == 200  # a hit
        async with r.session.get(r.url + "/v1/sports", headers={"X-API-Key": "nope"}) as resp:
            assert resp.status == 401
        _, _, after_text = await scrape(r)
        after = parse(after_text)

        def moved(name: str, **labels: str) -> float:
            return value(after, name, **labels) - value(before, name, **labels)

        assert moved("btsguru_cache_requests_total", result="miss") == 1
        assert moved("btsguru_cache_requests_total", result="hit") == 1
        assert moved("btsguru_upstream_requests_total", sport="football", endpoint="leagues",
                     outcome="ok") == 1
        assert moved("btsguru_upstream_request_duration_seconds_count", sport="football") == 1
        assert moved("btsguru_quota_tokens_taken_total", sport="football", purpose="user") == 1
        assert moved("btsguru_http_requests_total", handler="RawHandler", status="200") == 2
        assert moved("btsguru_auth_failures_total") == 1
        assert moved("btsguru_http_request_duration_seconds_count", handler="RawHandler") == 2
        assert value(after, "btsguru_dependency_up", dependency="redis") == 1
        assert value(after, "btsguru_dependency_up", dependency="database") == 1
        day_left = value(after, "btsguru_quota_remaining_requests", sport="football",
                         window="day")
        day_limit = value(after, "btsguru_quota_limit_requests", sport="football", window="day")
        assert 0 < day_left < day_limit
        assert value(after, "btsguru_upstream_circuit_open", sport="football") == 0

        names = {name for name, _ in after}
        assert names and all(name.startswith("btsguru_") for name in names), \
            sorted(n for n in names if not n.startswith("btsguru_"))
        # no label carries a key, a path or a user: every value is short and tame
        for _, labels in after:
            for _label, text in labels:
                # (an upstream endpoint may hold a slash, "games/events"; a path starts with one)
                assert re.fullmatch(r"([A-Za-z0-9_.+-][A-Za-z0-9_.+/-]{0,39})?", text), text


async def test_stream_connections_and_messages_are_counted(tmp_path):
    async with relay(tmp_path, METRICS_TOKEN=TOKEN) as r:
        r.services.start_background()
        before = parse((await scrape(r))[2])
        ws_url = r.url.replace("http", "ws", 1) + f"/v1/ws?api_key={r.key}"
        async with aiohttp.ClientSession() as session, session.ws_connect(ws_url) as ws:
            await ws.send_json({"op": "ping"})
            reply = await ws.receive_json(timeout=10)
            assert reply["op"] == "pong"
            during = parse((await scrape(r))[2])
            assert value(during, "btsguru_stream_connections", transport="ws") >= 1
        after = parse((await scrape(r))[2])
        assert value(after, "btsguru_stream_connects_total", transport="ws") - \
            value(before, "btsguru_stream_connects_total", transport="ws") == 1
        assert value(after, "btsguru_stream_messages_sent_total", transport="ws") > \
            value(before, "btsguru_stream_messages_sent_total", transport="ws")
        assert value(after, "btsguru_stream_bytes_sent_total", transport="ws") > \
            value(before, "btsguru_stream_bytes_sent_total", transport="ws")


def test_metric_names_have_units_and_the_prefix():
    names = metrics.metric_names()
    assert "btsguru_upstream_requests_total" in names
    assert "btsguru_poll_duration_seconds_bucket" in names
    for name in names:
        assert name.startswith("btsguru_"), name
