"""What a connection costs each server model in memory: the figures in docs/models.md.

Two measurements per model, each against ``sockecho serve --port 0 -q`` in a
child process whose ``VmRSS`` and ``Threads`` are read from ``/proc/PID/status``:

idle
    Open N connections that each echo one byte and then sit idle. The RSS
    difference divided by N is what one idle connection costs the server
    process in user-space memory (kernel socket buffers are not in RSS). The
    ``iterative`` model serves one client at a time, so only the first
    connection is echoed; the others wait in the kernel's listen backlog
    (raised to hold them all), which is exactly its cost model.

stalled
    One client sends as fast as it can and never reads. Back-pressure must stop
    it: the script counts the bytes the client could push before the connection
    stayed unwritable for a second (kernel buffers on both sides plus whatever
    the server holds), and how much the server's RSS grew meanwhile.

Linux only (reads /proc). Every connection goes to 127.0.0.1::

    python benchmarks/model_costs.py                  # N=500, every model
    python benchmarks/model_costs.py -n 200 --model select --model asyncio
"""

from __future__ import annotations

import argparse
import platform
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sockecho import MODELS

#: Seconds to wait for the ready line, for one echo, and for the server to exit.
WAIT = 20.0
#: Seconds a stalled connection must stay unwritable before we call it stopped.
STALL = 1.0
#: Bytes after which the stalled-client test gives up: back-pressure is missing.
STALL_LIMIT = 256 * 1024 * 1024


def status_field(pid: int, field: str) -> int:
    """A number from /proc/PID/status (VmRSS is in KiB)."""
    with open(f"/proc/{pid}/status") as status:
        match = re.search(rf"^{field}:\s+(\d+)", status.read(), re.MULTILINE)
    assert match is not None, f"no {field} in /proc/{pid}/status"
    return int(match.group(1))


@contextmanager
def serving(model: str, backlog: int) -> Iterator[tuple[int, tuple[str, int]]]:
    """``sockecho serve`` in a child process: yields (pid, address); SIGTERM must exit 0."""
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "sockecho", "serve", "--model", model, "--port", "0"),
            *("--backlog", str(backlog), "--idle-timeout", "0", "-q"),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    ready = threading.Event()
    endpoint: list[str] = []

    def read_stderr() -> None:  # keep the pipe drained so the server never blocks on a log line
        assert proc.stderr is not None
        for line in proc.stderr:
            if line.startswith("listening on "):
                endpoint.append(line.split()[-1])
                ready.set()
            else:
                print(f"  [{model}] {line.rstrip()}", file=sys.stderr)

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        if not ready.wait(WAIT):
            raise SystemExit(f"{model}: no ready line within {WAIT:g} s")
        host, _, port = endpoint[0].split("://", 1)[1].rpartition(":")
        yield proc.pid, (host.strip("[]"), int(port))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(WAIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        reader.join(WAIT)
    if code != 0:
        raise SystemExit(f"{model}: sockecho serve exited {code} after SIGTERM")


def echo_one_byte(sock: socket.socket) -> None:
    sock.sendall(b"x")
    if sock.recv(1) != b"x":
        raise SystemExit("the server did not echo the byte")


def warm_up(pid: int, address: tuple[str, int], model: str) -> None:
    """One echo, so lazily created objects exist before the first reading."""
    with socket.create_connection(address, timeout=WAIT) as sock:
        echo_one_byte(sock)
        # Counted while the connection is open: a count taken before it could miss a thread
        # the CLI starts just after its ready line, and then never be reached again.
        threads = status_field(pid, "Threads")
    if model != "threading":
        return
    deadline = time.monotonic() + WAIT
    while status_field(pid, "Threads") >= threads:  # wait for the connection's thread to end
        if time.monotonic() > deadline:
            raise SystemExit("the warm-up connection's thread did not end")
        time.sleep(0.01)


def measure_idle(model: str, count: int) -> str:
    with serving(model, backlog=count + 16) as (pid, address):
        warm_up(pid, address, model)
        rss_before = status_field(pid, "VmRSS")
        threads_before = status_field(pid, "Threads")
        clients: list[socket.socket] = []
        try:
            for index in range(count):
                sock = socket.create_connection(address, timeout=WAIT)
                clients.append(sock)
                if model != "iterative" or index == 0:
                    echo_one_byte(sock)  # proves the server accepted it and holds its state
            rss_after = status_field(pid, "VmRSS")
            threads_after = status_field(pid, "Threads")
        finally:
            for sock in clients:
                sock.close()
    per_connection = (rss_after - rss_before) / count
    return (
        f"| {model} | {rss_before} | {rss_after} | {per_connection:.1f} "
        f"| {threads_before} → {threads_after} |"
    )


def measure_stalled(model: str) -> str:
    with serving(model, backlog=16) as (pid, address):
        warm_up(pid, address, model)
        rss_before = status_field(pid, "VmRSS")
        chunk = bytes(64 * 1024)
        pushed = 0
        with socket.create_connection(address, timeout=WAIT) as sock:
            sock.setblocking(False)
            while pushed < STALL_LIMIT:
                _, writable, _ = select.select([], [sock], [], STALL)
                if not writable:
                    break  # unwritable for STALL seconds: back-pressure reached the client
                try:
                    pushed += sock.send(chunk)
                except BlockingIOError:
                    continue
            rss_after = status_field(pid, "VmRSS")
    verdict = "stopped" if pushed < STALL_LIMIT else "NOT stopped"
    return (
        f"| {model} | {pushed / 2**20:.1f} MiB, {verdict} | {rss_before} → {rss_after} "
        f"(+{rss_after - rss_before}) |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--connections", type=int, default=500, help="idle connections")
    parser.add_argument("--model", action="append", choices=list(MODELS), help="repeatable")
    args = parser.parse_args()
    models = args.model or list(MODELS)
    print(
        f"Python {platform.python_version()}, {platform.machine()}, "
        f"Linux {platform.release()}, {time.strftime('%Y-%m-%d')}\n"
    )
    print(f"{args.connections} idle connections:\n")
    print("| model | VmRSS before (KiB) | after (KiB) | per connection (KiB) | threads |")
    print("|---|---:|---:|---:|---|")
    for model in models:
        print(measure_idle(model, args.connections), flush=True)
    print("\nOne client that sends and never reads:\n")
    print("| model | pushed before the connection stalled | server VmRSS (KiB) |")
    print("|---|---|---|")
    for model in models:
        print(measure_stalled(model), flush=True)


if __name__ == "__main__":
    main()
