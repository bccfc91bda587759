"""What ``--metrics`` costs: server CPU per round trip with metrics off and on, side by side.

For each model, two ``sockecho serve`` processes run at once: one plain, one with
``--metrics 127.0.0.1:0`` scraped once a second by this script (Prometheus' usual interval
is 15 s: this is 15 times harsher). The C reference client loads each in turn, interleaved
within every repetition so a noisy neighbour hurts both alike; the figure is the server's
utime+stime over the measured run divided by the verified round trips (the method of
benchmarks/run_benchmarks.py, whose helpers this reuses). The best of the repetitions is
kept and the ratio on/off printed. The target (issue 11): within 3%.

    python benchmarks/metrics_overhead.py                       # asyncio, selectors, threading
    python benchmarks/metrics_overhead.py --model asyncio --repetitions 5 --duration 3
    python benchmarks/metrics_overhead.py --scrape-cost         # CPU per scrape, idle server
"""

from __future__ import annotations

import argparse
import re
import sys
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run_benchmarks import (
    SCENARIOS,
    Scenario,
    ServerProcess,
    build_references,
    measure,
)

METRICS_LINE = re.compile(r"metrics on (http://\S+)")
#: Seconds between scrapes of the metrics-on server.
SCRAPE_INTERVAL = 1.0


class Scraper:
    """Fetches ``url`` every SCRAPE_INTERVAL seconds until stopped; counts the scrapes."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.scrapes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(SCRAPE_INTERVAL):
            with urllib.request.urlopen(self.url, timeout=10) as response:
                response.read()
            self.scrapes += 1

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)


def metrics_url(server: ServerProcess, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in server.stderr_tail:
            if match := METRICS_LINE.search(line):
                return match[1]
        time.sleep(0.05)
    raise RuntimeError(f"{server.name}: no metrics line in {server.stderr_tail}")


def scrape_cost(model: str, scrapes: int = 200) -> float:
    """Server CPU milliseconds per scrape of an idle server (its whole cost, not amortized)."""
    python = sys.executable
    argv = [python, "-m", "sockecho", "serve", "--model", model, "--port", "0", "-q"]
    server = ServerProcess(f"{model} scraped", [*argv, "--metrics", "127.0.0.1:0"], "sockecho")
    server.start()
    try:
        url = metrics_url(server)
        with urllib.request.urlopen(url, timeout=10) as response:  # warm: imports, first call
            response.read()
        before = server.cpu_seconds()
        for _ in range(scrapes):
            with urllib.request.urlopen(url, timeout=10) as response:
                response.read()
        return (server.cpu_seconds() - before) / scrapes * 1000
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help="repeatable (default: three models)")
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per measured run")
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument(
        "--scenario", action="append", help="50x1KiB, 1x64B... (default: 50x1KiB and 1x64B)"
    )
    parser.add_argument(
        "--scrape-cost", action="store_true", help="only: server CPU per scrape, idle server"
    )
    args = parser.parse_args(argv)
    models = args.model or ["asyncio", "selectors", "threading"]
    if args.scrape_cost:
        for model in models:
            print(f"{model}: {scrape_cost(model):.2f} ms of server CPU per scrape", flush=True)
        return 0
    wanted = args.scenario or ["50x1KiB", "1x64B"]
    scenarios: list[Scenario] = [s for s in SCENARIOS if s.name in wanted]
    build_references()
    python = sys.executable
    print("| model | scenario | off µs/rt | on µs/rt | on/off | scrapes |")
    print("|---|---|---|---|---|---|")
    for model in models:
        base = [python, "-m", "sockecho", "serve", "--model", model, "--port", "0", "-q"]
        off = ServerProcess(f"{model} off", base, "sockecho")
        on = ServerProcess(f"{model} on", [*base, "--metrics", "127.0.0.1:0"], "sockecho")
        off.start()
        on.start()
        try:
            with Scraper(metrics_url(on)) as scraper:
                for scenario in scenarios:
                    best: dict[str, float] = {}
                    for _ in range(args.repetitions):
                        for server in (off, on):
                            result = measure(server, scenario, args.duration, args.warmup)
                            cost = result["cpu_us_per_rt"]
                            if cost is not None:
                                best[server.name] = min(best.get(server.name, cost), cost)
                    off_cost, on_cost = best[off.name], best[on.name]
                    print(
                        f"| {model} | {scenario.name} | {off_cost:.2f} | {on_cost:.2f} "
                        f"| {on_cost / off_cost:.3f} | {scraper.scrapes} |",
                        flush=True,
                    )
        finally:
            off.stop()
            on.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
