"""The stop signals of ``sockecho serve``, seen by the main thread whatever thread gets them.

Why a wake-up descriptor
    A process-directed signal (``kill PID``) goes to any thread that does not block it,
    and Python runs its handlers only in the main thread, when that thread next runs
    bytecode. A main thread asleep in a lock is not woken when the kernel picks another
    thread (the serving thread in its ``select()``, a connection's thread): issue 9 saw a
    SIGTERM lost for 18 minutes that way, with the main thread in ``queue.get()``.

    :func:`signal.set_wakeup_fd` makes the C-level handler, in whichever thread it runs,
    write the signal's number to a socket. The main thread sleeps in ``select()`` on that
    socket, so any delivery wakes it, and it reads the numbers there; the Python-level
    handler does nothing. The end of the server comes the same way (a 0 byte, written by
    the thread that sees it end), so the main thread waits on one thing.

Why not ``pthread_sigmask`` and a ``sigwait`` thread
    The mask would have to be set before any thread starts and is inherited by every
    thread started afterwards (the models', a library user's); it outlives ``main()``
    when the CLI is called from Python (the tests), and the waiting thread needs a signal
    of its own to end. The wake-up descriptor changes nothing that is not restored on exit.
"""

from __future__ import annotations

import contextlib
import select
import signal
import socket
from collections.abc import Callable, Iterable
from types import FrameType, TracebackType

#: The byte that says the server ended (no signal has number 0).
ENDED = 0


def _wake_only(signum: int, frame: FrameType | None) -> None:
    """The Python-level handler: nothing to do, the wake-up socket carries the signal."""


class StopSignals:
    """While in a ``with`` block (in the main thread), ``signals`` are caught, whatever
    thread the kernel delivers them to, and :meth:`wait` returns them one by one."""

    def __init__(self, signals: Iterable[int]) -> None:
        self.signals = tuple(signals)
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)  # set_wakeup_fd requires it: a handler never blocks
        self._pending: list[int] = []
        self._previous_fd: int | None = None  # None: the wake-up descriptor is not ours
        self._previous_handlers: dict[int, Callable[[int, FrameType | None], object] | int | None]
        self._previous_handlers = {}

    def __enter__(self) -> StopSignals:
        try:  # ValueError outside the main thread: signals are the main thread's business
            self._previous_fd = signal.set_wakeup_fd(
                self._writer.fileno(), warn_on_full_buffer=False
            )
            for signum in self.signals:
                self._previous_handlers[signum] = signal.signal(signum, _wake_only)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # The caller's handlers and wake-up descriptor come back: main() is a function.
        try:
            for signum, handler in self._previous_handlers.items():
                signal.signal(signum, handler)
            if self._previous_fd is not None:
                signal.set_wakeup_fd(self._previous_fd)
        finally:
            self._reader.close()
            self._writer.close()

    def ended(self) -> None:
        """Say (from any thread) that the server ended: :meth:`wait` returns None."""
        with contextlib.suppress(OSError):  # closed: the main thread is gone already
            self._writer.send(bytes([ENDED]))

    def fileno(self) -> int:
        """The descriptor to ``select()`` on beside others (``--workers``' supervisor waits
        on its workers too); when it is readable, :meth:`take` says what came."""
        return self._reader.fileno()

    def take(self) -> list[int | None]:
        """What has come so far, without waiting: signal numbers, and None for
        :meth:`ended`."""
        with contextlib.suppress(BlockingIOError):
            self._pending.extend(self._reader.recv(256))
        taken: list[int | None] = [
            None if received == ENDED else received
            for received in self._pending
            if received == ENDED or received in self.signals
        ]
        self._pending.clear()
        return taken

    def wait(self) -> int | None:
        """Sleep until a stop signal arrives (its number) or :meth:`ended` was called (None)."""
        while True:
            while self._pending:
                received = self._pending.pop(0)
                if received == ENDED:
                    return None
                if received in self.signals:
                    return received
            select.select([self._reader], [], [])
            with contextlib.suppress(BlockingIOError):
                self._pending.extend(self._reader.recv(256))
