"""TLS: the one place where SSL contexts are built, for the servers and the client.

Server side (``--tls-cert FILE --tls-key FILE``): :func:`server_context` loads the
PEM certificate chain and its key, once, when the server is built; a missing,
unreadable or mismatched file is a :class:`~sockecho.errors.TLSSetupError`
naming the file. The context accepts TLS 1.2 and 1.3, refuses renegotiation
(which would let ``send`` wait for a read, and lets a client make the server do
handshakes forever), issues no session tickets (an echo connection is never
resumed, and unread tickets turn a client's close into a reset), and takes a
TCP FIN without close_notify as the end of the client's input (the half-close).

Each model uses the context in its own style: the blocking models wrap the
accepted socket and run the handshake under a deadline, the readiness models
drive a non-blocking handshake from their loop, and asyncio runs
:class:`TLSBuffers` (TLS over memory) on the plain transport, as the client's
:class:`DuplexTLS` does. See docs/udp-tls.md.

Client side (``sockecho send --tls``): :func:`client_context` verifies the
server against the system's roots or ``--tls-ca FILE``, or nothing with
``--insecure``. :class:`DuplexTLS` lets the streaming client send and receive
from two threads, which an ``SSLSocket`` does not allow.
"""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
import threading
from typing import Any

from sockecho.config import ClientTLSConfig, ServerConfig
from sockecho.errors import TLSSetupError


def server_context(config: ServerConfig) -> ssl.SSLContext | None:
    """The server's SSL context, or None when TLS is off."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_RENEGOTIATION
    context.num_tickets = 0
    # A client's half-close is a TCP FIN without close_notify (see DuplexTLS): take it as
    # the end of input, like close_notify. Without this OpenSSL 3 calls it an error and
    # sends the client a "decode error" alert after its echo.
    context.options |= getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)
    check_readable("certificate", config.tls_cert)
    check_readable("private key", config.tls_key)
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
    except ssl.SSLError as exc:
        raise TLSSetupError(
            f"cannot use TLS certificate {config.tls_cert} with key {config.tls_key}: "
            f"{describe_ssl_error(exc)}",
            "both must be PEM files and the key must belong to the certificate",
        ) from None
    context.sni_callback = _remember_server_name
    return context


def _remember_server_name(conn: Any, server_name: str | None, context: ssl.SSLContext) -> None:
    """The SNI a client asked for, kept on its SSL object for ``--identify`` (the server side
    of the ssl module offers no other way to read it back)."""
    with contextlib.suppress(AttributeError):
        conn.sockecho_server_name = server_name


def describe_session(conn: ssl.SSLSocket | ssl.SSLObject) -> dict[str, Any]:
    """What ``--identify`` says about a TLS connection after its handshake."""
    cert: dict[str, Any] = dict(conn.getpeercert() or {})
    rdns: tuple[tuple[tuple[str, str], ...], ...] = cert.get("subject", ())
    subject = ", ".join(f"{key}={value}" for rdn in rdns for key, value in rdn) or None
    return {
        "sni": getattr(conn, "sockecho_server_name", None),
        "alpn": conn.selected_alpn_protocol(),
        "version": conn.version(),
        "client_cert": subject,
    }


def client_context(config: ClientTLSConfig) -> ssl.SSLContext:
    """The client's SSL context: verify the server (the default), or not (``insecure``)."""
    if config.ca_file is not None:
        check_readable("CA file", config.ca_file)
    try:
        context = ssl.create_default_context(cafile=config.ca_file)
    except ssl.SSLError as exc:
        raise TLSSetupError(
            f"cannot use CA file {config.ca_file}: {describe_ssl_error(exc)}",
            "it must hold PEM certificates",
        ) from None
    if config.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def check_readable(what: str, path: str) -> None:
    """TLSSetupError naming ``path`` when it cannot be read (ssl's own errors do not)."""
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise TLSSetupError(f"cannot read TLS {what} {path}: {exc.strerror or exc}") from None


def describe_ssl_error(exc: ssl.SSLError) -> str:
    """OpenSSL's reason in a few words: ``wrong version number``, ``certificate verify failed``."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"
    if exc.reason:
        return str(exc.reason).replace("_", " ").lower()
    # No reason code: "[SSL] PEM lib (_ssl.c:3926)" -> "PEM lib"
    text = str(exc.strerror or exc)
    text = re.sub(r"\s*\(_ssl\.c:\d+\)$", "", text)
    return re.sub(r"^\[\w+\]\s*", "", text) or type(exc).__name__


#: Bytes asked of one recv() of TLS records from the socket.
RECORD_READ_SIZE = 64 * 1024


class TLSBuffers:
    """TLS over memory: an ``SSLObject`` between two memory buffers; the caller moves records.

    The one TLS layer sockecho drives by hand, where an ``SSLSocket`` will not do:
    the asyncio server (TLS on a plain transport, so that a half-close still gets
    its whole echo) and the client's :class:`DuplexTLS` (two threads on one
    connection). Records from the peer go in with :meth:`receive`; whatever TLS
    has to say to the peer (handshake, encrypted echo, alerts, close_notify) comes
    out of :meth:`records`. Not thread-safe: a caller sharing it holds a lock.
    """

    def __init__(
        self,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
    ) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(
            self._incoming, self._outgoing, server_side=server_side, server_hostname=server_hostname
        )
        self.handshake_done = False

    def receive(self, records: bytes) -> None:
        """Records read from the peer; ``b''`` when the peer's side of TCP ended (a FIN)."""
        if records:
            self._incoming.write(records)
        else:
            self._incoming.write_eof()

    def do_handshake(self) -> bool:
        """Take the handshake as far as the records received allow: True once it is
        complete, False while it needs more from the peer. ``ssl.SSLError`` if it fails."""
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            return False
        self.handshake_done = True
        return True

    def read(self, size: int) -> bytes | None:
        """Up to ``size`` decrypted bytes; ``b''`` at the end of the peer's input
        (close_notify, or a plain FIN); None while more records are needed."""
        try:
            return self._tls.read(size)
        except ssl.SSLWantReadError:
            return None
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            return b""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt ``data`` into :meth:`records` (never waits)."""
        self._tls.write(data)

    def close_notify(self) -> None:
        """Put our close_notify into :meth:`records` (an orderly end)."""
        with contextlib.suppress(ssl.SSLError):
            self._tls.unwrap()  # says "want read" for the peer's: we do not wait for it

    def records(self) -> bytes:
        """What TLS has to send to the peer now (may be empty)."""
        return self._outgoing.read()

    @property
    def version(self) -> str | None:
        return self._tls.version()

    @property
    def ssl_object(self) -> ssl.SSLObject:
        """The SSL object itself (its ALPN, SNI and certificates for ``--identify``)."""
        return self._tls


class DuplexTLS:
    """A client TLS connection that one thread may send on while another receives.

    An OpenSSL connection must never be used by two threads at once (an
    ``SSLSocket`` read in one thread and written in another can crash:
    python/cpython#151508). Here the TLS state is a :class:`TLSBuffers`, touched
    only under a lock that is never held during socket I/O: the sender encrypts
    under the lock, then sends the records; the receiver reads records from the
    socket, then decrypts them under the lock. Only the sender writes to the
    socket, so records leave in the order they were made. (Anything the receiving
    side must answer - a TLS 1.3 key update - goes out with the next send.)

    The half-close is the socket's own ``shutdown(SHUT_WR)``, a TCP FIN: in
    Python's API a close_notify would end the TLS session for reading too, and
    the echo still has to come back. The server takes the FIN as the end of input.
    """

    def __init__(
        self, sock: socket.socket, context: ssl.SSLContext, server_hostname: str | None
    ) -> None:
        self.sock = sock
        self._tls = TLSBuffers(context, server_side=False, server_hostname=server_hostname)
        self._lock = threading.Lock()

    def handshake(self) -> None:
        """Complete the handshake (before the two threads start). SSLError if it fails."""
        while True:
            with self._lock:
                done = self._tls.do_handshake()
            self._send_pending()
            if done:
                return
            self._receive_records()

    def sendall(self, data: bytes | memoryview) -> None:
        with self._lock:
            self._tls.write(data)  # into memory: never waits
            records = self._tls.records()
        self.sock.sendall(records)

    def recv(self, size: int) -> bytes:
        """Up to ``size`` decrypted bytes; b'' at the end (close_notify or a plain TCP EOF)."""
        while True:
            with self._lock:
                data = self._tls.read(size)
            if data is not None:
                return data
            self._receive_records()

    def shutdown(self, how: int) -> None:
        """The socket's own shutdown: ``SHUT_WR`` is the half-close (a TCP FIN)."""
        self.sock.shutdown(how)

    def settimeout(self, value: float | None) -> None:
        self.sock.settimeout(value)

    def gettimeout(self) -> float | None:
        return self.sock.gettimeout()

    def _receive_records(self) -> None:
        data = self.sock.recv(RECORD_READ_SIZE)
        with self._lock:
            self._tls.receive(data)

    def _send_pending(self) -> None:
        with self._lock:
            records = self._tls.records()
        if records:
            self.sock.sendall(records)
