"""Spread a load over processes, show live progress, merge what they measured exactly.

With one process the load runs in a background thread of this process while
the main thread draws the progress line. With ``processes=P`` it runs in P
worker processes (``spawn``: no inherited event loop or locks), each with its
share of the connections and of the rate. Every worker connects first; a
barrier then starts all of them together, so the measured windows coincide.
Each worker returns its HDR histogram encoded (the standard compressed HDR
format), and the parent adds them: percentiles of the merged histogram are
those of all the samples, not an average of percentiles.
"""

from __future__ import annotations

import collections
import contextlib
import multiprocessing
import multiprocessing.synchronize
import os
import platform
import queue
import socket
import sys
import threading
import time
from collections.abc import Callable, MutableSequence
from dataclasses import dataclass, replace
from typing import Any

from hdrh.histogram import HdrHistogram

from sockecho import __version__
from sockecho.bench import epoll_engine
from sockecho.bench.load import LoadSpec, Tally, new_histogram, run_load_blocking
from sockecho.bench.report import BenchResult, ProcessLoad
from sockecho.client import connect_error
from sockecho.errors import ConnectError, SockechoError
from sockecho.net import format_host_port, resolve

#: Seconds a worker process may take to start and connect before the run is abandoned.
START_TIMEOUT = 60.0
#: Seconds between redraws of the live progress line.
PROGRESS_INTERVAL = 0.25

ProgressCallback = Callable[[float, int, int], None]


@dataclass(frozen=True, slots=True)
class BenchSpec:
    """Everything ``sockecho bench`` was asked to do."""

    host: str = "127.0.0.1"
    port: int = 50010
    connections: int = 1
    size: int = 1024
    duration: float | None = 5.0
    requests: int | None = None
    warmup: float = 1.0
    rate: float | None = None
    timeout: float | None = None  # None: 5 s for TCP, 1 s for UDP
    udp: bool = False
    tls: bool = False
    tls_verify: bool = True
    cafile: str | None = None
    processes: int = 1
    loop: str = "asyncio"
    proxy: str | None = None  # "v1"/"v2": send a PROXY header on each connection
    identify: bool = False  # read each connection's --identify line: the spread per instance
    engine: str = "auto"  # "asyncio", "epoll", or auto: epoll where it can run the load

    @property
    def effective_timeout(self) -> float:
        if self.timeout is not None:
            return self.timeout
        return 1.0 if self.udp else 5.0

    def describe(self) -> str:
        mode = f"open loop at {self.rate:g}/s" if self.rate else "closed loop"
        bound = f"{self.duration:g} s" if self.duration is not None else f"{self.requests} requests"
        proto = "udp" if self.udp else ("tls" if self.tls else "tcp")
        return (
            f"{proto}://{format_host_port(self.host, self.port)} {mode}, "
            f"{self.connections} x {self.size} B, {bound} (+{self.warmup:g} s warm-up), "
            f"{self.processes} process{'es' if self.processes > 1 else ''}"
        )


#: The load engines (``--engine``); auto is epoll where it can run the load, else asyncio.
ENGINES = ("auto", "asyncio", "epoll")


def epoll_limits(spec: BenchSpec) -> list[str]:
    """What in ``spec`` the epoll engine does not run (empty: it runs the whole load)."""
    limits = [
        option
        for option, asked in (
            ("--udp", spec.udp),
            ("--tls", spec.tls),
            ("--rate", spec.rate is not None),
            ("--identify", spec.identify),
            ("--loop uvloop", spec.loop == "uvloop"),
        )
        if asked
    ]
    if not epoll_engine.AVAILABLE:
        limits.append("this platform (no epoll)")
    return limits


def engine_for(spec: BenchSpec) -> str:
    """The engine that runs ``spec``: epoll for plain TCP closed loops (less CPU per round
    trip: no asyncio machinery per echo), asyncio for the rest (docs/measuring.md)."""
    limits = epoll_limits(spec)
    if spec.engine == "auto":
        return "asyncio" if limits else "epoll"
    if spec.engine == "epoll" and limits:
        raise ValueError(f"the epoll engine does not run {', '.join(limits)}")
    if spec.engine not in ENGINES:
        raise ValueError(f"unknown engine {spec.engine!r}: one of {', '.join(ENGINES)}")
    return spec.engine


def run_engine(
    spec: LoadSpec,
    progress: MutableSequence[int] | None = None,
    progress_slot: int = 0,
    ready: Callable[[], None] | None = None,
) -> Tally:
    """One process's load on the engine its spec names."""
    if spec.engine == "epoll":
        return epoll_engine.run_load_epoll(spec, progress, progress_slot, ready)
    return run_load_blocking(spec, progress, progress_slot, ready)


def split(total: int, parts: int) -> list[int]:
    share, extra = divmod(total, parts)
    return [share + (1 if k < extra else 0) for k in range(parts)]


def load_specs(spec: BenchSpec, address: str) -> list[LoadSpec]:
    """Each process's share of the connections, requests and rate."""
    processes = min(spec.processes, spec.connections)
    connections = split(spec.connections, processes)
    requests = split(spec.requests, processes) if spec.requests is not None else None
    engine = engine_for(spec)
    specs = []
    first = 0
    for k in range(processes):
        specs.append(
            LoadSpec(
                host=address,
                port=spec.port,
                connections=connections[k],
                size=spec.size,
                duration=spec.duration,
                requests=requests[k] if requests is not None else None,
                warmup=spec.warmup,
                rate=spec.rate * connections[k] / spec.connections if spec.rate else None,
                timeout=spec.effective_timeout,
                udp=spec.udp,
                tls=spec.tls,
                tls_verify=spec.tls_verify,
                cafile=spec.cafile,
                server_name=spec.host if spec.tls else None,
                first_channel=first,
                use_uvloop=spec.loop == "uvloop",
                proxy=spec.proxy,
                identify=spec.identify,
                engine=engine,
            )
        )
        first += connections[k]
    return specs


def check_reachable(spec: BenchSpec, address: str) -> None:
    """Fail at once, with a clear line, when nothing listens (TCP), instead of a run of errors."""
    if spec.udp:
        return
    timeout = spec.effective_timeout
    try:
        with socket.create_connection((address, spec.port), timeout=timeout):
            pass
    except OSError as exc:
        raise connect_error(exc, format_host_port(address, spec.port), timeout) from None


def first_reachable(spec: BenchSpec) -> str:
    """The first address of ``spec.host`` a server answers on, tried in the resolver's order
    as ``sockecho send`` does (UDP: the first address); the last failure if none does."""
    kind = socket.SOCK_DGRAM if spec.udp else socket.SOCK_STREAM
    failure: ConnectError | None = None
    for _family, sockaddr in resolve(spec.host, spec.port, kind, passive=False):
        try:
            check_reachable(spec, str(sockaddr[0]))
        except ConnectError as exc:
            failure = exc
        else:
            return str(sockaddr[0])
    assert failure is not None  # resolve() gives at least one address or raises
    raise failure


def run_bench(spec: BenchSpec, progress: ProgressCallback | None = None) -> BenchResult:
    """Run the benchmark and return its result. ``progress(elapsed, round_trips, errors)``
    is called about four times a second while it runs."""
    address = first_reachable(spec)
    specs = load_specs(spec, address)
    started = time.monotonic()
    if len(specs) == 1:
        tallies = run_in_thread(specs[0], progress, started)
    else:
        tallies = run_in_processes(specs, progress, started)
    return merge(spec, tallies)


def run_in_thread(spec: LoadSpec, progress: ProgressCallback | None, started: float) -> list[Tally]:
    counters: list[int] = [0, 0]
    outcome: list[Tally | BaseException] = []

    def target() -> None:
        try:
            outcome.append(run_engine(spec, counters, 0))
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=target, name="sockecho-bench", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(PROGRESS_INTERVAL)
        if progress is not None:
            progress(time.monotonic() - started, counters[0], counters[1])
    result = outcome[0]
    if isinstance(result, BaseException):
        raise result
    return [result]


def worker_main(
    spec: LoadSpec,
    slot: int,
    counters: MutableSequence[int],
    barrier: multiprocessing.synchronize.Barrier,
    results: multiprocessing.Queue[tuple[int, dict[str, Any] | str]],
) -> None:
    """One worker process: run its share, send back the tally (histogram encoded)."""
    try:
        tally = run_engine(spec, counters, slot * 2, ready=lambda: wait_at(barrier))
        results.put((slot, tally_to_wire(tally)))
    except BaseException as exc:
        with contextlib.suppress(Exception):
            barrier.abort()
        results.put((slot, f"{type(exc).__name__}: {exc}"))


def wait_at(barrier: multiprocessing.synchronize.Barrier) -> None:
    barrier.wait(START_TIMEOUT)


def tally_to_wire(tally: Tally) -> dict[str, Any]:
    return {
        "histogram": tally.histogram.encode(),
        "round_trips": tally.round_trips,
        "bytes_echoed": tally.bytes_echoed,
        "lost": tally.lost,
        "errors": dict(tally.errors),
        "first_start": tally.first_start,
        "last_end": tally.last_end,
        "cpu_seconds": tally.cpu_seconds,
        "wall_seconds": tally.wall_seconds,
        "instance_connections": dict(tally.instance_connections),
        "instance_round_trips": dict(tally.instance_round_trips),
    }


def tally_from_wire(wire: dict[str, Any]) -> Tally:
    return Tally(
        histogram=HdrHistogram.decode(wire["histogram"]),
        round_trips=wire["round_trips"],
        bytes_echoed=wire["bytes_echoed"],
        lost=wire["lost"],
        errors=collections.Counter(wire["errors"]),
        first_start=wire["first_start"],
        last_end=wire["last_end"],
        cpu_seconds=wire["cpu_seconds"],
        wall_seconds=wire["wall_seconds"],
        instance_connections=collections.Counter(wire["instance_connections"]),
        instance_round_trips=collections.Counter(wire["instance_round_trips"]),
    )


def run_in_processes(
    specs: list[LoadSpec], progress: ProgressCallback | None, started: float
) -> list[Tally]:
    context = multiprocessing.get_context("spawn")
    counters = context.RawArray("q", 2 * len(specs))
    barrier = context.Barrier(len(specs))
    results: multiprocessing.Queue[tuple[int, dict[str, Any] | str]] = context.Queue()
    workers = [
        context.Process(
            target=worker_main,
            args=(spec, slot, counters, barrier, results),
            name=f"sockecho-bench-{slot}",
            daemon=True,
        )
        for slot, spec in enumerate(specs)
    ]
    for worker in workers:
        worker.start()
    bound = max(spec.warmup + (spec.duration or 0) + 2 * spec.timeout for spec in specs)
    deadline = started + START_TIMEOUT + bound + (0 if specs[0].duration else 3600)
    collected: dict[int, dict[str, Any] | str] = {}
    try:
        while len(collected) < len(specs):
            if time.monotonic() > deadline:
                raise SockechoError("the load processes did not finish in time")
            try:
                slot, wire = results.get(timeout=PROGRESS_INTERVAL)
                collected[slot] = wire
            except queue.Empty:
                if not any(worker.is_alive() for worker in workers) and results.empty():
                    raise SockechoError("a load process died without a result") from None
            if progress is not None:
                progress(time.monotonic() - started, sum(counters[0::2]), sum(counters[1::2]))
    finally:
        for worker in workers:
            worker.join(5.0)
            if worker.is_alive():
                worker.kill()
                worker.join()
        results.close()
    failures = [wire for wire in collected.values() if isinstance(wire, str)]
    if failures:
        raise SockechoError(f"a load process failed: {failures[0]}")
    return [tally_from_wire(wire) for wire in collected.values() if not isinstance(wire, str)]


def merge(spec: BenchSpec, tallies: list[Tally]) -> BenchResult:
    histogram = new_histogram()
    errors: collections.Counter[str] = collections.Counter()
    connections: collections.Counter[str] = collections.Counter()
    round_trips_by: collections.Counter[str] = collections.Counter()
    for tally in tallies:
        histogram.add(tally.histogram)
        errors.update(tally.errors)
        connections.update(tally.instance_connections)
        round_trips_by.update(tally.instance_round_trips)
    round_trips = sum(tally.round_trips for tally in tallies)
    start = min(tally.first_start for tally in tallies)
    end = max(tally.last_end for tally in tallies)
    elapsed = max(end - start, 1e-9)
    if spec.duration is not None and round_trips:
        elapsed = max(elapsed, spec.duration * 0.999)  # the window, not just the last echo
    return BenchResult(
        spec=replace(spec),
        elapsed=elapsed,
        round_trips=round_trips,
        bytes_echoed=sum(tally.bytes_echoed for tally in tallies),
        lost=sum(tally.lost for tally in tallies),
        errors=dict(errors),
        histogram=histogram,
        environment=environment(spec),
        client_cpu=[ProcessLoad(t.cpu_seconds, t.wall_seconds) for t in tallies],
        instances={
            name: {"connections": connections[name], "round_trips": round_trips_by[name]}
            for name in sorted(connections | round_trips_by)
        },
    )


def environment(spec: BenchSpec) -> dict[str, Any]:
    return {
        "sockecho": __version__,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loop": spec.loop,
        "engine": engine_for(spec),
        "argv": sys.argv[1:],
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
