"""A connection storm: CLIENTS clients connect at once, then each keeps echoing.

One thread, non-blocking sockets: every connect is started before any completes; as soon
as a client's connect completes it sends SIZE bytes, and the time from the start of its
connect to the complete echo is its *first echo* time. Then it sends again as soon as each
echo is back (a closed loop), so the clients already served keep the server busy while the
others still wait to be accepted: the storm a load generator makes (the C client of
benchmarks/ connects 1000 connections, then loads them all). Reports the slowest first echo, the
median, how long until every client had its echo, and failures; run against every
concurrent sockecho model and socketserver's ThreadingTCPServer (the accept-rate reference),
interleaved, best of the repetitions.

usage: python benchmarks/connect_storm.py [--clients 1000] [--repetitions 3] [--models ...]
"""

from __future__ import annotations

import argparse
import errno
import re
import resource
import selectors
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
#: Seconds a storm may take before the clients still waiting count as failed.
STORM_TIMEOUT = 30.0
#: Bytes each client sends once connected.
SIZE = 64


def storm(port: int, clients: int, timeout: float = STORM_TIMEOUT) -> dict[str, Any]:
    """Connect ``clients`` at once to 127.0.0.1:``port``; each echoes SIZE bytes once."""
    payload = bytes(range(SIZE))
    selector = selectors.DefaultSelector()
    started: dict[socket.socket, float] = {}
    received: dict[socket.socket, int] = {}
    first_echo: list[float] = []
    round_trips = 0
    failed = 0
    begin = time.monotonic()
    for _ in range(clients):
        sock = socket.socket()
        sock.setblocking(False)
        started[sock] = time.monotonic()
        code = sock.connect_ex(("127.0.0.1", port))
        if code not in (0, errno.EINPROGRESS):
            failed += 1
            sock.close()
            continue
        selector.register(sock, selectors.EVENT_WRITE)
    deadline = begin + timeout
    pending = len(started) - failed
    while pending and time.monotonic() < deadline:
        for key, events in selector.select(0.1):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                if events & selectors.EVENT_WRITE:
                    error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if error:
                        raise OSError(error, "connect failed")
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    sock.send(payload)  # 64 bytes into an empty send buffer: taken whole
                    received[sock] = 0
                    selector.modify(sock, selectors.EVENT_READ)
                    continue
                data = sock.recv(SIZE)
                if not data:
                    raise OSError("closed before the echo")
                received[sock] += len(data)
                if received[sock] >= SIZE:
                    round_trips += 1
                    if sock in started:
                        first_echo.append(time.monotonic() - started.pop(sock))
                        pending -= 1
                    received[sock] = 0
                    sock.send(payload)
            except OSError:
                failed += 1
                if started.pop(sock, None) is not None:
                    pending -= 1
                selector.unregister(sock)
                sock.close()
    took = time.monotonic() - begin
    for key in list(selector.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]
    for sock in started:
        sock.close()
    selector.close()
    failed += pending
    return {
        "clients": clients,
        "served": len(first_echo),
        "failed": failed,
        "all_echoed_s": round(took, 3),
        "first_echo_max_s": round(max(first_echo), 3) if first_echo else None,
        "first_echo_median_s": round(statistics.median(first_echo), 3) if first_echo else None,
        "round_trips": round_trips,
    }


def start(argv: list[str]) -> tuple[subprocess.Popen[str], int]:
    server = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    assert server.stderr is not None
    line = server.stderr.readline()
    match = re.search(r":(\d+)$", line.strip())
    if match is None:
        server.kill()
        raise RuntimeError(f"{argv}: {line}")
    return server, int(match[1])


def stop(server: subprocess.Popen[str]) -> None:
    server.terminate()
    try:
        server.wait(10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def servers(models: list[str]) -> dict[str, list[str]]:
    python = sys.executable
    serve = [python, "-m", "sockecho", "serve", "--port", "0", "-q", "--idle-timeout", "0"]
    chosen = {f"sockecho {model}": [*serve, "--model", model] for model in models}
    reference = str(HERE / "reference" / "python_servers.py")
    chosen["ThreadingTCPServer"] = [python, reference, "threading"]
    return chosen


def run(models: list[str], clients: int, repetitions: int) -> dict[str, dict[str, Any]]:
    """Best (lowest slowest-first-echo) storm of the repetitions, per server; a fresh server
    for each storm, the servers interleaved."""
    best: dict[str, dict[str, Any]] = {}
    every: dict[str, list[str]] = {}
    for _ in range(repetitions):
        for name, argv in servers(models).items():
            server, port = start(argv)
            try:
                result = storm(port, clients)
            finally:
                stop(server)
            print(f"{name:>22}: {result}", file=sys.stderr, flush=True)
            slowest = result["first_echo_max_s"]
            every.setdefault(name, []).append(
                f"{slowest} s" + (f", {result['failed']} failed" if result["failed"] else "")
            )
            previous = best.get(name)
            key = (result["failed"], result["first_echo_max_s"] or 1e9)
            if previous is None or key < (previous["failed"], previous["first_echo_max_s"] or 1e9):
                best[name] = result
    for name, result in best.items():
        result["every_run"] = every[name]  # the best hides how a storm varies from run to run
    return best


def raise_fd_limit(clients: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, clients + 200)), hard))


def markdown(best: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| server | slowest first echo | median | all echoed after | failed |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, result in best.items():
        lines.append(
            f"| {name} | {result['first_echo_max_s']} s | {result['first_echo_median_s']} s | "
            f"{result['all_echoed_s']} s | {result['failed']} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--models", default="threading,select,selectors,asyncio")
    args = parser.parse_args()
    raise_fd_limit(args.clients)
    print(markdown(run(args.models.split(","), args.clients, args.repetitions)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
