"""Server CPU per round trip of two source trees of sockecho, side by side (an A/B, or A/A).

    python benchmarks/ab_cpu.py --model selectors -n 50000 -c 50 --reps 8 TREE_A/src TREE_B/src

Each repetition starts ``sockecho serve`` from each tree in turn (``PYTHONPATH=TREE``; the
order alternates), warms up 200 round trips per connection, reads the server's CPU time from
``/proc/PID/task/*/schedstat`` (nanoseconds, every thread), runs N round trips of SIZE bytes
over C connections, reads it again. It prints the min and the median per tree, and the load
average before and after. Run the same tree twice (A/A: ``src src``) to see the machine's noise
before reading a difference into an A/B. Used for docs/PERFORMANCE.md, "Fault injection's cost
without faults" and "asyncio model at 50x1KiB: before/after". Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys


def cpu_seconds(pid: int) -> float:
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:
            pass  # a thread that ended meanwhile
    return total / 1e9


def round_trips(socks: list[socket.socket], count: int, size: int) -> None:
    message = b"x" * size
    for _ in range(count):
        for sock in socks:
            sock.sendall(message)
        for sock in socks:
            got = 0
            while got < size:
                got += len(sock.recv(size - got))


def measure(tree: str, model: str, n: int, connections: int, size: int) -> float:
    """Server CPU µs per round trip for one run of ``tree``."""
    env = dict(os.environ, PYTHONPATH=tree)
    argv = [sys.executable, "-m", "sockecho", "serve", "--model", model, "--port", "0", "-q"]
    server = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert server.stderr is not None
        port = int(server.stderr.readline().rsplit(":", 1)[1])
        socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(connections)]
        for sock in socks:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        round_trips(socks, 200, size)  # warm-up
        before = cpu_seconds(server.pid)
        round_trips(socks, n // connections, size)
        used = cpu_seconds(server.pid) - before
        for sock in socks:
            sock.close()
        return used / n * 1e6
    finally:
        server.terminate()
        server.wait(10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs=2, metavar="TREE", help="directories holding sockecho/")
    parser.add_argument("--model", default="selectors")
    parser.add_argument("-n", type=int, default=20_000, help="round trips per run (20000)")
    parser.add_argument("-c", type=int, default=1, help="connections (1)")
    parser.add_argument("-s", type=int, default=64, help="bytes per echo (64)")
    parser.add_argument("--reps", type=int, default=6, help="repetitions (6)")
    args = parser.parse_args(argv)
    # Keyed by position, not path: an A/A run names the same tree twice.
    results: list[list[float]] = [[], []]
    load_before = os.getloadavg()[0]
    for rep in range(args.reps):
        for side in (0, 1) if rep % 2 == 0 else (1, 0):
            results[side].append(measure(args.trees[side], args.model, args.n, args.c, args.s))
    load_after = os.getloadavg()[0]
    for label, tree, costs in zip("AB", args.trees, results, strict=True):
        print(
            f"{label} {args.model} {args.c}x{args.s}B {tree}: min {min(costs):.2f} "
            f"median {statistics.median(costs):.2f} us/rt  all {[round(c, 2) for c in costs]}"
        )
    print(f"load average (1 min): {load_before:.2f} before, {load_after:.2f} after")
    return 0


if __name__ == "__main__":
    sys.exit(main())
