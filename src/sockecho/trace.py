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

Threads
    A stop comes from another thread (the CLI's signal handler, the drain
    timer ``sockecho-drain-timer``), and the threading model serves each client
    in its own thread. Two rules keep the narration honest about that:

    * a call that cannot wait (``shutdown``, ``close``, ``setsockopt``, an
      ``epoll_ctl``, anything on a non-blocking socket...) runs and writes its
      line under the tracer's lock, so its line is where the call really
      happened among all the others: the stop's ``shutdown(fd 5, SHUT_RD)``
      comes before the ``close(fd 5)`` it leads to. (Calls that can wait do
      not hold the lock: their result line is written when they return, and a
      line of another thread may land between the return and its line.)
    * a line written while another thread is blocked in a call carries its
      thread's name, ``server  [MainThread] shutdown(fd 5, SHUT_RD)``: it ran
      concurrently with that wait.

    At a stop, the blocking models' listeners are shut down (``SHUT_RD``) so the
    kernel refuses new clients; an ``accept`` racing with that fails with
    ``EINVAL``, and its line says so.

Folded polls
    A readiness wait with timeout 0 that finds nothing is not a line of its
    own: asyncio polls like that whenever callbacks are ready, several times
    per echo. They are counted, and one line reports the count before the next
    wait shown (and when the selector closes):
    ``epoll_wait(timeout 0.00) -> nothing ready, 2 times (polls that do not
    wait, folded since the last wait shown)``.

What is not shown
    ``getsockname``/``getpeername``/``fileno`` (bookkeeping, not lifecycle), and
    sockets the program makes outside the seam: a model's internal wake-up
    socketpair (used to stop it) and asyncio's self-pipe appear only as extra
    descriptors in the readiness waits.

Cost
    Tracing costs a line of formatting and a write per call: about 20-35 µs
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
    Payloads are previewed up to :data:`PREVIEW_BYTES` bytes. When a write to
    the stream fails (its reader went away: ``serve --trace 2>&1 | head -3``),
    tracing stops for good with one warning in the log, and the socket call
    being narrated completes as if untraced: tracing never breaks the program.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import selectors
import socket
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, ClassVar, TextIO, TypeVar

from rich.console import Console
from rich.text import Text

from sockecho.net import format_sockaddr
from sockecho.servers.base import SocketCalls, describe_error

T = TypeVar("T")

log = logging.getLogger("sockecho.trace")

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
#: Meanings that depend on the call: the same errno says something else elsewhere.
ACCEPT_MEANINGS: dict[int, str] = {
    errno.EINVAL: "the socket is not listening any more: a stop shut it down to refuse clients",
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


def describe_failure(exc: BaseException, meanings: Mapping[int, str] | None = None) -> str:
    """``ConnectionResetError [ECONNRESET] (the peer reset the connection)``; ``meanings``
    (errno: text) overrides :data:`ERRNO_MEANINGS` for one call."""
    text = describe_error(exc)
    if isinstance(exc, OSError):
        meaning = (meanings or {}).get(exc.errno or 0) or ERRNO_MEANINGS.get(exc.errno or 0)
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
        #: False once a write to ``stream`` failed (its reader went away): tracing stopped.
        self.enabled = True
        # Reentrant: a call narrated under atomic() writes its line under the same lock.
        self._lock = threading.RLock()
        self._waiting_threads: dict[int, int] = {}  # thread id: calls it is blocked in
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

    def failed(
        self, call: str, exc: BaseException, meanings: Mapping[int, str] | None = None
    ) -> None:
        self._write(f"{call:<{CALL_WIDTH}}", f" -> {describe_failure(exc, meanings)}", "error")

    def atomic(self) -> contextlib.AbstractContextManager[object]:
        """Hold around a call that cannot wait and its line: no other thread's line (or
        call narrated the same way) can come between, so lines are in the calls' order."""
        return self._lock

    @contextlib.contextmanager
    def blocked(self) -> Iterator[None]:
        """Around a call announced by :meth:`waiting`: while it waits, lines written by
        other threads carry their thread's name (they run concurrently with it)."""
        me = threading.get_ident()
        with self._lock:
            self._waiting_threads[me] = self._waiting_threads.get(me, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._waiting_threads[me] -= 1
                if not self._waiting_threads[me]:
                    del self._waiting_threads[me]

    def _thread_tag(self) -> str:
        me = threading.get_ident()
        if any(ident != me for ident in self._waiting_threads):
            return f"[{threading.current_thread().name}] "
        return ""

    _STYLES: ClassVar[dict[str, str]] = {
        "call": "",
        "result": "green",
        "waiting": "yellow",
        "error": "bold red",
    }

    def _write(self, call: str, tail: str, kind: str) -> None:
        prefix = f"{self.role:<6}  "
        with self._lock:
            if not self.enabled:
                return
            prefix += self._thread_tag()
            try:
                if self._console is None:
                    self.stream.write(f"{prefix}{call}{tail}\n".rstrip() + "\n")
                    self.stream.flush()
                    return
                line = Text(prefix, style="cyan" if self.role == "server" else "magenta")
                line.append(call, style="bold")
                line.append(tail.rstrip(), style=self._STYLES[kind])
                self._console.print(line)
            except (OSError, ValueError) as exc:  # ValueError: the stream was closed
                # The reader went away (``| head``, a closed terminal). The trace is for
                # watching; the program must go on: stop narrating, once, and let the
                # socket call that was being narrated complete as if untraced.
                self.enabled = False
                log.warning("--trace stopped: cannot write the trace (%s)", describe_error(exc))


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
        *,
        sends: bool = False,
        meanings: Mapping[int, str] | None = None,
    ) -> T:
        """Run the real call and narrate it.

        A call that may wait (``wait``: why) on a blocking socket is announced
        first and reported when it returns. A send on a blocking socket waits
        only when the peer does not read, so it is reported when it returns.
        Every other call cannot wait: it runs and is reported under the
        tracer's lock, so a stop made from another thread (``shutdown``,
        ``close``) shows in the order it really happened.
        """
        blocking = self.gettimeout() != 0.0
        if wait is not None and blocking:
            self.tracer.waiting(call, self._blocking_why(wait) or "")
            with self.tracer.blocked():
                return self._report(call, run, describe, meanings)
        if sends and blocking:
            return self._report(call, run, describe, meanings)
        with self.tracer.atomic():
            return self._report(call, run, describe, meanings)

    def _report(
        self,
        call: str,
        run: Callable[[], T],
        describe: Callable[[T], str | None],
        meanings: Mapping[int, str] | None,
    ) -> T:
        try:
            result = run()
        except OSError as exc:
            self.tracer.failed(call, exc, meanings)
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
            meanings=ACCEPT_MEANINGS,
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
            sends=True,
        )

    def send(self, data: Any, flags: int = 0, /) -> int:
        size = memoryview(data).nbytes
        return self._run(
            f"send(fd {self.fileno()}, {size} bytes)",
            lambda: super(TracedSocket, self).send(data, flags),
            lambda sent: _sent(sent, size),
            sends=True,
        )

    def sendall(self, data: Any, flags: int = 0, /) -> None:
        call = f"sendall(fd {self.fileno()}, {memoryview(data).nbytes} bytes)"
        self._run(
            call, lambda: super(TracedSocket, self).sendall(data, flags), _nothing, sends=True
        )

    def sendmsg(self, *args: Any) -> int:
        size = sum(memoryview(buffer).nbytes for buffer in args[0])
        args = (list(args[0]), *args[1:])  # the buffers may be a one-shot iterator
        return self._run(
            f"sendmsg(fd {self.fileno()}, {size} bytes)",
            lambda: super(TracedSocket, self).sendmsg(*args),
            lambda sent: _sent(sent, size),
            sends=True,
        )

    def shutdown(self, how: int, /) -> None:
        call = f"shutdown(fd {self.fileno()}, {_SHUTDOWN_NAMES.get(how, how)})"
        self._run(call, lambda: super(TracedSocket, self).shutdown(how), _nothing)

    def close(self) -> None:
        with self.tracer.atomic():  # no SO_LINGER timeout is ever set: close() does not wait
            fd = self.fileno()
            super().close()
            if fd != -1 and self.fileno() == -1:  # really closed (not a second, no makefile)
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
        waits = timeout is None or timeout > 0
        if waits:
            tracer.waiting(call, "blocks: waits until a socket in the lists is ready")
        with tracer.blocked() if waits else tracer.atomic():
            try:
                readable, writable, failed = select.select(readers, writers, errors, timeout)
            except OSError as exc:
                tracer.failed(call, exc)
                raise
            parts = [
                f"{name} {_fds(ready)}"
                for name, ready in (
                    ("readable", readable),
                    ("writable", writable),
                    ("error", failed),
                )
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
        # Zero-timeout waits that found nothing, not yet reported: asyncio polls like this
        # whenever callbacks are ready, several times per echo; a line each would drown
        # the calls that matter.
        self._folded_polls = 0
        if self._fd is not None:
            self.tracer.returned(f"{create}()", f"fd {self._fd}")

    def _ctl(self, op: str, fileobj: Any, events: int | None) -> None:
        shown = "" if events is None else f", {_events(events)}"
        self.tracer.returned(f"{self._ctl_call}({op}, fd {fd_of(fileobj)}{shown})")

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        with self.tracer.atomic():
            key = self.selector.register(fileobj, events, data)
            self._ctl("ADD", fileobj, events)
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        fd = fd_of(fileobj)  # before: a closed socket has no descriptor any more
        with self.tracer.atomic():
            key = self.selector.unregister(fileobj)
            self._ctl("DEL", fd, None)
        return key

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        with self.tracer.atomic():
            key = self.selector.modify(fileobj, events, data)
            self._ctl("MOD", fileobj, events)
        return key

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        call = f"{self._wait_call}({_timeout_text(timeout)})"
        waits = timeout is None or timeout > 0
        if waits:
            self._report_folded()
            self.tracer.waiting(call, "blocks: waits until a registered socket is ready")
        with self.tracer.blocked() if waits else self.tracer.atomic():
            try:
                ready = self.selector.select(timeout)
            except OSError as exc:
                self._report_folded()
                self.tracer.failed(call, exc)
                raise
            if not waits and not ready:
                self._folded_polls += 1
                return ready
            self._report_folded()
            self.tracer.returned(call, self._describe_ready(ready))
        return ready

    def _report_folded(self) -> None:
        """One line for the zero-timeout waits that found nothing since the last wait shown."""
        if self._folded_polls:
            count, self._folded_polls = self._folded_polls, 0
            self.tracer.returned(
                f"{self._wait_call}({_timeout_text(0)})",
                f"nothing ready, {count} time{'s' if count > 1 else ''} "
                "(polls that do not wait, folded since the last wait shown)",
            )

    @staticmethod
    def _describe_ready(ready: list[tuple[selectors.SelectorKey, int]]) -> str:
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
        return ", ".join(described) or "nothing ready (timeout)"

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        return self.selector.get_key(fileobj)

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self.selector.get_map()

    def close(self) -> None:
        with self.tracer.atomic():
            self._report_folded()
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
