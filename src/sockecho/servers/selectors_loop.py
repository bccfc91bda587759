"""``selectors``: one thread, ``selectors.DefaultSelector`` (epoll on Linux).

How it waits
    Each socket is registered once with the events it is interested in. The
    kernel keeps that interest list, so one ``select()`` (``epoll_wait``) costs
    time in proportion to the sockets that are *ready*, not to all of them.

Read and write interest
    A connection is registered for reading while the session wants to read
    (below the high-water mark of pending echo), and for writing only while it
    has echo pending that the kernel would not take at once. Registering for
    writing all the time would wake the loop on every pass (a socket is almost
    always writable) and spin. Interest is changed only when it differs from
    what is registered, so a steady echo costs no ``epoll_ctl`` calls.

UDP (``--udp``)
    The UDP sockets are registered for reading once, beside the listeners;
    a ready one has datagrams waiting, echoed at once.

TLS (``--tls-cert``)
    As in ``select``: the interest of a handshaking connection is what its
    next ``do_handshake()`` step waits for (``ReadinessModel.interest``).

What it costs
    One thread; per connection a session object and a registration in the
    kernel (about 1-2 KiB of RSS all told). No ``FD_SETSIZE`` limit.

Where it breaks
    One thread runs all the Python: it uses one core. Beyond that, memory.
"""

from __future__ import annotations

import selectors
import socket

from sockecho.core import EchoSession
from sockecho.servers.readiness import ReadinessModel


class SelectorsServer(ReadinessModel):
    name = "selectors"
    summary = "one thread, selectors.DefaultSelector (epoll) with read/write interest per socket"

    def serve(self) -> None:
        self._selector = self.calls.new_selector()
        self._interest: dict[socket.socket, int] = {}
        self._listening = False
        try:
            for listener in self.listeners:
                listener.setblocking(False)
            for sock in self.datagram_sockets:
                sock.setblocking(False)
                self._selector.register(sock, selectors.EVENT_READ)
            self._selector.register(self._waker.reader, selectors.EVENT_READ)
            self.run_loop(self._wait_once)
        finally:
            self._selector.close()

    def watch(self, conn: socket.socket, session: EchoSession) -> None:
        read, write = self.interest(conn, session)
        wanted = (selectors.EVENT_READ if read else 0) | (selectors.EVENT_WRITE if write else 0)
        current = self._interest.get(conn, 0)
        if wanted == current:
            return
        if not current:
            self._selector.register(conn, wanted)
        elif not wanted:
            self._selector.unregister(conn)
        else:
            self._selector.modify(conn, wanted)
        self._interest[conn] = wanted

    def forget(self, conn: socket.socket) -> None:
        if self._interest.pop(conn, 0):
            self._selector.unregister(conn)

    def stop_accepting(self) -> None:
        self._listen(False)
        for sock in self.datagram_sockets:
            self._selector.unregister(sock)
        super().stop_accepting()

    def _listen(self, on: bool) -> None:
        """Watch the listening sockets, or stop (a stop, or backing off from EMFILE)."""
        if on == self._listening:
            return
        for listener in self.listeners:
            if on:
                self._selector.register(listener, selectors.EVENT_READ)
            else:
                self._selector.unregister(listener)
        self._listening = on

    def _wait_once(self, timeout: float) -> None:
        self._listen(self.accepting())
        # Per ready socket: no isinstance() or bool() calls (registered objects are all
        # sockets; on_ready takes the event bits as they are): each is a call per echo.
        read, write = selectors.EVENT_READ, selectors.EVENT_WRITE
        for key, events in self._selector.select(timeout):
            sock: socket.socket = key.fileobj  # type: ignore[assignment]
            self.on_ready(sock, events & read, events & write)
