"""Fault injection, free of I/O: what a bad network would do to an echo, decided here once.

``sockecho serve --fault SPEC`` (repeatable) makes the server misbehave the way
Toxiproxy's toxics do, on the echo path, so a client can be tested against a
slow, choppy or dying peer. This module parses the specs and answers the
questions a model asks; the models only obey (every model that can honour
timers does, so one rule changed here is obeyed everywhere).

The faults (``MS`` milliseconds, ``KBPS`` kilobytes of 1000 bytes per second)::

    latency=MS[:JITTER_MS]      each echoed chunk is held MS +- JITTER (uniform), order kept
    bandwidth=KBPS              the echo is paced to this rate
    slicer=AVG[:VARIATION[:DELAY_MS]]
                                the echo goes out in pieces of AVG +- VARIATION bytes,
                                DELAY_MS apart (default 0)
    reset-after=BYTES           after BYTES echoed, the connection is reset (RST)
    limit-data=BYTES            after BYTES echoed, the server closes normally (FIN)
    stall-after=BYTES           after BYTES echoed, the server neither echoes nor reads,
                                and keeps the connection open
    slow-close=MS               the server's close (after the client's EOF) waits MS
    read-bandwidth=KBPS         the server reads no faster than this (a slow consumer)
    drop=P duplicate=P reorder=P corrupt=P
                                UDP only: each echo is dropped, sent twice, held back
                                behind the next echo, or has one bit flipped, with
                                probability P (0-1)

Who gets a fault
    ``probability`` (``--fault-probability``, default 1) is the share of TCP
    connections that are faulty - a faulty connection gets every TCP fault, the
    others none - and the share of datagrams the UDP faults are drawn for.
    Every draw comes from one :class:`random.Random` seeded with ``seed``
    (``--seed``), so a run with the same seed and the same order of clients
    makes the same decisions. Each connection gets its own generator, seeded
    from the server's at accept, so its jitter and slice sizes do not depend
    on how its traffic interleaves with other connections'.

The questions a connection's :class:`FaultPlan` answers (``now`` is monotonic
seconds)::

    received(n, now)                  n bytes were read (latency stamps them, read pacing counts)
    read_allowance(now)   -> bytes    how many bytes may be read now (0: wait for read_due)
    send_allowance(sent, now) -> bytes  how many of the received bytes may be written now
    sent(n, now)                      n bytes were written (pacing and slices count them)
    due(sent, pending, now) -> time   when to ask again (None: nothing is waiting on a timer)
    fired(sent) -> FaultKind | None   reset-after, limit-data or stall-after has been reached

:class:`DatagramFaults` decides for one datagram at a time (:meth:`DatagramFaults.fate`).
"""

from __future__ import annotations

import enum
import math
import random
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from sockecho.errors import ConfigError

#: Seconds of a paced rate one send or read may take at once (bandwidth, read-bandwidth): small
#: enough that the rate is smooth over a tenth of a second, large enough that pacing at 1 MB/s
#: costs a hundred sends per second, not one per byte.
PACING_QUANTUM = 0.01
#: Seconds a connection that reached limit-data keeps reading (and discarding) after it shut its
#: write side, waiting for the client to close. Closing with unread input would make the kernel
#: answer with a RST instead of the FIN this fault promises.
LIMIT_DATA_LINGER = 2.0
#: Seconds a held-back (reordered) datagram echo waits for a next echo to overtake it; then it
#: is sent anyway, late but not lost.
REORDER_HOLD = 0.1
#: Bytes per kilobyte in KBPS (Toxiproxy's unit: 1 KB/s = 1000 bytes per second).
KILOBYTE = 1000


class FaultKind(enum.Enum):
    """One kind of fault; its value is the name used in specs, logs and metrics."""

    LATENCY = "latency"
    BANDWIDTH = "bandwidth"
    SLICER = "slicer"
    RESET_AFTER = "reset-after"
    LIMIT_DATA = "limit-data"
    STALL_AFTER = "stall-after"
    SLOW_CLOSE = "slow-close"
    READ_BANDWIDTH = "read-bandwidth"
    DROP = "drop"
    DUPLICATE = "duplicate"
    REORDER = "reorder"
    CORRUPT = "corrupt"

    @property
    def udp(self) -> bool:
        """Whether it applies to datagrams (else to TCP connections)."""
        return self in UDP_FAULTS


UDP_FAULTS = frozenset({FaultKind.DROP, FaultKind.DUPLICATE, FaultKind.REORDER, FaultKind.CORRUPT})
#: The faults that shape a whole connection (counted once each, when it is accepted).
SHAPING_FAULTS = frozenset(
    {FaultKind.LATENCY, FaultKind.BANDWIDTH, FaultKind.SLICER, FaultKind.READ_BANDWIDTH}
)
#: The faults that act once a number of bytes has been echoed, in the order they win a tie.
AFTER_BYTES_FAULTS = (FaultKind.RESET_AFTER, FaultKind.LIMIT_DATA, FaultKind.STALL_AFTER)

#: The accepted form of each spec, as error messages and --help show it.
FORMS: dict[FaultKind, str] = {
    FaultKind.LATENCY: "latency=MS[:JITTER_MS]",
    FaultKind.BANDWIDTH: "bandwidth=KBPS",
    FaultKind.SLICER: "slicer=AVG_BYTES[:VARIATION_BYTES[:DELAY_MS]]",
    FaultKind.RESET_AFTER: "reset-after=BYTES",
    FaultKind.LIMIT_DATA: "limit-data=BYTES",
    FaultKind.STALL_AFTER: "stall-after=BYTES",
    FaultKind.SLOW_CLOSE: "slow-close=MS",
    FaultKind.READ_BANDWIDTH: "read-bandwidth=KBPS",
    FaultKind.DROP: "drop=P",
    FaultKind.DUPLICATE: "duplicate=P",
    FaultKind.REORDER: "reorder=P",
    FaultKind.CORRUPT: "corrupt=P",
}


@dataclass(frozen=True, slots=True)
class Fault:
    """One parsed ``--fault`` spec.

    ``amount`` is the first number in the spec's own unit (milliseconds, KB/s,
    bytes or a probability); ``spread`` the second (latency's jitter in ms, the
    slicer's variation in bytes); ``delay`` the slicer's pause between pieces (ms).
    """

    kind: FaultKind
    amount: float
    spread: float = 0.0
    delay: float = 0.0

    def __str__(self) -> str:
        numbers = [self.amount]
        if self.kind is FaultKind.LATENCY and self.spread:
            numbers.append(self.spread)
        elif self.kind is FaultKind.SLICER and (self.spread or self.delay):
            numbers += [self.spread, self.delay] if self.delay else [self.spread]
        return f"{self.kind.value}=" + ":".join(f"{n:g}" for n in numbers)


def _bad(text: str, kind: FaultKind | None, why: str) -> ConfigError:
    form = FORMS[kind] if kind is not None else ", ".join(FORMS.values())
    return ConfigError(f"bad fault {text!r}: {why}", f"write {form}")


def parse_fault(text: str) -> Fault:
    """Parse one spec such as ``latency=100:20``; ConfigError names the spec and the form."""
    name, sep, value = text.strip().partition("=")
    try:
        kind = FaultKind(name.strip().lower())
    except ValueError:
        raise _bad(text, None, f"unknown fault {name.strip()!r}") from None
    if not sep or not value.strip():
        raise _bad(text, kind, "a value is missing")
    parts = value.split(":")
    most = 3 if kind is FaultKind.SLICER else 2 if kind is FaultKind.LATENCY else 1
    if len(parts) > most:
        raise _bad(text, kind, "too many values")
    try:
        numbers = [float(part) for part in parts]
    except ValueError:
        raise _bad(text, kind, "not a number") from None
    if not all(math.isfinite(n) and n >= 0 for n in numbers):
        raise _bad(text, kind, "values must be finite and not negative")
    if kind in UDP_FAULTS and numbers[0] > 1:
        raise _bad(text, kind, "a probability is between 0 and 1")
    if kind in (FaultKind.BANDWIDTH, FaultKind.READ_BANDWIDTH) and not numbers[0]:
        raise _bad(text, kind, "a rate must be more than 0")
    if kind in (*AFTER_BYTES_FAULTS, FaultKind.SLICER) and numbers[0] != int(numbers[0]):
        raise _bad(text, kind, "a byte count is a whole number")
    if kind is FaultKind.SLICER:
        if numbers[0] < 1:
            raise _bad(text, kind, "pieces are at least 1 byte")
        if len(numbers) > 1 and numbers[1] >= numbers[0]:
            raise _bad(text, kind, "the variation must be smaller than the average")
    numbers += [0.0] * (3 - len(numbers))
    return Fault(kind, numbers[0], numbers[1], numbers[2])


def parse_probability(text: str | float) -> float:
    """``--fault-probability``: a number from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"bad fault probability {text!r}", "write a number from 0 to 1") from None
    if not 0 <= value <= 1:  # also rejects NaN
        raise ConfigError(f"fault probability {text} is out of range", "write a number 0-1")
    return value


def _by_kind(faults: Iterable[Fault]) -> dict[FaultKind, Fault]:
    chosen: dict[FaultKind, Fault] = {}
    for fault in faults:
        if fault.kind in chosen:
            raise ConfigError(
                f"fault {fault.kind.value} is given twice ({chosen[fault.kind]} and {fault})",
                "give each kind once",
            )
        chosen[fault.kind] = fault
    return chosen


class FaultInjector:
    """The faults of one server: draws a :class:`FaultPlan` per connection and
    :class:`DatagramFaults` per UDP socket, from one seeded generator.

    Not thread-safe by itself: call :meth:`plan_connection` from the thread
    that accepts, :meth:`datagram_faults` once per UDP socket.
    """

    def __init__(
        self, faults: Iterable[Fault], probability: float = 1.0, seed: int | None = None
    ) -> None:
        self.faults = _by_kind(faults)
        self.probability = probability
        self._random = random.Random(seed)
        self.connection_faults = {k: f for k, f in self.faults.items() if not k.udp}
        self.datagram_kinds = {k: f for k, f in self.faults.items() if k.udp}

    def __str__(self) -> str:
        return " ".join(str(fault) for fault in self.faults.values())

    def plan_connection(self) -> FaultPlan | None:
        """The plan for a newly accepted connection, or None: it is served without faults."""
        if not self.connection_faults:
            return None
        spared = self._random.random() >= self.probability
        seed = self._random.getrandbits(64)  # drawn either way: one draw sequence per accept
        if spared:
            return None
        return FaultPlan(self.connection_faults, random.Random(seed))

    def datagram_faults(self) -> DatagramFaults | None:
        """The per-datagram decisions for one UDP socket, or None when no UDP fault is set."""
        if not self.datagram_kinds:
            return None
        return DatagramFaults(
            self.datagram_kinds, self.probability, random.Random(self._random.getrandbits(64))
        )


class FaultPlan:
    """The faults of one connection, answering a model's questions about it (see the
    module docstring). Byte counts are cumulative over the connection."""

    __slots__ = (
        "_bandwidth",
        "_latency",
        "_random",
        "_read_rate",
        "_read_ready_at",
        "_received",
        "_released",
        "_send_ready_at",
        "_slice_left",
        "_slice_ready_at",
        "_slicer",
        "_stamps",
        "after_bytes",
        "close_delay",
        "faults",
        "kinds",
    )

    def __init__(self, faults: dict[FaultKind, Fault], rng: random.Random) -> None:
        self.kinds = tuple(faults)
        self.faults = tuple(faults.values())
        self._random = rng
        self._latency = faults.get(FaultKind.LATENCY)
        bandwidth = faults.get(FaultKind.BANDWIDTH)
        self._bandwidth = bandwidth.amount * KILOBYTE if bandwidth else 0.0
        read_rate = faults.get(FaultKind.READ_BANDWIDTH)
        self._read_rate = read_rate.amount * KILOBYTE if read_rate else 0.0
        self._slicer = faults.get(FaultKind.SLICER)
        slow_close = faults.get(FaultKind.SLOW_CLOSE)
        #: Seconds the server's ordinary close waits (slow-close), 0 for none.
        self.close_delay = slow_close.amount / 1000 if slow_close else 0.0
        #: The after-N fault that fires first and its byte count, or None.
        self.after_bytes: tuple[FaultKind, int] | None = None
        for kind in AFTER_BYTES_FAULTS:
            fault = faults.get(kind)
            if fault is not None and (
                self.after_bytes is None or fault.amount < self.after_bytes[1]
            ):
                self.after_bytes = (kind, int(fault.amount))
        self._received = 0
        self._released = 0  # bytes whose latency has passed
        self._stamps: deque[tuple[float, int]] = deque()  # (due time, received up to) per chunk
        self._read_ready_at = 0.0
        self._send_ready_at = 0.0
        self._slice_ready_at = 0.0
        self._slice_left = self._next_slice()

    # -- reading -------------------------------------------------------------------------

    def received(self, n: int, now: float) -> None:
        """``n`` bytes were read at ``now``."""
        self._received += n
        latency = self._latency
        if latency is not None:
            held = latency.amount + self._random.uniform(-latency.spread, latency.spread)
            due = now + max(0.0, held) / 1000
            if self._stamps:  # order kept: never due before the chunk ahead of it
                due = max(due, self._stamps[-1][0])
            self._stamps.append((due, self._received))
        else:
            self._released = self._received
        if self._read_rate:
            self._read_ready_at = paced(self._read_ready_at, now, n, self._read_rate)

    def read_allowance(self, now: float, read_size: int) -> int:
        """Bytes that may be read now, up to ``read_size`` (0: wait until :meth:`read_due`)."""
        if not self._read_rate:
            return read_size
        if now < self._read_ready_at:
            return 0
        return max(1, min(read_size, int(self._read_rate * PACING_QUANTUM)))

    def read_due(self, now: float) -> float | None:
        """When reading may resume, if read pacing holds it now."""
        return self._read_ready_at if self._read_rate and now < self._read_ready_at else None

    # -- sending -------------------------------------------------------------------------

    def send_allowance(self, sent: int, now: float) -> int:
        """How many bytes past the ``sent`` first may be written now (0: wait until :meth:`due`)."""
        stamps = self._stamps
        while stamps and stamps[0][0] <= now:
            self._released = stamps.popleft()[1]
        allowed = self._released - sent
        if self.after_bytes is not None:
            allowed = min(allowed, self.after_bytes[1] - sent)
        if allowed <= 0:
            return 0
        if self._bandwidth:
            if now < self._send_ready_at:
                return 0
            allowed = min(allowed, max(1, int(self._bandwidth * PACING_QUANTUM)))
        if self._slicer is not None:
            if now < self._slice_ready_at:
                return 0
            allowed = min(allowed, self._slice_left)
        return allowed

    def sent(self, n: int, now: float) -> None:
        """``n`` bytes were written at ``now``."""
        if not n:
            return
        if self._bandwidth:
            self._send_ready_at = paced(self._send_ready_at, now, n, self._bandwidth)
        if self._slicer is not None:
            self._slice_left -= n
            if self._slice_left <= 0:
                self._slice_left = self._next_slice()
                self._slice_ready_at = now + self._slicer.delay / 1000

    def due(self, sent: int, now: float) -> float | None:
        """When :meth:`send_allowance` or :meth:`read_allowance` may next grow: the time to
        set a timer for (``now`` or earlier: ask again at once), or None when nothing waits
        on the clock."""
        times = []
        read_due = self.read_due(now)
        if read_due is not None:
            times.append(read_due)
        if self._received > sent and (self.after_bytes is None or sent < self.after_bytes[1]):
            # Every hold must have passed before a byte may go: the latest of them.
            holds = [self._send_ready_at, self._slice_ready_at]
            if self._released <= sent and self._stamps:
                holds.append(self._stamps[0][0])
            times.append(max(holds))
        return min(times) if times else None

    def fired(self, sent: int) -> FaultKind | None:
        """The after-N fault reached once ``sent`` bytes are echoed, if any."""
        if self.after_bytes is not None and sent >= self.after_bytes[1]:
            return self.after_bytes[0]
        return None

    def _next_slice(self) -> int:
        slicer = self._slicer
        if slicer is None:
            return 0
        size = slicer.amount + self._random.uniform(-slicer.spread, slicer.spread)
        return max(1, round(size))


def paced(ready_at: float, now: float, n: int, rate: float) -> float:
    """When the next ``n``-byte step at ``rate`` bytes/s may go, after one at ``now`` that
    was due at ``ready_at``. A step that comes late (a timer fires a little after its time)
    is caught up on, up to one PACING_QUANTUM, so lateness does not add up over a transfer;
    after a longer pause the pace starts afresh (no burst of saved-up credit)."""
    return max(ready_at, now - PACING_QUANTUM) + n / rate


@dataclass(frozen=True, slots=True)
class DatagramFate:
    """What becomes of one datagram's echo."""

    drop: bool = False
    copies: int = 1  # 2 with duplicate
    hold: bool = False  # reorder: send it after the next echo from this socket
    corrupt_bit: int | None = None  # the bit to flip (bit index into the payload)

    @property
    def kinds(self) -> tuple[FaultKind, ...]:
        """The faults this fate applies, for counting and logging."""
        if self.drop:
            return (FaultKind.DROP,)
        return tuple(
            kind
            for kind, applies in (
                (FaultKind.DUPLICATE, self.copies > 1),
                (FaultKind.REORDER, self.hold),
                (FaultKind.CORRUPT, self.corrupt_bit is not None),
            )
            if applies
        )

    def apply(self, data: bytes) -> bytes:
        """The echo's payload: ``data``, with the corrupt bit flipped if there is one."""
        if self.corrupt_bit is None:
            return data
        changed = bytearray(data)
        changed[self.corrupt_bit // 8] ^= 1 << (self.corrupt_bit % 8)
        return bytes(changed)


#: The fate of a datagram no fault touches.
UNHARMED = DatagramFate()


class DatagramFaults:
    """The UDP faults of one socket: :meth:`fate` for each datagram, in arrival order."""

    __slots__ = ("_corrupt", "_drop", "_duplicate", "_probability", "_random", "_reorder")

    def __init__(
        self, faults: dict[FaultKind, Fault], probability: float, rng: random.Random
    ) -> None:
        def chance(kind: FaultKind) -> float:
            fault = faults.get(kind)
            return fault.amount if fault is not None else 0.0

        self._drop = chance(FaultKind.DROP)
        self._duplicate = chance(FaultKind.DUPLICATE)
        self._reorder = chance(FaultKind.REORDER)
        self._corrupt = chance(FaultKind.CORRUPT)
        self._probability = probability
        self._random = rng

    def fate(self, size: int) -> DatagramFate:
        """Draw what happens to the echo of a ``size``-byte datagram."""
        draw = self._random.random
        if draw() >= self._probability:
            return UNHARMED
        if self._drop and draw() < self._drop:
            return DatagramFate(drop=True)
        copies = 2 if self._duplicate and draw() < self._duplicate else 1
        hold = bool(self._reorder) and draw() < self._reorder
        corrupt_bit = None
        if self._corrupt and draw() < self._corrupt and size:
            corrupt_bit = self._random.randrange(size * 8)
        if copies == 1 and not hold and corrupt_bit is None:
            return UNHARMED
        return DatagramFate(copies=copies, hold=hold, corrupt_bit=corrupt_bit)
