"""Logs of a full run hold no secrets: signup, login, keys, REST, raw, streams and bad
keys, with every logger at debug, in the text and the JSON format alike."""

from __future__ import annotations

import logging

import aiohttp
import orjson

from btsguru.logs import TEXT_FORMAT, JsonFormatter, UtcFormatter
from tests.console_fixtures import Client
from tests.test_raw_proxy import relay

PASSWORD = "Tr0ub4dor&3-unique-horse"
WRONG_PASSWORD = "wrong-but-still-secret-9917"


async def test_a_full_flow_logs_no_key_and_no_password(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    async with relay(tmp_path, METRICS_TOKEN="metrics-token-abcdef123456") as r:
        r.services.start_background()
        browser = Client(r.url)
        try:
            page = await browser.signup("logs@example.com", PASSWORD)
            assert page.status == 200, page.text
            await browser.post("/console/logout", {})
            assert (await browser.login("logs@example.com", WRONG_PASSWORD)).status in (200, 400,
                                                                                      401)
            assert (await browser.login("logs@example.com", PASSWORD)).status == 200
            _page, key = await browser.create_key("laptop")
            assert len(key) > 20
            status, headers, _ = await r.get("/v1/football/raw/leagues")  # pro tier: raw
            assert status == 200 and headers["X-Request-Id"]
            for k in (key, r.key):
                async with r.session.get(r.url + "/v1/sports",
                                         headers={"Authorization": f"Bearer {k}"}) as resp:
                    assert resp.status == 200
            async with r.session.get(r.url + "/v1/sports",
                                     headers={"X-API-Key": key[:-3] + "xyz"}) as resp:
                assert resp.status == 401
            ws_url = r.url.replace("http", "ws", 1) + f"/v1/ws?api_key={key}"
            async with aiohttp.ClientSession() as session, session.ws_connect(ws_url) as ws:
                await ws.send_json({"op": "ping"})
                assert (await ws.receive_json(timeout=10))["op"] == "pong"
            async with r.session.get(r.url + f"/v1/stream?channels=sports.football&api_key={key}",
                                     timeout=aiohttp.ClientTimeout(total=10)) as resp:
                assert resp.status == 200
                await resp.content.readline()
            async with r.session.get(r.url + "/metrics", headers={
                    "Authorization": "Bearer metrics-token-abcdef123456"}) as resp:
                assert resp.status == 200
        finally:
            await browser.close()

    records = caplog.records
    assert len(records) > 5  # the run did log, at debug too
    # the stream's access line was written (its URL carried the key in `api_key=`)
    assert any(rec.name == "tornado.access" and "/v1/stream" in rec.getMessage()
               for rec in records)
    secrets = [PASSWORD, WRONG_PASSWORD, key, r.key, key[:-3] + "xyz",
               "metrics-token-abcdef123456", "test-upstream-key", "test-secret-key"]
    text_formatter, json_formatter = UtcFormatter(TEXT_FORMAT), JsonFormatter()
    for record in records:
        text_line = text_formatter.format(record)
        json_line = json_formatter.format(record)
        assert "\n" not in json_line and orjson.loads(json_line)["msg"]
        for secret in secrets:
            assert secret not in text_line, (secret, text_line)
            assert secret not in json_line, (secret, json_line)
