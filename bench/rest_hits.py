"""Cached REST hits: `GET /v1/football/raw/leagues` (authenticated, rate-limited, counted,
answered from Redis) against a bare Tornado hello-world handler, in the same run.

Issue 9's target is throughput >= 0.7x hello and p99 <= 2x hello; until the in-process
hot cache lands, one Redis round trip per request for the cache plus one for the rate
limit are expected to cost about half.
"""

from __future__ import annotations

import sys
import urllib.request

from bench.harness import free_port, processes, report, start_stack, wait_http, wrk


def run(full: bool) -> None:
    seconds = 15 if full else 3
    with processes() as group:
        stack = start_stack(group)
        hello_port = free_port()
        group.start([sys.executable, "-m", "bench.hello", str(hello_port)])
        hello_url = f"http://127.0.0.1:{hello_port}/"
        wait_http(hello_url)
        raw_url = f"{stack.base_url}/v1/football/raw/leagues"
        headers = {"X-API-Key": stack.api_key}
        warm = urllib.request.Request(raw_url, headers=headers)
        with urllib.request.urlopen(warm, timeout=10) as response:
            first = response.headers["X-Cache"]
        with urllib.request.urlopen(warm, timeout=10) as response:
            assert response.headers["X-Cache"] == "HIT", response.headers["X-Cache"]
        hello = wrk(hello_url, seconds=seconds)
        raw = wrk(raw_url, seconds=seconds, headers=headers)
        with urllib.request.urlopen(f"{stack.simulator_url}/__sim/stats") as response:
            upstream_requests = __import__("json").loads(response.read())["requests"]
    rows = [
        {"target": "tornado hello (reference)", "req/s": hello.requests_per_s,
         "p50 ms": hello.p50_ms, "p99 ms": hello.p99_ms, "non-2xx": hello.non_2xx, "ratio": 1.0},
        {"target": "GET /v1/football/raw/leagues (HIT)", "req/s": raw.requests_per_s,
         "p50 ms": raw.p50_ms, "p99 ms": raw.p99_ms, "non-2xx": raw.non_2xx,
         "ratio": raw.requests_per_s / hello.requests_per_s},
    ]
    report("rest_hits", rows, {"seconds": seconds, "connections": 50, "first_answer": first,
                               "raw_requests": raw.requests,
                               "upstream_requests": upstream_requests})
