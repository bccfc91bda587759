"""Promise 10: no client behaviour crashes a server or disturbs its other clients.

Each test plays one misbehaviour against every model, then checks that the
server counted the connection as closed and still echoes for a new client. The
``server`` fixture stops the server at the end and re-raises anything that went
wrong in its loop (``ServerFailed``), so a model that died on the way fails here.
"""

from __future__ import annotations

import itertools
import socket
import threading
import time

import pytest

from sockecho import Server
from tests.conftest import CONCURRENT_MODELS, WAIT, connect, recv_exactly, recv_until_eof, reset

#: The issue's figure for tiny writes; bounded in time too, so a slow machine stays quick.
TINY_WRITES = 1_000_000
#: Seconds the tiny writes may take at most (the count reached is what is checked).
TINY_WRITES_TIME = 1.5


def still_serves(server: Server, closed: int) -> None:
    """The server has closed ``closed`` connections in all and echoes for a new client."""
    assert server.stats.wait_for(lambda s: s.connections_closed == closed, WAIT)
    assert server.snapshot().connections_active == 0
    with connect(server.address) as sock:
        sock.sendall(b"still here")
        assert recv_exactly(sock, 10) == b"still here"


def test_half_close_then_reset_while_the_echo_is_pending(server: Server) -> None:
    sock = connect(server.address)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(bytes(1024 * 1024))
    sock.shutdown(socket.SHUT_WR)  # "that is all" ...
    sock.recv(1000)
    reset(sock)  # ... then vanish with an RST while the server still sends the echo
    still_serves(server, closed=1)


def test_reset_right_after_connect_and_plain_vanishing(server: Server) -> None:
    for _ in range(20):
        reset(connect(server.address))  # connect, then RST before sending anything
        connect(server.address).close()  # connect, then FIN before sending anything
    still_serves(server, closed=40)


def test_zero_length_writes_change_nothing(server: Server) -> None:
    with connect(server.address) as sock:
        for _ in range(1000):
            assert sock.send(b"") == 0
            sock.sendmsg([])
        sock.sendall(b"after nothing")
        assert recv_exactly(sock, 13) == b"after nothing"
    still_serves(server, closed=1)


def test_out_of_band_byte_is_not_echoed_and_harms_nothing(server: Server) -> None:
    with connect(server.address) as sock:
        sock.sendall(b"abc")
        sock.send(b"!", socket.MSG_OOB)  # TCP urgent data: outside the byte stream
        sock.sendall(b"def")
        assert recv_exactly(sock, 6) == b"abcdef"
        sock.shutdown(socket.SHUT_WR)
        assert recv_until_eof(sock) == b""
    still_serves(server, closed=1)


def test_a_million_tiny_writes_come_back_intact(server: Server) -> None:
    pattern = bytes(range(251))  # a prime length: a dropped or repeated byte shows
    received = bytearray()
    with connect(server.address) as sock:
        reader = threading.Thread(target=lambda: received.extend(recv_until_eof(sock)))
        reader.start()
        deadline = time.monotonic() + TINY_WRITES_TIME
        sent = 0
        for byte in itertools.islice(itertools.cycle(pattern), TINY_WRITES):
            sock.send(bytes((byte,)))
            sent += 1
            if not sent % 1000 and time.monotonic() > deadline:
                break
        sock.shutdown(socket.SHUT_WR)
        reader.join(WAIT)
    print(f"{sent} one-byte writes")
    assert len(received) == sent
    assert received == (pattern * (sent // len(pattern) + 1))[:sent]
    still_serves(server, closed=1)


@pytest.mark.parametrize("model", CONCURRENT_MODELS)  # iterative serves one at a time
@pytest.mark.parametrize("flag", ["MSG_OOB", "reset"])
def test_misbehaving_client_spares_a_concurrent_one(server: Server, flag: str) -> None:
    with connect(server.address) as steady:
        steady.sendall(b"before")
        assert recv_exactly(steady, 6) == b"before"
        rogue = connect(server.address)
        rogue.sendall(bytes(200_000))
        if flag == "MSG_OOB":
            rogue.send(b"!", socket.MSG_OOB)
            rogue.close()
        else:
            reset(rogue)
        assert server.stats.wait_for(lambda s: s.connections_closed == 1, WAIT)
        steady.sendall(b"after")
        assert recv_exactly(steady, 5) == b"after"
