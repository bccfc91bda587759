"""``--trace``: narrate every socket call as it really happens, one line each.

::

    server  socket(AF_INET, SOCK_STREAM)                 -> fd 5
    server  bind(fd 5, ('127.0.0.1', 50010))
    server  listen(fd 5, 128)
    server  epoll_wait(no timeout)                       -> fd 5 readable
    server  accept(fd 5)                                 -> fd 7, peer 127.0.0.1:35404
    server  recv(fd 7, 65536)                            -> 5 bytes b'hola\\n'
    server  sendall(fd 7, 5 bytes)
    server  recv(fd 7, 65536)                            -> 0 bytes: b'' (peer closed its side)
    server  close(fd 7)

(``sockecho serve --model iterative --trace``; docs/tutorial.md reads it line by line.)

How it works
    Nothing here prints a canned story. The models make every socket through
    ``SocketCalls.socket_class``, wait with ``SocketCalls.select`` and build their
    selectors with ``SocketCalls.new_selector`` (see :mod:`sockecho.servers.base`);
    :func:`traced_calls` returns instrumented versions of the three. A
    :class:`TracedSocket` *is* a ``socket.socket`` whose methods call the real
    method and then write what it was asked and what it returned, or the error
    with its errno. Sockets it accepts are TracedSockets too, so a connection is
    narrated from ``accept`` to ``close``. asyncio runs its event loop on a
    :class:`TracedSelector`, and its transports call ``recv_into``/``send`` on
    the same TracedSockets, so the asyncio model is narrated by the same code.
    UDP sockets (``--udp``) come through the same seam; ``recvfrom``/``sendto``
    are narrated with the peer's address.

Blocking calls
    Before a call that can wait (``accept``, ``connect``, ``recv``, a readiness
    wait with a timeout other than 0) on a blocking socket, a line ending in
    ``...`` says it is about to wait and why; the result follows on its own line
    when the call returns. Non-blocking calls get one line. ``sendall`` waits
    only when the peer does not read; it is shown once it returns.

What is not shown
    ``getsockname``/``getpeername``/``fileno`` (bookkeeping, not lifecycle), and
    sockets the program makes outside the seam: a model's internal wake-up
    socketpair (used to stop it) and asyncio's self-pipe appear only as extra
    descriptors in the readiness waits.

Cost
    Tracing costs a line of formatting and a write per call: about 20-30 µs
    of server CPU per echo instead of 7-10 (``benchmarks/models_at_a_glance.py``),
    so it is for watching, not for benchmarks. When it is off nothing of this
    module runs (the CLI imports it only for ``--trace``): the models get the
    plain ``socket.socket``, ``select.select`` and ``selectors.DefaultSelector``,
    with no wrapper and no ``if trace`` test; measured, the server CPU per echo
    is the same as before ``--trace`` existed (docs/tutorial.md, section 7).

Output
    One whole line per write under a lock, so threads (the threading model, the
    client's sender thread) never interleave mid-line. Colour (rich) when the
    stream is a terminal and ``NO_COLOR`` is unset; plain text otherwise.
    Payloads are previewed up to :data:`PREVIEW_BYTES` bytes.
"""

from __future__ import annotations

import errno
import os
import select
import selectors
import socket
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, TextIO, TypeVar

from rich.console import Console
from rich.text import Text

from sockecho.net import format_sockaddr
from sockecho.servers.base import SocketCalls, describe_error

T = TypeVar("T")

#: Bytes of payload shown in a trace line; enough to recognise a short message.
PREVIEW_BYTES = 20
#: Characters reserved for the call, so results line up in a column.
CALL_WIDTH = 44

#: What an errno means to someone learning sockets, shown after the error's name.
ERRNO_MEANINGS: dict[int, str] = {
    errno.ECONNRESET: "the peer reset the connection",
    errno.EPIPE: "the peer is gone: writing to it is an error",
    errno.ECONNREFUSED: "nothing listens on that port",
    errno.EADDRINUSE: "another socket is bound to that address",
    errno.EAGAIN: "nothing ready now: a non-blocking socket does not wait",
    errno.ENOTCONN: "the socket is not connected",
    errno.ECONNABORTED: "the client left before accept()",
    errno.EMFILE: "out of file descriptors",
}

_SOCKOPT_NAMES: dict[tuple[int, int], str] = {
    (socket.SOL_SOCKET, socket.SO_REUSEADDR): "SOL_SOCKET, SO_REUSEADDR",
    (socket.SOL_SOCKET, socket.SO_REUSEPORT): "SOL_SOCKET, SO_REUSEPORT",
    (socket.SOL_SOCKET, socket.SO_LINGER): "SOL_SOCKET, SO_LINGER",
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE): "SOL_SOCKET, SO_KEEPALIVE",
    (socket.SOL_SOCKET, socket.SO_RCVBUF): "SOL_SOCKET, SO_RCVBUF",
    (socket.SOL_SOCKET, socket.SO_SNDBUF): "SOL_SOCKET, SO_SNDBUF",
    (socket.IPPROTO_TCP, socket.TCP_NODELAY): "IPPROTO_TCP, TCP_NODELAY",
    (socket.IPPROTO_IPV6, socket.IPV6_V6ONLY): "IPPROTO_IPV6, IPV6_V6ONLY",
}
_SHUTDOWN_NAMES = {
    socket.SHUT_RD: "SHUT_RD",
    socket.SHUT_WR: "SHUT_WR",
    socket.SHUT_RDWR: "SHUT_RDWR",
}

#: The kernel call behind each selector class, for the readiness-wait lines.
_SELECTOR_CALLS: dict[str, tuple[str, str, str]] = {
    # class name: (the creation, the wait, the interest change)
    "EpollSelector": ("epoll_create", "epoll_wait", "epoll_ctl"),
    "PollSelector": ("poll", "poll", "poll register"),
    "KqueueSelector": ("kqueue", "kevent", "kevent"),
    "DevpollSelector": ("devpoll", "devpoll", "devpoll register"),
    "SelectSelector": ("select", "select", "select register"),
}


def wants_color(stream: TextIO) -> bool:
    """Colour for a terminal, unless ``NO_COLOR`` is set (https://no-color.org)."""
    if "NO_COLOR" in os.environ:
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def preview(data: bytes | bytearray | memoryview) -> str:
    """``b'hola\\n'``; longer payloads cut at PREVIEW_BYTES with ``...``."""
    head = bytes(data[:PREVIEW_BYTES])
    return repr(head) + ("..." if len(data) > PREVIEW_BYTES else "")


def describe_failure(exc: BaseException) -> str:
    """``ConnectionResetError [ECONNRESET] (the peer reset the connection)``."""
    text = describe_error(exc)
    if isinstance(exc, OSError):
        meaning = ERRNO_MEANINGS.get(exc.errno or 0)
        if meaning is None and exc.errno is None and exc.args:
            meaning = str(exc.args[0])  # socket timeouts: "timed out"
        if meaning:
            text += f" ({meaning})"
    return text


def fd_of(obj: Any) -> int:
    return obj if isinstance(obj, int) else int(obj.fileno())


class Tracer:
    """Writes one line per socket call to ``stream`` (default: stderr), thread-safe.

    ``role`` prefixes every line (``server``, ``client``) so two traces sent
    to one terminal stay apart.
    """

    def __init__(self, role: str, stream: TextIO | None = None, *, color: bool | None = None):
        self.role = role
        self.stream = stream if stream is not None else sys.stderr
        self._lock = threading.Lock()
        self._console: Console | None = None
        if wants_color(self.stream) if color is None else color:
            self._console = Console(
                file=self.stream, force_terminal=True, highlight=False, soft_wrap=True
            )

    def socket_class(self) -> type[TracedSocket]:
        """A ``socket.socket`` class narrating to this tracer (the client's ``socket_class``)."""
        return traced_socket_class(self)

    def socket_calls(self) -> SocketCalls:
        """The models' entry points narrating to this tracer (``Server(calls=...)``)."""
        return traced_calls(self)

    def returned(self, call: str, result: str | None = None) -> None:
        """``call`` returned; ``result`` describes what it gave back (None: nothing to say)."""
        if result is None:
            self._write(call, "", "call")
        else:
            self._write(f"{call:<{CALL_WIDTH}}", f" -> {result}", "result")

    def waiting(self, call: str, why: str) -> None:
        """``call`` is about to block; said before it, so a stalled program shows where."""
        self._write(f"{call + ' ...':<{CALL_WIDTH}}", f"   ({why})", "waiting")

    def failed(self, call: str, exc: BaseException) -> None:
        self._write(f"{call:<{CALL_WIDTH}}", f" -> {describe_failure(exc)}", "error")

    _STYLES: ClassVar[dict[str, str]] = {
        "call": "",
        "result": "green",
        "waiting": "yellow",
        "error": "bold red",
    }

    def _write(self, call: str, tail: str, kind: str) -> None:
        prefix = f"{self.role:<6}  "
        with self._lock:
            if self._console is None:
                self.stream.write(f"{prefix}{call}{tail}\n".rstrip() + "\n")
                self.stream.flush()
                return
            line = Text(prefix, style="cyan" if self.role == "server" else "magenta")
            line.append(call, style="bold")
            line.append(tail.rstrip(), style=self._STYLES[kind])
            self._console.print(line)


class TracedSocket(socket.socket):
    """A ``socket.socket`` that narrates its calls to ``tracer`` (set by
    :func:`traced_socket_class`). Every method calls the real one; the trace
    line is written from its arguments and what it really returned or raised."""

    tracer: ClassVar[Tracer]

    def __init__(
        self,
        family: socket.AddressFamily | int = -1,
        type: socket.SocketKind | int = -1,
        proto: int = -1,
        fileno: int | None = None,
    ) -> None:
        try:
            super().__init__(family, type, proto, fileno)
        except OSError as exc:
            self.tracer.failed(f"socket({_family(family)}, {_kind(type)})", exc)
            raise
        if fileno is None:  # accepted sockets are announced by accept()
            self.tracer.returned(
                f"socket({_family(self.family)}, {_kind(self.type)})", f"fd {self.fileno()}"
            )

    # -- the narration ----------------------------------------------------------------------

    def _blocking_why(self, why: str) -> str | None:
        """The hint for a call that may wait, or None when this socket never waits."""
        timeout = self.gettimeout()
        if timeout == 0.0:
            return None
        return f"blocks: {why}" if timeout is None else f"blocks up to {timeout:.3g} s: {why}"

    def _run(
        self,
        call: str,
        run: Callable[[], T],
        describe: Callable[[T], str | None],
        wait: str | None = None,
    ) -> T:
        if wait is not None and (why := self._blocking_why(wait)) is not None:
            self.tracer.waiting(call, why)
        try:
            result = run()
        except OSError as exc:
            self.tracer.failed(call, exc)
            raise
        self.tracer.returned(call, describe(result))
        return result

    # -- the lifecycle calls ----------------------------------------------------------------

    def setsockopt(self, *args: Any) -> None:
        level, option, value = args[0], args[1], args[2]
        name = _SOCKOPT_NAMES.get((level, option), f"{level}, {option}")
        shown = value if isinstance(value, int) or value is None else preview(value)
        call = f"setsockopt(fd {self.fileno()}, {name}, {shown})"
        self._run(call, lambda: super(TracedSocket, self).setsockopt(*args), _nothing)

    def setblocking(self, flag: bool, /) -> None:
        call = f"setblocking(fd {self.fileno()}, {flag})"
        self._run(call, lambda: super(TracedSocket, self).setblocking(flag), _nothing)

    def settimeout(self, value: float | None, /) -> None:
        shown = value if value is None else round(value, 3)  # a computed deadline: ms is enough
        call = f"settimeout(fd {self.fileno()}, {shown})"
        self._run(call, lambda: super(TracedSocket, self).settimeout(value), _nothing)

    def bind(self, address: Any, /) -> None:
        def describe(_: None) -> str | None:
            if isinstance(address, tuple) and len(address) >= 2 and address[1] == 0:
                return f"port {self.getsockname()[1]} (port 0: the kernel chose)"
            return None

        call = f"bind(fd {self.fileno()}, {address!r})"
        self._run(call, lambda: super(TracedSocket, self).bind(address), describe)

    def listen(self, *backlog: int) -> None:
        shown = f", {backlog[0]}" if backlog else ""
        call = f"listen(fd {self.fileno()}{shown})"
        self._run(call, lambda: super(TracedSocket, self).listen(*backlog), _nothing)

    def accept(self) -> tuple[socket.socket, Any]:
        def accept_traced() -> tuple[socket.socket, Any]:
            fd, addr = self._accept()  # type: ignore[attr-defined]
            conn = type(self)(self.family, self.type, self.proto, fileno=fd)
            # As socket.accept() does: a listener with a timeout hands out blocking sockets.
            if socket.getdefaulttimeout() is None and self.gettimeout():
                socket.socket.setblocking(conn, True)
            return conn, addr

        return self._run(
            f"accept(fd {self.fileno()})",
            accept_traced,
            lambda pair: f"fd {pair[0].fileno()}, peer {format_sockaddr(pair[1])}",
            wait="a passive socket waits for a client",
        )

    def connect(self, address: Any, /) -> None:
        call = f"connect(fd {self.fileno()}, {address!r})"
        if self.type != socket.SOCK_STREAM:  # UDP: no handshake, only a default peer
            self._run(call, lambda: super(TracedSocket, self).connect(address), _peer_set)
            return
        self._run(
            call,
            lambda: super(TracedSocket, self).connect(address),
            lambda _: "connected",
            wait="the three-way handshake",
        )

    def _waits_for(self) -> str:
        return (
            "waits for bytes from the peer"
            if self.type == socket.SOCK_STREAM
            else ("waits for a datagram")
        )

    def recv(self, bufsize: int, flags: int = 0, /) -> bytes:
        return self._run(
            f"recv(fd {self.fileno()}, {bufsize})",
            lambda: super(TracedSocket, self).recv(bufsize, flags),
            lambda data: _received(data, self.type == socket.SOCK_STREAM),
            wait=self._waits_for(),
        )

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        view = memoryview(buffer)
        return self._run(
            f"recv_into(fd {self.fileno()}, {nbytes or view.nbytes})",
            lambda: super(TracedSocket, self).recv_into(buffer, nbytes, flags),
            lambda count: _received(view.cast("B")[:count], self.type == socket.SOCK_STREAM),
            wait=self._waits_for(),
        )

    def recvfrom(self, bufsize: int, flags: int = 0, /) -> tuple[bytes, Any]:
        return self._run(
            f"recvfrom(fd {self.fileno()}, {bufsize})",
            lambda: super(TracedSocket, self).recvfrom(bufsize, flags),
            lambda pair: f"{_received(pair[0], False)} from {format_sockaddr(pair[1])}",
            wait="waits for a datagram",
        )

    def recvfrom_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> tuple[int, Any]:
        view = memoryview(buffer)
        return self._run(
            f"recvfrom_into(fd {self.fileno()}, {nbytes or view.nbytes})",
            lambda: super(TracedSocket, self).recvfrom_into(buffer, nbytes, flags),
            lambda pair: f"{_received(view.cast('B')[: pair[0]])} from {format_sockaddr(pair[1])}",
            wait="waits for a datagram",
        )

    def sendto(self, *args: Any) -> int:
        data, address = args[0], args[-1]  # sendto(data, address) or (data, flags, address)
        size = memoryview(data).nbytes
        return self._run(
            f"sendto(fd {self.fileno()}, {size} bytes, {address!r})",
            lambda: super(TracedSocket, self).sendto(*args),
            lambda sent: _sent(sent, size),
        )

    def send(self, data: Any, flags: int = 0, /) -> int:
        size = memoryview(data).nbytes
        return self._run(
            f"send(fd {self.fileno()}, {size} bytes)",
            lambda: super(TracedSocket, self).send(data, flags),
            lambda sent: _sent(sent, size),
        )

    def sendall(self, data: Any, flags: int = 0, /) -> None:
        call = f"sendall(fd {self.fileno()}, {memoryview(data).nbytes} bytes)"
        self._run(call, lambda: super(TracedSocket, self).sendall(data, flags), _nothing)

    def sendmsg(self, *args: Any) -> int:
        size = sum(memoryview(buffer).nbytes for buffer in args[0])
        args = (list(args[0]), *args[1:])  # the buffers may be a one-shot iterator
        return self._run(
            f"sendmsg(fd {self.fileno()}, {size} bytes)",
            lambda: super(TracedSocket, self).sendmsg(*args),
            lambda sent: _sent(sent, size),
        )

    def shutdown(self, how: int, /) -> None:
        call = f"shutdown(fd {self.fileno()}, {_SHUTDOWN_NAMES.get(how, how)})"
        self._run(call, lambda: super(TracedSocket, self).shutdown(how), _nothing)

    def close(self) -> None:
        fd = self.fileno()
        super().close()
        if fd != -1 and self.fileno() == -1:  # really closed (not a second close, no makefile)
            self.tracer.returned(f"close(fd {fd})")


def _nothing(_: object) -> None:
    return None


def _peer_set(_: None) -> str:
    return "default peer set (a UDP connect sends nothing)"


def _received(data: bytes | memoryview, stream: bool = True) -> str:
    if not data:
        return "0 bytes: b'' (peer closed its side)" if stream else "0 bytes (an empty datagram)"
    return f"{len(data)} bytes {preview(data)}"


def _sent(sent: int, size: int) -> str:
    if sent < size:
        return f"{sent} of {size} bytes (a partial send: the rest must be sent later)"
    return f"{sent} bytes"


def _family(family: int) -> str:
    try:
        return socket.AddressFamily(family).name
    except ValueError:
        return str(family)


def _kind(kind: int) -> str:
    try:
        return socket.SocketKind(kind & ~(socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)).name
    except ValueError:
        return str(kind)


def traced_socket_class(tracer: Tracer) -> type[TracedSocket]:
    """A TracedSocket class narrating to ``tracer``: pass it where a ``socket.socket``
    class is expected (``SocketCalls.socket_class``, the client's ``socket_class``)."""
    return type("TracedSocket", (TracedSocket,), {"tracer": tracer})


def _fds(objs: Iterable[Any]) -> list[int]:
    return [fd_of(obj) for obj in objs]


def _timeout_text(timeout: float | None) -> str:
    return "no timeout" if timeout is None else f"timeout {timeout:.2f}"


SelectFunction = Callable[
    [list[socket.socket], list[socket.socket], list[socket.socket], float | None],
    tuple[list[socket.socket], list[socket.socket], list[socket.socket]],
]


def traced_select(tracer: Tracer) -> SelectFunction:
    """``select.select`` narrated: ``select([3, 5], [], [], 1.00) -> readable [5]``."""

    def traced(
        readers: list[socket.socket],
        writers: list[socket.socket],
        errors: list[socket.socket],
        timeout: float | None = None,
    ) -> tuple[list[socket.socket], list[socket.socket], list[socket.socket]]:
        shown_timeout = "None" if timeout is None else f"{timeout:.2f}"
        call = f"select({_fds(readers)}, {_fds(writers)}, {_fds(errors)}, {shown_timeout})"
        if timeout is None or timeout > 0:
            tracer.waiting(call, "blocks: waits until a socket in the lists is ready")
        try:
            readable, writable, failed = select.select(readers, writers, errors, timeout)
        except OSError as exc:
            tracer.failed(call, exc)
            raise
        parts = [
            f"{name} {_fds(ready)}"
            for name, ready in (("readable", readable), ("writable", writable), ("error", failed))
            if ready
        ]
        tracer.returned(call, ", ".join(parts) or "nothing ready (timeout)")
        return readable, writable, failed

    return traced


def _events(events: int) -> str:
    names = [
        name
        for flag, name in ((selectors.EVENT_READ, "READ"), (selectors.EVENT_WRITE, "WRITE"))
        if events & flag
    ]
    return "|".join(names) or "0"


class TracedSelector(selectors.BaseSelector):
    """A selector that narrates its kernel calls and delegates to a real one
    (``epoll_ctl(ADD, fd 4, READ)``, ``epoll_wait(timeout 1.00) -> fd 4 readable``)."""

    def __init__(self, tracer: Tracer, selector: selectors.BaseSelector | None = None) -> None:
        self.tracer = tracer
        self.selector = selector if selector is not None else selectors.DefaultSelector()
        kind = type(self.selector).__name__
        create, self._wait_call, self._ctl_call = _SELECTOR_CALLS.get(
            kind, (kind, f"{kind}.select", f"{kind}.register")
        )
        fileno = getattr(self.selector, "fileno", None)
        self._fd: int | None = fileno() if fileno is not None else None
        if self._fd is not None:
            self.tracer.returned(f"{create}()", f"fd {self._fd}")

    def _ctl(self, op: str, fileobj: Any, events: int | None) -> None:
        shown = "" if events is None else f", {_events(events)}"
        self.tracer.returned(f"{self._ctl_call}({op}, fd {fd_of(fileobj)}{shown})")

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        key = self.selector.register(fileobj, events, data)
        self._ctl("ADD", fileobj, events)
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        fd = fd_of(fileobj)  # before: a closed socket has no descriptor any more
        key = self.selector.unregister(fileobj)
        self._ctl("DEL", fd, None)
        return key

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        key = self.selector.modify(fileobj, events, data)
        self._ctl("MOD", fileobj, events)
        return key

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        call = f"{self._wait_call}({_timeout_text(timeout)})"
        if timeout is None or timeout > 0:
            self.tracer.waiting(call, "blocks: waits until a registered socket is ready")
        try:
            ready = self.selector.select(timeout)
        except OSError as exc:
            self.tracer.failed(call, exc)
            raise
        described = [
            f"fd {key.fd} "
            + "+".join(
                word
                for flag, word in (
                    (selectors.EVENT_READ, "readable"),
                    (selectors.EVENT_WRITE, "writable"),
                )
                if events & flag
            )
            for key, events in ready
        ]
        self.tracer.returned(call, ", ".join(described) or "nothing ready (timeout)")
        return ready

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        return self.selector.get_key(fileobj)

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self.selector.get_map()

    def close(self) -> None:
        self.selector.close()
        if self._fd is not None:
            self.tracer.returned(f"close(fd {self._fd})")
            self._fd = None


def traced_calls(tracer: Tracer) -> SocketCalls:
    """The instrumented system-call entry points: ``Server(config, calls=traced_calls(t))``."""
    return SocketCalls(
        socket_class=traced_socket_class(tracer),
        select=traced_select(tracer),
        new_selector=lambda: TracedSelector(tracer),
    )


__all__ = [
    "PREVIEW_BYTES",
    "TracedSelector",
    "TracedSocket",
    "Tracer",
    "traced_calls",
    "traced_select",
    "traced_socket_class",
]
