"""A thread per client that gathers the echo and closes at the client's FIN.

To send fewer, bigger segments it sends what it gathered once the client has been quiet
for :data:`FLUSH_AFTER`. When the client half-closes (its FIN: "that was everything"),
``recv`` returns ``b""`` and the thread closes the connection at once, and what it still
held is never sent. ``ncat -l -k --exec /bin/cat`` does the same to the echo still inside
``cat``.
"""

from __future__ import annotations

import socket
import threading

NAME = "no-half-close"
BUG = "closes as soon as the client's FIN arrives, dropping the echo it still holds"
CAUGHT_BY = "tcp.close.half-close"
UDP = False
BACKLOG = 128
#: Seconds of quiet after which the gathered echo is sent.
FLUSH_AFTER = 0.2


def handle(conn: socket.socket) -> None:
    pending = bytearray()
    conn.settimeout(FLUSH_AFTER)
    with conn:
        while True:
            try:
                data = conn.recv(65536)
            except TimeoutError:
                conn.sendall(pending)
                pending.clear()
                continue
            except OSError:
                return
            if not data:
                break  # the bug: `pending` still holds echo the client is waiting for
            pending += data


def serve(listener: socket.socket) -> None:
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()
