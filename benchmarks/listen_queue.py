"""1000 clients connecting one after another, each kept open: how long, with which backlog.

For each concurrent model, a fresh ``sockecho serve`` with ``--backlog 128`` (the old default)
and one with the default (``socket.SOMAXCONN``); the client connects BURST times in a row,
holding every connection open, and reports the total time and the slowest single connect.
A connect that takes about 1 s is a SYN the kernel dropped on a full accept queue and the
client retransmitted (docs/models.md, "The listen queue").

usage: python benchmarks/listen_queue.py [--repetitions N] [--models a,b]
"""

from __future__ import annotations

import argparse
import re
import resource
import socket
import subprocess
import sys
import time

#: Connections held open at once by the client.
BURST = 1000
#: Seconds to wait for a server's ready line.
READY_TIMEOUT = 20.0


def connect_burst(model: str, backlog: int | None) -> tuple[float, float]:
    """(seconds for BURST sequential connects, seconds of the slowest one)."""
    argv = [sys.executable, "-m", "sockecho", "serve", "--model", model, "--port", "0", "-q"]
    if backlog is not None:
        argv += ["--backlog", str(backlog)]
    server = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    held: list[socket.socket] = []
    try:
        assert server.stderr is not None
        line = server.stderr.readline()
        port = int(re.findall(r":(\d+)$", line.strip())[0])
        started = time.monotonic()
        slowest = 0.0
        for _ in range(BURST):
            before = time.monotonic()
            sock = socket.socket()
            held.append(sock)
            sock.settimeout(READY_TIMEOUT)
            sock.connect(("127.0.0.1", port))
            slowest = max(slowest, time.monotonic() - before)
        return time.monotonic() - started, slowest
    finally:
        for sock in held:
            sock.close()
        server.terminate()
        try:
            server.wait(READY_TIMEOUT)
        except subprocess.TimeoutExpired:  # a stop that hangs is not what this measures
            server.kill()
            server.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repetitions", type=int, default=2)
    parser.add_argument("--models", default="threading,select,selectors,asyncio")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, BURST + 200)), hard))
    print("| model | backlog | 1000 connects (s) | slowest connect (ms) |")
    print("|---|---|---:|---:|")
    for _ in range(args.repetitions):
        for model in args.models.split(","):
            for backlog in (128, None):
                took, slowest = connect_burst(model, backlog)
                shown = "128" if backlog else f"default ({socket.SOMAXCONN})"
                print(f"| {model} | {shown} | {took:.3f} | {slowest * 1000:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
