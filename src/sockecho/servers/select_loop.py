"""``select``: one thread, ``select.select()`` over non-blocking sockets - exercise 2, done right.

How it waits
    One call, ``select(readers, writers, [], timeout)``, blocks until any socket
    is ready: a listening socket with a client to accept, a client with bytes to
    read, or a client that can take more of its pending echo. Every socket is
    non-blocking, so handling one ready socket never stalls the others.

What it costs
    One thread and a few hundred bytes per connection. But every call passes the
    whole list of descriptors to the kernel and back: the cost of one wait grows
    with the number of connections, not with the number that are ready.

Where it breaks
    ``select()`` uses a fixed-size bitmap of ``FD_SETSIZE`` (1024) descriptors:
    a descriptor numbered 1024 or more cannot be watched at all (C code writing
    past the bitmap corrupts memory; Python raises ValueError). This model
    therefore refuses such connections with a log line, and its
    ``--max-connections`` ceiling is 1000. Use ``selectors`` (epoll) beyond that.

Partial writes
    ``send()`` on a non-blocking socket may take only part of the buffer (the
    client is slow to read). The rest stays in the session's pending echo, the
    socket goes on the *writers* list, and reading from that client pauses above
    the high-water mark so a client that never reads cannot grow the server.

UDP (``--udp``)
    The UDP sockets are on the *readers* list too; a readable one has
    datagrams waiting, echoed at once (a datagram is sent whole or not at all).

TLS (``--tls-cert``)
    The handshake is driven from the loop too: each ``do_handshake()`` step says
    whether it waits to read or to write, and the socket goes on that list.
    After it, ``recv()`` may also say "want read/write" (``SSLWantReadError``);
    and bytes the SSL object already decrypted raise no readiness, so they are
    read at once (``pending()``). The shared steps live in
    ``readiness.ReadinessModel``, in the order a student follows them.
"""

from __future__ import annotations

import logging
import socket

from sockecho.config import SELECT_MAX_CONNECTIONS, ServerConfig
from sockecho.core import RateLimitedNotice
from sockecho.errors import ServerFailed
from sockecho.servers.base import SocketCalls
from sockecho.servers.readiness import ReadinessModel

log = logging.getLogger("sockecho.server")

#: select.select() cannot watch descriptors numbered at or above this (glibc's FD_SETSIZE).
FD_SETSIZE = 1024


class SelectServer(ReadinessModel):
    name = "select"
    summary = "one thread, select.select() over non-blocking sockets (at most 1000 clients)"
    connection_ceiling = SELECT_MAX_CONNECTIONS

    def __init__(self, config: ServerConfig, calls: SocketCalls | None = None) -> None:
        super().__init__(config, calls)
        self._fd_refusals = RateLimitedNotice()

    def open(self) -> list[str]:
        endpoints = super().open()
        own = [*self.listeners, *self.datagram_sockets, self._waker.reader]
        highest = max(sock.fileno() for sock in own)
        if highest >= FD_SETSIZE:  # refuse now, before the ready line, not crash in select()
            self.close_listeners()
            self._waker.close()
            raise ServerFailed(
                f"the select model cannot watch its own descriptor {highest} "
                f"(select() stops at FD_SETSIZE {FD_SETSIZE})",
                "too many files are open in this process; use --model selectors",
            )
        return endpoints

    def serve(self) -> None:
        for sock in (*self.listeners, *self.datagram_sockets):
            sock.setblocking(False)
        self.run_loop(self._wait_once)

    def can_watch(self, conn: socket.socket) -> bool:
        if conn.fileno() < FD_SETSIZE:
            return True
        folded = self._fd_refusals.note()
        if folded:
            log.warning(
                "refused %d connection(s) on descriptors >= %d (descriptor %d this time): "
                "select() cannot watch them (FD_SETSIZE); use --model selectors for more clients",
                folded,
                FD_SETSIZE,
                conn.fileno(),
            )
        self.stats.rejected()  # after the log line, as in release()
        return False

    def _wait_once(self, timeout: float) -> None:
        readers = (
            [*self.listeners, self._waker.reader] if self.accepting() else [self._waker.reader]
        )
        readers += self.datagram_sockets
        interests = [
            (conn, self.interest(conn, session)) for conn, session in self.sessions.items()
        ]
        readers += [conn for conn, (read, _write) in interests if read]
        writers = [conn for conn, (_read, write) in interests if write]
        readable, writable, _ = self.calls.select(readers, writers, [], timeout)
        for sock in readable:
            self.on_ready(sock, readable=True, writable=False)
        for sock in writable:
            self.on_ready(sock, readable=False, writable=True)
