"""A thread per client that greets each client before echoing.

Friendly, and wrong: an echo client compares what comes back with what it sent, and the
greeting is bytes nobody sent.
"""

from __future__ import annotations

import socket
import threading

NAME = "banner"
BUG = "greets each client with a line before the echo"
CAUGHT_BY = "tcp.silence.no-banner"
UDP = False
BACKLOG = 128

GREETING = b"Welcome to the echo server!\r\n"


def handle(conn: socket.socket) -> None:
    with conn:
        try:
            conn.sendall(GREETING)  # the bug
            while data := conn.recv(65536):
                conn.sendall(data)
        except OSError:
            return


def serve(listener: socket.socket) -> None:
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()
