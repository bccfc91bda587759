"""``sockecho bench``: an honest load generator for echo servers.

::

    load.py     one process's asyncio engine: channels that send, verify every byte, time
                echoes; the pieces every engine shares (payloads, window, tally)
    epoll_engine.py  the same closed loop on a bare epoll loop (plain TCP): the default
    runner.py   BenchSpec → worker thread or P processes → merged BenchResult
    report.py   BenchResult: percentiles, the final table, the JSON document, compare
    plot.py     latency-by-percentile charts (matplotlib, optional)

Python API::

    from sockecho.bench import BenchSpec, run_bench
    result = run_bench(BenchSpec(port=port, connections=50, size=1024, duration=5))
    result.rate, result.latency()["p99"], result.errors

Honesty rules it follows: a discarded warm-up; latency in an HDR histogram;
every echoed byte compared with what was sent (a mismatch is an error, never a
success); errors counted by kind; in open loop, latency from the intended send
time; ``--processes`` so one Python process is not the bottleneck (check it
against the C reference client of benchmarks/ before trusting a figure).
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.text import Text

from sockecho.arguments import (
    ExitCode,
    add_address_arguments,
    positive_int,
    positive_seconds,
    seconds,
)
from sockecho.bench.report import (
    BenchResult,
    load_result,
    print_comparison,
    print_result,
    save_result,
)
from sockecho.bench.runner import ENGINES, BenchSpec, epoll_limits, run_bench

#: Largest UDP payload over IPv4 (65535 - 8 UDP header - 20 IP header).
MAX_UDP_SIZE = 65507
#: Largest request accepted (bytes): beyond it a "round trip" is a bulk transfer.
MAX_SIZE = 64 * 1024 * 1024

BENCH_EXAMPLES = """\
examples:
  sockecho bench --port 7007                       1 connection x 1 KiB, closed loop, 5 s
  sockecho bench -c 50 -s 1024 -d 10 --processes 2 50 connections spread over 2 processes
  sockecho bench -c 10 --rate 20000 -d 30          open loop: 20,000 round trips/s in total
  sockecho bench -n 100000 --json run.json         exactly 100,000 measured round trips
  sockecho bench --udp -c 4 --rate 1000            UDP: latency and loss
  sockecho bench compare a.json b.json --plot ab.png

Exit status: 0 when every round trip came back intact, 1 when any failed (the
report says how), 2 for bad arguments.
"""


def add_parser(commands: Any) -> None:
    """Add ``bench`` (and ``bench compare``) to the CLI's subcommands."""
    bench = commands.add_parser(
        "bench",
        help="measure a server: round trips/s, MB/s, latency percentiles, errors",
        description=textwrap.dedent(
            """\
            Load an echo server and measure it. Closed loop (default): each connection
            sends SIZE bytes, waits for exactly those bytes back (verified), repeats.
            Open loop (--rate): requests go out on schedule and latency counts from the
            intended send time (corrected for coordinated omission)."""
        ),
        epilog=BENCH_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_address_arguments(bench)
    bench.add_argument("-c", "--connections", type=positive_int, default=1, metavar="C")
    bench.add_argument(
        "-s", "--size", type=positive_int, default=1024, metavar="BYTES", help="request size"
    )
    bound = bench.add_mutually_exclusive_group()
    bound.add_argument(
        "-d", "--duration", type=positive_seconds, metavar="S", help="measure S seconds (5)"
    )
    bound.add_argument(
        "-n", "--requests", type=positive_int, metavar="N", help="measure N round trips in all"
    )
    bench.add_argument(
        "-r", "--rate", type=positive_float, metavar="R", help="open loop: R round trips/s in all"
    )
    bench.add_argument(
        "--warmup", type=seconds, default=1.0, metavar="S", help="unmeasured warm-up (1 s)"
    )
    bench.add_argument(
        "--timeout",
        type=positive_seconds,
        metavar="S",
        help="a round trip slower than this fails (TCP, 5 s) or is lost (UDP, 1 s)",
    )
    bench.add_argument("--udp", action="store_true", help="UDP datagrams: measures loss too")
    bench.add_argument("--tls", action="store_true", help="TLS over TCP (verifies the server)")
    bench.add_argument(
        "--tls-ca", dest="cafile", metavar="FILE", help="trust the CA certificates in FILE"
    )
    bench.add_argument(
        "--insecure", action="store_true", help="TLS without verifying the certificate"
    )
    bench.add_argument(
        "-p",
        "--processes",
        type=process_count,
        default=1,
        metavar="P",
        help="load processes; auto: one per CPU this process may run on, at most one per "
        "connection (default: 1)",
    )
    bench.add_argument(
        "--loop",
        choices=["asyncio", "uvloop"],
        default="asyncio",
        help="the load generator's event loop (uvloop: the sockecho[uvloop] extra)",
    )
    bench.add_argument(
        "--engine",
        choices=ENGINES,
        default="auto",
        help="the load engine: epoll (a bare epoll loop: about half asyncio's CPU per round "
        "trip; plain TCP closed loops, --proxy too) or asyncio (everything: --tls, --udp, "
        "--rate, --identify, --loop uvloop); auto (default): epoll when it can run the load",
    )
    bench.add_argument(
        "--proxy",
        choices=("v1", "v2"),
        help="send a PROXY protocol header on each connection (a --proxy-protocol server)",
    )
    bench.add_argument(
        "--identify",
        action="store_true",
        help="read each connection's --identify line: connections and round trips per "
        "instance behind a load balancer (docs/operations.md)",
    )
    bench.add_argument(
        "--json", metavar="FILE", help="write the result as JSON (docs/measuring.md)"
    )
    bench.add_argument("--plot", metavar="FILE.png", help="draw latency by percentile")
    bench.add_argument("-q", "--quiet", action="store_true", help="no progress, only the table")
    bench.set_defaults(run=run_bench_command, parser=bench)

    sub = bench.add_subparsers(dest="bench_command", metavar="compare")
    compare = sub.add_parser(
        "compare",
        help="put saved runs side by side",
        description="Compare runs saved with --json: a table (ratios to the first) and a chart.",
    )
    compare.add_argument("files", nargs="+", metavar="RUN.json")
    compare.add_argument("--plot", dest="compare_plot", metavar="FILE.png")
    compare.set_defaults(run=run_compare, parser=compare)


#: --processes auto: stands for "one per usable CPU" until the connections are known.
AUTO_PROCESSES = 0


def process_count(text: str) -> int:
    return AUTO_PROCESSES if text == "auto" else positive_int(text)


def usable_cpus() -> int:
    """CPUs this process may run on (taskset and cgroup cpusets shrink it), at least 1."""
    return len(os.sched_getaffinity(0)) or 1


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be more than 0")
    return value


def spec_from_args(args: argparse.Namespace) -> BenchSpec:
    parser: argparse.ArgumentParser = args.parser
    if args.udp and args.tls:
        parser.error("--udp and --tls do not go together (DTLS is not supported)")
    if args.udp and not 16 <= args.size <= MAX_UDP_SIZE:
        parser.error(f"--size must be 16 to {MAX_UDP_SIZE} bytes with --udp")
    if args.size > MAX_SIZE:
        parser.error(f"--size must be at most {MAX_SIZE} bytes")
    if args.processes == AUTO_PROCESSES:
        args.processes = min(usable_cpus(), args.connections)
    if args.udp and (args.proxy or args.identify):
        parser.error("--proxy and --identify apply to TCP connections")
    if args.processes > args.connections:
        parser.error("--processes cannot exceed --connections (each process needs one)")
    if args.loop == "uvloop":
        try:
            import uvloop  # noqa: F401, PLC0415
        except ImportError:
            parser.error("--loop uvloop needs uvloop: pip install 'sockecho[uvloop]'")
    duration = args.duration if args.requests is None else None
    spec = BenchSpec(
        host=args.host,
        port=args.port,
        connections=args.connections,
        size=args.size,
        duration=duration if duration is not None or args.requests else 5.0,
        requests=args.requests,
        warmup=args.warmup,
        rate=args.rate,
        timeout=args.timeout,
        udp=args.udp,
        tls=args.tls,
        tls_verify=not args.insecure,
        cafile=args.cafile,
        processes=args.processes,
        loop=args.loop,
        proxy=args.proxy,
        identify=args.identify,
        engine=args.engine,
    )
    if args.engine == "epoll" and (limits := epoll_limits(spec)):
        parser.error(f"--engine epoll runs plain TCP closed loops: not {', '.join(limits)}")
    return spec


def run_bench_command(args: argparse.Namespace) -> int:
    spec = spec_from_args(args)
    stdout = Console(highlight=False, soft_wrap=True)
    stderr = Console(stderr=True, highlight=False)
    show_progress = not args.quiet and stderr.is_terminal
    if show_progress:
        with Live(Text(""), console=stderr, transient=True, auto_refresh=False) as live:

            def progress(elapsed: float, round_trips: int, errors: int) -> None:
                live.update(
                    Text(f"{elapsed:6.1f} s  {round_trips:>12,} round trips  {errors:,} errors"),
                    refresh=True,
                )

            result = run_bench(spec, progress)
    else:
        result = run_bench(spec)
    print_result(result, stdout)
    if args.json:
        save_result(result, args.json)
    if args.plot:
        from sockecho.bench.plot import plot_results  # noqa: PLC0415 (optional matplotlib)

        plot_results([("run", result)], args.plot)
    sys.stdout.flush()
    return ExitCode.OK if result.ok else ExitCode.FAILURE


def run_compare(args: argparse.Namespace) -> int:
    names = [Path(path).stem for path in args.files]
    if len(set(names)) < len(names):
        names = list(args.files)  # the same name in two folders: show the paths
    results = [(name, load_result(path)) for name, path in zip(names, args.files, strict=True)]
    print_comparison(results, Console(highlight=False, soft_wrap=True))
    if args.compare_plot:
        from sockecho.bench.plot import plot_results  # noqa: PLC0415 (optional matplotlib)

        plot_results(results, args.compare_plot)
    return ExitCode.OK


__all__ = ["BenchResult", "BenchSpec", "add_parser", "run_bench"]
