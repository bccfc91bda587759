"""The UDP rules (loop guard, token bucket, bounded table), driven by hand with a fake clock."""

from __future__ import annotations

import pytest

from sockecho.config import ServerConfig
from sockecho.core import DatagramPolicy, DatagramVerdict, ServerStats
from sockecho.errors import ConfigError

REPLY, LOW_PORT, RATE_LIMITED = (
    DatagramVerdict.REPLY,
    DatagramVerdict.LOW_PORT,
    DatagramVerdict.RATE_LIMITED,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_policy(max_sources: int = 1000, **settings: object) -> tuple[DatagramPolicy, FakeClock]:
    clock = FakeClock()
    config = ServerConfig(udp=True, **settings)  # type: ignore[arg-type]
    return DatagramPolicy(config, clock=clock, max_sources=max_sources), clock


@pytest.mark.parametrize("port", [0, 7, 19, 1023])
def test_privileged_source_ports_never_get_a_reply(port: int) -> None:
    policy, _ = make_policy()
    assert policy.check("192.0.2.1", port) is LOW_PORT


def test_low_ports_are_answered_when_allowed() -> None:
    policy, _ = make_policy(udp_allow_low_ports=True)
    assert policy.check("192.0.2.1", 7) is REPLY


def test_port_1024_is_not_privileged() -> None:
    policy, _ = make_policy()
    assert policy.check("192.0.2.1", 1024) is REPLY


def test_a_source_gets_its_burst_then_the_rate() -> None:
    policy, clock = make_policy(udp_rate=10, udp_burst=3)
    verdicts = [policy.check("192.0.2.1", 5000) for _ in range(5)]
    assert verdicts == [REPLY, REPLY, REPLY, RATE_LIMITED, RATE_LIMITED]
    clock.now += 0.11  # a little over one token at 10 per second
    assert policy.check("192.0.2.1", 5000) is REPLY
    assert policy.check("192.0.2.1", 5000) is RATE_LIMITED
    clock.now += 10  # refills to the burst, never beyond it
    assert [policy.check("192.0.2.1", 5000) for _ in range(4)].count(REPLY) == 3


def test_sources_are_limited_separately() -> None:
    policy, _ = make_policy(udp_rate=10, udp_burst=1)
    assert policy.check("192.0.2.1", 5000) is REPLY
    assert policy.check("192.0.2.1", 5001) is RATE_LIMITED  # another port, same address
    assert policy.check("192.0.2.2", 5000) is REPLY


def test_rate_zero_means_no_limit_and_no_table() -> None:
    policy, _ = make_policy(udp_rate=0)
    assert all(policy.check("192.0.2.1", 5000) is REPLY for _ in range(10_000))
    assert policy.tracked_sources == 0


def test_replies_over_one_simulated_second_stay_within_burst_plus_rate() -> None:
    policy, clock = make_policy(udp_rate=1000)  # default burst: 0.1 s of the rate = 100
    replies = 0
    for _ in range(10_000):  # 10 000 datagrams spread over one second
        clock.now += 0.0001
        replies += policy.check("192.0.2.1", 5000) is REPLY
    assert 1000 <= replies <= 1000 + 100


def test_the_table_of_sources_never_grows_past_its_bound() -> None:
    policy, clock = make_policy(max_sources=50, udp_rate=10, udp_burst=2)
    verdicts = [policy.check(f"10.0.{i // 256}.{i % 256}", 5000) for i in range(1000)]
    assert policy.tracked_sources == 50
    assert verdicts[:50] == [REPLY] * 50
    assert set(verdicts[50:]) == {RATE_LIMITED}  # fails closed while every bucket is in use
    clock.now += 0.2  # every bucket refilled: they are forgotten, room for new sources
    assert policy.check("198.51.100.1", 5000) is REPLY
    assert policy.tracked_sources == 1


def test_a_refilled_bucket_is_forgotten() -> None:
    policy, clock = make_policy(udp_rate=100, udp_burst=5)
    policy.check("192.0.2.1", 5000)
    clock.now += 1.0
    policy.check("192.0.2.2", 5000)
    assert policy.tracked_sources == 1


def test_default_burst_is_a_tenth_of_a_second_of_the_rate() -> None:
    assert ServerConfig().udp_burst_size == 100
    assert ServerConfig(udp_rate=5).udp_burst_size == 1
    assert ServerConfig(udp_burst=7).udp_burst_size == 7


@pytest.mark.parametrize(
    "settings", [{"udp_rate": -1.0}, {"udp_rate": float("nan")}, {"udp_burst": 0}]
)
def test_bad_udp_settings_are_rejected(settings: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        ServerConfig(**settings)  # type: ignore[arg-type]


def test_stats_count_each_verdict() -> None:
    stats = ServerStats()
    stats.datagram(REPLY, size=10)
    stats.datagram(REPLY, size=10, error=True)
    stats.datagram(LOW_PORT)
    stats.datagram(RATE_LIMITED)
    snap = stats.snapshot()
    assert (snap.datagrams_received, snap.datagrams_echoed, snap.datagram_errors) == (4, 1, 1)
    assert (snap.datagrams_dropped_low_port, snap.datagrams_dropped_rate) == (1, 1)
    assert snap.bytes_echoed == 10
