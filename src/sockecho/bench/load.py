"""The load engine of one process: connections (channels) that send, verify and time echoes.

One asyncio loop per process drives every channel of that process. A channel is
one TCP (optionally TLS) connection or one connected UDP socket. What every engine
shares (the payloads, the measured window, the latency counts, the tally, which
request is next) is here too: the epoll engine (epoll_engine.py, plain TCP closed
loops) measures with the same pieces.

Closed loop
    A channel sends one request of ``size`` bytes, waits until exactly those
    bytes came back, records the time since it sent, and sends the next one.

Open loop (``rate``)
    Every request has an *intended* send time on a fixed schedule
    (``rate / connections`` per channel, channels phase-shifted). Requests go
    out when due whether or not earlier echoes returned, and latency is measured
    from the intended time, not from when the loop got round to sending: a server
    stall then shows up in the latency of every request scheduled during it
    (coordinated omission corrected, as wrk2 does).

Verification
    Every echoed byte is compared with what was sent, in order (TCP is a byte
    stream: an echo may come back in any number of pieces). The first byte that
    differs, or bytes that were never sent, end the connection with a
    ``mismatch`` error; a stream out of step is never trusted again. Requests
    rotate through 16 different payloads, so a stale or replayed echo is caught.

Errors
    Counted per failed round trip, by kind (:data:`ERROR_KINDS`). A connection
    that fails loses every request in flight on it; it is reopened after
    :data:`RECONNECT_BACKOFF` seconds while the run goes on. A refused connect
    counts one ``refused`` error. In UDP mode an echo that does not come back
    within the timeout is *lost* (datagrams may be dropped; it is not an error).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import socket
import ssl
import struct
import time
from collections.abc import Callable, MutableSequence
from dataclasses import dataclass, field
from typing import Any, cast

from hdrh.histogram import HdrHistogram

from sockecho.client import ProxyVersion
from sockecho.identity import IdentityError, read_identity
from sockecho.proxy_protocol import encode as encode_proxy

#: Kinds of failed round trips, in report order.
ERROR_KINDS = ("refused", "reset", "closed", "timeout", "mismatch", "tls", "other")
#: Histogram range in microseconds: 1 µs to 5 min, with 3 significant digits (0.1% error).
LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS = 1, 300_000_000, 3
#: Seconds before a failed connection is reopened, so a dead server is not hammered.
RECONNECT_BACKOFF = 0.05
#: Seconds between timeout sweeps and progress updates.
TICK = 0.05
#: Different payloads a channel rotates through (a replayed echo must differ from the next).
PAYLOAD_VARIANTS = 16
#: Bytes one TCP read may take (the shared receive buffer of a process): as a server's.
READ_SIZE = 64 * 1024
#: UDP request header: channel number, sequence number (network order, 2 x 8 bytes).
UDP_HEADER = struct.Struct("!QQ")


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """What one process does. ``rate`` is this process's share (None: closed loop)."""

    host: str
    port: int
    connections: int
    size: int
    duration: float | None  # measured seconds; None when ``requests`` bounds the run
    requests: int | None  # measured round trips over all of this process's channels
    warmup: float
    rate: float | None
    timeout: float
    udp: bool = False
    tls: bool = False
    tls_verify: bool = True
    cafile: str | None = None
    server_name: str | None = None
    first_channel: int = 0  # channel numbers are unique across processes
    use_uvloop: bool = False
    proxy: str | None = None  # "v1"/"v2": each connection sends a PROXY header first
    identify: bool = False  # each connection reads the server's --identify line first
    engine: str = "asyncio"  # "epoll": epoll_engine.py runs it (plain TCP, closed loop)


@dataclass(slots=True)
class Tally:
    """What one process measured (merged exactly across processes by the runner)."""

    histogram: HdrHistogram = field(default_factory=new_histogram)
    round_trips: int = 0
    bytes_echoed: int = 0
    lost: int = 0  # UDP only
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    first_start: float = 0.0  # monotonic time the measured window opened
    last_end: float = 0.0  # monotonic time the last measured request finished
    cpu_seconds: float = 0.0  # CPU time (user + system) the load thread used in the window
    wall_seconds: float = 0.0  # how long that window lasted
    #: --identify: connections and measured round trips by the instance that served them
    instance_connections: collections.Counter[str] = field(default_factory=collections.Counter)
    instance_round_trips: collections.Counter[str] = field(default_factory=collections.Counter)


#: Requests one open-loop channel sends per turn of the event loop when it is behind
#: schedule; the late ones still count their latency from their intended send time.
OPEN_LOOP_BURST = 64


class Measurement:
    """What every load engine of one process shares, whatever drives its sockets: the
    payloads, the measured window, the latency counts, the tally and the progress slots.

    ``clock`` is the engine's monotonic clock (the asyncio loop's time, or
    :func:`time.monotonic` itself); every time a channel records is on it.
    """

    def __init__(
        self,
        spec: LoadSpec,
        progress: MutableSequence[int] | None,
        progress_slot: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spec = spec
        self.clock = clock
        self.tally = Tally()
        self.progress = progress
        self.progress_slot = progress_slot
        base = os.urandom(spec.size + PAYLOAD_VARIANTS * 7)
        self.payloads = [base[k * 7 : k * 7 + spec.size] for k in range(PAYLOAD_VARIANTS)]
        self.measure_start = float("inf")  # nothing counts before the warm-up is over
        self.measure_end = float("inf")  # requests intended at or after it are not sent
        self.stopping = False
        # Latencies (µs) -> how often each came, folded into the histogram at the end: a dict
        # update per echo instead of hdrh's half-dozen Python calls (about a quarter of the
        # load engine's own CPU per echo before).
        self.latencies: dict[int, int] = {}
        # One receive buffer for every TCP channel of this process: each read is checked
        # before the next one lands, and a preallocated buffer spares the kernel the
        # mmap/munmap of the 256 KiB bytes object asyncio's stock read path allocates per recv.
        self.read_buffer = memoryview(bytearray(READ_SIZE))

    def open_window(self, now: float) -> None:
        """Every channel is connected (at ``now``): the warm-up starts, then the window."""
        spec = self.spec
        self.measure_start = now + spec.warmup
        if spec.duration is not None:
            self.measure_end = self.measure_start + spec.duration
        self.tally.first_start = time.monotonic() + spec.warmup

    def measured(self, intended: float) -> bool:
        return intended >= self.measure_start

    def overran(self, now: float) -> bool:
        """Whether the run is past its bound whatever the server does: the window's end,
        one timeout for the last requests in flight, and a second."""
        return now > self.measure_end + self.spec.timeout + 1.0

    def complete(self, intended: float, now: float) -> bool:
        """Count one round trip; whether it was in the measured window."""
        if intended >= self.measure_start:
            tally = self.tally
            tally.round_trips += 1
            tally.last_end = now
            latency = int((now - intended) * 1e6)
            latencies = self.latencies
            latencies[latency] = latencies.get(latency, 0) + 1
            return True
        return False

    def fold_latencies(self) -> None:
        """Move the counted latencies into the tally's histogram (once, at the end)."""
        record = self.tally.histogram.record_value
        for latency, count in self.latencies.items():
            record(max(LOWEST_US, min(HIGHEST_US, latency)), count)
        self.latencies.clear()
        self.tally.bytes_echoed = self.tally.round_trips * self.spec.size

    def fail(self, kind: str, intended: list[float], *, counted: bool = False) -> None:
        """Count failed round trips (``intended`` times of the requests in flight).

        A failed connect (no request in flight) counts one, when it happens in the
        measured window or is the first connect of a channel (``counted``).
        """
        if intended:
            failed = sum(1 for t in intended if t >= self.measure_start)
        else:
            failed = 1 if counted or self.clock() >= self.measure_start else 0
        if failed:
            self.tally.errors[kind] += failed

    def publish_progress(self) -> None:
        if self.progress is not None:
            self.progress[self.progress_slot] = self.tally.round_trips
            self.progress[self.progress_slot + 1] = sum(self.tally.errors.values())

    def settle(self, cpu_start: float | None) -> Tally:
        """The run is over: fold the latencies, close the CPU window, return the tally.

        ``cpu_start`` is :func:`time.thread_time` when the measured window opened (None:
        it never did). The load's own cost is the CPU of this thread (the engine) from
        then until the last echo is in; the window's wall time is measured from
        ``measure_start``, the moment the requests were timed from, not from when the
        engine got round to reading the CPU clock: on a busy machine that is late, and a
        window measured from it came out shorter than the run's --duration.
        """
        tally = self.tally
        self.fold_latencies()
        if cpu_start is not None:
            tally.cpu_seconds = time.thread_time() - cpu_start
            tally.wall_seconds = self.clock() - self.measure_start
        self.publish_progress()
        if tally.last_end == 0.0:
            tally.last_end = time.monotonic()
        return tally


class Run(Measurement):
    """State shared by the asyncio channels of one process."""

    def __init__(
        self, spec: LoadSpec, progress: MutableSequence[int] | None, progress_slot: int
    ) -> None:
        self.loop = asyncio.get_running_loop()
        super().__init__(spec, progress, progress_slot, self.loop.time)
        self.ssl_context = client_ssl_context(spec) if spec.tls else None


def quotas(spec: LoadSpec) -> list[int | None]:
    """Each channel's share of ``spec.requests`` (None each: the run is bounded by time)."""
    if spec.requests is None:
        return [None] * spec.connections
    share, extra = divmod(spec.requests, spec.connections)
    return [share + (1 if k < extra else 0) for k in range(spec.connections)]


def proxy_header(version: str, local: tuple[Any, ...], remote: tuple[Any, ...]) -> bytes:
    """A PROXY header naming this connection's own addresses (the client, then the server)."""
    return encode_proxy(
        cast(ProxyVersion, version),
        (str(local[0]), int(local[1])),
        (str(remote[0]), int(remote[1])),
    )


def client_ssl_context(spec: LoadSpec) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=spec.cafile)
    if not spec.tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def error_kind(exc: BaseException | None) -> str:
    if exc is None:
        return "closed"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return "reset"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ssl.SSLError):
        return "tls"  # a handshake or certificate failure
    return "other"


class Pacer:
    """Which request a connection sends next and whether it may (every engine's channels)."""

    def __init__(self, run: Measurement, number: int, quota: int | None) -> None:
        self.run = run
        self.number = number
        self.quota = quota  # measured requests still to send (None: until measure_end)
        self.variant = number % PAYLOAD_VARIANTS

    def next_payload(self) -> bytes:
        self.variant = (self.variant + 1) % PAYLOAD_VARIANTS
        return self.run.payloads[self.variant]

    def may_send(self, intended: float) -> bool:
        """Whether a request intended at this time belongs to the run (and count it)."""
        run = self.run
        if run.stopping or intended >= run.measure_end:
            return False
        if intended >= run.measure_start and self.quota is not None:
            if self.quota == 0:
                return False
            self.quota -= 1
        return True


class Channel(Pacer):
    """One connection's schedule: which request is next and when (shared by TCP and UDP)."""

    run: Run

    def __init__(self, run: Run, number: int, quota: int | None, phase: float) -> None:
        super().__init__(run, number, quota)
        rate = run.spec.rate
        self.interval = run.spec.connections / rate if rate else 0.0
        self.phase = phase  # fraction of an interval this channel's schedule is shifted by
        self.next_due = 0.0
        self.finished = run.loop.create_future()
        self.timer: asyncio.Handle | None = None

    def finish(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if not self.finished.done():
            self.finished.set_result(None)


class TcpChannel(Channel, asyncio.BufferedProtocol):
    """A TCP (or TLS) connection; requests and their echoes are matched in stream order.

    A BufferedProtocol: the transport reads into the process's shared buffer
    (:attr:`Run.read_buffer`), and each read is checked against what was sent before the
    next read can land there.
    """

    def __init__(self, run: Run, number: int, quota: int | None, phase: float) -> None:
        super().__init__(run, number, quota, phase)
        self.transport: asyncio.Transport | None = None
        self.expected = bytearray()  # sent and not yet echoed, in order
        self.in_flight: collections.deque[tuple[float, float, int]] = collections.deque()
        self.received = 0  # bytes echoed on this connection so far
        self.sent = 0
        self.failure: str | None = None
        self.instance: str | None = None  # --identify: who serves this connection
        self.preamble = bytearray()  # --identify: the identity line while it arrives

    # -- the connection -------------------------------------------------------------------

    async def open(self, retry: bool = True) -> None:
        """Connect; on failure count it and, if ``retry``, try again for up to the timeout.

        The first connection of a run is tried once: a server that refuses or fails
        the TLS handshake is reported at once rather than after the timeout.
        """
        run = self.run
        spec = run.spec
        give_up = run.loop.time() + spec.timeout
        while not run.stopping and run.loop.time() < give_up:
            self.expected.clear()
            self.in_flight.clear()
            self.received = self.sent = 0
            self.instance = None
            self.preamble.clear()
            try:
                await asyncio.wait_for(self.connect(), spec.timeout)
                return
            except (OSError, TimeoutError, ssl.SSLError) as exc:
                self.failure = error_kind(exc)
                run.fail(self.failure, [], counted=not retry)
                if not retry:
                    return
                await asyncio.sleep(RECONNECT_BACKOFF)

    async def connect(self) -> None:
        run, spec = self.run, self.run.spec
        server_hostname = (spec.server_name or spec.host) if spec.tls else None
        if spec.proxy is None or not spec.tls:
            await run.loop.create_connection(
                lambda: self, spec.host, spec.port, ssl=run.ssl_context,
                server_hostname=server_hostname,
            )  # fmt: skip
            return
        # PROXY over TLS: the header goes in the clear, before the handshake (as haproxy's
        # send-proxy does), so connect, send it, then start TLS on the same socket.
        sock = await self.connect_socket()
        try:
            header = proxy_header(spec.proxy, sock.getsockname(), sock.getpeername())
            await run.loop.sock_sendall(sock, header)
            await run.loop.create_connection(
                lambda: self, sock=sock, ssl=run.ssl_context, server_hostname=server_hostname
            )
        except BaseException:
            sock.close()
            raise

    async def connect_socket(self) -> socket.socket:
        """A connected non-blocking TCP socket to the first address of the target that answers."""
        loop, spec = self.run.loop, self.run.spec
        failure: OSError = ConnectionRefusedError(f"no address for {spec.host}")
        for family, kind, proto, _, address in await loop.getaddrinfo(
            spec.host, spec.port, type=socket.SOCK_STREAM
        ):
            sock = socket.socket(family, kind, proto)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, address)
            except OSError as exc:
                sock.close()
                failure = exc
                continue
            except BaseException:
                sock.close()
                raise
            return sock
        raise failure

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)
        self.failure = None
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        proxy = self.run.spec.proxy
        if proxy is not None and not self.run.spec.tls:  # first, with the real addresses
            local, remote = (
                transport.get_extra_info("sockname"),
                transport.get_extra_info("peername"),
            )
            self.transport.write(proxy_header(proxy, local, remote))

    def start(self) -> None:
        if self.run.spec.rate:
            self.schedule()
        else:
            self.send_next()

    # -- sending --------------------------------------------------------------------------

    def send(self, payload: bytes, intended: float, now: float | None = None) -> None:
        """Send one request intended at ``intended``; ``now`` when the caller has the time."""
        assert self.transport is not None
        self.expected += payload
        self.sent += len(payload)
        self.in_flight.append((intended, self.run.loop.time() if now is None else now, self.sent))
        self.transport.write(payload)

    def send_next(self) -> None:
        now = self.run.loop.time()
        if self.may_send(now):
            self.send(self.next_payload(), now, now)
        elif not self.in_flight:
            self.close_and_finish()

    def schedule(self) -> None:
        """Open loop: send every request that is due, then sleep until the next one."""
        loop = self.run.loop
        now = loop.time()
        for _ in range(OPEN_LOOP_BURST):
            if self.next_due > now:
                self.timer = loop.call_at(self.next_due, self.schedule)
                return
            # The run is over when its time is, even for requests still due from a backlog.
            if now >= self.run.measure_end or not self.may_send(self.next_due):
                self.next_due = float("inf")
                if not self.in_flight:
                    self.close_and_finish()
                return
            if self.transport is None or self.failure is not None:
                self.run.fail(self.failure or "other", [self.next_due])  # due while down
            else:
                self.send(self.next_payload(), self.next_due)
            self.next_due += self.interval
        # Behind schedule (a rate this process cannot reach): let the loop read echoes and
        # end the run before sending the next batch, instead of never giving it back.
        self.timer = loop.call_soon(self.schedule)

    # -- receiving ------------------------------------------------------------------------

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.run.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        if self.failure is not None:
            return
        data: bytes | memoryview = self.run.read_buffer[:nbytes]
        if self.run.spec.identify and self.instance is None:
            data = self.identity_received(bytes(data))
            if not data:
                return
            nbytes = len(data)
        expected = self.expected
        if not expected.startswith(data):
            self.abort("mismatch")
            return
        del expected[:nbytes]
        self.received += nbytes
        run = self.run
        in_flight = self.in_flight
        if in_flight and in_flight[0][2] <= self.received:
            now = run.loop.time()
            while in_flight and in_flight[0][2] <= self.received:
                intended, _sent, _end = in_flight.popleft()
                if run.complete(intended, now) and self.instance is not None:
                    run.tally.instance_round_trips[self.instance] += 1
            if not run.spec.rate:
                self.send_next()
            elif self.next_due == float("inf") and not in_flight:
                self.close_and_finish()

    def identity_received(self, data: bytes) -> bytes:
        """--identify: collect the identity line; what follows it (echo) is returned."""
        self.preamble += data
        try:
            found = read_identity(bytes(self.preamble))
        except IdentityError:
            self.abort("mismatch")
            return b""
        if found is None:
            return b""
        identity, rest = found
        self.instance = str(identity.get("instance"))
        rest = bytes(rest)
        self.run.tally.instance_connections[self.instance] += 1
        self.preamble.clear()
        return rest

    def eof_received(self) -> bool:
        self.abort("closed")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.failure is None and not self.finished.done():
            self.abort(error_kind(exc) if exc is not None else "closed")
        self.transport = None

    def check_timeout(self, now: float) -> None:
        if self.in_flight and now - self.in_flight[0][1] > self.run.spec.timeout:
            self.abort("timeout")

    # -- ending ---------------------------------------------------------------------------

    def abort(self, kind: str) -> None:
        """Count the requests in flight as failed, drop the connection, reopen it later."""
        if self.finished.done():
            return  # our own close at the end of the run (a TLS close_notify, say)
        self.failure = kind
        self.run.fail(kind, [intended for intended, _sent, _end in self.in_flight])
        self.in_flight.clear()
        if self.transport is not None:
            self.transport.abort()
        if self.run.stopping:
            self.finish()
            return
        self.run.loop.create_task(self.reopen())

    async def reopen(self) -> None:
        await asyncio.sleep(RECONNECT_BACKOFF)
        self.transport = None
        await self.open()
        if self.transport is None or self.finished.done():
            self.finish()
        elif not self.run.spec.rate:
            self.send_next()

    def close_and_finish(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.finish()


class UdpChannel(Channel, asyncio.DatagramProtocol):
    """A connected UDP socket; each datagram carries (channel, sequence) to match its echo."""

    def __init__(self, run: Run, number: int, quota: int | None, phase: float) -> None:
        super().__init__(run, number, quota, phase)
        if run.spec.size < UDP_HEADER.size:
            raise ValueError(f"UDP requests need at least {UDP_HEADER.size} bytes")
        self.transport: asyncio.DatagramTransport | None = None
        self.sequence = 0
        self.in_flight: dict[int, tuple[float, float, bytes]] = {}

    async def open(self, retry: bool = True) -> None:
        spec = self.run.spec
        await self.run.loop.create_datagram_endpoint(
            lambda: self, remote_addr=(spec.host, spec.port)
        )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def start(self) -> None:
        if self.run.spec.rate:
            self.schedule()
        else:
            self.send_next()

    def send(self, intended: float) -> None:
        assert self.transport is not None
        self.sequence += 1
        payload = (
            UDP_HEADER.pack(self.number, self.sequence) + self.next_payload()[UDP_HEADER.size :]
        )
        self.in_flight[self.sequence] = (intended, self.run.loop.time(), payload)
        self.transport.sendto(payload)

    def send_next(self) -> None:
        now = self.run.loop.time()
        if self.may_send(now):
            self.send(now)
        elif not self.in_flight:
            self.close_and_finish()

    def schedule(self) -> None:
        loop = self.run.loop
        now = loop.time()
        while self.next_due <= now:
            if not self.may_send(self.next_due):
                self.next_due = float("inf")
                if not self.in_flight:
                    self.close_and_finish()
                return
            self.send(self.next_due)
            self.next_due += self.interval
        self.timer = loop.call_at(self.next_due, self.schedule)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if len(data) < UDP_HEADER.size:
            self.run.fail("mismatch", [self.run.loop.time()])
            return
        _channel, sequence = UDP_HEADER.unpack_from(data)
        entry = self.in_flight.get(sequence)
        if entry is None:
            return  # the echo of a request already counted lost (late), or a duplicate
        intended, _sent, payload = entry
        del self.in_flight[sequence]
        if data != payload:
            self.run.fail("mismatch", [intended])
        else:
            self.run.complete(intended, self.run.loop.time())
        self.after_reply()

    def after_reply(self) -> None:
        if not self.run.spec.rate:
            self.send_next()
        elif self.next_due == float("inf") and not self.in_flight:
            self.close_and_finish()

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable: nothing listens there. The request in flight is refused.
        if self.in_flight:
            sequence = min(self.in_flight)
            intended = self.in_flight.pop(sequence)[0]
            self.run.fail(error_kind(exc), [intended])
        if not self.run.spec.rate:
            self.run.loop.call_later(RECONNECT_BACKOFF, self.send_next)

    def check_timeout(self, now: float) -> None:
        expired = [
            seq
            for seq, (_i, sent, _p) in self.in_flight.items()
            if now - sent > self.run.spec.timeout
        ]
        for sequence in expired:
            intended = self.in_flight.pop(sequence)[0]
            if intended >= self.run.measure_start:
                self.run.tally.lost += 1
        if expired:
            self.after_reply()

    def close_and_finish(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.finish()


async def run_load(
    spec: LoadSpec,
    *,
    progress: MutableSequence[int] | None = None,
    progress_slot: int = 0,
    ready: Callable[[], None] | None = None,
) -> Tally:
    """Open every channel, run the warm-up and the measured window, return the tally.

    ``ready`` (blocking, run in a thread) is called once every channel is
    connected: the runner uses it to start all processes together.
    """
    run = Run(spec, progress, progress_slot)
    loop = run.loop
    shares = quotas(spec)
    channel_type = UdpChannel if spec.udp else TcpChannel
    channels: list[TcpChannel | UdpChannel] = [
        channel_type(run, spec.first_channel + k, shares[k], k / spec.connections)
        for k in range(spec.connections)
    ]
    await asyncio.gather(*(channel.open(retry=False) for channel in channels))
    if ready is not None:
        await loop.run_in_executor(None, ready)
    now = loop.time()
    run.open_window(now)
    # The load's own cost: CPU of this thread (the loop; it is the whole load engine) from the
    # moment the measured window opens until the last echo is in.
    cpu_window: list[float] = []
    loop.call_at(run.measure_start, lambda: cpu_window.append(time.thread_time()))
    for channel in channels:
        channel.next_due = now + channel.phase * channel.interval
        if channel.transport is None:
            channel.finish()
        else:
            channel.start()
    ticker = loop.create_task(tick(run, channels))
    try:
        await asyncio.gather(*(channel.finished for channel in channels))
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
        run.stopping = True
        for channel in channels:
            if channel.transport is not None:
                channel.transport.abort()
        await asyncio.sleep(0)
    return run.settle(cpu_window[0] if cpu_window else None)


async def tick(run: Run, channels: list[TcpChannel | UdpChannel]) -> None:
    """Expire requests that took longer than the timeout; publish progress."""
    while True:
        await asyncio.sleep(TICK)
        now = run.loop.time()
        for channel in channels:
            channel.check_timeout(now)
        run.publish_progress()
        if run.overran(now):
            run.stopping = True
            for channel in channels:
                channel.finish()


def run_load_blocking(
    spec: LoadSpec,
    progress: MutableSequence[int] | None = None,
    progress_slot: int = 0,
    ready: Callable[[], None] | None = None,
) -> Tally:
    """:func:`run_load` on a fresh event loop (uvloop's when ``spec.use_uvloop``)."""
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if spec.use_uvloop:
        import uvloop  # noqa: PLC0415 (an optional extra)

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(
            run_load(spec, progress=progress, progress_slot=progress_slot, ready=ready)
        )
