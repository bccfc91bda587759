"""sockecho ping: RTT through real added delay, loss, per-probe lines, summary, exit status."""

from __future__ import annotations

import io
import re
import struct
from collections.abc import Iterator

import pingparsing
import pytest

from sockecho import Server
from sockecho.cli import main
from sockecho.errors import ConfigError
from sockecho.ping import DEFAULT_PORT, parse_target, ping
from tests.faulty_peers import DelayingRelay, TcpPeer, UdpPeer, corrupting_handler, echo_handler

PROBE_LINE = re.compile(
    r"^(\d+) bytes from 127\.0\.0\.1:\d+: seq=(\d+)(?: connect=[\d.]+ ms)? time=([\d.]+) ms$"
)
SUMMARY = re.compile(r"rtt min/avg/max/mdev = ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms")


@pytest.fixture
def echo_server() -> Iterator[Server]:
    with Server(model="selectors", port=0) as srv:
        yield srv


def probe_times(output: str) -> list[float]:
    return [float(match[3]) for line in output.splitlines() if (match := PROBE_LINE.match(line))]


@pytest.mark.parametrize("connect_each", [False, True])
def test_rtt_through_a_relay_adding_20_ms_each_way_is_about_40_ms(
    echo_server: Server, connect_each: bool
) -> None:
    out = io.StringIO()
    with DelayingRelay(echo_server.address, delay=0.020) as relay:
        stats = ping(
            *relay.address, count=3, interval=0.05, connect_each=connect_each, out=out, size=100
        )
    text = out.getvalue()
    assert stats.transmitted == 3
    assert stats.received == 3
    times = probe_times(text)
    assert len(times) == 3, text
    assert all(35.0 <= t <= 200.0 for t in times), text
    low, avg, high, mdev = map(float, SUMMARY.search(text).groups())  # type: ignore[union-attr]
    assert 35.0 <= low <= avg <= high <= 200.0
    assert mdev >= 0.0
    assert "3 packets transmitted, 3 received, 0% packet loss" in text
    if connect_each:
        assert text.count("connect=") == 3


def test_cli_prints_a_line_per_probe_and_the_summary(
    echo_server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    port = echo_server.address[1]
    assert main(["ping", "-c", "3", "-i", "0.01", "-s", "200", f"127.0.0.1:{port}"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == f"PING 127.0.0.1:{port} (tcp): 200 data bytes"
    probes = [PROBE_LINE.match(line) for line in lines[1:4]]
    assert [(m[1], m[2]) for m in probes if m] == [("200", "1"), ("200", "2"), ("200", "3")]
    assert "--- 127.0.0.1 ping statistics ---" in out
    assert SUMMARY.search(out)


def test_udp_probes_dropped_by_the_server_count_as_loss(capsys: pytest.CaptureFixture[str]) -> None:
    def odd_sequence(payload: bytes) -> bool:
        return struct.unpack_from("!Q", payload)[0] % 2 == 1

    with UdpPeer(drop=odd_sequence) as peer:
        argv = [
            "ping",
            "--udp",
            "-c",
            "4",
            "-i",
            "0.01",
            "-W",
            "0.2",
            f"127.0.0.1:{peer.address[1]}",
        ]
        assert main(argv) == 0
    out = capsys.readouterr().out
    assert "4 packets transmitted, 2 received, 50% packet loss" in out
    assert "seq=1 timeout after 0.2 s" in out
    assert "seq=3 timeout after 0.2 s" in out
    assert [m[2] for line in out.splitlines() if (m := PROBE_LINE.match(line))] == ["2", "4"]


def test_every_probe_lost_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    with UdpPeer(drop=lambda payload: True) as peer:
        argv = [
            "ping",
            "--udp",
            "-c",
            "2",
            "-i",
            "0.01",
            "-W",
            "0.1",
            f"127.0.0.1:{peer.address[1]}",
        ]
        assert main(argv) == 1
    out = capsys.readouterr().out
    assert "2 packets transmitted, 0 received, 100% packet loss" in out
    assert "rtt min" not in out


def test_refused_probes_are_lost_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    with TcpPeer(echo_handler) as peer:
        port = peer.address[1]
    assert main(["ping", "-c", "2", "-i", "0.01", f"127.0.0.1:{port}"]) == 1
    out = capsys.readouterr().out
    assert "seq=1 connection refused" in out
    assert "100% packet loss" in out
    assert "2 errors" in out


def test_a_corrupted_echo_is_a_lost_probe_not_a_reply() -> None:
    out = io.StringIO()
    with TcpPeer(corrupting_handler(every=2)) as peer:
        stats = ping(*peer.address, count=4, interval=0.01, out=out)
    assert stats.received == 2
    assert stats.errors == 2
    assert out.getvalue().count("echo differs from the probe") == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("example.org", ("example.org", DEFAULT_PORT)),
        ("127.0.0.1:7", ("127.0.0.1", 7)),
        ("[::1]:7007", ("::1", 7007)),
        ("[::1]", ("::1", DEFAULT_PORT)),
        ("::1", ("::1", DEFAULT_PORT)),
    ],
)
def test_targets_parse_like_urls(text: str, expected: tuple[str, int]) -> None:
    assert parse_target(text) == expected


@pytest.mark.parametrize("text", ["host:port", "host:0", "host:70000", "[::1"])
def test_bad_targets_are_rejected(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_target(text)


def test_bad_target_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ping", "localhost:nope"]) == 2
    assert "bad port" in capsys.readouterr().err


# ping(8)'s summary lines as the tools that read them parse them: a script's regex (as in
# Nagios' check_ping or smokeping's probes) and the pingparsing library.
PING8_PACKETS = re.compile(
    r"^(\d+) packets transmitted, (\d+) received,(?: \+(\d+) errors,)? "
    r"([\d.]+)% packet loss, time (\d+)ms$",
    re.MULTILINE,
)
PING8_RTT = re.compile(
    r"^rtt min/avg/max/mdev = ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms$", re.MULTILINE
)


def test_summary_lines_match_the_regex_that_ping_output_parsers_use(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def every_third(payload: bytes) -> bool:
        return struct.unpack_from("!Q", payload)[0] % 3 == 0

    # -W 1: the third probe is dropped and waited for 1 s; the other two get their echoes
    # from the peer's thread, which a busy machine can hold up for tens of milliseconds.
    with UdpPeer(drop=every_third) as peer:
        argv = ["ping", "--udp", "-c", "3", "-i", "0.01", "-W", "1"]
        assert main([*argv, f"127.0.0.1:{peer.address[1]}"]) == 0
    out = capsys.readouterr().out
    packets = PING8_PACKETS.search(out)
    assert packets is not None, out
    transmitted, received, errors, loss, elapsed = packets.groups()
    assert (transmitted, received, errors) == ("3", "2", None)
    assert loss == "33.3333"  # ping(8)'s %g, not a rounded "33%"
    assert 20 <= int(elapsed) <= 5000  # milliseconds (about 1020), not seconds nor µs
    rtt = PING8_RTT.search(out)
    assert rtt is not None, out
    low, avg, high, mdev = map(float, rtt.groups())
    assert low <= avg <= high
    assert mdev >= 0
    assert "\n--- 127.0.0.1 ping statistics ---\n" in out


def test_errors_appear_where_ping8_puts_them(capsys: pytest.CaptureFixture[str]) -> None:
    with TcpPeer(echo_handler) as peer:
        port = peer.address[1]
    assert main(["ping", "-c", "2", "-i", "0.01", f"127.0.0.1:{port}"]) == 1
    out = capsys.readouterr().out
    packets = PING8_PACKETS.search(out)
    assert packets is not None, out
    assert packets.groups()[:4] == ("2", "0", "2", "100")
    assert "2 packets transmitted, 0 received, +2 errors, 100% packet loss, time " in out


# pingparsing calls pyparsing's old camelCase names, which warn on pyparsing 3.3+.
@pytest.mark.filterwarnings("ignore:'parseString' deprecated:DeprecationWarning")
def test_pingparsing_reads_the_summary_as_it_reads_ping8(
    echo_server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    port = echo_server.address[1]
    assert main(["ping", "-c", "4", "-i", "0.01", f"127.0.0.1:{port}"]) == 0
    out = capsys.readouterr().out
    stats = pingparsing.PingParsing().parse(out)
    assert stats.destination == "127.0.0.1"
    assert stats.packet_transmit == 4
    assert stats.packet_receive == 4
    assert stats.packet_loss_rate == 0.0
    assert stats.rtt_min is not None
    assert 0 < stats.rtt_min <= stats.rtt_avg <= stats.rtt_max
    low, avg, high, _ = map(float, PING8_RTT.search(out).groups())  # type: ignore[union-attr]
    assert (stats.rtt_min, stats.rtt_avg, stats.rtt_max) == (low, avg, high)
