"""How the suite is spread over pytest-xdist's workers (`-n 4 --dist loadfile`).

The run is as long as its longest worker. With `--dist loadfile` each module runs on one
worker, in its own order (module-scoped fixtures, a built wheel, a browser, a fuzzing
server and its bystander, are built once, and a module's later tests may rely on its
earlier ones); the modules are handed out in collection order, one at a time, to
whichever worker is free. So the suite is collected longest first: the modules below
(each runs for tens of seconds or minutes: chaos tests holding a fault for a stretch,
the benchmarks' CI sizes, real browsers and processes) start at once on every worker,
and the short modules fill the gaps at the end.

(`--dist loadgroup`, which could split a long module over several workers, did not
keep the modules marked with `xdist_group` together here: their tests ran on three
workers and the fuzzers' bystander checks failed. loadfile keeps every module whole.)

Durations from `pytest --durations=60` on a 2-core machine; reorder when they change.
"""

from __future__ import annotations

import pytest

LONGEST_FIRST = (  # module, seconds of its tests on one worker
    "tests/chaos/test_upstream_chaos.py",  # 253
    "tests/test_bench.py",  # 134 (six scenarios)
    "tests/test_multihost.py",  # 120 (2,000 clients on Sentinel, 250 on Cluster, nginx)
    "tests/chaos/test_topology_chaos.py",  # 100 (a Sentinel set and a Cluster, killed)
    "tests/test_bench_fanout.py",  # 116
    "tests/chaos/test_redis_chaos.py",  # 100
    "tests/test_bench_soak.py",  # 80
    "tests/test_console_browser.py",  # 76
    "tests/chaos/test_database_chaos.py",  # 64 (MariaDB and PostgreSQL)
    "tests/chaos/test_process_chaos.py",  # 53
    "tests/test_users.py",  # 42 (argon2, three engines)
    "tests/test_pusher_processes.py",  # 29
    "tests/security/test_console_security.py",  # 27
    "tests/test_db.py",  # 25
    "tests/test_readme.py",  # 25 (the README's examples against a demo)
    "tests/security/test_fuzz_rest.py",  # 24
    "tests/test_pollers_cli.py",  # 23
    "tests/test_install.py",  # 23
    "tests/test_cli.py",  # 22
    "tests/test_keys.py",  # 27 (three engines)
    "tests/test_tiers.py",  # 22 (three engines)
    "tests/test_backup.py",  # 16
    "tests/test_sentinel_failover.py",  # 15 (two Sentinel sets, a failover each)
    "tests/test_cluster_failover.py",  # 12 (a Cluster, a master killed)
    "tests/test_cluster.py",  # 9 (a Cluster, CLI start-ups)
    "tests/security/test_fuzz_pusher.py",  # 15
    "tests/security/test_fuzz_ws.py",  # 14
    "tests/test_sentinel.py",  # 10 (a Sentinel set, CLI start-ups)
)


def _rank(item: pytest.Item) -> int:
    path = item.nodeid.split("::", 1)[0]
    return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_rank)  # stable: each module keeps its own order
