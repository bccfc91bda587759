"""The asyncio model on uvloop (``--loop uvloop``, the ``sockecho[uvloop]`` extra)."""

from __future__ import annotations

import os
import socket
import threading

from sockecho import Server, ServerConfig
from tests.conftest import WAIT, ServeProcess, connect, recv_exactly, recv_until_eof, run_cli


def test_uvloop_echoes_a_large_payload_and_honours_half_close() -> None:
    payload = os.urandom(4 * 1024 * 1024)
    with (
        Server(ServerConfig(model="asyncio", loop="uvloop", port=0, drain_timeout=0.5)) as srv,
        connect(srv.address) as sock,
    ):
        sock.sendall(b"hola\n")
        assert recv_exactly(sock, 5) == b"hola\n"
        sender = threading.Thread(target=lambda: (sock.sendall(payload), sock.shutdown(1)))
        sender.start()
        assert recv_until_eof(sock) == payload
        sender.join(WAIT)
    assert srv.snapshot().bytes_echoed == len(payload) + 5


def test_uvloop_is_the_loop_actually_running() -> None:
    with Server(ServerConfig(model="asyncio", loop="uvloop", port=0)) as srv:
        with connect(srv.address) as sock:  # an echo: the loop is running by now
            sock.sendall(b"x")
            assert recv_exactly(sock, 1) == b"x"
        loop = srv.model._loop  # type: ignore[attr-defined]
        assert type(loop).__module__.startswith("uvloop")


def test_cli_serves_on_uvloop(serve_process: type[ServeProcess]) -> None:
    srv = serve_process("--loop", "uvloop", "--port", "0", "--udp")
    assert srv.endpoints[0].startswith("tcp://127.0.0.1:")
    result = run_cli("send", "--port", str(srv.address[1]), "hola", "uvloop")
    assert result.stdout == b"hola uvloop\n"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.settimeout(WAIT)
        udp.sendto(b"datagram", ("127.0.0.1", srv.address[1]))
        assert udp.recvfrom(100)[0] == b"datagram"


def test_uvloop_with_another_model_or_with_trace_is_a_usage_error() -> None:
    other = run_cli("serve", "--loop", "uvloop", "--model", "selectors", "--port", "0")
    assert other.returncode == 2
    assert b"applies to the asyncio model only" in other.stderr
    traced = run_cli("serve", "--loop", "uvloop", "--trace", "--port", "0")
    assert traced.returncode == 2
    assert b"--trace cannot narrate --loop uvloop" in traced.stderr
