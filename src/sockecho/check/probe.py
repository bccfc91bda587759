"""What a case's probe works with: a :class:`Probe` (the target, the case's deadline, its
random numbers, the connections it opened) and :class:`Failure`, raised with Expected /
Actual / the usual cause when the server gets something wrong.

Probes are ordinary blocking client code. Every wait is bounded by the case's deadline:
each blocking call gets the time that is left as its socket timeout, so a hung server
turns into a :class:`Failure` ("nothing came back for 5 s"), never into a hung checker.
The runner keeps a second guard: if a probe still runs after its deadline, it closes the
probe's sockets (:meth:`Probe.abort`), which wakes any call still blocked on them.
"""

from __future__ import annotations

import contextlib
import random
import socket
import ssl
import threading
import time
from dataclasses import dataclass

from sockecho.client import Channel, connect_tcp, handshake_error
from sockecho.errors import ClientError
from sockecho.net import resolve
from sockecho.tls import DuplexTLS


class Failure(Exception):
    """The server broke the case's requirement. Each part is a sentence for a learner."""

    def __init__(self, expected: str, actual: str, cause: str = "") -> None:
        super().__init__(actual)
        self.expected = expected
        self.actual = actual
        self.cause = cause


@dataclass(frozen=True, slots=True)
class Finding:
    """What a probe returns when nothing failed: ``note`` is the fact worth reporting
    (how much was buffered, how much was lost); ``informational`` and ``non_strict``
    lower the verdict from PASSED."""

    note: str = ""
    informational: bool = False
    non_strict: bool = False
    expected: str = ""


#: Bytes asked of recv() at a time.
READ_SIZE = 64 * 1024


class Probe:
    """One case's view of the target. Not shared between cases."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: ssl.SSLContext | None,
        timeout: float,
        rng: random.Random,
    ) -> None:
        self.host = host
        self.port = port
        self.tls = tls
        self.rng = rng
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self.aborted = False

    def remaining(self) -> float:
        """Seconds left before the deadline (a little above 0 at worst: a timeout of 0
        would make the socket non-blocking)."""
        return max(self.deadline - time.monotonic(), 0.001)

    def restart_deadline(self) -> None:
        """A new deadline for a case made of rounds (each round may take ``timeout``)."""
        self.deadline = time.monotonic() + self.timeout

    def connect(self, *, handshake: bool = True) -> Connection:
        """A new connection (over TLS when checking TLS); a refused or failed connection is
        a :class:`Failure` naming what happened. ``handshake=False`` leaves the TLS
        handshake to :meth:`Connection.handshake` (a server serving one client at a time
        does not answer it while another client is connected)."""
        try:
            sock = connect_tcp(self.host, self.port, self.remaining())
        except ClientError as exc:
            raise Failure("a connection", exc.message) from None
        self._track(sock)
        connection = Connection(self, sock)
        if handshake and not connection.handshake():
            raise Failure(
                "a TLS handshake", f"the server did not complete it within {self.timeout:g} s"
            )
        return connection

    def open_datagram(self) -> tuple[socket.socket, tuple[str, int]]:
        """An unconnected UDP socket and the server's address (replies are read with
        recvfrom, so a reply from another port is seen as such)."""
        family, sockaddr = resolve(self.host, self.port, socket.SOCK_DGRAM, passive=False)[0]
        sock = socket.socket(family, socket.SOCK_DGRAM)
        self._track(sock)
        return sock, (str(sockaddr[0]), int(sockaddr[1]))

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.aborted:
                sock.close()

    def abort(self) -> None:
        """Close every socket of this probe (from the runner, when the deadline passed)."""
        with self._lock:
            self.aborted = True
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close_all(self) -> None:
        with self._lock:
            sockets, self._sockets = list(self._sockets), []
        for sock in sockets:
            sock.close()


class Connection:
    """A probe's TCP connection (``channel`` is the socket itself or its TLS layer)."""

    def __init__(self, probe: Probe, sock: socket.socket) -> None:
        self.probe = probe
        self.sock = sock
        self.channel: Channel = sock
        self._tls = DuplexTLS(sock, probe.tls, probe.host) if probe.tls is not None else None

    def handshake(self, wait: float | None = None) -> bool:
        """Complete the TLS handshake (nothing to do without TLS): False if it did not
        finish within ``wait`` seconds (default: the rest of the deadline); it may be
        called again to go on waiting."""
        if self._tls is None or self.channel is self._tls:
            return True
        self.sock.settimeout(min(wait, self.probe.remaining()) if wait else self.probe.remaining())
        try:
            self._tls.handshake()
        except TimeoutError:
            return False
        except (OSError, ValueError) as exc:
            raise Failure(
                "a TLS handshake",
                handshake_error(exc, self.probe.host, self.probe.port, None).message,
            ) from None
        self.channel = self._tls
        return True

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def reset(self) -> None:
        """Close with SO_LINGER 0: the kernel sends RST instead of FIN."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00" * 2)
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.channel.settimeout(self.probe.remaining())
        try:
            self.channel.sendall(data)
        except TimeoutError:
            raise Failure(
                f"the server to take {len(data)} bytes",
                f"it took none of them for {self.probe.timeout:g} s",
            ) from None
        except OSError as exc:
            raise Failure(f"the server to take {len(data)} bytes", lost(exc)) from None

    def half_close(self) -> None:
        self.channel.shutdown(socket.SHUT_WR)

    def receive(self, size: int, wait: float | None = None) -> bytes:
        """Up to ``size`` bytes until that many came, the server closed, or ``wait``
        seconds (default: the rest of the deadline) passed without the rest."""
        data = bytearray()
        until = time.monotonic() + wait if wait is not None else self.probe.deadline
        while len(data) < size:
            left = until - time.monotonic()
            if left <= 0:
                break
            self.channel.settimeout(max(left, 0.001))
            try:
                chunk = self.channel.recv(min(READ_SIZE, size - len(data)))
            except TimeoutError:
                break
            if not chunk:
                break
            data += chunk
        return bytes(data)

    def expect_echo(self, sent: bytes, cause: str = "") -> None:
        """Receive ``len(sent)`` bytes and compare; a Failure says what differed."""
        try:
            received = self.receive(len(sent))
        except OSError as exc:
            raise Failure(f"the {len(sent)} bytes back", lost(exc), cause) from None
        if received != sent:
            raise Failure(
                f"the {len(sent)} bytes back, unchanged",
                compare(sent, received, self.probe.timeout),
                cause,
            )

    def expect_eof(self, wait: float | None = None) -> bytes:
        """Bytes that arrive before the server's FIN; Failure if no FIN comes in time."""
        data = bytearray()
        until = time.monotonic() + wait if wait is not None else self.probe.deadline
        while True:
            left = until - time.monotonic()
            if left <= 0:
                break
            self.channel.settimeout(max(left, 0.001))
            try:
                chunk = self.channel.recv(READ_SIZE)
            except TimeoutError:
                break
            if not chunk:
                return bytes(data)
            data += chunk
        raise Failure(
            "the server's FIN (end of its echo)",
            f"the connection stayed open ({len(data)} more bytes came)",
        )


def compare(sent: bytes, received: bytes, timeout: float) -> str:
    """An Actual sentence for an echo that differs: short, extra, or the first differing
    offset and the bytes there."""
    if len(received) < len(sent) and sent.startswith(received):
        return (
            f"{len(received)} of {len(sent)} bytes came back, then nothing "
            f"(closed, or silent for {timeout:g} s)"
        )
    if len(received) > len(sent) and received.startswith(sent):
        return f"{len(received) - len(sent)} extra bytes after the echo"
    at = next(i for i, (a, b) in enumerate(zip(sent, received, strict=False)) if a != b)
    return (
        f"{len(received)} bytes came back and differ from byte {at} on: "
        f"expected {describe_bytes(sent[at : at + 8])}, got {describe_bytes(received[at : at + 8])}"
    )


def lost(exc: OSError) -> str:
    """An Actual sentence for a connection that failed under the probe."""
    if isinstance(exc, ConnectionResetError):
        return "the server reset the connection"
    if isinstance(exc, BrokenPipeError):
        return "the server had closed the connection"
    return f"the connection failed: {exc.strerror or exc}"


def describe_bytes(data: bytes) -> str:
    """``68 6f 6c 61 0d 0a (b'hola\\r\\n')``: hex, and the bytes as text when most are text."""
    if not data:
        return "nothing"
    text = sum(32 <= byte < 127 or byte in b"\r\n\t" for byte in data)
    shown = f" ({data!r})" if text * 4 >= len(data) * 3 else ""
    return data.hex(" ") + shown


class Writer:
    """Sends ``chunks`` on a connection from a thread of its own while the probe reads (or
    waits); ``sent`` counts the bytes the server has taken so far."""

    def __init__(self, connection: Connection, chunks: list[bytes]) -> None:
        self.connection = connection
        self.chunks = chunks
        self.sent = 0
        self.error: OSError | None = None
        self.progress = threading.Condition()
        self.finished = False
        self._thread = threading.Thread(target=self._run, name="sockecho-check-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for chunk in self.chunks:
                self.connection.channel.sendall(chunk)
                with self.progress:
                    self.sent += len(chunk)
                    self.progress.notify_all()
        except OSError as exc:  # a timeout too: the deadline passed
            self.error = exc
        with self.progress:
            self.finished = True
            self.progress.notify_all()

    def wait_for_stall(self, quiet: float) -> bool:
        """Wait until the server stops taking bytes for ``quiet`` seconds (True) or all were
        taken (False)."""
        with self.progress:
            while not self.finished:
                before = self.sent
                self.progress.wait_for(
                    lambda before=before: self.sent != before or self.finished,  # type: ignore[misc]
                    min(quiet, self.connection.probe.remaining()),
                )
                if self.sent == before and not self.finished:
                    return True
            return self.error is not None

    def join(self) -> None:
        self._thread.join(self.connection.probe.remaining())


def chunked(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def stream_echo(connection: Connection, data: bytes, chunks: list[bytes], cause: str) -> None:
    """Send ``chunks`` (which join to ``data``) while reading the echo; Failure if it differs."""
    writer = Writer(connection, chunks)
    try:
        received = connection.receive(len(data))
    except OSError as exc:
        raise Failure(f"all {size_text(len(data))} back", lost(exc), cause) from None
    writer.join()
    if received != data:
        actual = compare(data, received, connection.probe.timeout)
        if writer.sent < len(data):
            actual += f"; the server took {writer.sent} of the {len(data)} bytes sent"
        raise Failure(f"all {size_text(len(data))} back, unchanged", actual, cause)


def size_text(size: int) -> str:
    """``8 MiB``, ``64 KiB``, ``256 bytes``."""
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            value = size / scale
            return f"{value:.1f} {unit}".replace(".0 ", " ")
    return f"{size} bytes"
