"""The course handout's example server, as written (sockets-ii.md, "Manejo de Errores").

One ``recv(1024)`` per connection, then the connection is closed; a client that sends
nothing makes ``recv`` return ``b""`` and the ``break`` ends the whole server, not that
client; the ``try`` around everything means any socket error ends it too::

    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(('0.0.0.0', 50010))
        s.listen(2)
        while True:
            conn, addr = s.accept()
            ...
            data = conn.recv(1024)
            if not data:
                break
            conn.sendall(data)
            conn.close()
    except socket.error as e:
        ...
    finally:
        s.close()

Only the socket, bind and listen lines are done for it (so that it listens where it is
told, and prints the ready line); the rest is the handout's.
"""

from __future__ import annotations

import socket
import sys

NAME = "handout"
BUG = (
    "the course handout's server: one recv(1024) per connection, and a client that sends "
    "nothing stops the whole server (break)"
)
CAUGHT_BY = "tcp.close.empty-connection"
UDP = False
#: The handout's s.listen(2).
BACKLOG = 2


def serve(s: socket.socket) -> None:
    try:
        while True:
            conn, addr = s.accept()
            print(f"Conexión establecida con {addr}", file=sys.stderr)

            data = conn.recv(1024)
            if not data:
                break

            conn.sendall(data)
            conn.close()

    except OSError as e:  # the handout's socket.error, its alias since Python 3.3
        print(f"Error en el socket: {e}", file=sys.stderr)
    finally:
        s.close()
