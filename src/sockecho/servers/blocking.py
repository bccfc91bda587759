"""The blocking machinery: wait for a client, accept it, serve it with blocking calls.

The ``iterative`` and ``threading`` models are built on :class:`BlockingModel`;
they differ only in who serves an accepted client (the accepting thread itself,
or a thread of the client's own). Everything else is here:

* waiting for a client: a selector over the listening sockets and a
  :class:`~sockecho.servers.base.Waker`, so that a stop wakes the wait and
  several listening addresses (127.0.0.1 and ::1) are watched at once; then
  ``accept()`` on the ready, non-blocking listener;
* serving it: :meth:`BlockingModel.echo_until_closed`, exercise 1's loop
  (``recv()`` then ``sendall()`` until ``recv()`` returns ``b''``);
* TLS: the accepted socket is wrapped and its handshake done under one deadline;
  an orderly end sends close_notify before the socket is closed;
* stopping: open connection sockets are tracked; when a stop's drain time is
  over, a timer shuts the remaining ones down, which wakes whatever thread is
  blocked in their ``recv()`` or ``sendall()``. A model whose loop fails on its
  own starts the same drain before it lets the error out.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import ssl
import threading
import time
from typing import ClassVar, cast

from sockecho import net
from sockecho.config import ServerConfig
from sockecho.core import EchoSession, FaultedSession
from sockecho.faults import FaultKind
from sockecho.servers.base import ACCEPT_BACKOFF, EchoServer, SocketCalls, Waker, idle_connections

#: Seconds between looks of a stalled connection's thread (stall-after) at whether a stop or
#: the idle sweep ended it: it reads nothing, so no readiness can tell it.
STALL_LOOK_INTERVAL = 0.25
#: Seconds an orderly TLS close waits to hand its close_notify to the kernel (it never
#: waits for the client's: the client may have half-closed with a plain FIN).
CLOSE_NOTIFY_TIMEOUT = 1.0


class BlockingModel(EchoServer):
    """Shared plumbing of the blocking models (``iterative``, ``threading``).

    They wait for a client in a selector over the listening sockets and a
    :class:`Waker` (so a stop request can wake them, and several listening
    addresses are watched at once), then call ``accept()`` on the ready
    listener, which is non-blocking (a client that left meanwhile costs an
    ``EAGAIN``, not a stall). The accepted socket is made blocking: serving a
    client is plain blocking ``recv()``/``sendall()``. Open connection sockets
    are tracked so that a stop can shut down the ones still open when the drain
    time is over, which wakes whatever thread is blocked in their ``recv()``.
    """

    #: Echo UDP datagrams in :meth:`next_client` while waiting for a client (iterative);
    #: otherwise the model serves its UDP sockets elsewhere (threading: their own thread).
    echo_datagrams_while_waiting: ClassVar[bool] = False
    #: Enforce the idle limit by calling :meth:`sweep_idle_connections` from a thread of the
    #: model's own (threading) instead of with a socket timeout (iterative). CPython
    #: implements a socket timeout as a poll() before every recv() and send(): two more
    #: system calls and GIL hand-offs per echo (docs/PERFORMANCE.md).
    idle_by_sweep: ClassVar[bool] = False

    def __init__(self, config: ServerConfig, calls: SocketCalls | None = None) -> None:
        super().__init__(config, calls)
        self._waker = Waker()
        # Created on first use and kept: a selector per accept would need a fresh descriptor
        # exactly when they may have run out (EMFILE), and would come and go under fd counts.
        self._waiting: selectors.BaseSelector | None = None
        self._open: set[socket.socket] = set()
        self._sessions: dict[socket.socket, EchoSession] = {}  # of open connections
        self._idle_closed: set[socket.socket] = set()  # shut down by an idle sweep
        self._open_changed = threading.Condition()
        self._expiry: threading.Timer | None = None
        self._drain_over = False  # set once a stop's drain time is over

    def wake(self) -> None:
        deadline = self.drain_deadline()
        with self._open_changed:
            # Stop accepting at once, even while the serving thread is busy with a client
            # (the iterative model): on Linux shutdown(SHUT_RD) takes a listening socket out
            # of the LISTEN state, so new clients are refused instead of queueing in the
            # backlog. Under the lock close_listeners() takes, so the descriptor shut down
            # is never one that was just closed and reused.
            for listener in self.listeners:
                with contextlib.suppress(OSError):
                    listener.shutdown(socket.SHUT_RD)
            self._waker.wake()
            if self._expiry is not None:
                self._expiry.cancel()
            self._expiry = threading.Timer(
                max(0.0, deadline - time.monotonic()), self._shutdown_open
            )
            self._expiry.daemon = True
            self._expiry.name = "sockecho-drain-timer"  # as --trace names it
            self._expiry.start()

    def abandon(self) -> None:
        super().abandon()
        self._waker.close()

    def close_listeners(self) -> None:
        with self._open_changed:  # see wake()
            super().close_listeners()

    def _shutdown_open(self) -> None:
        with self._open_changed:
            self._drain_over = True
            for conn in self._open:
                with contextlib.suppress(OSError):
                    # Wakes the blocked recv()/sendall(). The plain socket's shutdown, even
                    # under TLS: SSLSocket.shutdown() would drop the SSL state under the
                    # feet of the thread using it.
                    socket.socket.shutdown(conn, socket.SHUT_RDWR)

    def next_client(self) -> tuple[socket.socket, net.SockAddr] | None:
        """Wait for a connection and accept it; None when stopping.

        With :attr:`echo_datagrams_while_waiting` (the iterative model), UDP
        datagrams that arrive meanwhile are echoed here: its only chance to.
        """
        if self._waiting is None:  # one selector for the server's life, not one per client
            self._waiting = self.calls.new_selector()
            for sock in self.listeners:
                sock.setblocking(False)
                self._waiting.register(sock, selectors.EVENT_READ)
            if self.echo_datagrams_while_waiting:
                for sock in self.datagram_sockets:
                    sock.setblocking(False)
                    self._waiting.register(sock, selectors.EVENT_READ)
            self._waiting.register(self._waker.reader, selectors.EVENT_READ)
        while not self.stopping:
            for key, _events in self._waiting.select():
                if key.fileobj is self._waker.reader:
                    self._waker.drain()
                    continue
                ready = key.fileobj
                assert isinstance(ready, socket.socket)
                if ready.type == socket.SOCK_DGRAM:
                    self.echo_datagrams(ready)
                    continue
                try:
                    conn, addr = ready.accept()
                except BlockingIOError:
                    continue  # the client already left
                except OSError as exc:
                    if self.accept_failed(exc):
                        # Back off on the waker alone (a stop still interrupts it): the
                        # listener stays readable while the client waits, so waiting on it
                        # too would return at once and spin.
                        self.calls.select([self._waker.reader], [], [], ACCEPT_BACKOFF)
                    continue
                conn.setblocking(True)
                return conn, addr
        return None

    def track(self, conn: socket.socket) -> None:
        with self._open_changed:
            self._open.add(conn)
            # Admitted just before a stop and tracked after the drain ended: no drain for it.
            # (A stop that arrives between admission and here must not cut everyone else's
            # drain short: the expiry timer will find this connection in _open in time.)
            if self._drain_over:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)

    def retrack(self, old: socket.socket, new: socket.socket) -> None:
        """``new`` replaces tracked ``old`` (TLS wraps the accepted socket in a new object)."""
        with self._open_changed:
            self._open.discard(old)
            self._open.add(new)

    def close_tracked(self, conn: socket.socket) -> None:
        """Close a connection's socket and stop tracking it, in one step under the lock.

        Closing first means :meth:`wait_closed` (and so ``serve()``) returns only once
        every connection socket is really closed; holding the lock means the drain's
        ``shutdown()`` never reaches a descriptor number that is being closed and reused.
        """
        with self._open_changed:
            self._open.discard(conn)
            self._sessions.pop(conn, None)  # the idle sweep looks only at open ones
            conn.close()
            self._open_changed.notify_all()

    def wait_closed(self) -> None:
        """After the accept loop ended: wait for open connections (the drain), then clean up.

        When the loop ended on an error rather than a stop, this starts the stop itself:
        open connections get the drain time, then are shut down, so the error reaches the
        caller within ``drain_timeout`` (instead of whenever the clients leave).
        """
        if not self.stopping:
            self.request_stop()
        if self._waiting is not None:
            self._waiting.close()
        self.close_listeners()
        with self._open_changed:
            self._open_changed.wait_for(lambda: not self._open)
            if self._expiry is not None:
                self._expiry.cancel()
        self._waker.close()

    def echo_until_closed(self, conn: socket.socket, session: EchoSession) -> None:
        """The blocking echo loop of exercise 1: recv, sendall, until the peer is done.

        ``sendall`` blocks while the client does not read: that is this design's
        back-pressure, and it holds at most one ``read_size`` buffer per client.
        """
        error: BaseException | None = None
        idle = False
        self.track(conn)
        try:
            if self.tls_context is not None:
                if session.awaiting_header:  # the PROXY header comes before the handshake
                    self.read_header(conn, session, exact=True)
                conn, error = self.tls_accept(conn)
                if error is not None:
                    return
            first = self.read_header(conn, session) if session.awaiting_header else b""
            line = self.identity(session, conn, conn if isinstance(conn, ssl.SSLSocket) else None)
            if line:
                conn.sendall(line)
            if first and session.faulted:
                session.data_received(first)  # echoed as the faults allow, below
            elif first:
                conn.sendall(first)
                session.echoed(len(first))
            if self.idle_by_sweep:  # the socket that echoes (after TLS) is the one swept
                self._sessions[conn] = session
                conn.settimeout(None)
            else:
                conn.settimeout(self.config.idle_timeout or None)
            if session.faulted:
                self.echo_with_faults(conn, cast(FaultedSession, session))
                return
            while True:
                data = conn.recv(self.config.read_size)
                if not data:  # b'': the client shut down its sending side (or closed)
                    break
                conn.sendall(data)
                session.echoed(len(data))
            if isinstance(conn, ssl.SSLSocket):
                send_close_notify(conn)
        except TimeoutError:
            idle = True
        except Exception as exc:  # reset, broken pipe, shut down by a stop, even a bug of ours:
            error = exc  # this client only
        finally:
            self.close_tracked(conn)
            if conn in self._idle_closed:  # the sweep's shutdown ended the recv()/sendall()
                self._idle_closed.discard(conn)
                idle, error = True, None
            self.release(session, error, idle=idle)

    def echo_with_faults(self, conn: socket.socket, session: FaultedSession) -> None:
        """The echo loop of a connection with faults (threading): the session says what may
        be sent and read now; the thread waits for its socket or the session's next due time,
        whichever comes first. Errors end it as in :meth:`echo_until_closed`."""
        with self.calls.new_selector() as waiting:
            waiting.register(conn, selectors.EVENT_READ)
            while True:
                while True:
                    with session.data_to_send() as view:  # released before data_sent() moves it
                        sent = len(view)
                        if sent:  # (not even b"": after limit-data's FIN that is EPIPE)
                            conn.sendall(view)
                    if not sent:
                        break
                    session.data_sent(sent)
                fired = session.fired()
                if fired is not None:
                    self.fault_fired(session, fired)
                    if fired is FaultKind.RESET_AFTER:
                        net.reset_on_close(conn)  # the close in echo_until_closed resets
                        return
                    if fired is FaultKind.LIMIT_DATA:
                        conn.shutdown(socket.SHUT_WR)  # the FIN; input is read and discarded
                if session.finished:
                    if session.close_delayed:
                        self.fault_fired(session, FaultKind.SLOW_CLOSE)
                    return
                due = session.due()
                wait = None if due is None else max(0.0, due - time.monotonic())
                if session.wants_read:
                    if waiting.select(wait):
                        data = conn.recv(session.read_size(self.config.read_size))
                        if data:
                            session.data_received(data)
                        else:
                            session.eof_received()
                elif wait is not None:
                    time.sleep(wait)  # held, paced or above high water: only time helps
                else:  # stalled: nothing changes until a stop or the idle sweep ends it
                    with self._open_changed:
                        ended = self._drain_over or conn in self._idle_closed
                    if ended:
                        return
                    time.sleep(STALL_LOOK_INTERVAL)

    def read_header(
        self, conn: socket.socket, session: EchoSession, *, exact: bool = False
    ) -> bytes:
        """``--proxy-protocol``: read the PROXY header (never echoed) under its deadline; the
        client's bytes after it. Raises ProxyHeaderError (bad, late or missing header) or
        SourceLimitReached, which end this connection. ``exact``: never read past the
        header (TLS follows: the SSL object reads the rest)."""
        while True:
            remaining = session.header_deadline - time.monotonic()
            if remaining <= 0:
                raise self.header_timeout()
            conn.settimeout(remaining)
            size = session.header_bytes_wanted if exact else self.config.read_size
            try:
                data = conn.recv(size)
            except TimeoutError:
                raise self.header_timeout() from None
            first = self.header_received(session, data)
            if first is not None:
                return first

    def sweep_idle_connections(self) -> None:
        """Shut down every connection idle past the limit; its thread then ends as an idle
        close. Under the lock :meth:`close_tracked` takes, so a closed socket is never touched."""
        with self._open_changed:
            for conn in idle_connections(self._sessions, lambda conn: conn):
                self._idle_closed.add(conn)
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)  # wakes the blocked recv()/sendall()

    def tls_accept(self, conn: socket.socket) -> tuple[socket.socket, OSError | None]:
        """Wrap accepted ``conn`` in TLS and complete the handshake: (the socket to use, the
        error that ended the handshake or None).

        The timeout is a deadline for the whole handshake, not for each read in it, so a
        client sending its ClientHello a byte at a time gets no longer than a silent one.
        """
        assert self.tls_context is not None
        conn.settimeout(self.config.tls_handshake_timeout)
        try:
            tls_conn = self.tls_context.wrap_socket(
                conn, server_side=True, do_handshake_on_connect=False
            )
        except OSError as exc:
            self.stats.tls_handshake_failed()
            return conn, exc
        self.retrack(conn, tls_conn)
        try:
            tls_conn.do_handshake()
        except OSError as exc:  # garbage instead of a ClientHello, a reset, the deadline
            self.stats.tls_handshake_failed()
            return tls_conn, exc
        return tls_conn, None


def send_close_notify(conn: ssl.SSLSocket) -> None:
    """End a TLS connection in order: our close_notify, then the socket may be closed.

    ``unwrap()`` sends it and then reads for the client's; the client may already
    have half-closed with a plain FIN (sockecho's own client does), so that read
    ends at once, and a short timeout bounds it in any case. Failures are ignored:
    the echo is complete, only the courtesy is lost.
    """
    conn.settimeout(CLOSE_NOTIFY_TIMEOUT)
    with contextlib.suppress(OSError, ValueError):
        conn.unwrap()
