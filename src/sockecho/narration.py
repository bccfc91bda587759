"""How ``--trace`` words and writes what the traced objects saw: one line per socket call.

:mod:`sockecho.trace` runs the real calls and reports each as an :class:`Event`
(a :class:`Call`: its name and arguments; an :class:`Outcome`: it returned, is about
to wait, or failed; and a detail: what it returned, why it waits, the error). This
module turns events into lines and writes them:

* :func:`format_event` is the one place a line is put together: every narrated line
  passes through it (call names, argument order, the result column);
* the phrases (:func:`received`, :func:`sent`, :data:`WHY_BYTES`, :data:`ERRNO_MEANINGS`...)
  and the argument formats (:func:`fd`, :func:`byte_count`...) are here too, so the
  wording of the whole trace can be read, changed or translated in this file;
* :func:`kernel_calls` names the system calls behind a socket method when they are not
  the method's own name (``accept`` is ``accept4``, a ``recv`` with a timeout is
  ``poll`` then ``recvfrom``), as strace shows them (Linux, CPython 3.11; checked with
  ``strace -f -e trace=network,ioctl,poll,pselect6``: tests/test_trace.py runs it);
* :class:`Narrator` writes the lines: whole lines under a lock, colour (rich) on a
  terminal unless ``NO_COLOR``, the ``[thread]`` tag while another thread is blocked in
  a call; a readiness wait that keeps timing out with nothing ready (an idle server)
  is folded into one line with a count; and it stops for good, with one warning, when
  its stream goes away.

Every phrase goes through :mod:`sockecho.i18n` (``--lang es``: Spanish); call names,
kernel call names, errno names, descriptors and byte previews are never translated.

The rules for what is narrated and in which order (blocking calls, threads, folded
polls) are described in :mod:`sockecho.trace`.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import os
import selectors
import socket
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TextIO

from rich.console import Console
from rich.text import Text

from sockecho.i18n import N_, _, decimal, ngettext
from sockecho.servers.base import describe_error

log = logging.getLogger("sockecho.trace")

#: Bytes of payload shown in a trace line; enough to recognise a short message.
PREVIEW_BYTES = 20
#: Characters reserved for the call, so results line up in a column.
CALL_WIDTH = 44

# -- the events ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """A call as the program made it: ``Call("recv", (fd(7), "65536"))`` is ``recv(fd 7, 65536)``.

    ``name`` is the method or kernel call the program used; ``args`` are already worded
    by the argument formats below; ``kernel`` names the system calls behind it when they
    differ from ``name`` (:func:`kernel_calls`), shown once, on the call's first line.
    """

    name: str
    args: tuple[str, ...] = ()
    kernel: str | None = None


class Outcome(enum.Enum):
    RETURNED = "returned"  # detail: what it gave back, or None when there is nothing to say
    WAITING = "waiting"  # about to block; detail: why (said first, so a stall shows where)
    FAILED = "failed"  # detail: the error, its errno and what that means


@dataclass(frozen=True)
class Event:
    """One narrated line: a call and what became of it."""

    call: Call
    outcome: Outcome
    detail: str | None = None


def format_event(event: Event) -> tuple[str, str]:
    """The line for ``event``, as (the call, the rest): the one place a line is worded.

    The call is padded to :data:`CALL_WIDTH` when something follows, so results line up.
    """
    call = f"{event.call.name}({', '.join(event.call.args)})"
    kernel = "" if event.call.kernel is None else "   [" + _("kernel: %s") % event.call.kernel + "]"
    if event.outcome is Outcome.WAITING:
        return f"{call + ' ...':<{CALL_WIDTH}}", f"   ({event.detail}){kernel}"
    if event.detail is None:
        return (f"{call:<{CALL_WIDTH}}", kernel) if kernel else (call, "")
    return f"{call:<{CALL_WIDTH}}", f" -> {event.detail}{kernel}"


#: The system call behind each socket method not named after it (strace's names).
_KERNEL_NAMES = {
    "recv": "recvfrom",
    "recv_into": "recvfrom",
    "recvfrom_into": "recvfrom",
    "send": "sendto",
    "accept": "accept4",
    "setblocking": "ioctl(FIONBIO)",
    "settimeout": "ioctl(FIONBIO)",
}
#: The methods that a socket timeout turns into ``poll()`` and then the call.
_POLLED_WITH_TIMEOUT = frozenset(
    {"recv", "recv_into", "recvfrom", "recvfrom_into", "send", "sendall", "sendto", "sendmsg"}
    | {"accept"}
)


def kernel_calls(name: str, timeout: float | None) -> str | None:
    """The system calls behind socket method ``name`` on a socket whose timeout is
    ``timeout`` (None: blocking; 0: non-blocking), or None when they are the same name.

    CPython implements a socket timeout by waiting in ``poll()`` before the call, which
    it then makes on a non-blocking descriptor; blocking mode is ``ioctl(FIONBIO)``.
    """
    if name == "connect":
        return "connect + poll + getsockopt(SO_ERROR)" if timeout else None
    if name == "sendall":
        kernel = _("sendto, until every byte is sent")
    else:
        kernel = _KERNEL_NAMES.get(name, name)
    if timeout and name in _POLLED_WITH_TIMEOUT:
        kernel = "poll + " + kernel
    return None if kernel == name else kernel


# -- the arguments ---------------------------------------------------------------------------

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
    "EpollSelector": ("epoll_create1", "epoll_wait", "epoll_ctl"),
    "PollSelector": ("poll", "poll", "poll register"),
    "KqueueSelector": ("kqueue", "kevent", "kevent"),
    "DevpollSelector": ("devpoll", "devpoll", "devpoll register"),
    "SelectSelector": ("select", "select", "select register"),
}


def selector_calls(kind: str) -> tuple[str, str, str]:
    """(creation, wait, interest change): the kernel calls behind the selector class ``kind``."""
    return _SELECTOR_CALLS.get(kind, (kind, f"{kind}.select", f"{kind}.register"))


def fd(number: int) -> str:
    return f"fd {number}"


def fd_of(obj: Any) -> int:
    return obj if isinstance(obj, int) else int(obj.fileno())


def fd_list(objs: Iterable[Any]) -> str:
    """``[3, 5]``: the descriptors of sockets (or descriptors) in a ``select`` list."""
    return str([fd_of(obj) for obj in objs])


def byte_count(count: int) -> str:
    return ngettext("%d byte", "%d bytes", count) % count


def address(value: Any) -> str:
    return repr(value)


def family(number: int) -> str:
    try:
        return socket.AddressFamily(number).name
    except ValueError:
        return str(number)


def kind(number: int) -> str:
    try:
        return socket.SocketKind(number & ~(socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)).name
    except ValueError:
        return str(number)


def sockopt(level: int, option: int) -> str:
    return _SOCKOPT_NAMES.get((level, option), f"{level}, {option}")


def option_value(value: Any) -> str:
    return str(value if isinstance(value, int) or value is None else preview(value))


def shutdown_how(how: int) -> str:
    return str(_SHUTDOWN_NAMES.get(how, how))


def timeout_value(value: float | None) -> str:
    """``settimeout``'s argument: a computed deadline shown to the millisecond."""
    return str(value if value is None else round(value, 3))


def select_timeout(timeout: float | None) -> str:
    return "None" if timeout is None else f"{timeout:.2f}"


def wait_timeout(timeout: float | None) -> str:
    if timeout is None:
        return _("no timeout")
    return _("timeout %s") % f"{timeout:.2f}"  # (an argument: Python's decimal point)


def interest(events: int) -> str:
    names = [
        name
        for flag, name in ((selectors.EVENT_READ, "READ"), (selectors.EVENT_WRITE, "WRITE"))
        if events & flag
    ]
    return "|".join(names) or "0"


def preview(data: bytes | bytearray | memoryview) -> str:
    """``b'hola\\n'``; longer payloads cut at PREVIEW_BYTES with ``...``."""
    head = bytes(data[:PREVIEW_BYTES])
    return repr(head) + ("..." if len(data) > PREVIEW_BYTES else "")


# -- what calls return ---------------------------------------------------------------------

CONNECTED = N_("connected")
PEER_SET = N_("default peer set (a UDP connect sends nothing)")
NOTHING_READY = N_("nothing ready (timeout)")


def new_descriptor(number: int) -> str:
    return fd(number)


def port_chosen(port: int) -> str:
    return _("port %d (port 0: the kernel chose)") % port


def accepted(number: int, peer: str) -> str:
    return _("%s, peer %s") % (fd(number), peer)


def received(data: bytes | memoryview, stream: bool = True) -> str:
    if not data:
        if stream:
            return _("0 bytes: b'' (peer closed its side)")
        return _("0 bytes (an empty datagram)")
    return f"{byte_count(len(data))} {preview(data)}"


def received_from(data: bytes | memoryview, peer: str) -> str:
    return _("%s from %s") % (received(data, False), peer)


def sent(count: int, size: int) -> str:
    if count < size:
        return _("%d of %d bytes (a partial send: the rest must be sent later)") % (count, size)
    return byte_count(count)


def select_ready(readable: Sequence[Any], writable: Sequence[Any], failed: Sequence[Any]) -> str:
    """``readable [5]``: what ``select`` returned."""
    parts = [
        f"{_(name)} {fd_list(ready)}"
        for name, ready in (
            (N_("readable"), readable),
            (N_("writable"), writable),
            (N_("error"), failed),
        )
        if ready
    ]
    return ", ".join(parts) or _(NOTHING_READY)


def selector_ready(ready: Sequence[tuple[selectors.SelectorKey, int]]) -> str:
    """``fd 4 readable, fd 6 readable+writable``: what a selector's wait returned."""
    described = [
        f"fd {key.fd} "
        + "+".join(
            _(word)
            for flag, word in (
                (selectors.EVENT_READ, N_("readable")),
                (selectors.EVENT_WRITE, N_("writable")),
            )
            if events & flag
        )
        for key, events in ready
    ]
    return ", ".join(described) or _(NOTHING_READY)


def folded_polls(count: int) -> str:
    return (
        ngettext(
            "nothing ready, %d time (polls that do not wait, folded since the last wait shown)",
            "nothing ready, %d times (polls that do not wait, folded since the last wait shown)",
            count,
        )
        % count
    )


def folded_timeouts(count: int) -> str:
    """The line for a wait that timed out ``count`` more times after the one shown."""
    return (
        ngettext(
            "nothing ready (timeout), %d more time (the same idle wait, folded)",
            "nothing ready (timeout), %d more times (the same idle wait, folded)",
            count,
        )
        % count
    )


# -- why a call waits ----------------------------------------------------------------------

WHY_CLIENT = N_("a passive socket waits for a client")
WHY_HANDSHAKE = N_("the three-way handshake")
WHY_BYTES = N_("waits for bytes from the peer")
WHY_DATAGRAM = N_("waits for a datagram")
WHY_SELECT = N_("waits until a socket in the lists is ready")
WHY_SELECTOR = N_("waits until a registered socket is ready")


def blocks(why: str, timeout: float | None = None) -> str:
    """``blocks: why``, or ``blocks up to 2 s: why`` when the wait has a timeout."""
    if timeout is None:
        return _("blocks: %s") % _(why)
    return _("blocks up to %s s: %s") % (decimal(f"{timeout:.3g}"), _(why))


# -- errors ----------------------------------------------------------------------------------

#: What an errno means to someone learning sockets, shown after the error's name.
ERRNO_MEANINGS: dict[int, str] = {
    errno.ECONNRESET: N_("the peer reset the connection"),
    errno.EPIPE: N_("the peer is gone: writing to it is an error"),
    errno.ECONNREFUSED: N_("nothing listens on that port"),
    errno.EADDRINUSE: N_("another socket is bound to that address"),
    errno.EAGAIN: N_(
        "not now: nothing to read, or no room to send; a non-blocking socket does not wait"
    ),
    errno.ENOTCONN: N_("the socket is not connected"),
    errno.ECONNABORTED: N_("the client left before accept()"),
    errno.EMFILE: N_("out of file descriptors"),
}
#: Meanings that depend on the call: the same errno says something else elsewhere.
ACCEPT_MEANINGS: dict[int, str] = {
    errno.EINVAL: N_("the socket is not listening any more: a stop shut it down to refuse clients"),
}


def describe_failure(exc: BaseException, meanings: Mapping[int, str] | None = None) -> str:
    """``ConnectionResetError [ECONNRESET] (the peer reset the connection)``; ``meanings``
    (errno: text) overrides :data:`ERRNO_MEANINGS` for one call."""
    text = describe_error(exc)
    if isinstance(exc, OSError):
        meaning = (meanings or {}).get(exc.errno or 0) or ERRNO_MEANINGS.get(exc.errno or 0)
        if meaning is None and exc.errno is None and exc.args:
            meaning = str(exc.args[0])  # socket timeouts: "timed out"
        if meaning:
            text += f" ({_(meaning)})"
    return text


# -- the output ------------------------------------------------------------------------------


def wants_color(stream: TextIO) -> bool:
    """Colour for a terminal, unless ``NO_COLOR`` is set (https://no-color.org)."""
    if "NO_COLOR" in os.environ:
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class Narrator:
    """Writes one line per event to ``stream`` (default: stderr), thread-safe.

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
        # The readiness wait that last timed out with nothing ready (an idle server waits
        # like that every second or so), and how often it did again since, not yet said.
        self._idle_wait: tuple[str, ...] | None = None
        self._idle_call: Call | None = None
        self._idle_repeats = 0
        self._console: Console | None = None
        if wants_color(self.stream) if color is None else color:
            self._console = Console(
                file=self.stream, force_terminal=True, highlight=False, soft_wrap=True
            )

    def returned(self, call: Call, result: str | None = None) -> None:
        """``call`` returned; ``result`` describes what it gave back (None: nothing to say)."""
        self.narrate(Event(call, Outcome.RETURNED, result))

    def waiting(self, call: Call, why: str) -> None:
        """``call`` is about to block; said before it, so a stalled program shows where."""
        self.narrate(Event(call, Outcome.WAITING, why))

    def failed(
        self, call: Call, exc: BaseException, meanings: Mapping[int, str] | None = None
    ) -> None:
        self.narrate(Event(call, Outcome.FAILED, describe_failure(exc, meanings)))

    def timed_out(self, call: Call, wait: tuple[str, ...]) -> None:
        """Readiness wait ``call`` (identified by ``wait``: the call without its timeout)
        found nothing before its timeout. The first time is a line; the same wait timing
        out again is only counted (:meth:`same_idle_wait` drops its waiting line), and one
        line says how many times, before the next line of anything else."""
        with self._lock:
            if wait == self._idle_wait:
                self._idle_repeats += 1
                self._idle_call = call
                return
            self.narrate(Event(call, Outcome.RETURNED, _(NOTHING_READY)))
            self._idle_wait = wait

    def same_idle_wait(self, wait: tuple[str, ...]) -> bool:
        """Whether ``wait`` is the idle wait that timed out last (then it is not announced)."""
        with self._lock:
            return wait == self._idle_wait

    def _say_idle_repeats(self) -> None:
        """The folded line for an idle wait's repeats, if any (under the lock)."""
        call, repeats = self._idle_call, self._idle_repeats
        self._idle_wait, self._idle_call, self._idle_repeats = None, None, 0
        if repeats and call is not None:
            self._write(Event(call, Outcome.RETURNED, folded_timeouts(repeats)))

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

    _STYLES: ClassVar[dict[Outcome, str]] = {
        Outcome.WAITING: "yellow",
        Outcome.FAILED: "bold red",
    }

    def narrate(self, event: Event) -> None:
        """Write the line for ``event``: every line of the trace is written here (after the
        count of an idle wait's folded repeats, when there is one)."""
        with self._lock:
            self._say_idle_repeats()
            self._write(event)

    def _write(self, event: Event) -> None:
        call, tail = format_event(event)
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
                style = self._STYLES.get(event.outcome, "green" if tail else "")
                line.append(tail.rstrip(), style=style)
                self._console.print(line)
            except (OSError, ValueError) as exc:  # ValueError: the stream was closed
                # The reader went away (``| head``, a closed terminal). The trace is for
                # watching; the program must go on: stop narrating, once, and let the
                # socket call that was being narrated complete as if untraced.
                self.enabled = False
                log.warning("--trace stopped: cannot write the trace (%s)", describe_error(exc))
