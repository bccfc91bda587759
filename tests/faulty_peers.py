"""Misbehaving peers for the measuring tools' tests: echo servers that corrupt, reset,
stall or drop, and a relay that adds delay. Each is a small thread-per-connection
server on 127.0.0.1, port 0, closed (every socket and thread) when its block ends."""

from __future__ import annotations

import contextlib
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from types import TracebackType

from tests.conftest import WAIT, reset

#: Bytes per recv() in the peers.
CHUNK = 65536

Handler = Callable[[socket.socket, "TcpPeer"], None]


class TcpPeer:
    """A TCP server calling ``handler(conn, peer)`` in a thread per connection."""

    def __init__(self, handler: Handler, tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.tls = tls
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address: tuple[str, int] = self.listener.getsockname()[:2]
        self.lock = threading.Lock()
        self.connections: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        self.recv_calls = 0  # shared among connections, under lock
        self.accepting = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> TcpPeer:
        self.accepting.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes accept()
        self.listener.close()
        self.accepting.join(WAIT)
        with self.lock:
            for conn in self.connections:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)  # wakes recv()
            threads = list(self.threads)
        for thread in threads:
            thread.join(WAIT)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            with self.lock:
                self.connections.append(conn)
                self.threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self.tls is not None:
                conn.settimeout(WAIT)
                conn = self.tls.wrap_socket(conn, server_side=True)
                conn.settimeout(None)
                with self.lock:
                    self.connections.append(conn)
            self.handler(conn, self)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                conn.close()

    def count_recv(self) -> int:
        with self.lock:
            self.recv_calls += 1
            return self.recv_calls


def echo_handler(conn: socket.socket, peer: TcpPeer) -> None:
    while data := conn.recv(CHUNK):
        conn.sendall(data)


def corrupting_handler(every: int) -> Handler:
    """Echo, but flip the first byte of every ``every``-th chunk."""

    def handler(conn: socket.socket, peer: TcpPeer) -> None:
        while data := conn.recv(CHUNK):
            if peer.count_recv() % every == 0:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            conn.sendall(data)

    return handler


def ending_handler(after: int, end: Callable[[socket.socket], None]) -> Handler:
    """Echo ``after`` chunks on each connection, take one more request (it is in flight when
    the end comes), then ``end(conn)``; the connection is closed after it."""

    def handler(conn: socket.socket, peer: TcpPeer) -> None:
        for _ in range(after):
            data = conn.recv(CHUNK)
            if not data:
                return
            conn.sendall(data)
        conn.recv(CHUNK)
        end(conn)

    return handler


def resetting_handler(after: int) -> Handler:
    """Echo ``after`` chunks on each connection, then reset it (RST, not FIN)."""
    return ending_handler(after, reset)


def closing_handler(after: int) -> Handler:
    """Echo ``after`` chunks on each connection, then close it (FIN) with a request in flight."""
    return ending_handler(after, lambda conn: None)  # TcpPeer closes it when the handler ends


def swallowing_handler(conn: socket.socket, peer: TcpPeer) -> None:
    """Read everything, echo nothing: every request times out."""
    while conn.recv(CHUNK):
        peer.count_recv()


def stalling_handler(at_recv: int, stall: float) -> Handler:
    """Echo; once, at the ``at_recv``-th recv of the whole server, hold it ``stall`` seconds."""

    def handler(conn: socket.socket, peer: TcpPeer) -> None:
        while data := conn.recv(CHUNK):
            if peer.count_recv() == at_recv:
                time.sleep(stall)  # the stall under test, not synchronisation
            conn.sendall(data)

    return handler


class UdpPeer:
    """A UDP echo server that drops the datagrams ``drop(payload)`` says to drop."""

    def __init__(self, drop: Callable[[bytes], bool] = lambda payload: False) -> None:
        self.drop = drop
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.address: tuple[str, int] = self.sock.getsockname()
        self.received = 0
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> UdpPeer:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stopping = True
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as waker:
            waker.sendto(b"", self.address)  # wakes recvfrom()
        self.thread.join(WAIT)
        self.sock.close()

    def _serve(self) -> None:
        while True:
            payload, client = self.sock.recvfrom(CHUNK)
            if self.stopping:
                return
            self.received += 1
            if not self.drop(payload):
                self.sock.sendto(payload, client)


class DelayingRelay:
    """A TCP relay that holds every chunk ``delay`` seconds in each direction.

    Each direction has a reader thread that stamps chunks as they arrive and a
    writer thread that forwards each one when its time has come, so the delay
    is added per chunk without limiting throughput (as a long link would).
    """

    def __init__(self, upstream: tuple[str, int], delay: float) -> None:
        self.upstream = upstream
        self.delay = delay
        self.peer = TcpPeer(self._relay)
        self.address = self.peer.address

    def __enter__(self) -> DelayingRelay:
        self.peer.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.peer.__exit__(None, None, None)

    def _relay(self, client: socket.socket, peer: TcpPeer) -> None:
        server = socket.create_connection(self.upstream, timeout=WAIT)
        server.settimeout(None)
        server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with peer.lock:
            peer.connections.append(server)
        threads = [
            *self._direction(client, server),
            *self._direction(server, client),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT * 3)
        server.close()

    def _direction(self, source: socket.socket, sink: socket.socket) -> list[threading.Thread]:
        held: queue.Queue[tuple[float, bytes]] = queue.Queue()

        def read() -> None:
            try:
                while data := source.recv(CHUNK):
                    held.put((time.monotonic() + self.delay, data))
            except OSError:
                pass
            held.put((0.0, b""))

        def write() -> None:
            for due, data in iter_queue(held):
                pause = due - time.monotonic()
                if pause > 0:
                    time.sleep(pause)  # the added link delay itself
                try:
                    sink.sendall(data)
                except OSError:
                    break
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

        return [
            threading.Thread(target=read, daemon=True),
            threading.Thread(target=write, daemon=True),
        ]


def iter_queue(held: queue.Queue[tuple[float, bytes]]) -> Iterator[tuple[float, bytes]]:
    while True:
        due, data = held.get(timeout=WAIT * 3)
        if not data:
            return
        yield due, data
