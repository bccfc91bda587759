"""The command-line contract: ready line, exit codes, one-line errors, signals."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from sockecho import Server, cli, net
from sockecho.core import StatsSnapshot
from tests.conftest import (
    WAIT,
    ServeProcess,
    connect,
    recv_exactly,
    recv_until_eof,
    run_cli,
)


def test_version_prints_the_package_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.decode().strip() == f"sockecho {cli.__version__}"


@pytest.mark.parametrize("command", [[], ["serve"], ["send"]])
def test_help_exists_with_examples(command: list[str]) -> None:
    result = run_cli(*command, "--help")
    assert result.returncode == 0
    assert b"usage: sockecho" in result.stdout
    if command:
        assert b"examples:" in result.stdout


def test_ready_line_names_the_real_port(serve_process: type[ServeProcess]) -> None:
    srv = serve_process("--port", "0")
    assert len(srv.endpoints) == 1
    host, port = srv.address
    assert srv.endpoints[0] == f"tcp://127.0.0.1:{port}"
    assert port != 0
    assert host == "127.0.0.1"


def test_ready_line_brackets_ipv6_hosts(serve_process: type[ServeProcess]) -> None:
    srv = serve_process("--host", "::1", "--port", "0")
    assert srv.endpoints[0].startswith("tcp://[::1]:")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_the_server_cleanly_with_exit_0(
    model: str, signum: signal.Signals, serve_process: type[ServeProcess]
) -> None:
    srv = serve_process("--model", model, "--port", "0")
    with connect(srv.address) as sock:
        sock.sendall(b"ping")
        assert recv_exactly(sock, 4) == b"ping"
    assert srv.wait_for_line("close ")
    assert srv.stop(signum) == 0
    assert not any("Traceback" in line for line in srv.stderr_lines)
    assert any("stopping" in line for line in srv.stderr_lines)


def test_logs_one_line_per_open_and_close(serve_process: type[ServeProcess]) -> None:
    srv = serve_process("--port", "0")
    with connect(srv.address) as sock:
        sock.sendall(b"12345")
        assert recv_exactly(sock, 5) == b"12345"
    assert srv.wait_for_line("echoed 5 bytes")
    opens = [line for line in srv.stderr_lines if " open 127.0.0.1:" in line]
    closes = [line for line in srv.stderr_lines if " close 127.0.0.1:" in line]
    assert len(opens) == 1
    assert len(closes) == 1


def test_quiet_prints_only_the_ready_line(serve_process: type[ServeProcess]) -> None:
    srv = serve_process("--port", "0", "-q")
    with connect(srv.address) as sock:
        sock.sendall(b"x")
        assert recv_exactly(sock, 1) == b"x"
    assert srv.stop(signal.SIGTERM) == 0
    assert srv.stderr_lines == [f"listening on {srv.endpoints[0]}"]


def test_quiet_still_prints_warnings(serve_process: type[ServeProcess]) -> None:
    """``-q``'s help promises the ready line, warnings and errors: a limit reached is a
    warning, so it shows; the open/close lines are information, so they do not."""
    srv = serve_process("--port", "0", "-q", "--max-connections", "1")
    with connect(srv.address) as first:
        first.sendall(b"x")
        assert recv_exactly(first, 1) == b"x"
        with connect(srv.address) as second:  # over the limit: closed at once
            assert recv_until_eof(second) == b""
        assert srv.wait_for_line("rejected 1 connection(s): limit reached")
    assert srv.stop(signal.SIGTERM) == 0
    assert not [line for line in srv.stderr_lines if " open 127.0.0.1:" in line]
    usage = run_cli("serve", "--help").stdout.decode()
    assert "only the ready line, warnings and errors" in " ".join(usage.split())


def test_ctrl_c_during_send_exits_1_saying_interrupted() -> None:
    server = Server(model="selectors", port=0)
    server.start()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sockecho", "send", "--port", str(server.address[1])],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdin is not None
        assert proc.stdout is not None
        proc.stdin.write(b"hola\n")
        proc.stdin.flush()
        assert proc.stdout.read(5) == b"hola\n"  # streaming: stdin stays open
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(WAIT)
        server.stop()
    assert proc.returncode == 1
    assert stderr == b"sockecho: error: interrupted\n"


def test_port_in_use_exits_1_with_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", "--port", str(port))
    assert result.returncode == 1
    lines = result.stderr.decode().splitlines()
    assert lines == [
        f"sockecho: error: address already in use: tcp://127.0.0.1:{port} "
        "(another server is running there; stop it, pick another --port, or use --port 0)"
    ]


def test_permission_denied_on_a_low_port_is_one_line_with_a_hint() -> None:
    # Tests run as root in CI, where binding port 7 succeeds, so the translation is
    # checked at the boundary function every model goes through.
    error = net.bind_error(PermissionError(errno.EACCES, "Permission denied"), "0.0.0.0", 7)
    assert str(error) == (
        "permission denied binding tcp://0.0.0.0:7 "
        "(ports below 1024 need root or CAP_NET_BIND_SERVICE; use a port above 1023)"
    )


def test_unknown_host_exits_1_with_one_line() -> None:
    result = run_cli("serve", "--host", "no-such-host.invalid", "--port", "0")
    assert result.returncode == 1
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("sockecho: error: unknown host 'no-such-host.invalid'")


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["serve", "--model", "forking"], b"invalid choice: 'forking'"),
        (["serve", "--port", "65536"], b"out of range"),
        (["serve", "--port", "http"], b"is not a port number"),
        (["serve", "--backlog", "0"], b"out of range 1-65535"),
        (["serve", "--backlog", "99999999999"], b"out of range 1-65535"),
        (["serve", "--idle-timeout", "inf"], b"out of range"),
        (["serve", "--idle-timeout", "nan"], b"out of range"),
        (["serve", "--drain-timeout", "1e30"], b"out of range"),
        (["send", "--timeout", "inf", "x"], b"out of range"),
        (["serve", "--model", "select", "--max-connections", "5000"], b"ceiling"),
        (["frobnicate"], b"invalid choice"),
        ([], b"required"),
    ],
)
def test_usage_errors_exit_2_with_the_usage_message(args: list[str], complaint: bytes) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    assert b"usage: sockecho" in result.stderr
    assert complaint in result.stderr
    assert b"Traceback" not in result.stderr


def test_send_prints_the_echo_of_its_words(serve_process: type[ServeProcess]) -> None:
    srv = serve_process("--port", "0")
    result = run_cli("send", "--port", str(srv.address[1]), "hola", "mundo")
    assert result.returncode == 0
    assert result.stdout == b"hola mundo\n"


def test_send_streams_stdin_through_the_server(serve_process: type[ServeProcess]) -> None:
    srv = serve_process("--port", "0")
    payload = os.urandom(3 * 1024 * 1024)
    result = run_cli("send", "--port", str(srv.address[1]), stdin=payload)
    assert result.returncode == 0, result.stderr
    assert result.stdout == payload


def test_send_to_a_closed_port_exits_1_naming_the_address() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound but not listening: connections are refused
        result = run_cli("send", "--port", str(port), "hola")
    assert result.returncode == 1
    assert result.stderr.decode().splitlines() == [
        f"sockecho: error: connection refused by 127.0.0.1:{port} (is a server running?)"
    ]


def test_send_to_an_unknown_host_exits_1() -> None:
    result = run_cli("send", "--host", "no-such-host.invalid", "hi")
    assert result.returncode == 1
    assert result.stderr.decode().startswith("sockecho: error: unknown host")


def test_main_returns_exit_codes_without_exiting(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        code = cli.main(["send", "--port", str(probe.getsockname()[1]), "x"])
    assert code == cli.ExitCode.FAILURE
    assert "connection refused" in capsys.readouterr().err


@pytest.mark.parametrize("model", ["asyncio", "threading"])
def test_send_streams_hundreds_of_mib_without_deadlock(
    model: str, serve_process: type[ServeProcess]
) -> None:
    srv = serve_process("--model", model, "--port", "0", "-q")
    block, repeats = os.urandom(1024 * 1024), 200  # 200 MiB, more than any socket buffer
    proc = subprocess.Popen(
        [sys.executable, "-m", "sockecho", "send", "--port", str(srv.address[1])],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    assert proc.stderr is not None

    def feed() -> None:
        assert proc.stdin is not None
        for _ in range(repeats):
            proc.stdin.write(block)
        proc.stdin.close()

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    echoed, expected = hashlib.sha256(), hashlib.sha256()
    for _ in range(repeats):
        expected.update(block)
    received = 0
    while chunk := proc.stdout.read(1024 * 1024):
        echoed.update(chunk)
        received += len(chunk)
    feeder.join(WAIT)
    assert proc.wait(WAIT) == 0, proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    assert received == len(block) * repeats
    assert echoed.digest() == expected.digest()


def test_send_with_input_still_open_exits_cleanly_when_the_server_is_silent() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts (backlog), never answers
        port = silent.getsockname()[1]
        proc = subprocess.Popen(
            [sys.executable, "-m", "sockecho", "send", "--port", str(port), "--timeout", "0.5"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdin is not None
        proc.stdin.write(b"hi\n")
        proc.stdin.flush()  # and keep stdin open: the sender thread stays blocked reading it
        code = proc.wait(WAIT)
        assert proc.stderr is not None
        err = proc.stderr.read()
        proc.stdin.close()
        for stream in (proc.stdout, proc.stderr):
            assert stream is not None
            stream.close()
    assert code == 1  # not 134: no "Fatal Python error" from a daemon thread at exit
    assert err.decode().splitlines() == [
        "sockecho: error: timed out waiting for the echo (0 of 3 bytes came back)"
    ]


def test_send_with_stdout_closed_is_one_line(serve_process: type[ServeProcess]) -> None:
    srv = serve_process("--port", "0")
    result = subprocess.run(
        [sys.executable, "-m", "sockecho", "send", "--port", str(srv.address[1]), "hi"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: os.close(1),
        timeout=WAIT,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.decode().splitlines() == [
        "sockecho: error: standard input or output is closed (run it with both open)"
    ]


def test_send_passes_words_that_are_not_utf8_through_as_bytes(
    serve_process: type[ServeProcess],
) -> None:
    srv = serve_process("--port", "0")
    result = subprocess.run(
        [sys.executable, "-m", "sockecho", "send", "--port", str(srv.address[1]), b"caf\xe9"],
        capture_output=True,
        timeout=WAIT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"caf\xe9\n"


def test_stop_summary_counts_served_refused_and_dropped() -> None:
    snapshot = StatsSnapshot(
        connections_accepted=1,
        connections_active=0,
        connections_closed=1,
        connections_rejected=3,
        connection_errors=0,
        idle_closed=0,
        bytes_echoed=2,
        datagrams_received=5,
        datagrams_echoed=1,
        datagrams_dropped_low_port=1,
        datagrams_dropped_rate=3,
        datagram_errors=0,
        tls_handshake_failures=0,
    )
    assert cli.summarize(snapshot) == (
        "1 connection served, 2 bytes echoed, 3 connections refused, "
        "1 datagram echoed, 4 datagrams dropped"
    )


def test_serve_gives_the_callers_signal_handlers_back() -> None:
    before = {signum: signal.getsignal(signum) for signum in cli.STOP_SIGNALS}
    assert cli.main(["serve", "--host", "no-such-host.invalid", "--port", "0"]) == 1
    assert {signum: signal.getsignal(signum) for signum in cli.STOP_SIGNALS} == before


def test_send_input_slower_than_the_timeout_is_not_a_timeout(
    serve_process: type[ServeProcess],
) -> None:
    """``--timeout`` bounds the wait for an outstanding echo; a pause in the input (a person
    typing) leaves nothing outstanding, however long it lasts."""
    timeout = 1.0  # generous for the echo that is outstanding: CI machines stall
    srv = serve_process("--port", "0")
    command = ["send", "--port", str(srv.address[1]), "--timeout", str(timeout)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "sockecho", *command],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},  # each echo reaches stdout as it comes
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    proc.stdin.write(b"first\n")
    proc.stdin.flush()
    assert proc.stdout.readline() == b"first\n"  # echoed: nothing is outstanding now
    time.sleep(2.5 * timeout)  # the slow input under test, not synchronisation
    out, err = proc.communicate(b"second\n", timeout=WAIT)  # then the end of the input
    assert (proc.returncode, err) == (0, b"")
    assert out == b"second\n"


def test_verbose_serve_logs_the_debug_lines_and_the_default_does_not(
    serve_process: type[ServeProcess],
) -> None:
    lines = {}
    for flags in ([], ["-v"]):
        srv = serve_process("--port", "0", "--model", "selectors", *flags)
        with connect(srv.address) as sock:
            sock.sendall(b"x")
            assert recv_exactly(sock, 1) == b"x"
        assert srv.wait_for_line("close ")
        assert srv.stop(signal.SIGTERM) == 0
        lines[tuple(flags)] = srv.stderr_lines
    starting = r"^\d\d:\d\d:\d\d starting the selectors model with ServerConfig\(model='selectors'"
    assert [line for line in lines[("-v",)] if re.match(starting, line)], lines[("-v",)]
    assert not [line for line in lines[()] if "starting the" in line]
    assert len(lines[("-v",)]) > len(lines[()])


@pytest.mark.parametrize("verbose", [False, True])
def test_an_unexpected_error_is_one_line_and_its_traceback_only_with_verbose(
    verbose: bool, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def planted(*args: object, **kwargs: object) -> Server:
        raise RuntimeError("planted in Server()")

    monkeypatch.setattr(cli, "Server", planted)
    argv = ["serve", "--port", "0", *(["-v"] if verbose else [])]
    assert cli.main(argv) == cli.ExitCode.FAILURE
    err = capsys.readouterr().err.splitlines()
    error_line = (
        "sockecho: error: unexpected RuntimeError: planted in Server() (please report this)"
    )
    assert err[-1] == error_line
    if verbose:
        assert re.match(r"^\d\d:\d\d:\d\d unexpected error$", err[0]), err
        assert err[1] == "Traceback (most recent call last):"
        assert "RuntimeError: planted in Server()" in err[-2]
    else:
        assert err == [error_line]
