"""``sockecho check`` as a command: its output, its files and its exit codes."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from sockecho import Server, ServerConfig
from sockecho.check import CASES
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def address() -> Iterator[tuple[str, int]]:
    with Server(ServerConfig(model="selectors", port=0, drain_timeout=1.0)) as server:
        yield server.address


def free_port() -> int:
    """A port nothing listens on (bound, then closed: the kernel refuses connections to it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_passing_server_exits_0_with_the_summary_last(address: tuple[str, int]) -> None:
    host, port = address
    result = run_cli("check", f"{host}:{port}", "--case", "tcp.bytes", "--seed", "7")
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    lines = result.stdout.decode().splitlines()
    assert lines[0] == f"sockecho check tcp://{host}:{port} (seed 7)"
    assert "  ✔ tcp.bytes.all-values: all 256 byte values in one write come back exactly" in lines
    assert lines[-1] == "3 cases, 3 passed, 0 failed, 0 skipped"
    assert "\x1b[" not in result.stdout.decode()  # piped: no colour


def test_an_unreachable_server_is_one_error_line_and_exit_1() -> None:
    result = run_cli("check", f"127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert result.stdout == b""
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("sockecho: error: connection refused by 127.0.0.1:")


def test_an_unreachable_udp_port_is_one_error_line_and_exit_1() -> None:
    result = run_cli("check", "--udp", f"127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert result.stderr.decode().startswith("sockecho: error: nothing listens on UDP port")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--case", "tcp.nonsense", "127.0.0.1"], "no case or section 'tcp.nonsense'"),
        ([], "the server's HOST[:PORT] is missing"),
        (["--udp", "--tls", "127.0.0.1"], "--udp and --tls do not go together"),
        (["--timeout", "0", "127.0.0.1"], "must be more than 0 seconds"),
        (["127.0.0.1:99999"], "bad port"),
        (["--case", "udp.size", "127.0.0.1"], "no TCP case matches --case udp.size"),
    ],
)
def test_usage_errors_exit_2_without_connecting(args: list[str], message: str) -> None:
    result = run_cli("check", *args)
    assert result.returncode == 2
    assert message in result.stderr.decode()


def test_list_names_every_case_with_its_requirement_without_a_server() -> None:
    result = run_cli("check", "--list")
    assert result.returncode == 0
    text = result.stdout.decode()
    for case in CASES.values():
        assert f"  {case.id} [{case.level.value}]" in text
    assert "RFC 862" in text


def test_list_with_a_section_lists_only_that_section() -> None:
    result = run_cli("check", "--list", "--case", "tcp.close")
    ids = [line.split()[0] for line in result.stdout.decode().splitlines() if line[:3] == "  t"]
    assert ids == [case for case in CASES if case.startswith("tcp.close.")]


def test_quiet_prints_only_failures_and_the_summary(address: tuple[str, int]) -> None:
    host, port = address
    result = run_cli("check", "-q", f"{host}:{port}", "--case", "tcp.bytes.all-values")
    assert result.returncode == 0
    lines = [line for line in result.stdout.decode().splitlines() if line]
    assert lines[-1] == "1 cases, 1 passed, 0 failed, 0 skipped"
    assert not any("tcp.bytes.all-values" in line for line in lines)


def test_verbose_prints_each_requirement(address: tuple[str, int]) -> None:
    host, port = address
    result = run_cli("check", "-v", f"{host}:{port}", "--case", "tcp.bytes.all-values")
    assert result.returncode == 0
    assert f"-> {CASES['tcp.bytes.all-values'].requirement}" in result.stdout.decode()
