"""The Python reference echo servers sockecho's models are measured against, as minimal as
their documentation's own examples (no limits, no counters, no logging):

* ``threading`` - ``socketserver.ThreadingTCPServer`` with a ``recv``/``sendall`` handler;
* ``asyncio``   - a stock ``asyncio.Protocol`` whose ``data_received`` calls ``write``;
* ``uvloop``    - the same Protocol on uvloop's event loop;
* ``streams``   - asyncio streams (``start_server``, ``read``/``write``/``drain``), the
  API the asyncio model does not use: it costs a coroutine step per message.

usage: python python_servers.py KIND [PORT]
prints "listening on tcp://127.0.0.1:PORT" to stderr when ready, like sockecho serve.
"""

from __future__ import annotations

import asyncio
import socket
import socketserver
import sys


class EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while data := sock.recv(65536):
            sock.sendall(data)


class ThreadingServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 4096


class EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


async def serve_protocol(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(EchoProtocol, "127.0.0.1", port, backlog=4096)
    print(f"listening on tcp://127.0.0.1:{server.sockets[0].getsockname()[1]}", file=sys.stderr)
    sys.stderr.flush()
    await server.serve_forever()


async def echo_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def serve_streams(port: int) -> None:
    server = await asyncio.start_server(echo_stream, "127.0.0.1", port, backlog=4096)
    print(f"listening on tcp://127.0.0.1:{server.sockets[0].getsockname()[1]}", file=sys.stderr)
    sys.stderr.flush()
    await server.serve_forever()


def main() -> None:
    kind = sys.argv[1]
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    if kind == "threading":
        with ThreadingServer(("127.0.0.1", port), EchoHandler) as server:
            print(f"listening on tcp://127.0.0.1:{server.server_address[1]}", file=sys.stderr)
            sys.stderr.flush()
            server.serve_forever()
    elif kind == "asyncio":
        asyncio.run(serve_protocol(port))
    elif kind == "streams":
        asyncio.run(serve_streams(port))
    elif kind == "uvloop":
        import uvloop  # noqa: PLC0415 (only this kind needs it)

        uvloop.run(serve_protocol(port))
    else:
        raise SystemExit(f"unknown kind {kind!r}: threading, asyncio, streams or uvloop")


if __name__ == "__main__":
    main()
