"""A thread per client, every thread receiving into one shared buffer.

The classic race of the course's second exercise: the buffer is allocated once, "to
save memory", at module level. Thread A receives into it and sends from it; meanwhile
thread B's ``recv_into`` writes its own client's bytes over it, and A sends B's bytes
to A's client. One client at a time never shows it; many at once always do.
"""

from __future__ import annotations

import socket
import threading

NAME = "shared-buffer"
BUG = "a thread per client, all receiving into one shared buffer: clients get each other's bytes"
CAUGHT_BY = "tcp.concurrency.100-clients"
UDP = False
BACKLOG = 128

BUFFER = bytearray(4096)  # the bug: one buffer for every thread
VIEW = memoryview(BUFFER)


def handle(conn: socket.socket) -> None:
    with conn:
        while True:
            try:
                size = conn.recv_into(BUFFER)
                if not size:
                    return
                conn.sendall(VIEW[:size])
            except OSError:
                return


def serve(listener: socket.socket) -> None:
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()
