"""Promise 9, graceful shutdown, through the real command and real signals, for every model.

On SIGTERM (or SIGINT) the server stops accepting at once, lets open
connections go on echoing for up to ``--drain-timeout`` seconds, closes what is
left, and exits 0. A second signal skips the rest of the drain.
"""

from __future__ import annotations

import signal
import socket
import time

import pytest

from sockecho import Server
from tests.conftest import (
    STOP_MARGIN,
    WAIT,
    ServeProcess,
    connect,
    recv_exactly,
    recv_until_eof,
)
from tests.procinfo import wait_until


def refuses_new_clients(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=WAIT):
            return False
    except (ConnectionRefusedError, ConnectionResetError):
        return True  # reset: the handshake met the listener as it stopped listening


def test_sigterm_stops_accepting_but_lets_open_clients_finish_then_exits_0(
    model: str, serve_process: type[ServeProcess]
) -> None:
    drain = 10.0
    srv = serve_process("--model", model, "--port", "0", "--drain-timeout", str(drain))
    with connect(srv.address) as sock:
        sock.sendall(b"before")
        assert recv_exactly(sock, 6) == b"before"
        stopped_at = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.wait_for_line("SIGTERM: stopping")
        assert wait_until(lambda: refuses_new_clients(srv.address), WAIT)
        payload = bytes(range(256)) * 4096  # 1 MiB, echoed during the drain
        sock.sendall(payload)
        assert recv_exactly(sock, len(payload)) == payload
        sock.shutdown(socket.SHUT_WR)
        assert recv_until_eof(sock) == b""
        assert srv.proc.wait(WAIT) == 0
    assert time.monotonic() - stopped_at < drain, "waited for the drain timeout although done"


def test_drain_timeout_closes_clients_still_open_then_exits_0(
    model: str, serve_process: type[ServeProcess]
) -> None:
    drain = 0.5
    srv = serve_process("--model", model, "--port", "0", "--drain-timeout", str(drain))
    with connect(srv.address) as lingering:
        lingering.sendall(b"x")
        assert recv_exactly(lingering, 1) == b"x"
        stopped_at = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        assert recv_until_eof(lingering) == b""  # closed by the server after the drain
        closed_after = time.monotonic() - stopped_at
        assert srv.proc.wait(WAIT) == 0
        exited_after = time.monotonic() - stopped_at
    assert drain - 0.1 <= closed_after <= drain + STOP_MARGIN
    assert exited_after <= drain + STOP_MARGIN


def test_second_signal_exits_at_once(model: str, serve_process: type[ServeProcess]) -> None:
    srv = serve_process("--model", model, "--port", "0", "--drain-timeout", "60")
    with connect(srv.address) as lingering:
        lingering.sendall(b"x")
        assert recv_exactly(lingering, 1) == b"x"
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.wait_for_line("SIGTERM: stopping")
        stopped_at = time.monotonic()
        srv.proc.send_signal(signal.SIGINT)
        assert srv.proc.wait(WAIT) == 0
        assert time.monotonic() - stopped_at < STOP_MARGIN  # no drain at all, not the 60 s
        assert recv_until_eof(lingering) == b""


def test_iterative_stop_resets_the_clients_waiting_in_its_backlog() -> None:
    """docs/models.md: ``shutdown(SHUT_RD)`` on the listener drops the clients queued behind
    the one being served; that one still gets its drain."""
    with Server(model="iterative", port=0, drain_timeout=WAIT) as srv:
        with connect(srv.address) as served, connect(srv.address) as queued:
            served.sendall(b"a")
            assert recv_exactly(served, 1) == b"a"  # the server is busy with this one
            queued.sendall(b"b")  # connected by the kernel, waiting to be accepted
            srv.request_stop()
            with pytest.raises(ConnectionResetError):
                queued.recv(1)
            served.sendall(b"c")
            assert recv_exactly(served, 1) == b"c"
        srv.join(WAIT)
    assert srv.snapshot().connections_accepted == 1
