"""How the suite is spread over pytest-xdist's workers (`-n N --dist loadgroup`).

The run is as long as its longest worker. xdist hands tests out in collection order, one
at a time to whichever worker is free, so the suite is collected longest first: the
modules below (each of their tests runs for tens of seconds: chaos tests holding a fault
for a stretch, the benchmarks' CI sizes, real browsers and processes) start at once on
every worker, and the thousand short tests fill the gaps at the end.

The benchmarks' smoke tests load both cores on their own (their clients and servers are
separate processes); run side by side they would starve each other and the tests that
measure a timeout. They share one xdist group, so one worker runs them in turn. Modules
with an expensive module-scoped fixture (a built wheel, a browser, a fuzzing server, a
pair of server processes) are kept together on one worker too, so it is built once.

Durations from `pytest --durations=60` on a 2-core machine; reorder when they change.
"""

from __future__ import annotations

import pytest

LONGEST_FIRST = (  # module, seconds of its tests on one worker
    "tests/chaos/test_upstream_chaos.py",  # 253
    "tests/test_bench_fanout.py",  # 116
    "tests/test_bench.py",  # 134 (six scenarios)
    "tests/chaos/test_redis_chaos.py",  # 100
    "tests/test_bench_soak.py",  # 80
    "tests/test_console_browser.py",  # 76
    "tests/chaos/test_process_chaos.py",  # 53
    "tests/chaos/test_database_chaos.py",  # 34
    "tests/test_pusher_processes.py",  # 29
    "tests/security/test_console_security.py",  # 27
    "tests/security/test_fuzz_rest.py",  # 24
    "tests/test_pollers_cli.py",  # 23
    "tests/test_install.py",  # 23
    "tests/test_cli.py",  # 22
    "tests/test_readme.py",  # 25 (the README's examples against a demo)
    "tests/test_backup.py",  # 16
    "tests/security/test_fuzz_pusher.py",  # 15
    "tests/security/test_fuzz_ws.py",  # 14
)

BENCHMARKS = ("tests/test_bench_fanout.py", "tests/test_bench.py", "tests/test_bench_soak.py")
KEEP_TOGETHER = (
    "tests/test_readme.py",
    "tests/test_install.py",
    "tests/test_console_browser.py",
    "tests/security/test_fuzz_rest.py",
    "tests/security/test_fuzz_pusher.py",
    "tests/security/test_fuzz_ws.py",
    "tests/test_realtime_processes.py",
    "tests/test_pusher_js.py",
    "tests/test_pusher_processes.py",
)


def _rank(item: pytest.Item) -> int:
    path = item.nodeid.split("::", 1)[0]
    return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_rank)  # stable: each module keeps its own order
    for item in items:
        path = item.nodeid.split("::", 1)[0]
        if path in BENCHMARKS:
            item.add_marker(pytest.mark.xdist_group("benchmarks"))
        elif path in KEEP_TOGETHER:
            item.add_marker(pytest.mark.xdist_group(path))
