"""``--trace``: narrate each socket API call as it really happens, one line each.

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

Kernel calls
    The lines narrate the socket API, the methods the program calls. When the
    system calls behind a method have other names, the line says so once, in
    brackets: ``accept`` is ``[kernel: accept4]``, ``setblocking`` is
    ``ioctl(FIONBIO)``, a ``recv`` on a socket with a timeout is ``poll`` (the
    wait) then ``recvfrom``, a ``connect`` with a timeout is ``connect``,
    ``poll`` and ``getsockopt(SO_ERROR)``, ``select`` is ``pselect6``
    (:func:`~sockecho.narration.kernel_calls`; tests/test_trace.py checks the
    names against strace). A client's waits for the echo are those polls.

Idle waits
    A readiness wait that times out with nothing ready (an idle ``select`` or
    asyncio server wakes every second or so to sweep) is one line the first
    time; the same wait timing out again is counted, and one line with the
    count comes before the next line of anything else.

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
    This module runs the calls and says what happened as events; the wording
    and the writing are :mod:`sockecho.narration`'s. One whole line per write
    under a lock, so threads (the threading model, the client's sender thread)
    never interleave mid-line. Colour (rich) when the stream is a terminal and
    ``NO_COLOR`` is unset; plain text otherwise. Payloads are previewed up to
    :data:`~sockecho.narration.PREVIEW_BYTES` bytes. When a write to the stream
    fails (its reader went away: ``serve --trace 2>&1 | head -3``), tracing
    stops for good with one warning in the log, and the socket call being
    narrated completes as if untraced: tracing never breaks the program.
"""

from __future__ import annotations

import select
import selectors
import socket
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, ClassVar, TypeVar

from sockecho import narration as say
from sockecho.i18n import _
from sockecho.narration import (
    PREVIEW_BYTES,
    Call,
    Narrator,
    fd,
    fd_of,
    preview,
)
from sockecho.net import format_sockaddr
from sockecho.servers.base import SocketCalls

T = TypeVar("T")


class Tracer(Narrator):
    """Narrates socket calls to ``stream`` (default: stderr), one line each, thread-safe;
    hands out the traced objects that report to it.

    ``role`` prefixes every line (``server``, ``client``) so two traces sent
    to one terminal stay apart.
    """

    def socket_class(self) -> type[TracedSocket]:
        """A ``socket.socket`` class narrating to this tracer (the client's ``socket_class``)."""
        return traced_socket_class(self)

    def socket_calls(self) -> SocketCalls:
        """The models' entry points narrating to this tracer (``Server(calls=...)``)."""
        return traced_calls(self)


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
            self.tracer.failed(Call("socket", (say.family(family), say.kind(type))), exc)
            raise
        if fileno is None:  # accepted sockets are announced by accept()
            self.tracer.returned(
                Call("socket", (say.family(self.family), say.kind(self.type))),
                say.new_descriptor(self.fileno()),
            )

    # -- the narration ----------------------------------------------------------------------

    def _call(self, name: str, *args: str) -> Call:
        """``name(fd N, args...)``: a call on this socket, with the kernel calls behind it."""
        return Call(name, (fd(self.fileno()), *args), say.kernel_calls(name, self.gettimeout()))

    def _blocking_why(self, why: str) -> str | None:
        """The hint for a call that may wait, or None when this socket never waits."""
        timeout = self.gettimeout()
        if timeout == 0.0:
            return None
        return say.blocks(why, timeout)

    def _run(
        self,
        call: Call,
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
            with self.tracer.blocked():  # (the kernel calls were named on the waiting line)
                return self._report(replace(call, kernel=None), run, describe, meanings)
        if sends and blocking:
            return self._report(call, run, describe, meanings)
        with self.tracer.atomic():
            return self._report(call, run, describe, meanings)

    def _report(
        self,
        call: Call,
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
        call = self._call("setsockopt", say.sockopt(level, option), say.option_value(value))
        self._run(call, lambda: super(TracedSocket, self).setsockopt(*args), _nothing)

    def setblocking(self, flag: bool, /) -> None:
        call = self._call("setblocking", str(flag))
        self._run(call, lambda: super(TracedSocket, self).setblocking(flag), _nothing)

    def settimeout(self, value: float | None, /) -> None:
        call = self._call("settimeout", say.timeout_value(value))
        self._run(call, lambda: super(TracedSocket, self).settimeout(value), _nothing)

    def bind(self, address: Any, /) -> None:
        def describe(_: None) -> str | None:
            if isinstance(address, tuple) and len(address) >= 2 and address[1] == 0:
                return say.port_chosen(self.getsockname()[1])
            return None

        call = self._call("bind", say.address(address))
        self._run(call, lambda: super(TracedSocket, self).bind(address), describe)

    def listen(self, *backlog: int) -> None:
        call = self._call("listen", *(str(size) for size in backlog[:1]))
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
            self._call("accept"),
            accept_traced,
            lambda pair: say.accepted(pair[0].fileno(), format_sockaddr(pair[1])),
            wait=say.WHY_CLIENT,
            meanings=say.ACCEPT_MEANINGS,
        )

    def connect(self, address: Any, /) -> None:
        call = self._call("connect", say.address(address))
        if self.type != socket.SOCK_STREAM:  # UDP: no handshake, only a default peer
            self._run(call, lambda: super(TracedSocket, self).connect(address), _peer_set)
            return
        self._run(
            call,
            lambda: super(TracedSocket, self).connect(address),
            lambda _result: _(say.CONNECTED),
            wait=say.WHY_HANDSHAKE,
        )

    def _waits_for(self) -> str:
        return say.WHY_BYTES if self.type == socket.SOCK_STREAM else say.WHY_DATAGRAM

    def recv(self, bufsize: int, flags: int = 0, /) -> bytes:
        return self._run(
            self._call("recv", str(bufsize)),
            lambda: super(TracedSocket, self).recv(bufsize, flags),
            lambda data: say.received(data, self.type == socket.SOCK_STREAM),
            wait=self._waits_for(),
        )

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        view = memoryview(buffer)
        return self._run(
            self._call("recv_into", str(nbytes or view.nbytes)),
            lambda: super(TracedSocket, self).recv_into(buffer, nbytes, flags),
            lambda count: say.received(view.cast("B")[:count], self.type == socket.SOCK_STREAM),
            wait=self._waits_for(),
        )

    def recvfrom(self, bufsize: int, flags: int = 0, /) -> tuple[bytes, Any]:
        return self._run(
            self._call("recvfrom", str(bufsize)),
            lambda: super(TracedSocket, self).recvfrom(bufsize, flags),
            lambda pair: say.received_from(pair[0], format_sockaddr(pair[1])),
            wait=say.WHY_DATAGRAM,
        )

    def recvfrom_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> tuple[int, Any]:
        view = memoryview(buffer)
        return self._run(
            self._call("recvfrom_into", str(nbytes or view.nbytes)),
            lambda: super(TracedSocket, self).recvfrom_into(buffer, nbytes, flags),
            lambda pair: say.received_from(view.cast("B")[: pair[0]], format_sockaddr(pair[1])),
            wait=say.WHY_DATAGRAM,
        )

    def sendto(self, *args: Any) -> int:
        data, address = args[0], args[-1]  # sendto(data, address) or (data, flags, address)
        size = memoryview(data).nbytes
        return self._run(
            self._call("sendto", say.byte_count(size), say.address(address)),
            lambda: super(TracedSocket, self).sendto(*args),
            lambda sent: say.sent(sent, size),
            sends=True,
        )

    def send(self, data: Any, flags: int = 0, /) -> int:
        size = memoryview(data).nbytes
        return self._run(
            self._call("send", say.byte_count(size)),
            lambda: super(TracedSocket, self).send(data, flags),
            lambda sent: say.sent(sent, size),
            sends=True,
        )

    def sendall(self, data: Any, flags: int = 0, /) -> None:
        call = self._call("sendall", say.byte_count(memoryview(data).nbytes))
        self._run(
            call, lambda: super(TracedSocket, self).sendall(data, flags), _nothing, sends=True
        )

    def sendmsg(self, *args: Any) -> int:
        size = sum(memoryview(buffer).nbytes for buffer in args[0])
        args = (list(args[0]), *args[1:])  # the buffers may be a one-shot iterator
        return self._run(
            self._call("sendmsg", say.byte_count(size)),
            lambda: super(TracedSocket, self).sendmsg(*args),
            lambda sent: say.sent(sent, size),
            sends=True,
        )

    def shutdown(self, how: int, /) -> None:
        call = self._call("shutdown", say.shutdown_how(how))
        self._run(call, lambda: super(TracedSocket, self).shutdown(how), _nothing)

    def close(self) -> None:
        with self.tracer.atomic():  # no SO_LINGER timeout is ever set: close() does not wait
            number = self.fileno()
            super().close()
            if number != -1 and self.fileno() == -1:  # really closed (not a second, no makefile)
                self.tracer.returned(Call("close", (fd(number),)))


def _nothing(_: object) -> None:
    return None


def _peer_set(_result: None) -> str:
    return _(say.PEER_SET)


def traced_socket_class(tracer: Tracer) -> type[TracedSocket]:
    """A TracedSocket class narrating to ``tracer``: pass it where a ``socket.socket``
    class is expected (``SocketCalls.socket_class``, the client's ``socket_class``)."""
    return type("TracedSocket", (TracedSocket,), {"tracer": tracer})


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
        call = Call(
            "select",
            (
                say.fd_list(readers),
                say.fd_list(writers),
                say.fd_list(errors),
                say.select_timeout(timeout),
            ),
            "pselect6",
        )
        waits = timeout is None or timeout > 0
        idle_key = ("select", *call.args[:-1])  # the same lists: the same wait, any timeout
        if waits and not tracer.same_idle_wait(idle_key):
            tracer.waiting(call, say.blocks(say.WHY_SELECT))
        with tracer.blocked() if waits else tracer.atomic():
            try:
                readable, writable, failed = select.select(readers, writers, errors, timeout)
            except OSError as exc:
                tracer.failed(call, exc)
                raise
            shown = replace(call, kernel=None) if waits else call  # named on the waiting line
            if waits and not (readable or writable or failed):
                tracer.timed_out(shown, idle_key)
            else:
                tracer.returned(shown, say.select_ready(readable, writable, failed))
        return readable, writable, failed

    return traced


class TracedSelector(selectors.BaseSelector):
    """A selector that narrates its kernel calls and delegates to a real one
    (``epoll_ctl(ADD, fd 4, READ)``, ``epoll_wait(timeout 1.00) -> fd 4 readable``)."""

    def __init__(self, tracer: Tracer, selector: selectors.BaseSelector | None = None) -> None:
        self.tracer = tracer
        self.selector = selector if selector is not None else selectors.DefaultSelector()
        create, self._wait_call, self._ctl_call = say.selector_calls(type(self.selector).__name__)
        fileno = getattr(self.selector, "fileno", None)
        self._fd: int | None = fileno() if fileno is not None else None
        # Zero-timeout waits that found nothing, not yet reported: asyncio polls like this
        # whenever callbacks are ready, several times per echo; a line each would drown
        # the calls that matter.
        self._folded_polls = 0
        if self._fd is not None:
            self.tracer.returned(Call(create), say.new_descriptor(self._fd))

    def _ctl(self, op: str, fileobj: Any, events: int | None) -> None:
        shown = () if events is None else (say.interest(events),)
        self.tracer.returned(Call(self._ctl_call, (op, fd(fd_of(fileobj)), *shown)))

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        with self.tracer.atomic():
            key = self.selector.register(fileobj, events, data)
            self._ctl("ADD", fileobj, events)
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        number = fd_of(fileobj)  # before: a closed socket has no descriptor any more
        with self.tracer.atomic():
            key = self.selector.unregister(fileobj)
            self._ctl("DEL", number, None)
        return key

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        with self.tracer.atomic():
            key = self.selector.modify(fileobj, events, data)
            self._ctl("MOD", fileobj, events)
        return key

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        call = Call(self._wait_call, (say.wait_timeout(timeout),))
        waits = timeout is None or timeout > 0
        idle_key = (self._wait_call, str(self._fd))  # this selector's wait, any timeout
        if waits:
            if self.tracer.same_idle_wait(idle_key):
                self._folded_polls = 0  # (an idle loop's own polls fold into its idle line)
            else:
                self._report_folded()
                self.tracer.waiting(call, say.blocks(say.WHY_SELECTOR))
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
            if waits and not ready:
                self.tracer.timed_out(call, idle_key)
            else:
                self.tracer.returned(call, say.selector_ready(ready))
        return ready

    def _report_folded(self) -> None:
        """One line for the zero-timeout waits that found nothing since the last wait shown."""
        if self._folded_polls:
            count, self._folded_polls = self._folded_polls, 0
            call = Call(self._wait_call, (say.wait_timeout(0),))
            self.tracer.returned(call, say.folded_polls(count))

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        return self.selector.get_key(fileobj)

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self.selector.get_map()

    def close(self) -> None:
        with self.tracer.atomic():
            self._report_folded()
            self.selector.close()
            if self._fd is not None:
                self.tracer.returned(Call("close", (fd(self._fd),)))
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
    "preview",
    "traced_calls",
    "traced_select",
    "traced_socket_class",
]
