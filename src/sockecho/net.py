"""Addresses and listening sockets: the socket → bind → listen part every model shares.

``open_listeners`` resolves the host with ``getaddrinfo`` and opens one listening
socket per address it gives (``localhost`` → 127.0.0.1, and ::1 where the hosts file
says so), all on the same port. ``::`` alone is opened dual-stack (``IPV6_V6ONLY`` off),
so one socket serves IPv4 and IPv6 clients; when a name gives an IPv4 address too (the
empty host gives 0.0.0.0 and ::), each family gets its own socket (``IPV6_V6ONLY`` on),
or the two would collide on the port. ``open_datagram_sockets`` does the same for UDP (socket →
bind), on the port number the TCP listeners got. OS errors become
:class:`~sockecho.errors.BindError` or :class:`~sockecho.errors.ResolveError`
here, at the boundary.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import socket
import struct
import termios
from collections.abc import Callable
from typing import Any

from sockecho.errors import BindError, ResolveError

SockAddr = tuple[Any, ...]


def format_host_port(host: str, port: int) -> str:
    """``127.0.0.1:50010``, or ``[::1]:50010`` for IPv6."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def source_of(addr: SockAddr | str) -> str:
    """The peer's host alone (per-source limits key on it); an IPv4 client on a dual-stack
    socket (``::ffff:127.0.0.1``) is shown as the IPv4 address it is."""
    if isinstance(addr, str):  # AF_UNIX
        return addr
    host = str(addr[0])
    return host[len("::ffff:") :] if host.startswith("::ffff:") and "." in host else host


def format_sockaddr(addr: SockAddr | str) -> str:
    """Printable form of a socket address as returned by accept()/getsockname()."""
    if isinstance(addr, str):
        return addr or "unix"
    return format_host_port(source_of(addr), int(addr[1]))


def endpoint_url(scheme: str, sock: socket.socket) -> str:
    """The ready-line form, e.g. ``tcp://127.0.0.1:50010`` or ``tcp://[::1]:50010``."""
    return f"{scheme}://{format_sockaddr(sock.getsockname())}"


def resolve(
    host: str, port: int, socktype: socket.SocketKind, *, passive: bool
) -> list[tuple[socket.AddressFamily, SockAddr]]:
    """getaddrinfo, de-duplicated, in the resolver's order; ResolveError if nothing."""
    flags = socket.AI_PASSIVE if passive else 0
    try:
        infos = socket.getaddrinfo(host or None, port, socket.AF_UNSPEC, socktype, 0, flags)
    except socket.gaierror as exc:
        raise ResolveError(f"unknown host {host!r}", exc.strerror) from None
    seen: set[tuple[int, SockAddr]] = set()
    result: list[tuple[socket.AddressFamily, SockAddr]] = []
    for family, _type, _proto, _canon, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        key = (int(family), tuple(sockaddr[:2]))
        if key not in seen:
            seen.add(key)
            result.append((family, tuple(sockaddr)))
    if not result:
        raise ResolveError(f"no IPv4 or IPv6 address for host {host!r}")
    return result


def bind_error(exc: OSError, host: str, port: int, kind: str = "tcp") -> BindError:
    """Translate a bind()/listen() failure into the one line a user sees."""
    where = format_host_port(host, port)
    if exc.errno == errno.EADDRINUSE:
        return BindError(
            f"address already in use: {kind}://{where}",
            "another server is running there; stop it, pick another --port, or use --port 0",
        )
    if exc.errno == errno.EACCES:
        return BindError(
            f"permission denied binding {kind}://{where}",
            "ports below 1024 need root or CAP_NET_BIND_SERVICE; use a port above 1023",
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return BindError(
            f"cannot bind {kind}://{where}: no such address on this machine",
            "use an address of one of this machine's interfaces, e.g. 127.0.0.1",
        )
    return BindError(f"cannot listen on {kind}://{where}: {exc.strerror or exc}")


def ipv6_only(addresses: list[tuple[socket.AddressFamily, SockAddr]]) -> int:
    """IPV6_V6ONLY for the IPv6 sockets of ``addresses``: 1 when an IPv4 socket is opened too."""
    return int(any(family == socket.AF_INET for family, _ in addresses))


def _open_each(
    host: str,
    port: int,
    kind: socket.SocketKind,
    socket_class: type[socket.socket],
    set_up: Callable[[socket.socket, SockAddr, socket.socket], None],
) -> list[socket.socket]:
    """One socket of ``kind`` per address of ``host``, each passed to ``set_up(sock, sockaddr,
    first_sock)`` to bind it; IPv6 ones dual-stack only when no IPv4 socket is opened too.
    All or nothing: on any failure every socket opened so far is closed."""
    opened: list[socket.socket] = []
    addresses = resolve(host, port, kind, passive=True)
    v6only = ipv6_only(addresses)
    try:
        for family, sockaddr in addresses:
            sock = socket_class(family, kind)
            opened.append(sock)
            if family == socket.AF_INET6:
                # "::" serves IPv4 too, unless an IPv4 socket of ours does; a specific IPv6
                # address serves only itself either way.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
            set_up(sock, sockaddr, opened[0])
    except BaseException:
        for sock in opened:
            sock.close()
        raise
    return opened


def open_listeners(
    host: str,
    port: int,
    backlog: int,
    socket_class: type[socket.socket] = socket.socket,
    *,
    reuse_port: bool = False,
) -> list[socket.socket]:
    """socket() → setsockopt(SO_REUSEADDR) → bind() → listen() for every address of ``host``.

    With ``port=0`` the first socket gets a free port from the kernel and the
    others reuse that number, so every address of a name shares one port (a number taken on
    another address fails with BindError: ``EchoServer.open`` tries another picked port).
    Listening sockets are left blocking; models set what they need. ``reuse_port``: set
    SO_REUSEPORT, so that other sockets with it (``--workers``) can listen on the same port.
    """

    def listen_on(sock: socket.socket, sockaddr: SockAddr, first: socket.socket) -> None:
        address = _bind_stream(sock, sockaddr, first, port == 0, reuse_port)
        try:
            sock.listen(backlog)
        except OSError as exc:
            raise bind_error(exc, str(address[0]), int(address[1])) from None

    return _open_each(host, port, socket.SOCK_STREAM, socket_class, listen_on)


def _bind_stream(
    sock: socket.socket, sockaddr: SockAddr, first: socket.socket, picked: bool, reuse_port: bool
) -> SockAddr:
    """bind() a TCP socket for ``listen_on`` and ``reserve_port``; returns the address used.

    SO_REUSEADDR restarts at once on a port whose old connections sit in TIME_WAIT. With a
    ``picked`` port (0) every address after the first takes the number the first one got.
    """
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    address = sockaddr
    if picked and sock is not first:
        address = (sockaddr[0], first.getsockname()[1], *sockaddr[2:])
    try:
        sock.bind(address)
    except OSError as exc:
        raise bind_error(exc, str(address[0]), int(address[1])) from None
    return address


#: The largest UDP payload over IPv4 (65535 - 8 UDP - 20 IP header bytes); recvfrom() asks
#: for 65535 so no datagram is ever cut short (socketserver.UDPServer cuts at 8192).
MAX_DATAGRAM = 65507
DATAGRAM_BUFFER = 65535


def open_datagram_sockets(
    host: str,
    port: int,
    socket_class: type[socket.socket] = socket.socket,
    *,
    reuse_port: bool = False,
) -> list[socket.socket]:
    """socket(SOCK_DGRAM) → bind() for every address of ``host``, all on ``port``.

    Call it with the port the TCP listeners got (never 0), so UDP and TCP echo
    share one port number. No SO_REUSEADDR: on UDP it would let a second server
    bind the same port and silently share the datagrams. ``reuse_port`` asks for exactly
    that sharing, among our own workers (SO_REUSEPORT: only sockets that all set it share).
    """

    def bind_to(sock: socket.socket, sockaddr: SockAddr, first: socket.socket) -> None:
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind(sockaddr)
        except OSError as exc:
            raise bind_error(exc, str(sockaddr[0]), int(sockaddr[1]), "udp") from None

    return _open_each(host, port, socket.SOCK_DGRAM, socket_class, bind_to)


def reserve_port(host: str, port: int) -> list[socket.socket]:
    """Hold ``port`` (0: a free one) on every address of ``host`` for workers to listen on.

    Each socket is bound with SO_REUSEPORT but never listens: the kernel hands connections
    only to listening sockets, so these take none, yet while they are open no other program
    can take the port (every socket sharing it must set SO_REUSEPORT, as the workers do).
    """

    def bind_to(sock: socket.socket, sockaddr: SockAddr, first: socket.socket) -> None:
        _bind_stream(sock, sockaddr, first, port == 0, reuse_port=True)

    return _open_each(host, port, socket.SOCK_STREAM, socket.socket, bind_to)


def kernel_unsent(sock: socket.socket | Any) -> int:
    """Bytes written to ``sock`` that the kernel has not yet delivered (Linux SIOCOUTQ); 0
    where that cannot be asked. Idle sweeps use it: a slow reader drains this queue."""
    try:
        answer = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except (OSError, ValueError):
        return 0
    return int(struct.unpack("i", answer)[0])


def set_nodelay(sock: socket.socket) -> None:
    """TCP_NODELAY: an echo is sent at once, not held back by Nagle (up to 40 ms stalls)."""
    with contextlib.suppress(OSError):  # not TCP (a socketpair), or the peer already left
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


#: SO_LINGER on, 0 seconds: close() then discards unsent data and sends a RST, not a FIN.
RESET_LINGER = struct.pack("ii", 1, 0)


def reset_on_close(sock: socket.socket | Any) -> None:
    """Make the next ``close()`` of ``sock`` a reset (RST) instead of an orderly FIN."""
    with contextlib.suppress(OSError):  # already reset by the peer: a reset either way
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET_LINGER)
