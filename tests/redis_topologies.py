"""Real Redis topologies for the tests, started from Debian's `redis-server` on free local
ports (no Docker): a Sentinel set (a master, one replica, three sentinels) now; a Cluster
launcher belongs beside it.

Each launcher is a context manager that starts its processes in one `Topology` (every
child in a process group of its own, all killed on exit however the test ends), waits on
conditions with a deadline (`INFO replication`, `SENTINEL ...` answers, never a sleep) and
yields an object with the addresses a `Config` needs (`env()`) and the operations the
tests use to break it (`kill`, a forced failover).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tests.chaos.tcp_proxy import TcpProxy
from tests.cli_helpers import free_port
from tests.waiting import wait_until_blocking

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
START_TIMEOUT_S = 15.0  # processes up, the replica in sync, the sentinels aware of all
# Sentinel timings for tests: a master silent for 1 s is down, so a killed master's
# replica is promoted within a few seconds; a failover attempt that stalls is retried
# after the failover timeout.
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 4000
PROXIED_FAILOVER_TIMEOUT_MS = 120_000  # see `sentinel_set(replication_proxy=True)`
SENTINEL_QUORUM = 2


@dataclass
class Topology:
    """The processes of one launched topology and their scratch directory; `stop` kills
    each one's whole process group (SIGKILL: nothing to drain in a throwaway set)."""

    workdir: Path
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)  # by port

    def start(self, port: int, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{port}.log", "wb")  # noqa: SIM115 (the child keeps it)
        try:
            process = subprocess.Popen([REDIS_SERVER, *args], cwd=self.workdir,
                                       stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        finally:
            log.close()
        self.processes[port] = process
        return process

    def kill(self, port: int) -> None:
        process = self.processes.pop(port)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    def log(self, port: int) -> str:
        path = self.workdir / f"{port}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        for port in list(self.processes):
            self.kill(port)
        shutil.rmtree(self.workdir, ignore_errors=True)


def client(port: int, **kwargs: object) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1,
                       socket_timeout=2, **kwargs)  # type: ignore[arg-type]


def _answers(port: int) -> bool:
    try:
        with client(port) as c:
            return bool(c.ping())
    except redis.RedisError:
        return False


def _role(port: int) -> dict[str, object]:
    try:
        with client(port) as c:
            return c.info("replication")
    except redis.RedisError:
        return {}


# -- Sentinel --

@dataclass
class SentinelSet:
    """A master with one replica watched by three sentinels, on 127.0.0.1."""

    topology: Topology
    name: str
    data_ports: list[int]  # the master first, as started
    sentinel_ports: list[int]
    # with `sentinel_set(replication_proxy=True)`: the replica's link to the master, which
    # a test cuts so that the master's next writes never reach the replica (a rollback)
    replication: TcpProxy | None = None

    @property
    def sentinels(self) -> str:
        """The value of `REDIS_SENTINELS`."""
        return ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)

    def env(self) -> dict[str, str]:
        return {"REDIS_URL": "", "REDIS_SENTINELS": self.sentinels,
                "REDIS_SENTINEL_MASTER": self.name}

    def master_port(self) -> int | None:
        """The master's port as the first sentinel that answers names it."""
        for port in self.sentinel_ports:
            try:
                with client(port) as c:
                    answer = c.execute_command("SENTINEL", "get-master-addr-by-name", self.name)
            except redis.RedisError:
                continue
            if answer:
                return int(answer[1])
        return None

    def replica_port(self) -> int:
        master = self.master_port()
        return next(p for p in self.data_ports if p != master)

    def ready(self) -> bool:
        """The master has a replica in sync, and every sentinel sees the master up, the
        replica, and the two other sentinels (so a failover can be voted)."""
        master = self.master_port()
        if master is None or _role(master).get("role") != "master":
            return False
        for port in self.data_ports:
            if port != master and _role(port).get("master_link_status") != "up":
                return False
        for port in self.sentinel_ports:
            try:
                with client(port) as c:
                    state = c.sentinel_master(self.name)
                    replicas = c.sentinel_slaves(self.name)
            except redis.RedisError:
                return False
            if state["port"] != master or state["is_sdown"] or state["is_odown"] \
                    or state["num-other-sentinels"] < len(self.sentinel_ports) - 1:
                return False
            if not any(not r["is_sdown"] and r.get("master-link-status") == "ok"
                       for r in replicas):
                return False
        return True

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> float:
        return wait_until_blocking(self.ready, timeout_s, lambda: self.status("a ready set"),
                                   interval_s=0.05)

    def failover(self) -> int:
        """`SENTINEL FAILOVER`: the replica promoted, the old master demoted; the old
        master's port."""
        old = self.master_port()
        assert old is not None
        with client(self.sentinel_ports[0]) as c:
            c.execute_command("SENTINEL", "FAILOVER", self.name)
        return old

    def kill_master(self) -> int:
        """SIGKILL the master; its port."""
        old = self.master_port()
        assert old is not None
        self.topology.kill(old)
        return old

    def wait_promoted(self, old: int, timeout_s: float = 20.0) -> int:
        """Until the sentinels name another master and it says it is one; its port."""
        def promoted() -> bool:
            port = self.master_port()
            return port is not None and port != old and _role(port).get("role") == "master"

        wait_until_blocking(promoted, timeout_s,
                            lambda: self.status(f"a master other than {old}"), interval_s=0.05)
        port = self.master_port()
        assert port is not None
        return port

    def status(self, awaited: str) -> str:
        roles = {p: _role(p).get("role", "down") for p in self.data_ports}
        logs = "\n".join(self.topology.log(p)[-600:] for p in self.sentinel_ports[:1])
        return f"{awaited}: sentinels name {self.master_port()}, roles {roles}\n{logs}"


def _sentinel_conf(port: int, name: str, master_port: int, workdir: Path,
                   failover_timeout_ms: int) -> Path:
    path = workdir / f"sentinel-{port}.conf"
    path.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {workdir}\n"
        f"sentinel monitor {name} 127.0.0.1 {master_port} {SENTINEL_QUORUM}\n"
        f"sentinel down-after-milliseconds {name} {DOWN_AFTER_MS}\n"
        f"sentinel failover-timeout {name} {failover_timeout_ms}\n"
        f"sentinel parallel-syncs {name} 1\n")
    return path


@contextlib.contextmanager
def sentinel_set(name: str = "mymaster", *,
                 replication_proxy: bool = False) -> Iterator[SentinelSet]:
    """Start a master, its replica and three sentinels on free ports; all killed on exit.
    `replication_proxy`: the replica replicates through a `TcpProxy` (`.replication`);
    the sentinels then get a long failover timeout, or they would "fix" a replica whose
    master address is not the master's after it (4 s here)."""
    topology = Topology(Path(tempfile.mkdtemp(prefix="btsguru-sentinel-")))
    proxy: TcpProxy | None = None
    try:
        master, replica = free_port(), free_port()
        common = ("--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                  "--dir", str(topology.workdir))
        topology.start(master, "--port", str(master), *common)
        upstream = master
        if replication_proxy:
            proxy = TcpProxy("127.0.0.1", master).start()
            upstream = proxy.port
        topology.start(replica, "--port", str(replica), *common,
                       "--replicaof", "127.0.0.1", str(upstream))
        wait_until_blocking(lambda: _answers(master) and _answers(replica), START_TIMEOUT_S,
                            "the data nodes to answer")
        sentinel_ports = [free_port() for _ in range(3)]
        failover_timeout_ms = PROXIED_FAILOVER_TIMEOUT_MS if proxy else FAILOVER_TIMEOUT_MS
        for port in sentinel_ports:
            conf = _sentinel_conf(port, name, master, topology.workdir, failover_timeout_ms)
            topology.start(port, str(conf), "--sentinel")
        started = time.monotonic()
        group = SentinelSet(topology, name, [master, replica], sentinel_ports, proxy)
        group.wait_ready(START_TIMEOUT_S - (time.monotonic() - started) + 5)
        yield group
    finally:
        topology.stop()
        if proxy is not None:
            proxy.stop()
