"""The I/O-free echo rules: driven by hand, no sockets."""

from __future__ import annotations

import pytest

from sockecho.config import ServerConfig
from sockecho.core import ConnectionGate, EchoSession, RateLimitedNotice, SessionState
from sockecho.errors import ConfigError


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_session(**settings: object) -> tuple[EchoSession, FakeClock]:
    clock = FakeClock()
    config = ServerConfig(**settings)  # type: ignore[arg-type]
    return EchoSession(config, "127.0.0.1:1", "127.0.0.1", clock=clock), clock


def test_received_bytes_become_pending_echo_in_order() -> None:
    session, _ = make_session()
    session.data_received(b"hola ")
    session.data_received(b"mundo")
    assert bytes(session.data_to_send()) == b"hola mundo"
    session.data_sent(3)
    assert bytes(session.data_to_send()) == b"a mundo"
    assert session.pending == 7
    assert session.bytes_received == 10
    assert session.bytes_sent == 3


def test_reading_stops_above_high_water_and_resumes_below_low_water() -> None:
    session, _ = make_session(high_water=100, low_water=20)
    session.data_received(b"x" * 100)
    assert session.wants_read  # at the mark, not above it
    session.data_received(b"x")
    assert not session.wants_read
    session.data_sent(50)  # 51 pending: above low water, still paused
    assert not session.wants_read
    session.data_sent(31)  # 20 pending
    assert session.wants_read


def test_eof_with_nothing_pending_is_finished() -> None:
    session, _ = make_session()
    session.eof_received()
    assert session.finished
    assert not session.wants_read


def test_eof_with_pending_echo_drains_before_finishing() -> None:
    session, _ = make_session()
    session.data_received(b"abc")
    session.eof_received()
    assert session.state is SessionState.DRAINING
    assert not session.finished
    assert session.wants_write
    session.data_sent(3)
    assert session.finished


def test_buffer_compacts_so_it_never_creeps_upward() -> None:
    session, _ = make_session(high_water=10, low_water=5)
    for _ in range(100):
        session.data_received(b"y" * 8)
        session.data_sent(7)
    assert session.pending == 100
    assert bytes(session.data_to_send()) == b"y" * 100


def test_idle_after_timeout_without_traffic_and_not_before() -> None:
    session, clock = make_session(idle_timeout=10)
    clock.now += 9
    assert not session.is_idle()
    clock.now += 1
    assert session.is_idle()


def test_traffic_resets_the_idle_clock() -> None:
    session, clock = make_session(idle_timeout=10)
    clock.now += 8
    session.echoed(1)
    assert not session.is_idle()  # the sweep notices the counters moved
    clock.now += 9
    assert not session.is_idle()
    clock.now += 1
    assert session.is_idle()


def test_idle_timeout_zero_disables_it() -> None:
    session, clock = make_session(idle_timeout=0)
    clock.now += 1e9
    assert not session.is_idle()


def test_gate_enforces_total_and_per_source_limits() -> None:
    gate = ConnectionGate(max_connections=3, max_per_source=2)
    assert gate.admit("a")
    assert gate.admit("a")
    assert not gate.admit("a")  # per source
    assert gate.admit("b")
    assert not gate.admit("c")  # total
    gate.release("a")
    assert gate.admit("c")


def test_notice_folds_events_within_its_interval() -> None:
    clock = FakeClock()
    notice = RateLimitedNotice(interval=5, clock=clock)
    assert notice.note() == 1
    assert [notice.note() for _ in range(9)] == [0] * 9
    clock.now += 5
    assert notice.note() == 10


@pytest.mark.parametrize(
    "settings",
    [
        {"port": 70000},
        {"port": -1},
        {"backlog": 0},
        {"low_water": 10, "high_water": 5},
        {"idle_timeout": -1},
        {"idle_timeout": float("inf")},
        {"idle_timeout": float("nan")},
        {"drain_timeout": float("inf")},
        {"backlog": 99_999_999_999},
        {"udp_rate": float("inf")},
        {"max_connections": 0},
    ],
)
def test_config_rejects_out_of_range_settings(settings: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        ServerConfig(**settings)  # type: ignore[arg-type]


def test_select_model_ceiling_is_enforced() -> None:
    with pytest.raises(ConfigError, match="ceiling"):
        ServerConfig(max_connections=5000).connection_limit(1000)
    assert ServerConfig().connection_limit(1000) == 1000
    assert ServerConfig().connection_limit(None) == 10_000
