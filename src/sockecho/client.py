"""The echo client: ``socket → connect → sendall/recv → close``, with honest error reports.

* :func:`connect` opens a TCP connection, translating OS errors into one line
  that names the address (``connection refused by 127.0.0.1:50010``).
* :func:`echo` sends one message and waits for exactly that many bytes back.
* :func:`stream` pipes a byte stream through the server: one thread sends while
  the caller's thread receives, so neither side can fill the other's buffers and
  deadlock, whatever the size. Both directions are hashed and counted, so a short
  or altered echo is caught without keeping the data.

Each takes ``tls``, an ``ssl.SSLContext`` (see :func:`sockecho.tls.client_context`),
to talk to a TLS echo server; the certificate is checked against ``host``.
:func:`stream` then runs the TLS state through :class:`sockecho.tls.DuplexTLS`,
because an ``SSLSocket`` must not be read and written from two threads.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import socket
import ssl
import threading
from dataclasses import dataclass
from typing import BinaryIO

from sockecho.config import DEFAULT_HOST, DEFAULT_PORT
from sockecho.errors import ConnectError, EchoMismatch, EchoTimeout, ResolveError
from sockecho.net import format_host_port, resolve, set_nodelay
from sockecho.tls import DuplexTLS, describe_ssl_error

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

    With ``tls``, the TLS handshake is done too and an ``ssl.SSLSocket`` returned.
    ``socket_class`` makes the socket (``--trace`` passes a narrating one).
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
        return ConnectError(f"timed out in the TLS handshake with {where} after {timeout:g} s")
    if isinstance(exc, ssl.SSLError):
        reason = describe_ssl_error(exc)
    else:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return ConnectError(f"TLS handshake with {where} failed: {reason}", "is it a TLS echo server?")


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
        except TimeoutError:
            last = ConnectError(
                f"timed out connecting to {where} after {timeout:g} s", "is the host reachable?"
            )
        except ConnectionRefusedError:
            last = ConnectError(f"connection refused by {where}", "is a server running?")
        except OSError as exc:
            reason = exc.strerror or errno.errorcode.get(exc.errno or 0, str(exc))
            last = ConnectError(f"cannot connect to {where}: {reason}")
        else:
            set_nodelay(sock)
            return sock
        sock.close()
    assert last is not None  # resolve() returns at least one address or raises
    raise last


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    """Receive until ``size`` bytes arrived or the peer closed (then fewer come back)."""
    chunks = bytearray()
    while len(chunks) < size:
        try:
            data = sock.recv(min(CHUNK_SIZE, size - len(chunks)))
        except TimeoutError:
            raise EchoTimeout(
                f"timed out waiting for the echo ({len(chunks)} of {size} bytes came back)"
            ) from None
        if not data:
            break
        chunks += data
    return bytes(chunks)


def echo(
    message: bytes,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    timeout: float | None = DEFAULT_TIMEOUT,
    *,
    tls: ssl.SSLContext | None = None,
    socket_class: type[socket.socket] = socket.socket,
) -> bytes:
    """Send ``message``, wait for the whole echo, return it. EchoMismatch if it differs."""
    with connect(host, port, timeout, tls=tls, socket_class=socket_class) as sock:
        try:
            sock.sendall(message)
            reply = recv_exactly(sock, len(message))
        except OSError as exc:
            if isinstance(exc, TimeoutError):
                raise EchoTimeout("timed out sending the message") from None
            raise EchoMismatch(f"the connection failed mid-echo: {exc.strerror or exc}") from None
    if reply != message:
        raise EchoMismatch(describe_difference(message, reply))
    return reply


def describe_difference(sent: bytes, received: bytes) -> str:
    """One line saying how an echo differs from what was sent."""
    if len(received) < len(sent) and sent.startswith(received):
        return f"the echo came back short: {len(received)} of {len(sent)} bytes"
    at = next(
        (i for i, (a, b) in enumerate(zip(sent, received, strict=False)) if a != b),
        min(len(sent), len(received)),
    )
    return f"the echo differs from what was sent at byte {at} ({len(received)} of {len(sent)})"


@dataclass(frozen=True, slots=True)
class StreamResult:
    """What :func:`stream` sent and what came back."""

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
) -> StreamResult:
    """Send all of ``source`` through the server, writing the echo to ``sink`` as it arrives.

    After ``source`` ends the sending side is shut down (half-close); the call
    returns when the server closes. EchoMismatch if the echo was short or different.
    """
    sent_hash, received_hash = hashlib.blake2b(), hashlib.blake2b()
    sent = 0
    send_error: list[BaseException] = []

    with connect_tcp(host, port, timeout, socket_class) as sock:
        channel: socket.socket | DuplexTLS = sock
        if tls is not None:
            channel = DuplexTLS(sock, tls, host)
            try:
                channel.handshake()
            except (OSError, ValueError) as exc:
                raise handshake_error(exc, host, port, timeout) from None
        # read1() returns what a pipe has now instead of waiting for a full chunk.
        read = getattr(source, "read1", source.read)

        def pump_out() -> None:
            nonlocal sent
            try:
                while chunk := read(CHUNK_SIZE):
                    channel.sendall(chunk)
                    sent_hash.update(chunk)
                    sent += len(chunk)
                sock.shutdown(socket.SHUT_WR)  # "that was everything": the server may finish
            except BaseException as exc:
                send_error.append(exc)
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)  # wake the receiving side

        sender = threading.Thread(target=pump_out, name="sockecho-send", daemon=True)
        sender.start()
        received = 0
        try:
            while True:
                try:
                    data = channel.recv(CHUNK_SIZE)
                except TimeoutError:
                    if sender.is_alive() and received == sent:
                        continue  # nothing outstanding: the input is just slow (a person typing)
                    raise EchoTimeout(
                        f"timed out waiting for the echo ({received} of {sent} bytes came back)"
                    ) from None
                if not data:
                    break
                sink.write(data)
                received_hash.update(data)
                received += len(data)
        except OSError as exc:
            if not send_error:
                raise EchoMismatch(
                    f"the connection failed after {received} bytes: {exc.strerror or exc}"
                ) from None
        finally:
            with contextlib.suppress(OSError):
                sink.flush()
        sender.join()
    if send_error:
        failure = send_error[0]
        if isinstance(failure, OSError):
            raise EchoMismatch(
                f"the connection failed after sending {sent} bytes: {failure.strerror or failure}"
            ) from None
        raise failure
    intact = received == sent and sent_hash.digest() == received_hash.digest()
    if not intact:
        if received < sent:
            raise EchoMismatch(f"the echo came back short: {received} of {sent} bytes")
        raise EchoMismatch(f"the echo differs from what was sent ({received} of {sent} bytes)")
    return StreamResult(sent, received, intact)


__all__ = [
    "DEFAULT_TIMEOUT",
    "ResolveError",
    "StreamResult",
    "connect",
    "echo",
    "recv_exactly",
    "stream",
]
