"""The fault rules, free of I/O: specs, a connection's plan on a fake clock, datagram fates."""

from __future__ import annotations

import math
import random

import pytest

from sockecho.config import ServerConfig
from sockecho.core import EchoSession, FaultedSession, ServerStats, SessionState
from sockecho.errors import ConfigError
from sockecho.faults import (
    FORMS,
    LIMIT_DATA_LINGER,
    PACING_QUANTUM,
    DatagramFaults,
    Fault,
    FaultInjector,
    FaultKind,
    FaultPlan,
    parse_fault,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def plan_of(*specs: str, seed: int = 1) -> FaultPlan:
    injector = FaultInjector([parse_fault(spec) for spec in specs], seed=seed)
    plan = injector.plan_connection()
    assert plan is not None
    return plan


# -- specs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("latency=100", Fault(FaultKind.LATENCY, 100)),
        ("latency=100:20", Fault(FaultKind.LATENCY, 100, 20)),
        ("bandwidth=64", Fault(FaultKind.BANDWIDTH, 64)),
        ("slicer=10", Fault(FaultKind.SLICER, 10)),
        ("slicer=10:5:2.5", Fault(FaultKind.SLICER, 10, 5, 2.5)),
        ("reset-after=1000", Fault(FaultKind.RESET_AFTER, 1000)),
        ("limit-data=0", Fault(FaultKind.LIMIT_DATA, 0)),
        ("stall-after=5", Fault(FaultKind.STALL_AFTER, 5)),
        ("slow-close=250", Fault(FaultKind.SLOW_CLOSE, 250)),
        ("read-bandwidth=8", Fault(FaultKind.READ_BANDWIDTH, 8)),
        ("drop=0.1", Fault(FaultKind.DROP, 0.1)),
        ("duplicate=1", Fault(FaultKind.DUPLICATE, 1)),
        ("reorder=0", Fault(FaultKind.REORDER, 0)),
        (" Corrupt = 0.5 ", Fault(FaultKind.CORRUPT, 0.5)),
    ],
)
def test_each_fault_spec_parses(text: str, expected: Fault) -> None:
    assert parse_fault(text) == expected


@pytest.mark.parametrize("text", ["latency=100:20", "slicer=10:5:2.5", "drop=0.1", "slicer=8:2"])
def test_a_parsed_spec_prints_as_it_was_written(text: str) -> None:
    assert str(parse_fault(text)) == text


@pytest.mark.parametrize(
    ("text", "why", "form"),
    [
        ("jitter=5", "unknown fault 'jitter'", None),
        ("latency", "a value is missing", "latency=MS[:JITTER_MS]"),
        ("latency=", "a value is missing", "latency=MS[:JITTER_MS]"),
        ("latency=1:2:3", "too many values", "latency=MS[:JITTER_MS]"),
        ("latency=fast", "not a number", "latency=MS[:JITTER_MS]"),
        ("latency=-5", "not negative", "latency=MS[:JITTER_MS]"),
        ("latency=nan", "finite", "latency=MS[:JITTER_MS]"),
        ("bandwidth=0", "more than 0", "bandwidth=KBPS"),
        ("reset-after=1.5", "whole number", "reset-after=BYTES"),
        ("slicer=0", "at least 1 byte", FORMS[FaultKind.SLICER]),
        ("slicer=10:10", "smaller than the average", FORMS[FaultKind.SLICER]),
        ("drop=1.5", "between 0 and 1", "drop=P"),
    ],
)
def test_a_bad_spec_names_itself_and_the_accepted_form(
    text: str, why: str, form: str | None
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_fault(text)
    assert repr(text) in caught.value.message
    assert why in caught.value.message
    assert caught.value.hint is not None
    if form is None:  # an unknown kind lists every form
        assert all(each in caught.value.hint for each in FORMS.values())
    else:
        assert form in caught.value.hint


def test_a_kind_given_twice_is_refused() -> None:
    with pytest.raises(ConfigError, match="given twice"):
        FaultInjector([parse_fault("latency=1"), parse_fault("latency=2")])


def test_config_refuses_udp_faults_without_udp_and_faults_under_tls() -> None:
    with pytest.raises(ConfigError, match="UDP echo only"):
        ServerConfig(faults=("drop=0.5",))
    with pytest.raises(ConfigError, match="TLS"):
        ServerConfig(faults=("latency=5",), tls_cert="c.pem", tls_key="k.pem")
    with pytest.raises(ConfigError, match="probability"):
        ServerConfig(faults=("latency=5",), fault_probability=1.5)
    with pytest.raises(ConfigError, match="latency=MS"):
        ServerConfig(faults=("latency=x",))


# -- who gets faults --------------------------------------------------------------------


def test_fault_probability_spares_its_share_of_connections_repeatably() -> None:
    def faulty_count(seed: int) -> list[bool]:
        injector = FaultInjector([parse_fault("latency=5")], probability=0.3, seed=seed)
        return [injector.plan_connection() is not None for _ in range(1000)]

    first = faulty_count(7)
    assert first == faulty_count(7)  # the same seed, the same connections
    assert first != faulty_count(8)
    # Binomial(1000, 0.3): mean 300, sd 14.5; 5 sd either side.
    assert 227 <= sum(first) <= 373


def test_udp_faults_alone_leave_connections_unfaulted() -> None:
    injector = FaultInjector([parse_fault("drop=1")])
    assert injector.plan_connection() is None
    assert injector.datagram_faults() is not None
    assert FaultInjector([parse_fault("latency=1")]).datagram_faults() is None


# -- a connection's plan --------------------------------------------------------------------


def test_latency_holds_each_chunk_then_releases_it() -> None:
    plan = plan_of("latency=100")
    plan.received(10, now=0.0)
    assert plan.send_allowance(0, now=0.05) == 0
    assert plan.due(0, now=0.05) == pytest.approx(0.1)
    assert plan.send_allowance(0, now=0.1) == 10


def test_latency_with_jitter_keeps_the_order_of_chunks() -> None:
    plan = plan_of("latency=100:90")
    dues = []
    for i in range(200):
        plan.received(1, now=i * 0.001)
        dues.append(plan._stamps[-1][0])
    assert dues == sorted(dues)  # a chunk never overtakes the one ahead of it
    assert 0.01 <= dues[0] <= 0.19
    assert plan.send_allowance(0, now=dues[100]) >= 101
    assert plan.send_allowance(0, now=dues[-1]) == 200


def test_bandwidth_paces_sends_to_the_rate() -> None:
    plan = plan_of("bandwidth=100")  # 100 KB/s = 100 000 B/s
    plan.received(1_000_000, now=0.0)
    now, sent = 0.0, 0
    while sent < 100_000:
        allowed = plan.send_allowance(sent, now)
        if allowed:
            assert allowed <= 100_000 * PACING_QUANTUM
            plan.sent(allowed, now)
            sent += allowed
        else:
            due = plan.due(sent, now)
            assert due is not None
            assert due > now
            now = due
    assert now == pytest.approx(1.0, rel=0.02)


def test_read_bandwidth_paces_reads() -> None:
    plan = plan_of("read-bandwidth=10")  # 10 000 B/s
    now, read = 0.0, 0
    while read < 20_000:
        allowed = plan.read_allowance(now, 65536)
        if allowed:
            plan.received(allowed, now)
            read += allowed
        else:
            due = plan.due(read, now)
            assert due is not None
            now = due
    assert now == pytest.approx(2.0, rel=0.02)


def test_slicer_sends_pieces_of_the_average_size_with_the_delay_between() -> None:
    plan = plan_of("slicer=10:3:5")
    plan.received(1000, now=0.0)
    now, sent, pieces = 0.0, 0, []
    while sent < 1000:
        allowed = plan.send_allowance(sent, now)
        if not allowed:
            due = plan.due(sent, now)
            assert due == pytest.approx(now + 0.005)
            now = due  # type: ignore[assignment]
            continue
        pieces.append(allowed)
        plan.sent(allowed, now)
        sent += allowed
    assert all(7 <= piece <= 13 for piece in pieces[:-1])
    assert 8 <= sum(pieces) / len(pieces) <= 12


def test_the_after_bytes_fault_caps_what_may_go_and_then_fires() -> None:
    plan = plan_of("reset-after=100", "limit-data=50", "stall-after=70")
    plan.received(500, now=0.0)
    assert plan.send_allowance(0, now=0.0) == 50  # the smallest threshold wins
    assert plan.fired(49) is None
    assert plan.fired(50) is FaultKind.LIMIT_DATA
    assert plan.send_allowance(50, now=0.0) == 0
    assert plan.due(50, now=0.0) is None  # nothing will ever be allowed: no timer


# -- the session consulting the plan ----------------------------------------------------------


def faulted_session(*specs: str) -> tuple[FaultedSession, FakeClock]:
    clock = FakeClock()
    session = FaultedSession(ServerConfig(), "peer", "src", plan_of(*specs), clock=clock)
    return session, clock


def test_a_faulted_session_offers_only_what_is_due() -> None:
    session, clock = faulted_session("latency=50")
    session.data_received(b"hello")
    assert not session.wants_write
    assert bytes(session.data_to_send()) == b""
    assert session.due() == pytest.approx(clock.now + 0.05)
    clock.now += 0.05
    assert session.wants_write
    assert bytes(session.data_to_send()) == b"hello"
    session.data_sent(5)
    assert session.pending == 0


def test_limit_data_discards_input_until_the_client_closes() -> None:
    session, clock = faulted_session("limit-data=3")
    session.data_received(b"abcdef")
    assert bytes(session.data_to_send()) == b"abc"
    session.data_sent(3)
    assert session.fired() is FaultKind.LIMIT_DATA
    assert session.fired() is None  # once
    assert session.wants_read  # reading on, to discard
    assert not session.wants_write
    session.data_received(b"more")
    assert session.bytes_received == 10
    assert not session.finished
    assert session.due() == clock.now + LIMIT_DATA_LINGER
    session.eof_received()
    assert session.finished


def test_limit_data_gives_up_on_a_client_that_never_closes() -> None:
    session, clock = faulted_session("limit-data=0")
    assert session.fired() is FaultKind.LIMIT_DATA
    clock.now += LIMIT_DATA_LINGER
    assert session.finished


def test_stall_reads_and_sends_nothing_and_never_finishes() -> None:
    session, _ = faulted_session("stall-after=2")
    session.data_received(b"abcd")
    session.data_sent(len(session.data_to_send()))
    assert session.fired() is FaultKind.STALL_AFTER
    assert not session.wants_read
    assert not session.wants_write
    assert not session.finished
    assert session.due() is None


def test_slow_close_holds_a_finished_echo_open_for_its_delay() -> None:
    session, clock = faulted_session("slow-close=200")
    session.data_received(b"x")
    session.data_sent(1)
    session.eof_received()
    assert not session.finished
    assert session.close_delayed
    assert session.due() == pytest.approx(clock.now + 0.2)
    clock.now += 0.2
    assert session.finished


def test_a_plain_session_is_not_faulted() -> None:
    assert not EchoSession(ServerConfig(), "peer").faulted
    session, _ = faulted_session("latency=1")
    assert session.faulted
    assert session.state is SessionState.OPEN


# -- datagrams --------------------------------------------------------------------------------


def fates(specs: list[str], n: int, probability: float = 1.0, seed: int = 3) -> list[object]:
    faults = {fault.kind: fault for fault in map(parse_fault, specs)}
    decider = DatagramFaults(faults, probability, random.Random(seed))
    return [decider.fate(100) for _ in range(n)]


def within_binomial(count: int, n: int, p: float) -> bool:
    sd = math.sqrt(n * p * (1 - p))
    return n * p - 5 * sd <= count <= n * p + 5 * sd


def test_datagram_fates_follow_each_probability() -> None:
    n = 4000
    drawn = fates(["drop=0.2", "duplicate=0.1", "reorder=0.05", "corrupt=0.3"], n)
    drops = sum(f.drop for f in drawn)  # type: ignore[attr-defined]
    kept = n - drops
    assert within_binomial(drops, n, 0.2)
    assert within_binomial(sum(f.copies == 2 for f in drawn), kept, 0.1)  # type: ignore[attr-defined]
    assert within_binomial(sum(f.hold for f in drawn), kept, 0.05)  # type: ignore[attr-defined]
    corrupt = sum(f.corrupt_bit is not None for f in drawn)  # type: ignore[attr-defined]
    assert within_binomial(corrupt, kept, 0.3)


def test_fault_probability_gates_datagrams_too() -> None:
    drawn = fates(["drop=1"], 2000, probability=0.25)
    assert within_binomial(sum(f.drop for f in drawn), 2000, 0.25)  # type: ignore[attr-defined]


def test_a_corrupted_echo_differs_in_exactly_one_bit() -> None:
    (fate,) = fates(["corrupt=1"], 1)
    data = bytes(range(100))
    changed = fate.apply(data)  # type: ignore[attr-defined]
    flipped = sum(bin(a ^ b).count("1") for a, b in zip(data, changed, strict=True))
    assert flipped == 1


def test_stats_count_faults_by_kind() -> None:
    stats = ServerStats()
    stats.fault(FaultKind.LATENCY)
    stats.fault(FaultKind.DROP)
    stats.fault(FaultKind.DROP)
    snapshot = stats.snapshot()
    assert snapshot.faults == {"latency": 1, "drop": 2}
    assert snapshot.datagrams_dropped_fault == 2
    assert snapshot.datagrams_received == 2
