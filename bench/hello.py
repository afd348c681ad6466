"""The reference: a bare Tornado hello-world handler, the framework's own ceiling.

`python -m bench.hello PORT [PROCESSES]`: with more than one process, the socket is bound
once and the processes are forked, each with its own IOLoop (as `btsguru serve
--processes N` does), so the comparison at N processes is like for like. SIGTERM to the
parent stops the children too.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys

import tornado.web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets


class Hello(tornado.web.RequestHandler):
    def get(self) -> None:
        self.write("Hello, world")


async def serve(sockets: list[socket.socket]) -> None:
    server = HTTPServer(tornado.web.Application([(r"/", Hello)]))
    server.add_sockets(sockets)
    await asyncio.Event().wait()


def main(port: int, processes: int) -> None:
    sockets = bind_sockets(port, "127.0.0.1")
    children = []
    for _ in range(processes - 1 if processes > 1 else 0):
        pid = os.fork()
        if pid == 0:
            asyncio.run(serve(sockets))
            os._exit(0)
        children.append(pid)

    def stop(_signum: int, _frame: object) -> None:
        for child in children:
            os.kill(child, signal.SIGTERM)
        for child in children:
            os.waitpid(child, 0)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    asyncio.run(serve(sockets))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 1)
