"""A throwaway Redis Cluster for tests: 3 masters and 3 replicas from `redis-server` on free
local ports, created with `redis-cli --cluster create` and gone at the end.

`redis_cluster()` starts the six servers (`cluster-enabled yes`, their node files in a
temporary directory, no persistence), joins them, waits until every node says
`cluster_state:ok` and yields the addresses; on exit it kills every server (each in its
own process group, as `bench.harness.Processes` does for the benchmarks' children).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tests.cli_helpers import free_port
from tests.waiting import wait_until_blocking

REDIS_SERVER = "redis-server"
REDIS_CLI = "redis-cli"
CLUSTER_BUS_OFFSET = 10_000  # Redis Cluster's node-to-node bus listens on port + 10000
# Short, so a test that kills a master sees a failover in seconds rather than 15 s.
NODE_TIMEOUT_MS = 2000
START_TIMEOUT_S = 15.0  # six servers and a join take 2-3 s on a quiet machine


@dataclass
class ClusterNodes:
    """A running test cluster: its servers' ports and processes."""

    ports: list[int]
    directory: Path
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def addresses(self) -> list[str]:
        """`host:port` of every node (the form of `REDIS_CLUSTER_NODES`)."""
        return [f"127.0.0.1:{port}" for port in self.ports]

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=2,
                           socket_timeout=5)

    def info(self, port: int) -> dict[str, str]:
        """`CLUSTER INFO` of one node as a dict ({} when it does not answer)."""
        try:
            with self.client(port) as client:
                raw = client.execute_command("CLUSTER", "INFO")
        except redis.RedisError:
            return {}
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        return dict(line.split(":", 1) for line in text.split() if ":" in line)

    def healthy(self) -> bool:
        return all(self.info(port).get("cluster_state") == "ok" for port in self.ports)

    def replicas_in_sync(self) -> bool:
        """Every replica's link to its master is up: before that a replica cannot be
        promoted (its data counts as too old), so a failover test waits for this."""
        for port in self.ports:
            try:
                with self.client(port) as client:
                    info = client.info("replication")
            except redis.RedisError:
                return False
            if info.get("role") == "slave" and info.get("master_link_status") != "up":
                return False
        return True

    def roles(self) -> dict[int, str]:
        """port -> "master" or "slave", as each node reports itself."""
        roles = {}
        for port in self.ports:
            with self.client(port) as client:
                role = client.execute_command("ROLE")[0]
            roles[port] = role.decode() if isinstance(role, bytes) else str(role)
        return roles


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free as well."""
    for _ in range(100):
        port = free_port()
        if port + CLUSTER_BUS_OFFSET > 65_535:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + CLUSTER_BUS_OFFSET))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def _answers(nodes: ClusterNodes, port: int) -> bool:
    try:
        with nodes.client(port) as client:
            return bool(client.ping())
    except redis.RedisError:
        return False


@contextlib.contextmanager
def redis_cluster(masters: int = 3, replicas: int = 1) -> Iterator[ClusterNodes]:
    """Start a cluster of `masters` masters with `replicas` replicas each; see the module."""
    with tempfile.TemporaryDirectory(prefix="btsguru-cluster-") as tmp:
        ports: list[int] = []
        while len(ports) < masters * (1 + replicas):
            port = _cluster_port()
            if port not in ports:
                ports.append(port)
        nodes = ClusterNodes(ports=ports, directory=Path(tmp))
        try:
            for port in ports:
                nodes.processes[port] = subprocess.Popen(
                    [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1",
                     "--cluster-enabled", "yes",
                     "--cluster-config-file", str(nodes.directory / f"nodes-{port}.conf"),
                     "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                     "--appendonly", "no", "--save", "", "--dir", str(nodes.directory),
                     "--daemonize", "no", "--loglevel", "warning"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    start_new_session=True)  # its own process group, killed as one
            for port in ports:
                wait_until_blocking(lambda port=port: _answers(nodes, port),
                                    START_TIMEOUT_S, what=f"redis-server on port {port}")
            created = subprocess.run(
                [REDIS_CLI, "--cluster", "create", *nodes.addresses,
                 "--cluster-replicas", str(replicas), "--cluster-yes"],
                capture_output=True, text=True, timeout=START_TIMEOUT_S, check=False)
            if created.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout}"
                                   f"{created.stderr}")
            wait_until_blocking(nodes.healthy, START_TIMEOUT_S,
                                what=lambda: "cluster_state:ok on every node: " + ", ".join(
                                    f"{p}={nodes.info(p).get('cluster_state')}"
                                    for p in ports))
            yield nodes
        finally:
            for process in nodes.processes.values():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
            for process in nodes.processes.values():
                process.wait()
