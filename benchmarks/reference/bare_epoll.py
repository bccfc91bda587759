"""The pure-Python floor: the least an epoll echo loop written in Python can do.

``select.epoll``, level-triggered; for each ready socket one ``recv(65536)`` and one ``send``.
No limits, no counters, no idle sweep, no logging, no stopping but a signal: nothing a real
server needs. Its CPU per round trip is the floor any pure-Python model can reach on this
interpreter; everything a sockecho model costs above it is the model's own overhead
(docs/PERFORMANCE.md, "The floor").

It is still a correct echo server: what ``send`` does not take waits in a per-connection
buffer and the socket is watched for writing until it is flushed (reading pauses meanwhile,
so a client that never reads costs at most one read's worth of memory).

usage: python bare_epoll.py [PORT]
prints "listening on tcp://127.0.0.1:PORT" to stderr when ready, like sockecho serve.
"""

from __future__ import annotations

import select
import socket
import sys

#: Bytes asked of one recv(): the same as sockecho's default read size.
READ_SIZE = 65536
#: The listen queue: the kernel's maximum, as sockecho's default.
BACKLOG = socket.SOMAXCONN


def serve(port: int) -> None:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(BACKLOG)
    listener.setblocking(False)
    print(f"listening on tcp://127.0.0.1:{listener.getsockname()[1]}", file=sys.stderr, flush=True)
    epoll = select.epoll()
    listening = listener.fileno()
    epoll.register(listening, select.EPOLLIN)
    clients: dict[int, socket.socket] = {}
    pending: dict[int, bytes] = {}  # what send() did not take, by descriptor
    readable, writable = select.EPOLLIN, select.EPOLLOUT
    while True:
        for fd, events in epoll.poll():
            if fd == listening:
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    continue
                conn.setblocking(False)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                clients[conn.fileno()] = conn
                epoll.register(conn.fileno(), readable)
                continue
            conn = clients[fd]
            try:
                if events & writable:
                    data = pending.pop(fd)
                else:
                    data = conn.recv(READ_SIZE)
                    if not data:
                        raise EOFError  # the client is done; nothing is pending here
                try:
                    sent = conn.send(data)
                except BlockingIOError:
                    sent = 0
                if sent < len(data):
                    pending[fd] = data[sent:]
                    epoll.modify(fd, writable)
                elif events & writable:
                    epoll.modify(fd, readable)
            except BlockingIOError:
                continue  # a spurious wake-up: nothing to read after all
            except (OSError, EOFError):
                epoll.unregister(fd)
                del clients[fd]
                pending.pop(fd, None)
                conn.close()


if __name__ == "__main__":
    serve(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
