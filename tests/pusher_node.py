"""The real Pusher clients under Node, for the Pusher endpoint tests: pusher-js (a
browser's or a Laravel Echo app's socket) driven line by line, and the official `pusher`
server SDK (a Laravel backend's side: trigger, sendToUser, terminateUserConnections,
authorizeChannel, webhook validation), each unmodified from tests/node's
package-lock.json. Node.js and npm are required (`.ci/run` installs Debian's)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.harness import node_packages
from tests.realtime_helpers import TIMEOUT_S

NODE_DIR = Path(__file__).parent / "node"
CLIENT_SCRIPT = NODE_DIR / "pusher_client.js"
SERVER_SCRIPT = NODE_DIR / "pusher_server.js"


def node_with_packages() -> Path:
    """`node`, with tests/node's packages installed from its package-lock.json."""
    return node_packages(NODE_DIR, "pusher")


class NodeClient:
    """One pusher-js client; what it prints (JSON lines) is kept in `lines`."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[dict[str, Any]] = []

    @classmethod
    async def start(cls, node: Path, r: Any, channels: list[str], api_key: str | None = None,
                    **options: Any) -> NodeClient:
        """`options`: more of pusher_client.js's options (`userAuthEndpoint`, `signin`,
        `encryptionKeys`...)."""
        full = {"host": "127.0.0.1", "port": r.port, "key": r.config.reverb_app_key,
                "channels": channels, "apiKey": api_key, **options}
        process = await asyncio.create_subprocess_exec(
            str(node), str(CLIENT_SCRIPT), json.dumps(full), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, cwd=str(NODE_DIR))
        return cls(process)

    async def wait(self, condition: Callable[[dict[str, Any]], bool],
                   timeout_s: float = TIMEOUT_S) -> dict[str, Any]:
        for line in self.lines:
            if condition(line):
                return line
        deadline = time.monotonic() + timeout_s
        assert self.process.stdout is not None
        while True:
            raw = await asyncio.wait_for(self.process.stdout.readline(),
                                         max(0.01, deadline - time.monotonic()))
            if not raw:
                raise AssertionError(f"pusher-js exited; it printed {self.lines}")
            line = json.loads(raw)
            self.lines.append(line)
            if condition(line):
                return line

    async def send(self, command: str) -> None:
        """A line on the client's stdin (see pusher_client.js)."""
        assert self.process.stdin is not None
        self.process.stdin.write(command.encode() + b"\n")
        await self.process.stdin.drain()

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()


async def sdk(node: Path, r: Any, command: dict[str, Any], **options: Any) -> Any:
    """Run one command of the official `pusher` server SDK against `r` (pusher_server.js);
    its JSON answer. `options`: more SDK options (`encryptionMasterKeyBase64`)."""
    full = {"appId": r.config.reverb_app_id, "key": r.config.reverb_app_key,
            "secret": r.config.reverb_app_secret.reveal(), "host": "127.0.0.1",
            "port": r.port, **options}
    process = await asyncio.create_subprocess_exec(
        str(node), str(SERVER_SCRIPT), json.dumps(full), json.dumps(command),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=str(NODE_DIR))
    out, err = await asyncio.wait_for(process.communicate(), TIMEOUT_S)
    if process.returncode != 0:
        raise AssertionError(f"pusher SDK {command.get('op')} failed: {err.decode()[-800:]}")
    return json.loads(out)
