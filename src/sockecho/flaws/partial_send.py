"""A select() loop that ignores what ``send()`` returns.

``sock.send(data)`` on a non-blocking socket sends what fits in the kernel's buffer and
returns how many bytes that was; the rest is this server's to keep and send later. This
one drops it (the selectors documentation's own example does the same:
``conn.send(data)  # Hope it won't block``). It "saves memory" with a small send buffer,
which makes the loss certain instead of rare: any read larger than the buffer loses bytes.
"""

from __future__ import annotations

import select
import socket

NAME = "partial-send"
BUG = "send() on a non-blocking socket whose return value is ignored: what did not fit is lost"
CAUGHT_BY = "tcp.size.1m"
UDP = False
BACKLOG = 128
#: Bytes of kernel send buffer per client (Linux doubles it): smaller than one read.
SEND_BUFFER = 4096


def serve(listener: socket.socket) -> None:
    listener.setblocking(False)
    clients: list[socket.socket] = []
    while True:
        readable, _, _ = select.select([listener, *clients], [], [])
        for sock in readable:
            if sock is listener:
                conn, _ = listener.accept()
                conn.setblocking(False)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
                clients.append(conn)
                continue
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                clients.remove(sock)
                sock.close()
                continue
            try:  # noqa: SIM105 - the mistake as people write it
                sock.send(data)  # the bug: returns how much it sent; the rest is dropped
            except BlockingIOError:
                pass  # nothing fitted: all of it is dropped
