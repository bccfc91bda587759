"""Real third-party echo servers through ``sockecho check``, which has real findings to
make about them: socat with 4 KiB blocks passes, socat's default PIPE deadlocks under
back-pressure, ncat's --exec drops the echo pending at the client's FIN, and CPython's
socketserver.UDPServer cuts datagrams at 8192 bytes."""

from __future__ import annotations

import os
import re
import signal
import socket
import socketserver
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

import sockecho
from sockecho.check import Verdict
from tests.conftest import WAIT, require_tool

pytestmark = [pytest.mark.interop, pytest.mark.timeout(90)]


@contextmanager
def peer(argv: list[str], ready: str) -> Iterator[str]:
    """A third-party server in a session of its own (socat forks a child per client; all
    go at the end); yields its first stderr line matching ``ready``, read as it starts."""
    proc = subprocess.Popen(
        argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, start_new_session=True
    )
    assert proc.stderr is not None
    drain: threading.Thread | None = None
    try:
        for line in proc.stderr:  # blocks until the peer says it is listening (or exits)
            if re.search(ready, line):
                break
        else:
            pytest.fail(f"{argv[0]} never said it was listening")
        # The rest of its log must not fill the pipe and stall it.
        drain = threading.Thread(target=proc.stderr.read, daemon=True)
        drain.start()
        yield line
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(WAIT)
        if drain is not None:
            drain.join(WAIT)  # every process of the session is gone: the pipe ends
        proc.stderr.close()


def describe(report: sockecho.CheckReport) -> list[str]:
    return [f"{r.id}: {r.verdict.value}: {r.actual}" for r in report.results]


def test_socat_with_4k_blocks_and_a_real_backlog_passes() -> None:
    socat = require_tool("socat")
    listen = "TCP-LISTEN:0,bind=127.0.0.1,fork,reuseaddr,backlog=128"
    with peer([socat, "-d", "-d", "-b4096", listen, "PIPE"], r"listening on AF=2") as line:
        port = int(re.findall(r":(\d+)", line)[-1])
        report = sockecho.check("127.0.0.1", port)
    assert not report.failed, describe(report)


#: Runs of the back-pressure case against socat's default PIPE before giving up on seeing
#: it deadlock: it does in about 9 runs of 10 (its pipe must happen to be misaligned).
SOCAT_ATTEMPTS = 4


def test_socat_default_pipe_deadlocks_under_back_pressure() -> None:
    socat = require_tool("socat")
    listen = "TCP-LISTEN:0,bind=127.0.0.1,fork,reuseaddr"
    with peer([socat, "-d", "-d", listen, "PIPE"], r"listening on AF=2") as line:
        port = int(re.findall(r":(\d+)", line)[-1])
        for _attempt in range(SOCAT_ATTEMPTS):
            report = sockecho.check("127.0.0.1", port, cases=["tcp.flow.back-pressure"])
            if report.failed:
                break
    result = report.result("tcp.flow.back-pressure")
    assert result.verdict is Verdict.FAILED, describe(report)
    assert "bytes came back, then nothing" in result.actual


def test_socat_default_backlog_serves_100_clients_without_a_wrong_echo() -> None:
    # A backlog of 5 makes 100 clients at once slow (SYNs dropped and retried, about 16 s
    # in all): PASSED or NON-STRICT within the deadline, never a wrong echo.
    socat = require_tool("socat")
    listen = "TCP-LISTEN:0,bind=127.0.0.1,fork,reuseaddr"
    with peer([socat, "-d", "-d", "-b4096", listen, "PIPE"], r"listening on AF=2") as line:
        port = int(re.findall(r":(\d+)", line)[-1])
        report = sockecho.check("127.0.0.1", port, cases=["tcp.concurrency.100-clients"])
    assert report.verdict_of("tcp.concurrency.100-clients") in {
        Verdict.PASSED,
        Verdict.NON_STRICT,
    }, describe(report)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: Runs of the half-close case against ncat --exec before giving up on seeing it drop the
#: echo. ncat closes when it reads the client's FIN, dropping what cat has not answered yet:
#: a race that cat wins now and then on a busy machine (seen once in a full run under load).
NCAT_ATTEMPTS = 4


def test_ncat_exec_cat_fails_half_close_with_nothing_echoed() -> None:
    ncat = require_tool("ncat")
    port = free_port()  # ncat does not report a port it picked; a race we accept here
    argv = [ncat, "-v", "-l", "-k", "127.0.0.1", str(port), "--exec", "/bin/cat"]
    with peer(argv, r"Listening on"):
        for _attempt in range(NCAT_ATTEMPTS):
            report = sockecho.check("127.0.0.1", port, cases=["tcp.close.half-close"])
            if report.failed:
                break
    result = report.result("tcp.close.half-close")
    assert result.verdict is Verdict.FAILED
    assert result.actual.startswith("0 of 256 bytes came back"), result.actual


class UDPEcho(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data, sock = self.request
        sock.sendto(data, self.client_address)


def test_socketserver_udpserver_fails_the_sizes_above_8192_and_only_those() -> None:
    with socketserver.UDPServer(("127.0.0.1", 0), UDPEcho) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            report = sockecho.check(*server.server_address[:2], udp=True)
        finally:
            server.shutdown()
            thread.join(WAIT)
    failed = {r.id for r in report.results if r.verdict is Verdict.FAILED}
    assert failed == {"udp.size.8193", "udp.size.65507"}, describe(report)
