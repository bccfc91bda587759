"""``sockecho serve --workers N``: N server processes sharing one port, under a supervisor.

One Python process serves on one core (the GIL; and every model but ``threading`` is a single
thread). ``--workers N`` starts N *workers*, each a complete server of the chosen model (TCP
and, with ``--udp``, UDP), and a *supervisor* that does no serving at all::

    supervisor ──reserve port P (bound, SO_REUSEPORT, never listening)
       │  spawn, one pipe each
       ├── worker 1: Server(config, port=P, reuse_port) ── listen(P) ─┐
       ├── worker 2: Server(...)                          ── listen(P) ─┼─ the kernel spreads
       └── worker N: ...                                                ┘  connections by hash

Sharing the port
    Every worker listens on the same port with SO_REUSEPORT (Linux 3.9+): the kernel keeps
    one accept queue per worker and hashes each new connection (its addresses and ports) to
    one of them; datagrams are spread the same way. There is no shared accept lock and no
    thundering herd. With ``--port 0`` the supervisor first binds a socket of its own to a
    free port (per address of the host) with SO_REUSEPORT and never calls ``listen()`` on it:
    only listening sockets receive connections, so it takes none, but it holds the port for
    the whole run, so a restarted worker always gets the same one and no other program can
    take it between two workers. The ready lines are printed once, when every worker listens.

Processes: ``multiprocessing`` with ``spawn``
    Each worker is a fresh interpreter that imports sockecho and receives its ``ServerConfig``
    (a frozen dataclass) by pickle. ``fork`` would start faster (no import: about 0.1-0.3 s
    per worker saved, paid at start-up and per restart only), but it copies whatever the
    supervisor holds: the reserved sockets, the signal wake-up descriptor, logging's locks
    and any thread's state, which is how forked children deadlock; Python 3.12 warns about
    forking a process with threads and 3.14 stops defaulting to it. A spawned worker inherits
    nothing but stdio and its pipe.

Signals and stopping
    The supervisor catches SIGINT and SIGTERM (:class:`~sockecho.stop_signals.StopSignals`)
    and tells each worker through its pipe: the first signal ``stop`` (each worker stops
    accepting and drains its connections for up to ``--drain-timeout``), a second one
    ``now`` (each closes what is left at once). Workers ignore SIGINT: a Ctrl-C in a
    terminal reaches the whole process group, and only the supervisor decides. A worker
    stopped by a SIGTERM of its own drains and exits like one told to ``stop``. Whatever
    still runs ``STOP_GRACE`` seconds after the drain timeout is killed. The supervisor exits
    0 once every worker has.

Restarts
    A worker that exits while the server is not stopping (a crash, ``kill -9``, the OOM
    killer) is logged with its exit status and started again while the others keep
    serving. One that dies within ``STABLE_SECONDS`` of its start is restarted after a
    back-off that doubles from ``RESTART_DELAY`` up to ``RESTART_DELAY_MAX``: a worker that
    cannot start does not spin. Connections the dead worker held are lost (their clients see
    a reset); connections still in its accept queue are reset too (the kernel does not move
    them to another queue unless ``net.ipv4.tcp_migrate_req`` is set); new connections go
    to the live workers' queues: the port never refuses.

No orphans
    Each worker asks the kernel for SIGKILL when its parent dies (``prctl(PR_SET_PDEATHSIG)``
    through ctypes) and checks that the supervisor did not die before it asked; a worker
    whose pipe reaches end-of-file (the supervisor is gone) stops at once too.

Counters and metrics
    Every ``STATS_INTERVAL`` seconds, and once more when it ends, each worker sends its
    :class:`~sockecho.core.StatsSnapshot` through its pipe. The supervisor keeps the latest
    one of each worker, and those of the workers that have ended; :meth:`Supervisor.snapshot`
    adds them up. So the stop line counts every worker, and a worker that was killed loses
    only what it counted in its last ``STATS_INTERVAL``. With ``--metrics HOST:PORT`` the
    supervisor (never a worker) serves ``/metrics`` from that sum, plus ``sockecho_workers``
    (running) and ``sockecho_worker_restarts_total``; the figures are at most
    ``STATS_INTERVAL`` old. ``/healthz`` turns 503 when the supervisor starts stopping.

The ``select`` model works with workers too: its FD_SETSIZE ceiling (``--max-connections``
1000) then applies to each worker.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from sockecho import net
from sockecho.config import ServerConfig
from sockecho.core import StatsSnapshot
from sockecho.errors import SockechoError
from sockecho.metrics import MetricsServer, StatsCollector, parse_address
from sockecho.server import Server
from sockecho.stop_signals import StopSignals

log = logging.getLogger("sockecho.workers")

#: Signals that stop the supervisor (gracefully; the second one at once), as ``serve``'s.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: Seconds a worker must have run to count as healthy: one that dies sooner is restarted
#: after a back-off, one that ran longer at once.
STABLE_SECONDS = 5.0
#: Seconds before the first restart of a worker that keeps dying; doubles each time.
RESTART_DELAY = 0.5
#: The longest back-off between two restarts of one worker (seconds).
RESTART_DELAY_MAX = 10.0
#: Seconds every worker gets to import, bind and listen before start-up is abandoned
#: (a spawned interpreter imports sockecho first: 0.1-0.3 s on an idle machine).
START_TIMEOUT = 60.0
#: Seconds after the drain timeout before workers still running are killed.
STOP_GRACE = 5.0
#: Seconds between two reports of a worker's counters to the supervisor.
STATS_INTERVAL = 1.0
#: prctl(2) option: the signal a process gets when its parent dies (linux/prctl.h).
PR_SET_PDEATHSIG = 1


def usable_cpus() -> int:
    """CPUs this process may run on (``--workers auto``): taskset and cpusets count."""
    return len(os.sched_getaffinity(0)) or 1


def die_with_parent(parent: int) -> None:
    """Ask for SIGKILL when the parent dies; exit now if it already has (Linux)."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is not None:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # it died before prctl(): nobody would signal us
        os._exit(1)


def worker_main(
    config: ServerConfig,
    index: int,
    conn: Connection,
    parent: int,
    prepare: Callable[[int], None] | None,
) -> None:
    """One worker process: serve ``config`` until told to stop, then report the counters.

    Messages to the supervisor: ``("ready", endpoints)`` once listening, ``("stats",
    snapshot)`` every STATS_INTERVAL, ``("failed", message)`` if the server could not start or
    crashed, ``("stopped", snapshot)`` at the end.
    From it: ``"stop"`` (drain), ``"now"`` (stop at once); end-of-file means it is gone.
    """
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the terminal's Ctrl-C is the supervisor's
    if prepare is not None:
        prepare(index)
    try:
        server = Server(config)
        with StopSignals([signal.SIGTERM]) as signals:
            conn.send(("ready", server.start()))

            def report_end() -> None:
                server.stopped.wait()
                signals.ended()

            threading.Thread(target=report_end, name="sockecho-ended", daemon=True).start()

            def report() -> None:
                with contextlib.suppress(OSError):
                    conn.send(("stats", server.snapshot()))

            for order in orders(conn, signals, report):
                server.request_stop()  # the first drains; a second stops at once
                if order == "now":
                    server.request_stop()
            server.join()
        conn.send(("stopped", server.snapshot()))
    except SockechoError as exc:
        with contextlib.suppress(OSError):
            conn.send(("failed", str(exc)))
        raise SystemExit(1) from None


def orders(conn: Connection, signals: StopSignals, report: Callable[[], None]) -> Iterator[str]:
    """Stop orders for a worker: ``"stop"``/``"now"`` from the supervisor, ``"stop"`` for a
    SIGTERM, ``"now"`` if the supervisor is gone; ends when the server has ended. Calls
    ``report`` every STATS_INTERVAL meanwhile (in this thread: the pipe has one writer)."""
    gone = False
    due = time.monotonic() + STATS_INTERVAL
    while True:
        watched = [signals.fileno()] if gone else [signals.fileno(), conn.fileno()]
        readable, _, _ = select.select(watched, [], [], max(0.0, due - time.monotonic()))
        if time.monotonic() >= due:
            if not gone:
                report()
            due = time.monotonic() + STATS_INTERVAL
        if not gone and conn.fileno() in readable:
            try:
                yield str(conn.recv())
            except (EOFError, OSError):
                gone = True
                yield "now"
        if signals.fileno() in readable:
            for received in signals.take():
                if received is None:
                    return
                yield "stop"


@dataclass
class Worker:
    """The supervisor's record of one worker slot."""

    index: int
    process: BaseProcess
    conn: Connection  # the supervisor's end of the pipe
    started: float
    endpoints: list[str] | None = None  # set when it listens
    snapshot: StatsSnapshot | None = None  # its latest report (the final one once stopped)
    failure: str | None = None


@dataclass
class Slot:
    """A worker position (1..N): its current process and its restart history."""

    index: int
    worker: Worker | None = None
    quick_deaths: int = 0
    restart_at: float | None = None


def add_snapshots(snapshots: list[StatsSnapshot]) -> StatsSnapshot:
    """The sum of several servers' counters (faults by name; duration buckets elementwise)."""
    totals: dict[str, Any] = {}
    for item in dataclasses.fields(StatsSnapshot):
        values = [getattr(snapshot, item.name) for snapshot in snapshots]
        if item.name == "faults":
            faults: dict[str, int] = {}
            for value in values:
                for name, count in value.items():
                    faults[name] = faults.get(name, 0) + count
            totals[item.name] = faults
        elif item.name == "duration_counts":
            width = max((len(value) for value in values), default=0)
            totals[item.name] = tuple(
                sum(value[k] for value in values if k < len(value)) for k in range(width)
            )
        else:
            totals[item.name] = sum(values)
    return StatsSnapshot(**totals)


@dataclass
class Supervisor:
    """Run ``count`` workers of ``config`` on one port until SIGINT/SIGTERM (main thread).

    ``prepare(index)`` runs first in each worker (picklable: the CLI sets up logging with
    it); ``on_ready(endpoints)`` runs in the supervisor once every worker listens.
    :meth:`run` returns the workers' counters added up. With ``config.metrics`` the
    supervisor serves them (:attr:`metrics_url` once :meth:`run` has started it).
    """

    config: ServerConfig
    count: int
    prepare: Callable[[int], None] | None = None
    on_ready: Callable[[list[str]], None] | None = None
    slots: list[Slot] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._context = multiprocessing.get_context("spawn")
        self._snapshots: list[StatsSnapshot] = []  # of the workers that have ended
        self._counters = threading.Lock()  # the metrics thread reads what the main one writes
        self._stops = 0
        self._deadline = float("inf")
        self.restarts = 0
        self.metrics: MetricsServer | None = None
        self.metrics_url: str | None = None
        if self.config.metrics is not None:  # ConfigError here: nothing started yet
            self.metrics = MetricsServer(
                parse_address(self.config.metrics),
                StatsCollector(self.snapshot, self.config.model, workers=self.worker_counts),
                serving=lambda: not self._stops,
            )

    def snapshot(self) -> StatsSnapshot:
        """Every worker's counters added up: the ended ones' and the running ones' latest."""
        with self._counters:
            running = [slot.worker.snapshot for slot in self.slots if slot.worker is not None]
            return add_snapshots([*self._snapshots, *(s for s in running if s is not None)])

    def worker_counts(self) -> tuple[int, int]:
        """(workers running, restarts so far), for the metrics."""
        running = sum(
            1 for slot in self.slots if slot.worker is not None and slot.worker.process.is_alive()
        )
        return running, self.restarts

    def run(self) -> StatsSnapshot:
        reserved = net.reserve_port(self.config.host, self.config.port)
        try:
            port = reserved[0].getsockname()[1]
            # The workers serve echo only: the metrics are the supervisor's.
            self.worker_config = self.config.replace(port=port, reuse_port=True, metrics=None)
            if self.metrics is not None:
                self.metrics_url = self.metrics.start()
            with StopSignals(STOP_SIGNALS) as signals:
                self.slots = [Slot(index) for index in range(1, self.count + 1)]
                for slot in self.slots:
                    self.start(slot)
                endpoints = self.wait_until_listening(signals)
                if endpoints is not None and self.on_ready is not None:
                    self.on_ready(endpoints)
                self.supervise(signals)
        finally:
            for slot in self.slots:  # whatever happened: nothing is left behind
                if slot.worker is not None and slot.worker.process.is_alive():
                    slot.worker.process.kill()
                    slot.worker.process.join()
            for sock in reserved:
                sock.close()
            if self.metrics is not None:
                self.metrics.stop()
        return self.snapshot()

    # -- starting -------------------------------------------------------------------------------

    def start(self, slot: Slot) -> None:
        ours, theirs = self._context.Pipe()
        process = self._context.Process(
            target=worker_main,
            args=(self.worker_config, slot.index, theirs, os.getpid(), self.prepare),
            name=f"sockecho-worker-{slot.index}",
        )
        process.start()
        theirs.close()
        slot.worker = Worker(slot.index, process, ours, time.monotonic())
        slot.restart_at = None

    def wait_until_listening(self, signals: StopSignals) -> list[str] | None:
        """Every worker's ready message (the first one's endpoints), or None if a stop
        signal came first. A worker that fails to start fails the whole start-up."""
        deadline = time.monotonic() + START_TIMEOUT
        while not all(slot.worker is not None and slot.worker.endpoints for slot in self.slots):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SockechoError(f"the workers did not all listen within {START_TIMEOUT:g} s")
            for ready in multiprocessing.connection.wait(self.waitables(signals), remaining):
                if ready == signals.fileno():
                    if signals.take():
                        self.stop(now=True)
                        self.supervise(signals)
                        return None
                    continue
                slot = self.slot_of(ready)
                if slot is None or slot.worker is None:
                    continue
                worker = slot.worker
                self.receive(worker)
                if worker.endpoints is None and (
                    worker.failure is not None or not worker.process.is_alive()
                ):
                    worker.process.join()
                    raise SockechoError(
                        worker.failure
                        or f"worker {slot.index} exited ({describe_exit(worker)}) before it "
                        "listened"
                    )
        first = self.slots[0].worker
        assert first is not None
        assert first.endpoints is not None
        endpoints = first.endpoints
        log.info(
            "%d workers of the %s model listening (pids %s)",
            self.count,
            self.config.model,
            ", ".join(str(slot.worker.process.pid) for slot in self.slots if slot.worker),
        )
        return endpoints

    # -- running --------------------------------------------------------------------------------

    def supervise(self, signals: StopSignals) -> None:
        """Restart dying workers; on signals, stop them; return when all have ended."""
        while any(slot.worker is not None for slot in self.slots):
            now = time.monotonic()
            due = [slot.restart_at for slot in self.slots if slot.restart_at is not None]
            timeout = min([*due, self._deadline]) - now
            ready = multiprocessing.connection.wait(
                self.waitables(signals), None if timeout == float("inf") else max(0.0, timeout)
            )
            for item in ready:
                if item == signals.fileno():
                    for received in signals.take():
                        if received is not None:
                            name = signal.Signals(received).name
                            log.info("%s: stopping %d workers", name, self.count)
                            self.stop(now=self._stops > 0)
                    continue
                slot = self.slot_of(item)
                if slot is None or slot.worker is None:
                    continue  # its pipe and its sentinel were both ready: handled
                self.receive(slot.worker)
                if not slot.worker.process.is_alive():
                    self.ended(slot)
            now = time.monotonic()
            for slot in self.slots:
                if slot.restart_at is not None and now >= slot.restart_at and not self._stops:
                    self.start(slot)
                    self.restarts += 1
                    assert slot.worker is not None
                    log.info("worker %d restarted (pid %s)", slot.index, slot.worker.process.pid)
            if now >= self._deadline:
                for slot in self.slots:
                    if slot.worker is not None:
                        log.warning("worker %d did not stop in time: killed", slot.index)
                        slot.worker.process.kill()
                self._deadline = float("inf")

    def waitables(self, signals: StopSignals) -> list[Any]:
        found: list[Any] = [signals.fileno()]
        for slot in self.slots:
            if slot.worker is not None:
                found += [slot.worker.conn, slot.worker.process.sentinel]
        return found

    def slot_of(self, item: object) -> Slot | None:
        """The slot whose worker's pipe or sentinel ``item`` is (None: it has ended since)."""
        for slot in self.slots:
            worker = slot.worker
            if worker is not None and item in (worker.conn, worker.process.sentinel):
                return slot
        return None

    def receive(self, worker: Worker) -> None:
        """Take in every message the worker has sent so far (none once its pipe closed)."""
        with contextlib.suppress(EOFError, OSError):
            while worker.conn.poll():
                kind, payload = worker.conn.recv()
                if kind == "ready":
                    worker.endpoints = list(payload)
                elif kind in ("stats", "stopped"):
                    with self._counters:
                        worker.snapshot = payload
                elif kind == "failed":
                    worker.failure = str(payload)

    def ended(self, slot: Slot) -> None:
        """Slot's worker has exited: keep its counters; restart it unless stopping."""
        worker = slot.worker
        assert worker is not None
        worker.process.join()
        self.receive(worker)  # a last message may have come with the exit
        worker.conn.close()
        with self._counters:
            slot.worker = None
            if worker.snapshot is not None:  # a killed one's connections are gone with it
                self._snapshots.append(dataclasses.replace(worker.snapshot, connections_active=0))
        if self._stops:
            return
        lived = time.monotonic() - worker.started
        slot.quick_deaths = slot.quick_deaths + 1 if lived < STABLE_SECONDS else 0
        delay = 0.0
        if slot.quick_deaths:
            delay = min(RESTART_DELAY * 2 ** (slot.quick_deaths - 1), RESTART_DELAY_MAX)
        reason = f": {worker.failure}" if worker.failure else ""
        log.warning(
            "worker %d (pid %s) exited with %s after %.1f s%s; restarting%s",
            slot.index,
            worker.process.pid,
            describe_exit(worker),
            lived,
            reason,
            f" in {delay:g} s" if delay else "",
        )
        slot.restart_at = time.monotonic() + delay

    def stop(self, *, now: bool) -> None:
        """Tell every worker to stop (drain), or with ``now`` to stop at once."""
        self._stops += 1
        for slot in self.slots:
            slot.restart_at = None
            if slot.worker is not None:
                with contextlib.suppress(OSError):
                    slot.worker.conn.send("now" if now else "stop")
        if self._deadline == float("inf"):
            self._deadline = time.monotonic() + self.config.drain_timeout + STOP_GRACE


def describe_exit(worker: Worker) -> str:
    code = worker.process.exitcode
    if code is None:
        return "no status yet"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
        return f"signal {-code}"
    return f"status {code}"
