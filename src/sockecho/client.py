"""The echo client: ``socket → connect → sendall/recv → close``, with honest error reports.

* :func:`connect` opens a TCP connection, translating OS errors into one line
  that names the address (``connection refused by 127.0.0.1:50010``).
* :func:`echo` sends one message, half-closes, and checks that exactly those
  bytes come back (no fewer, no different, no extra).
* :func:`stream` pipes a byte stream through the server: one thread sends while
  the caller's thread receives, so neither side can fill the other's buffers and
  deadlock, whatever the size. Both directions are hashed and counted, so a short
  or altered echo is caught without keeping the data.

Each takes ``tls``, an ``ssl.SSLContext`` (see :func:`sockecho.tls.client_context`),
to talk to a TLS echo server; the certificate is checked against ``host``.
:func:`echo` and :func:`stream` then keep the TLS state in
:class:`sockecho.tls.DuplexTLS`, because an ``SSLSocket`` must not be read and
written from two threads at once.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal, Protocol

from sockecho.config import DEFAULT_HOST, DEFAULT_PORT
from sockecho.errors import (
    ConnectError,
    EchoMismatch,
    EchoTimeout,
    InputError,
    OutputError,
    ResolveError,
)
from sockecho.identity import IdentityError, read_identity
from sockecho.net import format_host_port, resolve, set_nodelay
from sockecho.proxy_protocol import encode as encode_proxy
from sockecho.tls import DuplexTLS, describe_ssl_error

#: ``proxy=``: the PROXY protocol version a client sends its header in.
ProxyVersion = Literal["v1", "v2"]
#: Seconds to wait for a connection or for the next echoed bytes.
DEFAULT_TIMEOUT = 10.0
#: Bytes read from the input or the socket per call while streaming.
CHUNK_SIZE = 64 * 1024


def connect(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    timeout: float | None = DEFAULT_TIMEOUT,
    *,
    tls: ssl.SSLContext | None = None,
    socket_class: type[socket.socket] = socket.socket,
) -> socket.socket:
    """Connect to the first address of ``host`` that answers; ConnectError naming it if none.

    With ``tls``, the TLS handshake is done too and an ``ssl.SSLSocket`` returned
    (for one thread at a time). ``socket_class`` makes the socket (``--trace``
    passes a narrating one).
    """
    sock = connect_tcp(host, port, timeout, socket_class)
    if tls is None:
        return sock
    try:
        tls_sock = tls.wrap_socket(sock, server_hostname=host)
    except (OSError, ValueError) as exc:
        sock.close()
        raise handshake_error(exc, host, port, timeout) from None
    return tls_sock


def handshake_error(
    exc: BaseException, host: str, port: int, timeout: float | None
) -> ConnectError:
    """The one line that says why a TLS handshake with ``host`` failed."""
    where = format_host_port(host, port)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ConnectError(
            f"the TLS certificate of {where} is not trusted: {describe_ssl_error(exc)}",
            "pass --tls-ca FILE with the CA that signed it, or --insecure for a test server",
        )
    if isinstance(exc, TimeoutError):
        return ConnectError(f"timed out in the TLS handshake with {where}{after(timeout)}")
    if isinstance(exc, ssl.SSLError):
        reason = describe_ssl_error(exc)
    else:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return ConnectError(f"TLS handshake with {where} failed: {reason}", "is it a TLS echo server?")


def after(timeout: float | None) -> str:
    """`` after 10 s``, or nothing when there was no timeout (the kernel gave up)."""
    return f" after {timeout:g} s" if timeout else ""


def connect_error(exc: OSError, where: str, timeout: float | None) -> ConnectError:
    """The one line that says why a TCP connect to ``where`` (``host:port``) failed: refused
    (nothing listens), timed out, or the kernel's reason. Every client of the package
    (``send``, ``bench``) says it the same way."""
    if isinstance(exc, TimeoutError):
        return ConnectError(
            f"timed out connecting to {where}{after(timeout)}", "is the host reachable?"
        )
    if isinstance(exc, ConnectionRefusedError):
        return ConnectError(f"connection refused by {where}", "is a server running?")
    reason = exc.strerror or errno.errorcode.get(exc.errno or 0, str(exc))
    return ConnectError(f"cannot connect to {where}: {reason}")


def connect_tcp(
    host: str, port: int, timeout: float | None, socket_class: type[socket.socket] = socket.socket
) -> socket.socket:
    """:func:`connect` without TLS."""
    last: ConnectError | None = None
    for family, sockaddr in resolve(host, port, socket.SOCK_STREAM, passive=False):
        where = format_host_port(str(sockaddr[0]), port)
        sock = socket_class(family, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(sockaddr)
        except OSError as exc:
            last = connect_error(exc, where, timeout)
        else:
            set_nodelay(sock)
            return sock
        sock.close()
    assert last is not None  # resolve() returns at least one address or raises
    raise last


class Channel(Protocol):
    """What the echo loops need of a connection: a plain socket, or :class:`DuplexTLS`."""

    def sendall(self, data: bytes, /) -> None: ...
    def recv(self, bufsize: int, /) -> bytes: ...
    def shutdown(self, how: int, /) -> None: ...
    def settimeout(self, value: float | None, /) -> None: ...
    def gettimeout(self) -> float | None: ...


def open_channel(
    sock: socket.socket, tls: ssl.SSLContext | None, host: str, port: int, timeout: float | None
) -> Channel:
    """``sock`` itself, or a TLS channel over it once the handshake is done."""
    if tls is None:
        return sock
    channel = DuplexTLS(sock, tls, host)
    try:
        channel.handshake()
    except (OSError, ValueError) as exc:
        raise handshake_error(exc, host, port, timeout) from None
    return channel


#: What a client's ``on_identity`` receives: the server's ``--identify`` object.
IdentityCallback = Callable[[dict[str, Any]], None]


def open_echo_channel(
    sock: socket.socket,
    tls: ssl.SSLContext | None,
    host: str,
    port: int,
    timeout: float | None,
    *,
    proxy: ProxyVersion | None = None,
    on_identity: IdentityCallback | None = None,
) -> Channel:
    """:func:`open_channel`, preceded by a PROXY header (``proxy``) with the connection's
    real addresses, and followed by reading the server's identity line (``on_identity``
    gets it; the echo is checked after it)."""
    if proxy is not None:
        sock.sendall(proxy_header(proxy, sock.getsockname(), sock.getpeername()))
    channel = open_channel(sock, tls, host, port, timeout)
    if on_identity is not None:
        on_identity(receive_identity(channel, format_host_port(host, port), timeout))
    return channel


def proxy_header(version: ProxyVersion, local: tuple[Any, ...], remote: tuple[Any, ...]) -> bytes:
    """The PROXY header a client sends for its own connection from ``local`` to ``remote``."""
    return encode_proxy(version, (str(local[0]), int(local[1])), (str(remote[0]), int(remote[1])))


def receive_identity(channel: Channel, where: str, timeout: float | None) -> dict[str, Any]:
    """Read the ``--identify`` line a server sends before any echo (nothing was sent yet,
    so nothing but the line may come)."""
    data = b""
    try:
        while (found := read_identity(data)) is None:
            chunk = channel.recv(4096)
            if not chunk:
                raise EchoMismatch(
                    f"{where} closed before sending an identity line",
                    "is it started with --identify (and --proxy-protocol if you send --proxy)?",
                )
            data += chunk
    except IdentityError as exc:
        raise EchoMismatch(str(exc), "is the server started with --identify?") from None
    except TimeoutError:
        raise EchoTimeout(
            f"no identity line from {where}{after(timeout)}",
            "is the server started with --identify?",
        ) from None
    identity, rest = found
    if rest:
        raise EchoMismatch(f"{where} sent {len(rest)} bytes after its identity line unasked")
    return identity


class _Sender:
    """Sends chunks in a background thread, then half-closes; the caller receives meanwhile.

    Sending and receiving at once is what keeps a large echo from deadlocking: a
    client that sent everything before reading would fill the server's and its own
    socket buffers and both sides would wait forever. The thread is a daemon: a
    source that never ends (a terminal) must not keep the process alive.
    """

    def __init__(self, sock: Channel, chunks: Iterator[bytes], *, inline: bool) -> None:
        self.sock = sock
        self.chunks = chunks
        self.sent = 0
        self.hash = hashlib.blake2b()
        self.error: BaseException | None = None
        self.finished = threading.Event()  # the source ended and the half-close was sent
        self._thread = threading.Thread(target=self._run, name="sockecho-send", daemon=True)
        if inline:  # small enough to fit in the socket buffers: no thread, a plain sendall
            self._run()
        else:
            self._thread.start()

    def _run(self) -> None:
        try:
            for chunk in self.chunks:
                # Counted before sendall returns: its bytes may be echoed back before it does.
                self.hash.update(chunk)
                self.sent += len(chunk)
                self.sock.sendall(chunk)
            self.sock.shutdown(socket.SHUT_WR)  # "that was everything": the server may finish
            self.finished.set()
        except BaseException as exc:
            self.error = exc
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)  # wake the receiving side

    def still_sending(self, grace: float) -> bool:
        """Whether the source has not ended, after giving the thread ``grace`` seconds to
        finish (it may be between its last send and the half-close when the server closes)."""
        if self._thread.is_alive():
            self._thread.join(grace)
        return self._thread.is_alive()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def raise_error(self) -> None:
        """Re-raise what stopped the sending side, in this package's terms."""
        failure = self.error
        if failure is None:
            return
        if isinstance(failure, InputError):
            raise failure
        if isinstance(failure, TimeoutError):
            raise EchoTimeout(f"timed out sending (after {self.sent} bytes)") from None
        if isinstance(failure, OSError):
            raise EchoMismatch(
                f"the connection failed after sending {self.sent} bytes: "
                f"{failure.strerror or failure}"
            ) from None
        raise failure


def _read_source(source: BinaryIO) -> Iterator[bytes]:
    """Chunks of ``source`` as they come (a pipe's bytes at once, not a full chunk later).

    A real file descriptor is read with os.read: a daemon thread blocked inside a
    buffered reader at interpreter exit would abort the process (CPython's
    "_enter_buffered_busy" fatal error) when ``send`` ends before its input does.
    """
    try:
        fd = source.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        fd = -1
    # Without a descriptor: read1() returns what is there instead of waiting for a full chunk.
    read = getattr(source, "read1", source.read)
    while True:
        try:
            chunk = os.read(fd, CHUNK_SIZE) if fd >= 0 else read(CHUNK_SIZE)
        except OSError as exc:
            raise InputError(f"cannot read the input: {exc.strerror or exc}") from None
        if not chunk:
            return
        yield chunk


def _receive_echo(
    sock: Channel,
    sender: _Sender,
    expected: int | None,
    on_data: Callable[[bytes], None],
    grace: float,
) -> int:
    """Receive until the server closes, or until the echo is complete and ``grace`` passed.

    ``expected`` is the size of a fixed message (None while streaming: then what was
    sent so far). Returns the byte count; stops early once more than ``expected`` came.
    """
    received = 0
    timeout = sock.gettimeout()
    while True:
        target = expected if expected is not None else sender.sent
        complete = sender.finished.is_set() and received >= target
        if complete:
            # Everything came back and we half-closed: an RFC 862 server closes now. Wait a
            # little for its close (or for bytes it should not send), not the full timeout.
            sock.settimeout(grace if timeout is None else min(grace, timeout))
        # A fixed message: ask for exactly what is missing (then more, to catch extra bytes).
        want = CHUNK_SIZE
        if expected is not None and received < expected:
            want = min(CHUNK_SIZE, expected - received)
        try:
            data = sock.recv(want)
        except TimeoutError:
            # Asked afresh, not from before the wait: the sending thread may have half-closed
            # during it, after the last of the echo had already come back.
            target = expected if expected is not None else sender.sent
            if sender.finished.is_set() and received >= target:
                return received  # the server keeps the connection open: the echo is whole
            if sender.running and received == sender.sent:
                continue  # nothing outstanding: the input is just slow (a person typing)
            raise EchoTimeout(
                f"timed out waiting for the echo ({received} of {target} bytes came back)"
            ) from None
        except OSError as exc:
            if sender.error is not None:
                sender.raise_error()
            raise EchoMismatch(
                f"the connection failed after {received} bytes came back: {exc.strerror or exc}"
            ) from None
        if not data:
            if sender.still_sending(grace):
                raise EchoMismatch(
                    f"the server closed the connection before the input ended "
                    f"({sender.sent} bytes sent, {received} came back)"
                )
            return received
        on_data(data)
        received += len(data)
        if expected is not None and received > expected:
            return received


#: Seconds to wait, after a complete echo, for the server to close (or to send extra bytes).
CLOSE_GRACE = 0.5
#: Messages up to this size (bytes) are sent before reading, in the caller's thread: the
#: socket buffers on both sides hold that much, so it cannot deadlock, and the order of
#: calls is the textbook one (sendall, then recv). Larger ones are sent by a thread.
INLINE_SEND_LIMIT = 64 * 1024


def echo(
    message: bytes,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    timeout: float | None = DEFAULT_TIMEOUT,
    *,
    tls: ssl.SSLContext | None = None,
    socket_class: type[socket.socket] = socket.socket,
    proxy: ProxyVersion | None = None,
    on_identity: IdentityCallback | None = None,
) -> bytes:
    """Send ``message``, half-close, wait for the whole echo, return it.

    EchoMismatch if it differs, is short, or has extra bytes; EchoTimeout if the
    server stops answering. Any size: sending and receiving overlap. ``proxy``
    ("v1", "v2") sends a PROXY header first; ``on_identity`` expects the server's
    ``--identify`` line first and is called with it.
    """
    reply = bytearray()
    with connect_tcp(host, port, timeout, socket_class) as sock:
        channel = open_echo_channel(
            sock, tls, host, port, timeout, proxy=proxy, on_identity=on_identity
        )
        sender = _Sender(channel, iter([message]), inline=len(message) <= INLINE_SEND_LIMIT)
        _receive_echo(channel, sender, len(message), reply.extend, CLOSE_GRACE)
        sender.join(timeout)
        sender.raise_error()
    if reply != message:
        raise EchoMismatch(describe_difference(message, bytes(reply)))
    return bytes(reply)


def describe_difference(sent: bytes, received: bytes) -> str:
    """One line saying how an echo differs from what was sent."""
    if len(received) < len(sent) and sent.startswith(received):
        return f"the echo came back short: {len(received)} of {len(sent)} bytes"
    if len(received) > len(sent) and received.startswith(sent):
        return f"the echo has extra bytes: {len(received)} came back for {len(sent)} sent"
    at = next(
        (i for i, (a, b) in enumerate(zip(sent, received, strict=False)) if a != b),
        min(len(sent), len(received)),
    )
    return f"the echo differs from what was sent at byte {at} ({len(received)} of {len(sent)})"


@dataclass(frozen=True, slots=True)
class StreamResult:
    """What :func:`stream` sent and what came back. ``intact`` is always True in a
    returned result (a short or different echo raises EchoMismatch instead); it is there so
    a logged result says so in words."""

    bytes_sent: int
    bytes_received: int
    intact: bool


def stream(
    source: BinaryIO,
    sink: BinaryIO,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    timeout: float | None = DEFAULT_TIMEOUT,
    *,
    tls: ssl.SSLContext | None = None,
    socket_class: type[socket.socket] = socket.socket,
    proxy: ProxyVersion | None = None,
    on_identity: IdentityCallback | None = None,
) -> StreamResult:
    """Send all of ``source`` through the server, writing the echo to ``sink`` as it arrives.

    After ``source`` ends the sending side is shut down (half-close); the call
    returns when the server closes (or, the echo being complete, does not close
    within a short grace). EchoMismatch if the echo was short, different, or the
    server closed before the input ended; OutputError if ``sink`` cannot be
    written (a closed pipe is re-raised as BrokenPipeError).
    """
    received_hash = hashlib.blake2b()

    def write_out(data: bytes) -> None:
        try:
            sink.write(data)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise OutputError(f"cannot write the echo: {exc.strerror or exc}") from None
        received_hash.update(data)

    with connect_tcp(host, port, timeout, socket_class) as sock:
        channel = open_echo_channel(
            sock, tls, host, port, timeout, proxy=proxy, on_identity=on_identity
        )
        sender = _Sender(channel, _read_source(source), inline=False)
        try:
            received = _receive_echo(channel, sender, None, write_out, CLOSE_GRACE)
        finally:
            with contextlib.suppress(OSError):
                sink.flush()
        sender.join(timeout)
        sender.raise_error()
    sent = sender.sent
    intact = received == sent and sender.hash.digest() == received_hash.digest()
    if not intact:
        if received < sent:
            raise EchoMismatch(f"the echo came back short: {received} of {sent} bytes")
        raise EchoMismatch(f"the echo differs from what was sent ({received} of {sent} bytes)")
    return StreamResult(sent, received, intact)


__all__ = [
    "DEFAULT_TIMEOUT",
    "InputError",
    "OutputError",
    "ResolveError",
    "StreamResult",
    "connect",
    "echo",
    "stream",
]
