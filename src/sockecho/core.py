"""The echo rules every server model shares, free of I/O.

A model only waits for readiness and moves bytes; everything it has to decide
is decided here, once:

* :class:`EchoSession` - one connection. What to send back (everything received,
  in order, unchanged: RFC 862), when to stop reading (the unsent echo is above
  the high-water mark) and when to resume (below the low-water mark), when the
  connection is finished (the peer half-closed and every byte went back), and
  whether it has been idle too long.
* :class:`ConnectionGate` - admission. Whether one more connection fits under the
  global and per-source limits.
* :class:`DatagramPolicy` - UDP. Whether a datagram gets its echo: never to a
  privileged source port (the loop guard), and at most ``udp_rate`` replies per
  second to one source address (the reflection limit, a token bucket per address
  in a table of bounded size).
* :class:`ServerStats` - what is counted, with a frozen :class:`StatsSnapshot` for
  readers and a condition to wait on (tests wait for counters, never sleep).

Life of a session, as a model drives it::

    accept ──> EchoSession(...)
                 │  data_received(chunk)   bytes arrived          ──> pending grows
                 │  data_to_send()         what to write now       (a memoryview)
                 │  data_sent(n)           n bytes were written    ──> pending shrinks
                 │  wants_read             False above high water, True again below low water
                 │  eof_received()         the peer shut its write side
                 └─ finished               EOF seen and nothing pending: close the socket

Blocking models (``iterative``, ``threading``) never hold unsent bytes: ``sendall``
blocks until the peer reads, which is their back-pressure. They still count
through :meth:`EchoSession.echoed` so every model reports the same numbers.

Faults (``--fault``, :mod:`sockecho.faults`): a faulty connection gets a
:class:`FaultedSession`, the same calls obeying a :class:`~sockecho.faults.FaultPlan`
(what may be sent or read *now*), plus :meth:`FaultedSession.due` (when to look
again: the model sets a timer) and :meth:`FaultedSession.fired` (reset, limit-data
or stall: the model carries it out). A connection without faults keeps the plain
:class:`EchoSession`, so the fast path pays nothing for the feature.
"""

from __future__ import annotations

import bisect
import enum
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from sockecho.config import UDP_LOWEST_REPLY_PORT, ServerConfig
from sockecho.faults import LIMIT_DATA_LINGER, FaultKind, FaultPlan
from sockecho.proxy_protocol import Invalid, Parsed, ProxyHeader, ProxyHeaderParser, ProxyVersions

Clock = Callable[[], float]


class ProxyHeaderError(Exception):
    """A connection did not start with a valid PROXY header (``--proxy-protocol``): the
    model closes it like any failed connection; ``str()`` says what was wrong."""


class SourceLimitReached(Exception):
    """The client a PROXY header names already has ``max_per_source`` connections."""


class SessionState(enum.Enum):
    """Where a connection is in its life."""

    OPEN = "open"  # echoing in both directions
    DRAINING = "draining"  # peer half-closed; sending what is still pending
    CLOSED = "closed"


class EchoSession:
    """The echo state of one connection.

    ``peer`` is the printable peer address. ``clock`` is injectable for tests and
    defaults to :func:`time.monotonic` (seconds).
    """

    __slots__ = (
        "_activity_mark",
        "_clock",
        "_high_water",
        "_idle_timeout",
        "_low_water",
        "_out",
        "_out_start",
        "_preamble",
        "_preface",
        "_reading",
        "admitted",
        "awaiting_header",
        "bypass",
        "bytes_received",
        "bytes_sent",
        "header_deadline",
        "last_activity",
        "opened_at",
        "peer",
        "proxy_header",
        "source",
        "state",
        "via",
    )

    #: Whether this is a :class:`FaultedSession` (the models' one test for the slow path).
    faulted = False

    def __init__(
        self, config: ServerConfig, peer: str, source: str = "", clock: Clock = time.monotonic
    ) -> None:
        self.peer = peer
        self.source = source
        self._clock = clock
        self._high_water = config.high_water
        self._low_water = config.low_water
        self._idle_timeout = config.idle_timeout
        self._out = bytearray()
        self._out_start = 0  # bytes at the front of _out already sent (compacted lazily)
        self._reading = True
        self.bytes_received = 0
        self.bytes_sent = 0
        self.state = SessionState.OPEN
        self.opened_at = clock()
        self.last_activity = self.opened_at
        self._activity_mark = (0, 0, -1)  # bytes in, bytes out, kernel queue (-1: unread)
        # The preamble (docs/operations.md): a PROXY header to read, an identity line to send.
        self._preamble: ProxyHeaderParser | None = None
        #: Whether the PROXY header is still to be read (a plain attribute: the readiness
        #: models test it on every read, so it costs what a field costs, not a call).
        self.awaiting_header = False
        #: Whether a model must not take its fast path (send straight from recv()): a PROXY
        #: header still to read, or faults. One field, so the fast path tests one thing.
        self.bypass = self.faulted
        self._preface = 0  # bytes at the front of the output that are not echo (identity)
        self.header_deadline = 0.0
        self.proxy_header: ProxyHeader | None = None
        self.via = ""  # the balancer's address when a PROXY header named the client
        #: Logged and counted as open (a PROXY connection is, once its header is read).
        self.admitted = False

    # -- bytes in, bytes out --------------------------------------------------------------

    def data_received(self, data: bytes | bytearray | memoryview) -> None:
        """Call with every chunk read from the socket; it becomes pending echo."""
        self.bytes_received += len(data)
        self._out += data
        if self.pending > self._high_water:
            self._reading = False

    def data_to_send(self) -> memoryview:
        """The bytes to write now (may be empty). Valid until the next call on this session."""
        return memoryview(self._out)[self._out_start :]

    def data_sent(self, n: int) -> None:
        """Call after writing ``n`` bytes of :meth:`data_to_send`."""
        self._out_start += n
        if self._preface:  # the identity line is no echo: not counted as sent
            first = min(n, self._preface)
            self._preface -= first
            n -= first
        self.bytes_sent += n
        if self._out_start == len(self._out):
            self._out.clear()  # keeps capacity: the next small echo reuses the allocation
            self._out_start = 0
        elif self._out_start > self._high_water:
            del self._out[: self._out_start]  # compact so the buffer never creeps upward
            self._out_start = 0
        if not self._reading and self.pending <= self._low_water:
            self._reading = True

    def echoed(self, n: int) -> None:
        """Count ``n`` bytes received and written back at once (blocking and transport models)."""
        self.bytes_received += n
        self.bytes_sent += n

    def eof_received(self) -> None:
        """Call when recv() returned b'': the peer will send nothing more."""
        if self.state is SessionState.OPEN:
            self.state = SessionState.DRAINING

    def close(self) -> None:
        """Mark the session closed (the model closes the socket)."""
        self.state = SessionState.CLOSED

    # -- what the model should do -----------------------------------------------------------

    @property
    def pending(self) -> int:
        """Bytes received but not yet echoed back."""
        return len(self._out) - self._out_start

    @property
    def wants_read(self) -> bool:
        """Whether the model should read from this connection now (flow control)."""
        return self._reading and self.state is SessionState.OPEN

    @property
    def wants_write(self) -> bool:
        """Whether there is echo waiting to be written."""
        # (pending, inlined: the readiness models ask this on every read)
        return len(self._out) > self._out_start and self.state is not SessionState.CLOSED

    @property
    def finished(self) -> bool:
        """True once the peer half-closed and every byte went back: close the socket."""
        return self.state is SessionState.CLOSED or (
            self.state is SessionState.DRAINING and self.pending == 0
        )

    def is_idle(
        self, now: float | None = None, kernel_unsent: Callable[[], int] | None = None
    ) -> bool:
        """Whether no byte moved for ``idle_timeout`` seconds (never, when the limit is 0).

        Call it from a periodic sweep. It notices traffic by comparing byte
        counters with the last sweep, so the hot path never reads the clock.
        ``kernel_unsent`` asks the socket's send queue in the kernel (see
        :func:`sockecho.net.kernel_unsent`); it is called only when our counters
        stood still: a client still draining echo that the kernel holds moves none
        of them, but is not idle either.
        """
        if not self._idle_timeout:
            return False
        now = self._clock() if now is None else now
        mark = (self.bytes_received, self.bytes_sent)
        if mark != self._activity_mark[:2]:
            self._activity_mark = (*mark, -1)
            self.last_activity = now
            return False
        queued = kernel_unsent() if kernel_unsent is not None else 0
        previous = self._activity_mark[2]
        self._activity_mark = (*mark, queued)
        if previous >= 0 and queued != previous:
            self.last_activity = now  # the kernel's queue moved since the last sweep
        return now - self.last_activity >= self._idle_timeout

    def duration(self) -> float:
        """Seconds since the connection opened."""
        return self._clock() - self.opened_at

    # -- the preamble: a PROXY header to read, an identity line to send first ---------------

    def expect_proxy_header(self, versions: ProxyVersions, timeout: float) -> None:
        """Read a PROXY protocol header before any echo (``--proxy-protocol``).

        Until it is complete (:attr:`awaiting_header`) the model hands every chunk it
        reads to :meth:`header_received` instead of :meth:`data_received` (and never
        takes its send-at-once fast path): the header is never echoed. It must be
        complete by :attr:`header_deadline` (monotonic seconds): the model's sweep or
        timer closes the connection then (:meth:`header_overdue`).
        """
        self._preamble = ProxyHeaderParser(versions)
        self.awaiting_header = self.bypass = True
        self.header_deadline = self._clock() + timeout

    def header_received(self, data: bytes | bytearray | memoryview) -> bytes | None:
        """Feed bytes read while :attr:`awaiting_header` (``b''``: the peer closed).

        None: read more. Bytes: the header is complete (now in :attr:`proxy_header`);
        they are the client's first data, to echo after anything :meth:`send_first`
        queues. Raises :class:`ProxyHeaderError` when the connection does not start with
        a valid header, or ended before it was complete. Memory stays bounded: the parser
        refuses at once what cannot be a header and holds at most one header's bytes.
        """
        assert self._preamble is not None, "no PROXY header expected"
        if not data:
            raise ProxyHeaderError("the connection closed before a complete PROXY header")
        outcome = self._preamble.feed(data)
        if isinstance(outcome, Invalid):
            raise ProxyHeaderError(outcome.reason)
        if not isinstance(outcome, Parsed):
            return None
        self._preamble = None
        self.awaiting_header = False
        self.bypass = self.faulted
        self.proxy_header = outcome.header
        return outcome.rest

    @property
    def header_bytes_wanted(self) -> int:
        """At most how many bytes to read next while :attr:`awaiting_header`, for a model
        that must not read past the header (TLS follows it: the SSL object reads the rest)."""
        return self._preamble.bytes_wanted if self._preamble is not None else 0

    def header_overdue(self, now: float | None = None) -> bool:
        """Whether the PROXY header is still incomplete at its deadline."""
        if self._preamble is None:
            return False
        return (self._clock() if now is None else now) >= self.header_deadline

    def send_first(self, line: bytes) -> None:
        """Queue ``line`` (the ``--identify`` line) ahead of any pending echo. It is sent
        like echo but not counted as echoed (:attr:`bytes_sent`)."""
        self._out[self._out_start : self._out_start] = line
        self._preface += len(line)


class FaultedSession(EchoSession):
    """An :class:`EchoSession` whose echo obeys a :class:`~sockecho.faults.FaultPlan`.

    A model drives it with the same calls, with three differences:

    * it never uses the fast path (send straight from ``recv``, or :meth:`echoed`):
      every chunk goes through :meth:`data_received`, and only :meth:`data_to_send`
      may go out now;
    * it reads at most :meth:`read_size` bytes at once (``read-bandwidth``);
    * after each step it asks :meth:`fired` (then resets, shuts the write side or
      stalls, as the fault says) and :meth:`due` (then sets a timer and comes back to
      send or read at that time: nothing else would wake it).

    ``wants_read`` and ``wants_write`` answer for *now*, so a model never waits on a
    readiness it may not act on.
    """

    __slots__ = ("_close_at", "fault", "linger_until", "plan")

    faulted = True

    def __init__(
        self,
        config: ServerConfig,
        peer: str,
        source: str,
        plan: FaultPlan,
        clock: Clock = time.monotonic,
    ) -> None:
        super().__init__(config, peer, source, clock)
        self.plan = plan
        #: The after-N fault that has fired (reset-after, limit-data or stall-after), if any.
        self.fault: FaultKind | None = None
        #: limit-data: until when input is read and discarded, waiting for the client's close.
        self.linger_until = 0.0
        self._close_at: float | None = None  # slow-close: when the delayed close may happen

    def data_received(self, data: bytes | bytearray | memoryview) -> None:
        if self.fault is FaultKind.LIMIT_DATA:  # past the limit: read and discarded
            self.bytes_received += len(data)
            return
        super().data_received(data)
        self.plan.received(len(data), self._clock())

    def data_to_send(self) -> memoryview:
        """The bytes the faults let go now (may be empty while some are still held)."""
        if self.fault is not None:
            return memoryview(b"")
        allowed = self._preface + self.plan.send_allowance(self.bytes_sent, self._clock())
        return memoryview(self._out)[self._out_start : self._out_start + allowed]

    def data_sent(self, n: int) -> None:
        super().data_sent(n)
        self.plan.sent(n, self._clock())

    def echoed(self, n: int) -> None:
        raise AssertionError("a faulted session has no fast path: use data_received/data_sent")

    def read_size(self, read_size: int) -> int:
        """How many bytes to ask of the next ``recv()`` (at most ``read_size``)."""
        return self.plan.read_allowance(self._clock(), read_size)

    @property
    def wants_read(self) -> bool:
        if self.fault is FaultKind.LIMIT_DATA:
            return self.state is SessionState.OPEN  # discard until the client's EOF
        if self.fault is not None:
            return False  # reset (gone) or stalled: nothing is read any more
        return super().wants_read and self.plan.read_allowance(self._clock(), 1) > 0

    @property
    def wants_write(self) -> bool:
        return self.fault is None and super().wants_write and len(self.data_to_send()) > 0

    @property
    def finished(self) -> bool:
        """Also: limit-data fired and the client closed (or lingered too long); and a
        slow-close waits out its delay before this says so."""
        if self.state is SessionState.CLOSED:
            return True
        now = self._clock()
        if self.fault is FaultKind.LIMIT_DATA:
            return self.state is SessionState.DRAINING or now >= self.linger_until
        if self.fault is not None or not super().finished:
            return False
        if self._close_at is None:  # the echo just completed: the close delay starts now
            self._close_at = now + self.plan.close_delay
        return now >= self._close_at

    @property
    def close_delayed(self) -> bool:
        """Whether a slow-close is holding a finished echo open (to count and log it once)."""
        return self._close_at is not None and bool(self.plan.close_delay)

    def fired(self) -> FaultKind | None:
        """The after-N fault to carry out now, once: RESET_AFTER (set SO_LINGER to 0 and
        close), LIMIT_DATA (shut the write side, then read and discard until the client's
        EOF or ``linger_until``) or STALL_AFTER (nothing: the session reads and sends no
        more, and the connection stays open until it is idle or the server stops)."""
        if self.fault is not None:
            return None
        kind = self.plan.fired(self.bytes_sent)
        if kind is not None:
            self.fault = kind
            if kind is FaultKind.LIMIT_DATA:
                self.linger_until = self._clock() + LIMIT_DATA_LINGER
        return kind

    def due(self) -> float | None:
        """Monotonic time at which the model must look at this connection again (send,
        read or close), or None: only readiness can change anything."""
        if self.fault is FaultKind.LIMIT_DATA:
            return self.linger_until
        if self.fault is not None:
            return None
        if self._close_at is not None:
            return self._close_at
        return self.plan.due(self.bytes_sent, self._clock())


@dataclass(frozen=True, slots=True)
class StatsSnapshot:
    """Counters of one server at one moment (all since the server started)."""

    connections_accepted: int
    connections_active: int
    connections_closed: int
    connections_rejected: int
    connection_errors: int
    idle_closed: int
    bytes_echoed: int
    datagrams_received: int
    datagrams_echoed: int
    datagrams_dropped_low_port: int  # the loop guard: from a source port < 1024
    datagrams_dropped_rate: int  # the reflection limit: over the source's udp_rate
    datagram_errors: int  # sendto() failed (ICMP unreachable, buffer full): not echoed
    tls_handshake_failures: int  # not TLS, a bad handshake, or none within the timeout
    datagrams_dropped_fault: int = 0  # --fault drop=P
    #: --fault: times each kind took effect, by name ("latency", "reset-after"...); see
    #: ServerStats.fault for what one count is.
    faults: Mapping[str, int] = field(default_factory=dict)
    # -- what --metrics exports besides the above (sockecho.metrics) --
    connections_rejected_source: int = 0  # of connections_rejected: over --max-per-source
    proxy_header_failures: int = 0  # a missing, malformed, partial or oversized PROXY header
    bytes_received: int = 0  # by closed connections and echoed datagrams
    #: closed connections per :data:`DURATION_BUCKETS` bucket (not cumulative; last: longer)
    duration_counts: tuple[int, ...] = field(default=(), repr=False)
    duration_sum: float = field(default=0.0, repr=False)  # seconds, every closed connection


#: Upper bounds in seconds of the connection-duration histogram (``--metrics``). An echo
#: connection lives from a health check's milliseconds to a session's hours; one bucket per
#: half decade from 5 ms to an hour keeps the export small (12 series).
DURATION_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 3600.0)


class ServerStats:
    """Counters a server keeps; thread-safe, updated once per connection event."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self.connections_accepted = 0
        self.connections_active = 0
        self.connections_closed = 0
        self.connections_rejected = 0
        self.connection_errors = 0
        self.idle_closed = 0
        self.bytes_echoed = 0
        self.datagrams_received = 0
        self.datagrams_echoed = 0
        self.datagrams_dropped_low_port = 0
        self.datagrams_dropped_rate = 0
        self.datagram_errors = 0
        self.tls_handshake_failures = 0
        self.connections_rejected_source = 0
        self.proxy_header_failures = 0
        self.bytes_received = 0
        self.duration_counts = [0] * (len(DURATION_BUCKETS) + 1)
        self.duration_sum = 0.0
        self.datagrams_dropped_fault = 0
        self.faults_total: dict[str, int] = {}

    def opened(self) -> None:
        with self._changed:
            self.connections_accepted += 1
            self.connections_active += 1
            self._changed.notify_all()

    def closed(self, session: EchoSession, *, error: bool = False, idle: bool = False) -> None:
        duration = session.duration()
        bucket = bisect.bisect_left(DURATION_BUCKETS, duration)
        with self._changed:
            self.connections_active -= 1
            self.connections_closed += 1
            self.bytes_echoed += session.bytes_sent
            self.bytes_received += session.bytes_received
            self.duration_counts[bucket] += 1
            self.duration_sum += duration
            self.connection_errors += error
            self.idle_closed += idle
            self._changed.notify_all()

    def rejected(self, *, per_source: bool = False) -> None:
        """Count a connection refused at admission (``per_source``: by --max-per-source)."""
        with self._changed:
            self.connections_rejected += 1
            self.connections_rejected_source += per_source
            self._changed.notify_all()

    def proxy_header_failed(self) -> None:
        with self._changed:
            self.proxy_header_failures += 1
            self._changed.notify_all()

    def datagram(self, verdict: DatagramVerdict, *, size: int = 0, error: bool = False) -> None:
        """Count one datagram: its verdict, and whether its echo of ``size`` bytes went out."""
        with self._changed:
            self.datagrams_received += 1
            if verdict is DatagramVerdict.LOW_PORT:
                self.datagrams_dropped_low_port += 1
            elif verdict is DatagramVerdict.RATE_LIMITED:
                self.datagrams_dropped_rate += 1
            elif error:
                self.datagram_errors += 1
            else:
                self.datagrams_echoed += 1
                self.bytes_echoed += size
                self.bytes_received += size
            self._changed.notify_all()

    def fault(self, kind: FaultKind) -> None:
        """Count one fault taking effect: a connection shaped by latency, bandwidth, slicer
        or read-bandwidth (once, at accept); a reset-after, limit-data, stall-after or
        slow-close carried out; a datagram dropped, duplicated, reordered or corrupted."""
        with self._changed:
            self.faults_total[kind.value] = self.faults_total.get(kind.value, 0) + 1
            if kind is FaultKind.DROP:
                self.datagrams_received += 1
                self.datagrams_dropped_fault += 1
            self._changed.notify_all()

    def tls_handshake_failed(self) -> None:
        with self._changed:
            self.tls_handshake_failures += 1
            self._changed.notify_all()

    def snapshot(self) -> StatsSnapshot:
        with self._changed:
            return StatsSnapshot(
                connections_accepted=self.connections_accepted,
                connections_active=self.connections_active,
                connections_closed=self.connections_closed,
                connections_rejected=self.connections_rejected,
                connection_errors=self.connection_errors,
                idle_closed=self.idle_closed,
                bytes_echoed=self.bytes_echoed,
                datagrams_received=self.datagrams_received,
                datagrams_echoed=self.datagrams_echoed,
                datagrams_dropped_low_port=self.datagrams_dropped_low_port,
                datagrams_dropped_rate=self.datagrams_dropped_rate,
                datagram_errors=self.datagram_errors,
                tls_handshake_failures=self.tls_handshake_failures,
                connections_rejected_source=self.connections_rejected_source,
                proxy_header_failures=self.proxy_header_failures,
                bytes_received=self.bytes_received,
                duration_counts=tuple(self.duration_counts),
                duration_sum=self.duration_sum,
                datagrams_dropped_fault=self.datagrams_dropped_fault,
                faults=dict(self.faults_total),
            )

    def wait_for(self, predicate: Callable[[StatsSnapshot], bool], timeout: float) -> bool:
        """Block until ``predicate(snapshot)`` holds; False if ``timeout`` seconds pass first."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self.snapshot()), timeout)


#: The gate's key for a connection whose client is not known yet: a PROXY connection until
#: its header names the client, and for good when the header names none (a balancer's
#: health check: ``LOCAL``, ``UNKNOWN``). It counts toward the global limit only.
UNKNOWN_SOURCE = ""


class Refusal(enum.Enum):
    """Why :class:`ConnectionGate` refused a connection."""

    LIMIT = "limit"  # max_connections reached
    SOURCE = "source"  # the source has max_per_source connections already


class ConnectionGate:
    """Admission control: a global connection limit and an optional per-source limit.

    ``admit(source)`` before serving a new connection; if it returns False close
    the connection at once. ``release(source)`` when an admitted one closes.
    Thread-safe (the threading model admits from the accept thread and releases
    from connection threads).

    With the PROXY protocol the client is known only once its header is read:
    such a connection is admitted at accept under :data:`UNKNOWN_SOURCE` (the global
    limit bounds connections still sending headers), then :meth:`reassign`-ed to the
    client's address, where the per-source limit applies. Checking the source at
    accept would key every connection on the balancer's address.
    """

    def __init__(self, max_connections: int, max_per_source: int = 0) -> None:
        self.max_connections = max_connections
        self.max_per_source = max_per_source
        self._lock = threading.Lock()
        self._total = 0
        self._per_source: dict[str, int] = {}

    def admit(self, source: str) -> bool:
        return self.try_admit(source) is None

    def try_admit(self, source: str) -> Refusal | None:
        """Admit a connection from ``source`` (None), or say why not."""
        with self._lock:
            if self._total >= self.max_connections:
                return Refusal.LIMIT
            count = self._per_source.get(source, 0)
            if self._over_source_limit(source, count):
                return Refusal.SOURCE
            self._total += 1
            self._per_source[source] = count + 1
            return None

    def reassign(self, old: str, new: str) -> bool:
        """Move one admitted connection from source ``old`` to ``new``; False (and nothing
        moved) when ``new`` is at its per-source limit."""
        with self._lock:
            count = self._per_source.get(new, 0)
            if self._over_source_limit(new, count):
                return False
            self._forget_one(old)
            self._per_source[new] = count + 1
            return True

    def release(self, source: str) -> None:
        with self._lock:
            self._total -= 1
            self._forget_one(source)

    def _over_source_limit(self, source: str, count: int) -> bool:
        return (
            bool(self.max_per_source)
            and source != UNKNOWN_SOURCE
            and (count >= self.max_per_source)
        )

    def _forget_one(self, source: str) -> None:
        left = self._per_source[source] - 1
        if left:
            self._per_source[source] = left
        else:
            del self._per_source[source]


class RateLimitedNotice:
    """Says an event at most once per ``interval`` seconds, with how many were folded in.

    ``note()`` returns the number of events since the last report when it is time
    to report again, else 0: log "N connections rejected" instead of N lines.
    """

    def __init__(self, interval: float = 5.0, clock: Clock = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        self._count = 0
        self._next = 0.0

    def note(self) -> int:
        self._count += 1
        now = self._clock()
        if now < self._next:
            return 0
        self._next = now + self._interval
        count, self._count = self._count, 0
        return count


#: Source addresses whose token buckets are remembered at once. An entry costs about 200
#: bytes, so the table stays under ~3 MiB however many addresses a spoofed flood uses.
MAX_DATAGRAM_SOURCES = 16_384


class DatagramVerdict(enum.Enum):
    """What to do with one received datagram."""

    REPLY = "reply"  # send it back to where it came from
    LOW_PORT = "low-port"  # drop: the source port is privileged (loop guard)
    RATE_LIMITED = "rate-limited"  # drop: the source is over its reply rate


class DatagramPolicy:
    """The UDP rules: the loop guard and a per-source token bucket.

    Call :meth:`check` with the source of every datagram received and send the
    echo only when it returns :attr:`DatagramVerdict.REPLY`. Not thread-safe:
    every model calls it from the one thread that reads its UDP sockets.

    Loop guard
        Replies never go to a source port below 1024 (unless
        ``udp_allow_low_ports``): a datagram forged to come from another host's
        echo or chargen port would otherwise bounce between the two services
        forever (CVE-1999-0103).

    Reflection limit
        Each source address has a bucket of ``udp_burst_size`` tokens that
        refills at ``udp_rate`` tokens per second; a reply costs one token, a
        datagram finding the bucket empty is dropped. A victim whose address is
        spoofed gets at most ``burst + rate x seconds`` replies.

    Bounded memory
        A bucket that has refilled completely is the same as no bucket, so it is
        forgotten (least recently used first). When ``max_sources`` buckets are
        all still in use, datagrams from *new* addresses are dropped as
        rate-limited until one refills (at most ``burst / rate`` seconds): the
        table never grows, and the limit fails closed rather than open.
    """

    def __init__(
        self,
        config: ServerConfig,
        clock: Clock = time.monotonic,
        max_sources: int = MAX_DATAGRAM_SOURCES,
    ) -> None:
        self._allow_low_ports = config.udp_allow_low_ports
        self._rate = config.udp_rate
        self._burst = float(config.udp_burst_size)
        self._clock = clock
        self._max_sources = max_sources
        # source address -> (tokens left, clock time they were counted), oldest use first
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def check(self, source: str, port: int) -> DatagramVerdict:
        """The verdict for a datagram from ``source`` (an address, no port) and ``port``."""
        if port < UDP_LOWEST_REPLY_PORT and not self._allow_low_ports:
            return DatagramVerdict.LOW_PORT
        if not self._rate:
            return DatagramVerdict.REPLY
        now = self._clock()
        self._forget_refilled(now)
        bucket = self._buckets.get(source)
        if bucket is None:
            if len(self._buckets) >= self._max_sources:
                return DatagramVerdict.RATE_LIMITED
            tokens = self._burst
        else:
            tokens = self._refilled(bucket, now)
            self._buckets.move_to_end(source)
        if tokens < 1.0:
            self._buckets[source] = (tokens, now)
            return DatagramVerdict.RATE_LIMITED
        self._buckets[source] = (tokens - 1.0, now)
        return DatagramVerdict.REPLY

    @property
    def tracked_sources(self) -> int:
        """How many source addresses have a bucket now (bounded by ``max_sources``)."""
        return len(self._buckets)

    def _refilled(self, bucket: tuple[float, float], now: float) -> float:
        tokens, counted_at = bucket
        return min(self._burst, tokens + (now - counted_at) * self._rate)

    def _forget_refilled(self, now: float) -> None:
        # The least recently used buckets are at the front; drop them while they are full again.
        # (A full bucket behind a not-yet-full one waits for its turn: the table stays bounded.)
        while self._buckets:
            source, bucket = next(iter(self._buckets.items()))
            if self._refilled(bucket, now) < self._burst:
                return
            del self._buckets[source]
