"""The figures the tutorial quotes: each model's cost per round trip on one connection,
its idle memory per connection, and the cost of ``--trace``.

    python benchmarks/models_at_a_glance.py [--rounds 3] [--connections 500] [--no-trace]

``--no-trace`` skips the traced runs, so the script also measures a checkout
without ``--trace`` (``PYTHONPATH=../other/src python benchmarks/...``): the way
to check that ``--trace`` costs nothing when it is off.

Each server is a ``sockecho serve`` child process (as a student runs it); the
client is this process, in Python, so on one connection it measures the whole
path a student's own client sees, not the server alone (``sockecho bench`` is
the tool for that). Round trips: 64 bytes sent, all 64 read back, repeated
ROUND_TRIPS times after a warm-up. Reported: round trips per second, and the
server's CPU time (user + system, from /proc) per round trip, which a busy
shared machine disturbs far less than wall-clock rates. Every model and variant
runs in every round (interleaved) and the median is reported. Memory: the
server's RSS before and after ``--connections`` clients that each completed one echo
and stay connected (the iterative model is skipped: it holds one client).
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sockecho import MODELS

#: Round trips timed per run: a second or two, and enough CPU ticks (10 ms) to count.
ROUND_TRIPS = 20_000
#: Untimed round trips first (imports, first allocations, TCP slow start).
WARM_UP = 1_000
#: Bytes per message: a line of text, as in the course's exercises.
MESSAGE = b"x" * 64


@contextmanager
def serve(model: str, *extra: str) -> Iterator[tuple[int, int]]:
    """``sockecho serve`` in a child process; yields (pid, port)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "sockecho", "serve", "--model", model, "--port", "0", "-q", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert proc.stderr is not None
    drain: subprocess.Popen[bytes] | None = None
    try:
        for line in proc.stderr:
            if line.startswith("listening on "):
                break
        else:
            raise RuntimeError(f"sockecho serve --model {model} did not start")
        # --trace writes a line per call to stderr: keep draining it, or the server blocks.
        drain = subprocess.Popen(["cat"], stdin=proc.stderr, stdout=subprocess.DEVNULL)
        yield proc.pid, int(line.rsplit(":", 1)[1])
    finally:
        proc.terminate()
        proc.wait(30)
        if drain is not None:
            drain.wait(30)
        proc.stderr.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def round_trips(pid: int, port: int) -> tuple[float, float]:
    """(round trips per second, server CPU microseconds per round trip)."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def once() -> None:
            sock.sendall(MESSAGE)
            received = 0
            while received < len(MESSAGE):
                data = sock.recv(len(MESSAGE) - received)
                if not data:
                    raise RuntimeError("the server closed mid-echo")
                received += len(data)

        for _ in range(WARM_UP):
            once()
        cpu_before = cpu_seconds(pid)
        started = time.perf_counter()
        for _ in range(ROUND_TRIPS):
            once()
        elapsed = time.perf_counter() - started
        return ROUND_TRIPS / elapsed, (cpu_seconds(pid) - cpu_before) / ROUND_TRIPS * 1e6


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def kib_per_connection(model: str, connections: int) -> float:
    with serve(model) as (pid, port):
        socket.create_connection(("127.0.0.1", port)).close()  # first-use allocations
        before = rss_kib(pid)
        clients = []
        try:
            for _ in range(connections):
                sock = socket.create_connection(("127.0.0.1", port))
                clients.append(sock)
                sock.sendall(b"hola\n")
                if sock.recv(5) != b"hola\n":
                    raise RuntimeError("bad echo")
            return (rss_kib(pid) - before) / connections
        finally:
            for sock in clients:
                sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=500)
    parser.add_argument("--no-trace", action="store_true", help="skip the --trace runs")
    args = parser.parse_args()
    print(f"# Python {platform.python_version()}, {os.cpu_count()} CPUs, {platform.machine()}")
    print(f"# {ROUND_TRIPS} round trips of {len(MESSAGE)} B on 1 connection, median of rounds")
    plain: dict[str, list[tuple[float, float]]] = {model: [] for model in MODELS}
    traced: dict[str, list[tuple[float, float]]] = {model: [] for model in MODELS}
    for _ in range(args.rounds):  # every model in every round: a noisy minute hits all alike
        for model in MODELS:
            with serve(model) as (pid, port):
                plain[model].append(round_trips(pid, port))
            if not args.no_trace:
                with serve(model, "--trace") as (pid, port):
                    traced[model].append(round_trips(pid, port))
    print("model      trips/s  server CPU us/trip  with --trace   KiB per idle connection")
    for model in MODELS:
        memory = (
            "-"
            if model == "iterative"
            else f"{kib_per_connection(model, args.connections):.1f}"
            f" ({args.connections} connections)"
        )
        rate = statistics.median(r for r, _ in plain[model])
        cpu = statistics.median(c for _, c in plain[model])
        cpu_traced = (
            f"{statistics.median(c for _, c in traced[model]):.1f}" if traced[model] else "-"
        )
        print(
            f"{model:<10} {rate:>7.0f} {cpu:>19.1f} {cpu_traced:>13}   {memory}",
            flush=True,
        )


if __name__ == "__main__":
    main()
