"""A select() loop that writes with a blocking ``sendall()``.

select() says which clients have bytes to read; the loop reads and echoes them with
``sendall()``, which returns only when everything is in the kernel's send buffer. A
client that stops reading fills that buffer, ``sendall()`` waits for it forever, and the
loop - the only thread - serves nobody else meanwhile.
"""

from __future__ import annotations

import select
import socket

NAME = "stalling-select"
BUG = "a select() loop with a blocking sendall(): one client that stops reading freezes everyone"
CAUGHT_BY = "tcp.concurrency.stalled-reader"
UDP = False
BACKLOG = 128


def serve(listener: socket.socket) -> None:
    clients: list[socket.socket] = []
    while True:
        readable, _, _ = select.select([listener, *clients], [], [])
        for sock in readable:
            if sock is listener:
                conn, _ = listener.accept()
                clients.append(conn)
                continue
            try:
                data = sock.recv(65536)
                if data:
                    sock.sendall(data)  # the bug: blocks until this client reads
                    continue
            except OSError:
                pass
            clients.remove(sock)
            sock.close()
