"""``threading``: one thread per connection - the course's second exercise with threads.

How it waits
    The model thread waits for clients as the iterative model does: in a
    selector over the listening sockets and a wake-up socketpair (so a stop
    can wake it), then ``accept()`` on the ready, non-blocking listener. Every
    client gets its own thread, which blocks in ``recv()``/``sendall()``
    exactly as in the iterative model. The kernel wakes whichever thread has
    work.

What it costs
    One thread per connection: a stack (the default size: it is address space,
    and only the pages a thread touches count against RSS, so a smaller one
    measured the same 20.5 KiB per idle connection; ``threading.stack_size`` would
    also change every other thread of the process), a kernel task, and a context
    switch per echo. The GIL lets one thread run
    Python at a time, so more cores do not help.

Where it breaks
    Thousands of threads: creation cost, scheduler load, and memory (about
    20 KiB RSS each). ``--max-connections`` bounds them; past it new clients are
    closed at once.

UDP (``--udp``)
    One more thread waits on the UDP sockets (with ``selectors``, beside its
    own wake-up pair for the stop) and echoes datagrams as they come, whatever
    the TCP clients do.

TLS (``--tls-cert``)
    Each connection thread does its own handshake (under one deadline) before
    echoing, so a slow handshake stalls nobody else.

Lifecycle::

    model thread:   socket() → bind() → listen() → epoll_wait() → accept() ─┬─> epoll_wait() ...
                                                                             │
    client thread:                                       recv() ⇄ sendall() ┘ ... close()
    udp thread:     select() → recvfrom() → sendto() → select() ...
    idle thread:    every sweep: shutdown() the connections idle past --idle-timeout

The idle limit is enforced by that one sweeping thread rather than by socket
timeouts: CPython implements a timeout as a ``poll()`` before every ``recv()`` and
``send()``, which cost about 15% more CPU per echo (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import selectors
import socket
import threading
import time

from sockecho.config import ServerConfig
from sockecho.core import EchoSession
from sockecho.servers.base import SocketCalls, Waker, sweep_interval
from sockecho.servers.blocking import BlockingModel


class ThreadingServer(BlockingModel):
    name = "threading"
    summary = "a thread per connection, each blocking in recv()/sendall()"
    idle_by_sweep = True  # one sweeping thread, not a poll() before every recv() and send()

    def __init__(self, config: ServerConfig, calls: SocketCalls | None = None) -> None:
        super().__init__(config, calls)
        self._datagram_waker = Waker() if config.udp else None
        self._serving = True
        self._sweeps_over = threading.Event()

    def wake(self) -> None:
        super().wake()
        if self._datagram_waker is not None:
            self._datagram_waker.wake()

    def abandon(self) -> None:
        super().abandon()
        if self._datagram_waker is not None:
            self._datagram_waker.close()

    def serve(self) -> None:
        datagram_thread = None
        if self._datagram_waker is not None:
            datagram_thread = threading.Thread(
                target=self._serve_datagrams, name="sockecho-udp", daemon=True
            )
            datagram_thread.start()
        sweeper = None
        if self.config.idle_timeout:
            sweeper = threading.Thread(target=self._sweep_idle, name="sockecho-idle", daemon=True)
            sweeper.start()
        try:
            while not self.stopping:
                accepted = self.next_client()
                if accepted is None:
                    break
                conn, addr = accepted
                session = self.admit_socket(conn, addr)
                if session is not None:
                    self._start_thread(conn, session)
        finally:
            if datagram_thread is not None and self._datagram_waker is not None:
                self._serving = False  # also when serve() ends on an error, not a stop
                self._datagram_waker.wake()
                datagram_thread.join()
                self._datagram_waker.close()
            self.wait_closed()  # every client thread closes its socket as it ends
            if sweeper is not None:
                self._sweeps_over.set()
                sweeper.join()

    def _sweep_idle(self) -> None:
        """The idle thread: close connections idle past the limit until the model stops."""
        interval = sweep_interval(self.config.idle_timeout)
        while not self._sweeps_over.wait(interval):
            self.sweep_idle_connections()

    def _serve_datagrams(self) -> None:
        """The UDP thread: wait for datagrams and echo them until a stop."""
        assert self._datagram_waker is not None
        with self.calls.new_selector() as waiting:
            for sock in self.datagram_sockets:
                sock.setblocking(False)
                waiting.register(sock, selectors.EVENT_READ)
            waiting.register(self._datagram_waker.reader, selectors.EVENT_READ)
            while self._serving and not self.stopping:
                held = [held.due for held in self.held_datagrams.values()]  # --fault reorder
                timeout = max(0.0, min(held) - time.monotonic()) if held else None
                for key, _events in waiting.select(timeout):
                    if key.fileobj is self._datagram_waker.reader:
                        self._datagram_waker.drain()
                    else:
                        assert isinstance(key.fileobj, socket.socket)
                        self.echo_datagrams(key.fileobj)
                for sock in list(self.held_datagrams):
                    self.release_held_datagram(sock)

    def _start_thread(self, conn: socket.socket, session: EchoSession) -> None:
        worker = threading.Thread(
            target=self.echo_until_closed,
            args=(conn, session),
            name=f"sockecho-{session.peer}",
            daemon=True,  # a stuck client must never keep the process alive
        )
        self.track(conn)  # before start(): a stop now must see this connection
        try:
            worker.start()
        except RuntimeError as exc:  # "can't start new thread": out of threads or memory
            self.close_tracked(conn)
            self.release(session, exc)
