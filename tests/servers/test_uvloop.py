"""The asyncio model on uvloop (``--loop uvloop``, the ``sockecho[uvloop]`` extra)."""

from __future__ import annotations

import os
import select
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


def test_uvloop_serves_plain_connections_with_a_plain_protocol_that_pushes_back() -> None:
    """On uvloop a plain connection gets UvloopEchoProtocol (uvloop reads into a buffer of its
    own: its BufferedProtocol path only costs more), which must still push back: a client
    that writes without reading is stopped (the kernel's buffers, 6-10 MiB on loopback, and
    the server's high-water mark, far below PUSH_LIMIT), then gets every byte back."""
    config = ServerConfig(model="asyncio", loop="uvloop", port=0, drain_timeout=0.5)
    with Server(config) as srv, connect(srv.address) as sock:
        sock.sendall(b"x")
        assert recv_exactly(sock, 1) == b"x"
        protocols = list(srv.model._protocols)  # type: ignore[attr-defined]
        assert [type(p).__name__ for p in protocols] == ["UvloopEchoProtocol"]
        sock.setblocking(False)
        chunk, taken = os.urandom(64 * 1024), bytearray()
        stalled = False
        while len(taken) < PUSH_LIMIT and not stalled:
            try:
                taken += chunk[: sock.send(chunk)]  # the kernel may take part of it
            except BlockingIOError:
                _, writable, _ = select.select([], [sock], [], STALL)
                stalled = not writable  # nothing taken for STALL seconds: pushed back
        assert stalled, f"took {len(taken)} bytes without pushing back"
        sock.setblocking(True)
        sock.settimeout(WAIT)
        assert recv_exactly(sock, len(taken)) == taken


#: Bytes a client may write without reading before the server must have pushed back.
PUSH_LIMIT = 64 * 1024 * 1024
#: Seconds without room to write that count as pushed back.
STALL = 1.0
