"""The readiness machinery: one thread, non-blocking sockets, a readiness wait.

The ``select`` and ``selectors`` models are built on :class:`ReadinessModel`;
they differ only in how they ask the kernel which sockets are ready
(``select.select()`` with lists, or an epoll interest set). This is the course's
exercise 2 done right, in the order a student follows it:

1. **wait** (:meth:`ReadinessModel.run_loop`): block in the model's readiness
   wait until a socket is ready, a sweep is due or a stop is asked;
2. **accept** (:meth:`ReadinessModel.accept_ready`): take every waiting client
   from a ready listener, make it non-blocking, give it an
   :class:`~sockecho.core.EchoSession`;
3. **recv** (:meth:`ReadinessModel.on_readable`): read what arrived, once;
4. **send what fits**: ``send()`` on a non-blocking socket takes what the kernel
   has room for, maybe only part;
5. **keep the rest** in the session and wait until the socket is writable
   (:meth:`ReadinessModel.on_writable`); above the high-water mark, stop reading
   from that client until its echo drains below the low-water mark;
6. **close** (:meth:`ReadinessModel.drop`) when the client half-closed and every
   byte went back, or on an error of that connection alone.

Sockets are non-blocking: ``recv()`` and ``send()`` never wait, they raise
``BlockingIOError`` instead, so one slow client never stalls the others.
An exception while serving one connection closes that connection only
(:meth:`ReadinessModel.on_ready`); it never reaches the loop.

TLS (``--tls-cert``): the handshake is driven from the loop too (each
``do_handshake()`` step says whether it waits to read or to write); after it,
``recv()`` may also say "want read" (``SSLWantReadError``), and bytes the SSL
object already decrypted raise no readiness, so they are read at once
(``pending()``). An orderly close sends close_notify.

Faults (``--fault``): a connection with a :class:`~sockecho.core.FaultedSession`
leaves the fast path. Each read goes into the session, only what it allows is
sent (:meth:`ReadinessModel.faulted_step`), and when it says something is due
later (a held chunk, the next paced piece, a delayed close) a timer is set: a heap
of (due time, callback) whose earliest entry bounds the readiness wait's timeout
(:meth:`ReadinessModel.call_at`). Connections without faults never touch it.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import itertools
import socket
import ssl
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from functools import partial
from typing import cast

from sockecho import net
from sockecho.config import ServerConfig
from sockecho.core import EchoSession, FaultedSession
from sockecho.faults import FaultKind
from sockecho.servers.base import (
    ACCEPT_BACKOFF,
    EchoServer,
    SocketCalls,
    Waker,
    idle_connections,
    sweep_interval,
)

#: What a non-blocking recv()/send() raises when it must wait: for plain sockets
#: BlockingIOError; under TLS, the SSL object may need to read or to write first.
TRY_AGAIN = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class ReadinessModel(EchoServer):
    """Shared steps of the readiness models (``select``, ``selectors``).

    A model writes ``serve()`` (set up its wait, then :meth:`run_loop` with its
    ``wait_once``), calls :meth:`on_ready` for every ready socket, and keeps its
    interest in step with :meth:`watch` / :meth:`forget`.
    """

    def __init__(self, config: ServerConfig, calls: SocketCalls | None = None) -> None:
        super().__init__(config, calls)
        self._waker = Waker()
        self.sessions: dict[socket.socket, EchoSession] = {}
        #: TLS connections still handshaking (they have a session, but echo nothing yet)
        self.handshakes: dict[socket.socket, PendingHandshake] = {}
        #: monotonic time before which listeners are not watched (after EMFILE and friends)
        self.accept_paused_until = 0.0
        # Listeners reported ready in this turn: accepted after the turn's other events.
        self.ready_listeners: list[socket.socket] = []
        #: --fault's timers: (due, order, key, callback), earliest first; and each key's due
        self._timers: list[tuple[float, int, Hashable, Callable[[], None]]] = []
        self._timer_due: dict[Hashable, float] = {}
        self._timer_order = itertools.count()

    def wake(self) -> None:
        self._waker.wake()

    def abandon(self) -> None:
        super().abandon()
        self._waker.close()

    # -- 1. wait ----------------------------------------------------------------------------

    def run_loop(self, wait_once: Callable[[float], None]) -> None:
        """The loop both readiness models share: wait, dispatch, sweep, stop when asked.

        ``wait_once(timeout)`` is the model's own readiness wait; it calls
        :meth:`on_ready` for each ready socket. If anything else fails here, every
        connection is closed at once and the error goes to the caller.
        """
        interval = sweep_interval(
            self.config.idle_timeout,
            self.config.tls_handshake_timeout if self.tls_context else 0,
            self.config.proxy_header_timeout if self.config.proxy_protocol else 0,
        )
        next_sweep = time.monotonic() + interval
        timed = bool(self.faults.faults)  # only --fault sets timers: one local test otherwise
        drain_until: float | None = None
        try:
            while True:
                if self.stopping and drain_until is None:
                    drain_until = self.drain_deadline()
                    self.stop_accepting()
                if drain_until is not None and (
                    not self.sessions or time.monotonic() >= drain_until or not self.graceful
                ):
                    break
                wait_once(self.next_timeout(next_sweep, drain_until))
                if self.ready_listeners:
                    # Accept last: the connections' events of this turn come first, so a
                    # client that closed frees its slot before a new one is counted against
                    # --max-connections (a load generator closes 1000 connections and
                    # opens 1000 more at once: accepted first, they were refused).
                    for listener in self.ready_listeners:
                        self.accept_ready(listener)
                    self.ready_listeners.clear()
                if timed and self._timers:
                    self.run_timers()
                if time.monotonic() >= next_sweep:
                    self.sweep_idle()
                    next_sweep = time.monotonic() + interval
        finally:
            for conn, session in list(self.sessions.items()):
                self.drop(conn, session)
            self.close_listeners()
            self._waker.close()

    def on_ready(self, sock: socket.socket, readable: int, writable: int) -> None:
        """Dispatch one ready socket: a connection, a listener, a UDP socket or the waker.
        ``readable``/``writable``: true (nonzero) when the wait reported that event."""
        session = self.sessions.get(sock)
        if session is not None:
            try:
                if readable:
                    self.on_readable(sock, session)
                if writable and sock in self.sessions:  # reading may have closed it
                    self.on_writable(sock, session)
            except Exception as exc:  # a bug of ours or a library's: this connection only
                if sock in self.sessions:
                    self.drop(sock, session, exc)
        elif sock is self._waker.reader:
            self._waker.drain()
        elif sock in self.datagram_sockets:
            self.echo_datagrams(sock)
        elif sock in self.listeners and self.accepting():
            self.ready_listeners.append(sock)  # accepted once the turn's events are handled

    # -- 2. accept --------------------------------------------------------------------------

    def accept_ready(self, listener: socket.socket) -> None:
        """Accept every waiting client; when out of descriptors, stop watching the
        listeners until ``accept_paused_until`` (backing off, not spinning)."""
        while True:
            try:
                conn, addr = listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if self.accept_failed(exc):
                    self.accept_paused_until = time.monotonic() + ACCEPT_BACKOFF
                    return
                continue
            if not self.can_watch(conn):
                conn.close()
                continue
            session = self.admit_socket(conn, addr)
            if session is None:
                continue
            conn.setblocking(False)
            if self.tls_context is None or session.awaiting_header:
                self.sessions[conn] = session  # (TLS starts after the PROXY header)
                if self.config.identify is not None and not session.awaiting_header:
                    self.start_echo(conn, session)
                elif session.faulted:
                    self.faulted_step(conn, cast(FaultedSession, session))  # may fire at 0 bytes
                else:
                    self.watch_or_drop(conn, session)
            else:
                self.start_tls(conn, session)

    # -- 3. recv, 4. send what fits -----------------------------------------------------------

    def on_readable(self, conn: socket.socket, session: EchoSession) -> None:
        """recv() once and echo it at once; only what the kernel does not take is kept.

        The common case, nothing pending, sends straight from the received bytes:
        no copy into the session and no change of interest, so an echo costs one
        recv() and one send() (and its share of the readiness wait). Under TLS,
        bytes the SSL object still holds decrypted are read on (while the session
        wants more): the kernel has no readiness to report for them.
        """
        if conn in self.handshakes:
            self.continue_handshake(conn, session)
            return
        if session.bypass:  # no fast path: a PROXY header to read, or faults
            self.read_slowly(conn, session)
            return
        while True:
            try:
                data = conn.recv(self.config.read_size)
            except TRY_AGAIN:
                return  # (earlier passes of this loop left nothing pending)
            except OSError as exc:
                self.drop(conn, session, exc)
                return
            if data and not session.wants_write:
                try:
                    sent = conn.send(data)
                except TRY_AGAIN:
                    sent = 0  # (TLS retries the same bytes, now first in the session's buffer)
                except OSError as exc:
                    self.drop(conn, session, exc)
                    return
                session.echoed(sent)
                if sent == len(data):
                    # Only TLS can hold bytes no readiness announces: plain TCP asks nothing.
                    if self.tls_context is not None and session.wants_read and tls_buffered(conn):
                        continue
                    return
                data = data[sent:]  # the kernel took part: 5. the session keeps the rest
            break
        if data:
            session.data_received(data)
        else:  # b'': the client shut down its sending side (under TLS: or closed it)
            session.eof_received()
        self.on_writable(conn, session)

    def read_header(self, conn: socket.socket, session: EchoSession) -> None:
        """``--proxy-protocol``: recv() into the PROXY header parser, never echoed. Once the
        header is complete the echo starts (:meth:`start_echo`) with what followed it, or,
        under TLS, the handshake (the header is read exactly, never past its end). A bad
        header raises, and :meth:`on_ready` closes this connection."""
        tls_follows = self.tls_context is not None
        size = session.header_bytes_wanted if tls_follows else self.config.read_size
        try:
            data = conn.recv(size)
        except TRY_AGAIN:
            return
        except OSError as exc:
            self.drop(conn, session, exc)
            return
        first = self.header_received(session, data)
        if first is None:
            return
        if tls_follows:  # the ClientHello is still in the kernel: the SSL object reads it
            self.forget(conn)
            del self.sessions[conn]
            self.start_tls(conn, session)
        else:
            self.start_echo(conn, session, first)

    def start_echo(self, conn: socket.socket, session: EchoSession, first: bytes = b"") -> None:
        """The preamble is over: queue the ``--identify`` line, then ``first`` (the client's
        bytes after its PROXY header), and send what fits."""
        line = self.identity(session, conn, conn if isinstance(conn, ssl.SSLSocket) else None)
        if line:
            session.send_first(line)
        if first:
            session.data_received(first)
        self.on_writable(conn, session)

    # -- 5. keep the rest, send it when the socket is writable --------------------------------

    def on_writable(self, conn: socket.socket, session: EchoSession) -> None:
        """send() pending echo until the kernel's buffer is full; a partial send keeps the rest."""
        if conn in self.handshakes:
            self.continue_handshake(conn, session)
            return
        if session.faulted:
            self.faulted_step(conn, cast(FaultedSession, session))
            return
        try:
            while session.wants_write:
                sent = conn.send(session.data_to_send())
                session.data_sent(sent)
        except TRY_AGAIN:
            # The client is not reading fast enough: wait until writable again. (With
            # renegotiation refused, a TLS send never has to wait for a read.)
            pass
        except OSError as exc:
            self.drop(conn, session, exc)
            return
        if session.finished:
            self.drop(conn, session)
        elif session.wants_read and tls_buffered(conn):
            self.on_readable(conn, session)  # reading resumed below low water: catch up
        else:
            self.watch_or_drop(conn, session)

    # -- 6. close ---------------------------------------------------------------------------

    def drop(
        self,
        conn: socket.socket,
        session: EchoSession,
        error: BaseException | None = None,
        *,
        idle: bool = False,
    ) -> None:
        """Close one connection and account for it (an orderly TLS end says close_notify)."""
        self.forget(conn)
        del self.sessions[conn]
        if session.faulted:
            self._timer_due.pop(conn, None)  # its timer, if any, finds nothing to do
        handshaking = self.handshakes.pop(conn, None) is not None
        if isinstance(conn, ssl.SSLSocket) and session.finished and not handshaking:
            send_close_notify(conn)
        conn.close()
        self.release(session, error, idle=idle)

    # -- what the model says about its wait ---------------------------------------------------

    def can_watch(self, conn: socket.socket) -> bool:
        """Whether this loop can wait on ``conn`` (the select model says no at FD_SETSIZE)."""
        return True

    def watch(self, conn: socket.socket, session: EchoSession) -> None:
        """Start (or update) waiting on ``conn`` for its :meth:`interest`. Default: nothing."""

    def forget(self, conn: socket.socket) -> None:
        """Stop waiting on connection ``conn`` (before it is closed). Default: nothing."""

    def interest(self, conn: socket.socket, session: EchoSession) -> tuple[bool, bool]:
        """(wait to read, wait to write) for ``conn``: what its session, or its TLS
        handshake, is waiting for."""
        handshake = self.handshakes.get(conn)
        if handshake is not None:
            return not handshake.wants_write, handshake.wants_write
        return session.wants_read, session.wants_write

    def watch_or_drop(self, conn: socket.socket, session: EchoSession) -> None:
        """:meth:`watch`, ending only this connection if the kernel refuses (epoll_ctl can
        fail with ENOMEM, or ENOSPC past fs.epoll.max_user_watches)."""
        try:
            self.watch(conn, session)
        except OSError as exc:
            self.drop(conn, session, exc)

    def accepting(self) -> bool:
        """Whether to watch the listeners now (not while backing off from EMFILE)."""
        if self.accept_paused_until and time.monotonic() >= self.accept_paused_until:
            self.accept_paused_until = 0.0
        return not self.accept_paused_until and not self.stopping

    def stop_accepting(self) -> None:
        """Close the listeners (a stop): the model unregisters them first if it must."""
        self.close_listeners()

    def next_timeout(self, next_sweep: float, drain_until: float | None) -> float:
        """Seconds the readiness wait may block: until the next sweep or the drain deadline."""
        until = next_sweep if drain_until is None else min(next_sweep, drain_until)
        if self.accept_paused_until:
            until = min(until, self.accept_paused_until)
        if self._timers:
            until = min(until, self._timers[0][0])
        return max(0.0, until - time.monotonic())

    # -- faults: the slow path and its timers ---------------------------------------------------

    def call_at(self, due: float, key: Hashable, callback: Callable[[], None]) -> None:
        """Run ``callback`` at monotonic time ``due`` (or just after), once per ``key``.

        While an earlier timer of ``key`` is pending a later one is not added: the
        earlier callback asks the session again and sets the next. An earlier one
        supersedes a later one (left in the heap, skipped when it comes up).
        """
        scheduled = self._timer_due.get(key)
        if scheduled is not None and scheduled <= due:
            return
        self._timer_due[key] = due
        heapq.heappush(self._timers, (due, next(self._timer_order), key, callback))

    def run_timers(self) -> None:
        """Run every callback that is due (skipping superseded ones and closed connections)."""
        timers, now = self._timers, time.monotonic()
        while timers and timers[0][0] <= now:
            due, _, key, callback = heapq.heappop(timers)
            if self._timer_due.get(key) == due:
                del self._timer_due[key]
                callback()

    def read_slowly(self, conn: socket.socket, session: EchoSession) -> None:
        """The reads that bypass the fast path: a PROXY header (the preamble: nothing is
        echoed) or a connection with faults (they decide what goes when)."""
        if session.awaiting_header:
            self.read_header(conn, session)
        else:
            self.faulted_readable(conn, cast(FaultedSession, session))

    def faulted_readable(self, conn: socket.socket, session: FaultedSession) -> None:
        """recv() what the faults allow (read-bandwidth) into the session; then
        :meth:`faulted_step`."""
        size = session.read_size(self.config.read_size)
        if size and session.wants_read:
            try:
                data = conn.recv(size)
            except TRY_AGAIN:
                pass
            except OSError as exc:
                self.drop(conn, session, exc)
                return
            else:
                if data:
                    session.data_received(data)
                else:  # the client's EOF
                    session.eof_received()
        self.faulted_step(conn, session)

    def faulted_step(self, conn: socket.socket, session: FaultedSession) -> None:
        """Send what the faults let go now, carry out a fault that fired, close when
        finished; else wait for readiness (:meth:`watch`) and for the next due time."""
        try:
            while True:
                with session.data_to_send() as view:  # released before data_sent() moves it
                    wanted = len(view)
                    sent = conn.send(view) if wanted else 0
                session.data_sent(sent)
                if sent < wanted or not wanted:
                    break  # all that may go now went, or the kernel is full (writable later)
        except TRY_AGAIN:
            pass
        except OSError as exc:
            self.drop(conn, session, exc)
            return
        fired = session.fired()
        if fired is not None:
            self.fault_fired(session, fired)
            if fired is FaultKind.RESET_AFTER:
                net.reset_on_close(conn)
                self.drop(conn, session)
                return
            if fired is FaultKind.LIMIT_DATA:
                with contextlib.suppress(OSError):  # the FIN; input is now read and discarded
                    conn.shutdown(socket.SHUT_WR)
        if session.finished:
            if session.close_delayed:
                self.fault_fired(session, FaultKind.SLOW_CLOSE)
            self.drop(conn, session)
            return
        due = session.due()
        if due is not None:
            self.call_at(due, conn, partial(self._faulted_timer, conn))
        self.watch_or_drop(conn, session)

    def _faulted_timer(self, conn: socket.socket) -> None:
        session = self.sessions.get(conn)
        if session is not None:
            self.faulted_step(conn, cast(FaultedSession, session))

    def datagram_held(self, sock: socket.socket, due: float) -> None:
        self.call_at(due, sock, partial(self.release_held_datagram, sock))

    # -- TLS handshakes -----------------------------------------------------------------------

    def start_tls(self, conn: socket.socket, session: EchoSession) -> None:
        """Wrap accepted ``conn`` in TLS and take its handshake as far as it goes now."""
        assert self.tls_context is not None
        try:
            tls_conn = self.tls_context.wrap_socket(
                conn, server_side=True, do_handshake_on_connect=False
            )
        except OSError as exc:
            self.stats.tls_handshake_failed()
            conn.close()
            self.release(session, exc)
            return
        self.sessions[tls_conn] = session
        deadline = time.monotonic() + self.config.tls_handshake_timeout
        self.handshakes[tls_conn] = PendingHandshake(deadline)
        self.continue_handshake(tls_conn, session)

    def continue_handshake(self, conn: socket.socket, session: EchoSession) -> None:
        """Take the TLS handshake of ``conn`` one step further, as far as the socket allows."""
        assert isinstance(conn, ssl.SSLSocket)
        handshake = self.handshakes[conn]
        try:
            conn.do_handshake()
        except ssl.SSLWantReadError:
            handshake.wants_write = False
        except ssl.SSLWantWriteError:
            handshake.wants_write = True
        except OSError as exc:  # garbage instead of a ClientHello, a reset...
            self.stats.tls_handshake_failed()
            self.drop(conn, session, exc)
            return
        else:
            del self.handshakes[conn]
            line = self.identity(session, conn, conn)
            if line:
                session.send_first(line)
        self.watch_or_drop(conn, session)  # echo interest now, or the handshake's next step

    # -- the sweep --------------------------------------------------------------------------

    def sweep_idle(self) -> None:
        """Close handshakes past their deadline and connections idle past the limit."""
        now = time.monotonic()
        for conn, handshake in list(self.handshakes.items()):
            if now >= handshake.deadline:
                self.stats.tls_handshake_failed()
                timeout = TimeoutError(errno.ETIMEDOUT, "TLS handshake timed out")
                self.drop(conn, self.sessions[conn], timeout)
        if self.config.proxy_protocol is not None:
            for conn, session in list(self.sessions.items()):
                if session.header_overdue(now):
                    self.drop(conn, session, self.header_timeout())
        for conn in idle_connections(self.sessions, lambda conn: conn):
            self.drop(conn, self.sessions[conn], idle=True)


@dataclass(slots=True)
class PendingHandshake:
    """A TLS connection that has not finished its handshake."""

    deadline: float  # monotonic time at which it is closed if still handshaking
    wants_write: bool = False  # the SSL object waits to write (else to read)


def tls_buffered(conn: socket.socket) -> bool:
    """Whether the SSL object holds decrypted bytes not read yet (no readiness announces them)."""
    return isinstance(conn, ssl.SSLSocket) and conn.pending() > 0


def send_close_notify(conn: ssl.SSLSocket) -> None:
    """Say close_notify on a non-blocking TLS socket before it is closed.

    ``unwrap()`` writes ours, then would read the client's: on a non-blocking socket
    that read says "want read" at once, which is fine, ours is already with the
    kernel. Errors are ignored: the echo is complete, only the courtesy is lost.
    """
    with contextlib.suppress(OSError, ValueError):
        conn.unwrap()
