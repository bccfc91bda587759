"""Python calls per round trip of ``sockecho serve`` from one or more source trees.

    python benchmarks/calls_per_echo.py --model asyncio -c 50 -s 1024 OLD_TREE/src src

For each tree it starts ``sockecho serve`` (``PYTHONPATH=TREE``, the real command line) with
every thread under its own cProfile, loads it with the C client
(benchmarks/reference/build/echo_client: ``benchmarks/run`` builds it) for a short and a long
run, and prints the calls per round trip of the difference between the two: the start and
the stop cancel out, and so does how many round trips fit in the time. Call counts do not
move with the machine's load, unlike CPU time: the repeatable way to tell whether a change
added work per echo (docs/PERFORMANCE.md, "asyncio model at 50x1KiB: before/after").
"""

from __future__ import annotations

import argparse
import cProfile
import glob
import itertools
import json
import os
import pstats
import runpy
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

CLIENT = Path(__file__).resolve().parent / "reference" / "build" / "echo_client"
#: Seconds of load in the short and the long run.
SHORT, LONG = 0.5, 2.5

Counts = dict[tuple[str, int, str], int]


def serve_profiled(prefix: str, argv: list[str]) -> None:
    """In the server process: run ``sockecho ARGV`` with each thread profiled to PREFIX.*."""
    run = threading.Thread.run
    numbers = itertools.count()

    def run_profiled(thread: threading.Thread) -> None:
        profile = cProfile.Profile()
        profile.enable()
        try:
            run(thread)
        finally:
            profile.disable()
            profile.dump_stats(f"{prefix}.{next(numbers)}")

    threading.Thread.run = run_profiled  # type: ignore[method-assign,assignment]
    sys.argv = ["sockecho", *argv]
    profile = cProfile.Profile()
    profile.enable()
    try:
        runpy.run_module("sockecho", run_name="__main__")
    finally:
        profile.disable()
        profile.dump_stats(f"{prefix}.main")


def profiled_run(tree: str, model: str, connections: int, size: int, seconds: float) -> Any:
    """(round trips, calls per function) of one loaded run of ``tree``."""
    with tempfile.TemporaryDirectory() as tmp:
        prefix = f"{tmp}/profile"
        argv = [sys.executable, __file__, "--serve", prefix, "serve", "--model", model]
        argv += ["--port", "0", "-q"]
        env = dict(os.environ, PYTHONPATH=tree)
        server = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env)
        assert server.stderr is not None
        port = server.stderr.readline().rsplit(":", 1)[1].strip()
        load = [str(CLIENT), port, str(connections), str(size), str(seconds)]
        done = subprocess.run(load, capture_output=True, text=True, check=True)
        server.send_signal(signal.SIGINT)
        server.communicate(timeout=60)
        stats = pstats.Stats(*glob.glob(f"{prefix}.*")).stats  # type: ignore[attr-defined]
        counts: Counts = {key: entry[1] for key, entry in stats.items()}
        return json.loads(done.stdout)["round_trips"], counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="+", metavar="TREE", help="directories holding sockecho/")
    parser.add_argument("--model", default="asyncio")
    parser.add_argument("-c", type=int, default=50, help="connections (50)")
    parser.add_argument("-s", type=int, default=1024, help="bytes per echo (1024)")
    parser.add_argument("--top", type=int, default=20, help="functions listed per tree (20)")
    args = parser.parse_args(argv)
    for tree in args.trees:
        short_trips, short = profiled_run(tree, args.model, args.c, args.s, SHORT)
        long_trips, long = profiled_run(tree, args.model, args.c, args.s, LONG)
        trips = long_trips - short_trips
        extra = {key: long.get(key, 0) - short.get(key, 0) for key in short.keys() | long.keys()}
        print(
            f"== {tree}: {args.model} {args.c}x{args.s}B, {trips} round trips (difference), "
            f"{sum(extra.values()) / trips:.2f} Python calls per round trip"
        )
        ranked = sorted(extra.items(), key=lambda item: -item[1])[: args.top]
        for (path, line, function), calls in ranked:
            print(f"   {calls / trips:6.2f}  {function}  ({Path(path).name}:{line})")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve_profiled(sys.argv[2], sys.argv[3:])
    else:
        sys.exit(main())
