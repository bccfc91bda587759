"""Where the asyncio model on uvloop spends more than the minimal uvloop server.

The minimal server (benchmarks/reference/python_servers.py, ``uvloop``) is a ``Protocol`` whose
``data_received`` writes the bytes back: one Python call per echo, the rest is uvloop's C. The
model is a ``BufferedProtocol`` (one shared read buffer: 2 KiB per idle connection instead of
a 64 KiB one each), so each echo is ``get_buffer`` + ``buffer_updated`` (+ the session's
counters in ``echoed``), and it checks the transport's write buffer around the write (the
back-pressure rule). This script runs the steps in between as servers of their own, with the
model itself, each loaded by the C client, interleaved, and prints server CPU per round trip
(best of the repetitions):

    protocol     Protocol, data_received writes the bytes            (the minimal server)
    buffered     BufferedProtocol writing a view of the shared buffer
    checked      the same with the model's two get_write_buffer_size() checks
    model        sockecho serve --loop uvloop (adds the session's counters)

usage: python benchmarks/uvloop_protocols.py [CONNECTIONS SIZE [REPETITIONS]]   (default 1 64 3)
Needs the C client (``benchmarks/run`` builds it) and uvloop. Linux only (``/proc``).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from ab_cpu import cpu_seconds  # benchmarks/ab_cpu.py: a script's own folder is on sys.path

CLIENT = Path(__file__).resolve().parent / "reference" / "build" / "echo_client"
BUFFER = memoryview(bytearray(65536))


class Plain(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class Buffered(asyncio.BufferedProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        return BUFFER

    def buffer_updated(self, nbytes: int) -> None:
        self.transport.write(BUFFER[:nbytes])


class Checked(Buffered):
    def buffer_updated(self, nbytes: int) -> None:
        transport = self.transport
        if transport.get_write_buffer_size():
            transport.write(bytes(BUFFER[:nbytes]))
        else:
            transport.write(BUFFER[:nbytes])
            transport.get_write_buffer_size()


class Counted(Plain):
    def data_received(self, data: bytes) -> None:
        self.transport.write(data)
        self.count(len(data))

    def count(self, n: int) -> None:
        self.received = n


PROTOCOLS = {"protocol": Plain, "buffered": Buffered, "checked": Checked, "counted": Counted}


def serve(kind: str) -> None:
    import uvloop  # noqa: PLC0415 (only the servers need it)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(PROTOCOLS[kind], "127.0.0.1", 0, backlog=4096)
        print(server.sockets[0].getsockname()[1], flush=True)
        await server.serve_forever()

    if os.environ.get("IN_THREAD"):  # as sockecho runs it: the loop in a thread of its own
        import threading  # noqa: PLC0415

        thread = threading.Thread(target=uvloop.run, args=(main(),), daemon=True)
        thread.start()
        thread.join()
    else:
        uvloop.run(main())


def start(kind: str) -> tuple[subprocess.Popen[str], int]:
    if kind == "model":
        argv = [sys.executable, "-m", "sockecho", "serve", "--loop", "uvloop", "--port", "0"]
        server = subprocess.Popen([*argv, "-q"], stderr=subprocess.PIPE, text=True)
        assert server.stderr is not None
        return server, int(server.stderr.readline().rsplit(":", 1)[1])
    server = subprocess.Popen([sys.executable, __file__, "--serve", kind], stdout=subprocess.PIPE)
    assert server.stdout is not None
    return server, int(server.stdout.readline())


def main() -> int:
    if sys.argv[1:2] == ["--serve"]:
        serve(sys.argv[2])
        return 0
    connections, size = (sys.argv[1], sys.argv[2]) if len(sys.argv) > 2 else ("1", "64")
    repetitions = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    kinds = [*PROTOCOLS, "model"]
    best: dict[str, float] = {}
    for rep in range(repetitions):
        for kind in kinds[rep % len(kinds) :] + kinds[: rep % len(kinds)]:
            server, port = start(kind)
            try:
                before = cpu_seconds(server.pid)
                argv = [str(CLIENT), str(port), connections, size, "2"]
                done = subprocess.run(argv, capture_output=True, text=True, check=True)
                used = cpu_seconds(server.pid) - before
            finally:
                server.kill()
                server.wait()
            cost = used / json.loads(done.stdout)["round_trips"] * 1e6
            best[kind] = min(cost, best.get(kind, cost))
    print(f"{connections}x{size} B, best of {repetitions}, load {os.getloadavg()[0]:.1f}:")
    for kind in kinds:
        print(f"  {kind:9} {best[kind]:6.2f} µs/rt  {best[kind] / best['protocol']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
