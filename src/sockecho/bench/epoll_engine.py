"""The epoll load engine: bench's closed loop on a bare ``select.epoll`` loop, one thread.

What the asyncio engine (:mod:`sockecho.bench.load`) spends per echo above the kernel's
work is asyncio's own machinery: a ``Handle`` per ready socket, ``_run_once``, the
transport's ``write``. This engine drives the sockets itself, as
``benchmarks/reference/bare_epoll.py`` does for servers: level-triggered epoll,
non-blocking sockets with ``TCP_NODELAY``, per ready socket one ``recv_into`` the
process's preallocated buffer, the check, the time, and the next ``send``.

It measures exactly as the asyncio engine does, with the same pieces (load.py's
:class:`~sockecho.bench.load.Measurement` and :class:`~sockecho.bench.load.Pacer`): the
same rotating payloads, every echoed byte compared in order (the first byte that differs,
or bytes never sent, end the connection with a ``mismatch`` error), latencies counted
per round trip and folded into the HDR histogram at the end, the warm-up excluded, the
``--duration``/``--requests`` bounds, a per-round-trip timeout, errors by the same kinds,
a reconnect after :data:`~sockecho.bench.load.RECONNECT_BACKOFF`, progress for the live
line, and its own CPU over the measured window. It returns the same
:class:`~sockecho.bench.load.Tally`, so the runner merges, reports and saves it unchanged.

It runs plain TCP closed loops, with or without a PROXY header (the header is bytes sent
first). TLS, UDP, the open loop (``--rate``), ``--identify`` and uvloop run on the asyncio
engine; ``--engine auto`` chooses (runner.py, docs/measuring.md).
"""

from __future__ import annotations

import errno
import heapq
import itertools
import os
import select
import socket
import time
from collections.abc import Callable, MutableSequence
from typing import Any

from sockecho.bench.load import (
    RECONNECT_BACKOFF,
    TICK,
    LoadSpec,
    Measurement,
    Pacer,
    Tally,
    error_kind,
    proxy_header,
    quotas,
)

#: Whether this platform has epoll (Linux): elsewhere every run uses the asyncio engine.
AVAILABLE = hasattr(select, "epoll")
#: Events that mean "read now": data, the peer's FIN, or an error recv() will report.
READ_EVENTS = select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR if AVAILABLE else 0


class Connection(Pacer):
    """One TCP connection of the closed loop: at most one request in flight."""

    def __init__(self, engine: EpollEngine, number: int, quota: int | None) -> None:
        super().__init__(engine, number, quota)
        self.engine = engine
        self.sock: socket.socket | None = None
        self.fd = -1
        self.connecting = False
        self.connect_started = 0.0
        self.retry = False  # reopening (give up at give_up) rather than the first connect
        self.give_up = 0.0
        self.payload = b""  # the request in flight (empty: none)
        self.started = 0.0  # when it was sent: its latency counts from then (closed loop)
        self.received = 0  # bytes of it echoed so far
        self.outgoing: memoryview | None = None  # what send() has not taken yet
        self.finished = False

    # -- the connection -------------------------------------------------------------------

    def connect(self) -> None:
        """Start a non-blocking connect; it completes when the socket turns writable."""
        engine = self.engine
        if isinstance(engine.target, OSError):
            self.connect_failed(engine.target)
            return
        family, address = engine.target
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock, self.fd = sock, sock.fileno()
        self.payload, self.received, self.outgoing = b"", 0, None
        self.connect_started = engine.clock()
        failure = sock.connect_ex(address)
        if failure not in (0, errno.EINPROGRESS):
            self.connect_failed(OSError(failure, os.strerror(failure)))  # refused at once
            return
        self.connecting = True
        engine.by_fd[self.fd] = self.connect_done
        engine.epoll.register(self.fd, select.EPOLLOUT)

    def connect_done(self, events: int) -> None:
        assert self.sock is not None
        failure = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if failure:
            self.connect_failed(OSError(failure, os.strerror(failure)))
            return
        self.connecting = False
        engine = self.engine
        engine.by_fd[self.fd] = self.readable
        engine.epoll.modify(self.fd, select.EPOLLIN)
        proxy = engine.spec.proxy
        if proxy is not None:  # first, with the real addresses
            self.write(proxy_header(proxy, self.sock.getsockname(), self.sock.getpeername()))
        if engine.running and self.sock is not None:
            self.send_next(engine.clock())

    def connect_failed(self, exc: OSError) -> None:
        """Count a failed connect; the first is tried once, a reopen until the timeout."""
        self.drop()
        engine = self.engine
        engine.fail(error_kind(exc), [], counted=not self.retry)
        if not self.retry:
            self.finish()
            return
        engine.call_at(engine.clock() + RECONNECT_BACKOFF, self.attempt)

    def reopen(self) -> None:
        self.retry = True
        self.give_up = self.engine.clock() + self.engine.spec.timeout
        self.attempt()

    def attempt(self) -> None:
        if self.engine.stopping or self.engine.clock() >= self.give_up:
            self.finish()
        else:
            self.connect()

    # -- sending and receiving ------------------------------------------------------------

    # Each socket's events go straight to the handler of its state (the engine's ``by_fd``):
    # connect_done while connecting, readable while only reading, pending while a send waits.

    def pending(self, events: int) -> None:
        if events & select.EPOLLOUT:
            self.flush()
        if events & READ_EVENTS and self.sock is not None:
            self.readable(events)

    def readable(self, events: int) -> None:
        assert self.sock is not None
        buffer = self.engine.read_buffer
        try:
            nbytes = self.sock.recv_into(buffer)
        except BlockingIOError:
            return
        except OSError as exc:
            self.abort(error_kind(exc))
            return
        if not nbytes:
            self.abort("closed")
            return
        payload = self.payload
        received = self.received
        # Every byte in order: a byte that differs, or one beyond the request (never sent),
        # fails the connection; nothing in flight and bytes arriving is a mismatch too.
        if not payload.startswith(buffer[:nbytes], received):
            self.abort("mismatch")
            return
        received += nbytes
        if received < len(payload):
            self.received = received
            return
        now = self.engine.clock()
        self.engine.complete(self.started, now)
        self.send_next(now)

    def send_next(self, now: float) -> None:
        if self.may_send(now):
            payload = self.next_payload()
            self.payload, self.received, self.started = payload, 0, now
            self.write(payload)
        else:
            self.payload = b""
            self.close_and_finish()

    def write(self, data: bytes) -> None:
        """Send ``data``; what the socket does not take waits, with EPOLLOUT watched."""
        assert self.sock is not None
        if self.outgoing is not None:
            self.outgoing = memoryview(bytes(self.outgoing) + data)
            return
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self.abort(error_kind(exc))
            return
        if sent < len(data):
            self.outgoing = memoryview(data)[sent:]
            self.engine.by_fd[self.fd] = self.pending
            self.engine.epoll.modify(self.fd, select.EPOLLIN | select.EPOLLOUT)

    def flush(self) -> None:
        assert self.sock is not None
        assert self.outgoing is not None
        try:
            sent = self.sock.send(self.outgoing)
        except BlockingIOError:
            return
        except OSError as exc:
            self.abort(error_kind(exc))
            return
        rest = self.outgoing[sent:]
        if rest:
            self.outgoing = rest
        else:
            self.outgoing = None
            self.engine.by_fd[self.fd] = self.readable
            self.engine.epoll.modify(self.fd, select.EPOLLIN)

    def check_timeout(self, now: float) -> None:
        timeout = self.engine.spec.timeout
        if self.payload and now - self.started > timeout:
            self.abort("timeout")
        elif self.connecting and now - self.connect_started > timeout:
            self.connect_failed(TimeoutError("connect timed out"))

    # -- ending ---------------------------------------------------------------------------

    def abort(self, kind: str) -> None:
        """Count the request in flight as failed, drop the connection, reopen it later."""
        if self.finished:
            return
        engine = self.engine
        engine.fail(kind, [self.started] if self.payload else [])
        self.payload = b""
        self.drop()
        if engine.stopping:
            self.finish()
            return
        engine.call_at(engine.clock() + RECONNECT_BACKOFF, self.reopen)

    def drop(self) -> None:
        """Close the socket (if any) and forget it."""
        sock, self.sock = self.sock, None
        self.connecting = False
        self.outgoing = None
        if sock is not None:
            engine = self.engine
            if engine.by_fd.pop(self.fd, None) is not None:  # registered (still open: ours)
                engine.epoll.unregister(self.fd)
            sock.close()

    def close_and_finish(self) -> None:
        self.drop()
        self.finish()

    def finish(self) -> None:
        if not self.finished:
            self.finished = True
            self.engine.unfinished -= 1


class EpollEngine(Measurement):
    """One process's closed loop over ``spec.connections`` connections on one epoll."""

    def __init__(
        self, spec: LoadSpec, progress: MutableSequence[int] | None, progress_slot: int
    ) -> None:
        super().__init__(spec, progress, progress_slot, time.monotonic)
        if spec.tls or spec.udp or spec.rate or spec.identify or spec.use_uvloop:
            raise ValueError("the epoll engine runs plain TCP closed loops only")
        self.epoll = select.epoll()
        self.by_fd: dict[int, Callable[[int], None]] = {}  # descriptor -> event handler
        self.timers: list[tuple[float, int, Callable[[], None]]] = []  # a heap
        self.timer_order = itertools.count()
        self.running = False  # the requests have started (after every first connect)
        self.cpu_start: float | None = None
        shares = quotas(spec)
        self.connections = [
            Connection(self, spec.first_channel + k, shares[k]) for k in range(spec.connections)
        ]
        self.unfinished = len(self.connections)
        self.target: tuple[int, tuple[Any, ...]] | OSError
        try:
            family, _kind, _proto, _name, address = socket.getaddrinfo(
                spec.host, spec.port, type=socket.SOCK_STREAM
            )[0]
            self.target = (family, address)
        except OSError as exc:
            self.target = exc

    def call_at(self, when: float, callback: Callable[[], None]) -> None:
        heapq.heappush(self.timers, (when, next(self.timer_order), callback))

    def run(self, ready: Callable[[], None] | None) -> Tally:
        try:
            for connection in self.connections:
                connection.connect()
            self.spin(self.connecting)
            if ready is not None:
                ready()
            self.open_window(self.clock())
            self.running = True
            for connection in self.connections:
                if connection.sock is not None and not connection.connecting:
                    connection.send_next(self.clock())
            self.spin(self.busy)
        finally:
            self.stopping = True
            for connection in self.connections:
                connection.drop()
            self.epoll.close()
        return self.settle(self.cpu_start)

    def connecting(self) -> bool:
        return any(connection.connecting for connection in self.connections)

    def busy(self) -> bool:
        return self.unfinished > 0

    def spin(self, until_done: Callable[[], bool]) -> None:
        """Run the loop while ``until_done()`` is true: events, then timers, then the tick."""
        poll = self.epoll.poll
        get = self.by_fd.get
        timers = self.timers
        clock = self.clock
        now = clock()
        next_tick = now + TICK
        while until_done():
            wake = next_tick
            if timers and timers[0][0] < wake:
                wake = timers[0][0]
            if self.cpu_start is None and self.measure_start < wake:
                wake = self.measure_start
            for fd, events in poll(max(0.0, wake - now)):
                handler = get(fd)
                if handler is not None:  # None: closed by an earlier event of this batch
                    handler(events)
            now = clock()
            if self.cpu_start is None and now >= self.measure_start:
                # The load's own cost: CPU of this thread (the whole engine) from the moment
                # the measured window opens until the last echo is in.
                self.cpu_start = time.thread_time()
            while timers and timers[0][0] <= now:
                heapq.heappop(timers)[2]()
            if now >= next_tick:
                next_tick = now + TICK
                self.tick(now)

    def tick(self, now: float) -> None:
        """Expire round trips (and connects) slower than the timeout; publish progress."""
        for connection in self.connections:
            connection.check_timeout(now)
        self.publish_progress()
        if self.overran(now):
            self.stopping = True
            for connection in self.connections:
                connection.close_and_finish()


def run_load_epoll(
    spec: LoadSpec,
    progress: MutableSequence[int] | None = None,
    progress_slot: int = 0,
    ready: Callable[[], None] | None = None,
) -> Tally:
    """Open every connection, run the warm-up and the measured window, return the tally.

    ``ready`` (blocking) is called once every connection is open: the runner uses it to
    start all processes together. The same contract as load.py's ``run_load_blocking``.
    """
    return EpollEngine(spec, progress, progress_slot).run(ready)
