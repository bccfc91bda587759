"""Stop signals reach ``sockecho serve`` whatever thread the kernel delivers them to.

A process-directed signal goes to any thread that does not block it, and Python runs
its handler only in the main thread, once that thread runs again. Issue 9 saw a SIGTERM
lost for 18 minutes after a connection storm: it had gone to the serving thread while the
main thread slept in a lock. These tests send SIGTERM and SIGINT to a server under load,
to the process (the kernel picks the thread) and to one of its other threads (``tgkill``,
as the kernel may pick), and expect exit 0 within the drain timeout plus a margin.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import selectors
import signal
import socket
import subprocess
import threading
import time

import pytest

from sockecho import cli
from sockecho.stop_signals import StopSignals
from tests.conftest import ALL_MODELS, WAIT, ServeProcess, connect, open_fds
from tests.procinfo import wait_until

#: Connections kept busy during the stop (closed loop, one message in flight each).
BUSY_CONNECTIONS = 200
#: Bytes per message.
MESSAGE_SIZE = 256
#: Round trips (over all connections) seen before the signal: the server is busy by then.
BUSY_ROUND_TRIPS = 400
#: Seconds the server drains open connections after the signal.
DRAIN_TIMEOUT = 1.0
#: Seconds allowed on top of the drain for the stop itself (closing hundreds of sockets and
#: threads on a loaded 2-core machine); far below the hang this guards against.
STOP_MARGIN = 6.0
#: Stops per model and signal: a lost signal depends on which thread it lands in.
ROUNDS = 3


def tgkill(pid: int, tid: int, signum: int) -> None:
    """Send ``signum`` to thread ``tid`` of process ``pid`` (a thread-directed signal)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.tgkill(pid, tid, signum) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def other_threads(pid: int) -> list[int]:
    """The thread ids of ``pid`` other than its main thread (whose id is the pid)."""
    return sorted(int(tid) for tid in os.listdir(f"/proc/{pid}/task") if int(tid) != pid)


class BusyClients:
    """``count`` connections, each sending a message and waiting for its echo, again and
    again, from one thread, until :meth:`close` (or WAIT seconds: the load is bounded).
    A connection the server closes or resets is dropped, never reopened."""

    def __init__(self, address: tuple[str, int], count: int) -> None:
        self.round_trips = 0
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._selector = selectors.DefaultSelector()
        self._message = bytes(range(256)) * (MESSAGE_SIZE // 256)
        for _ in range(count):
            sock = connect(address)
            sock.setblocking(False)
            self._selector.register(sock, selectors.EVENT_READ, bytearray())
            sock.send(self._message)  # fits in an empty send buffer
        self._thread = threading.Thread(target=self._run, name="busy-clients", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + WAIT
        while not self._stop.is_set() and time.monotonic() < deadline:
            for key, _ in self._selector.select(0.1):
                sock, echoed = key.fileobj, key.data
                assert isinstance(sock, socket.socket)
                try:
                    chunk = sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                if not chunk:  # closed or reset by the stopping server
                    self._selector.unregister(sock)
                    sock.close()
                    continue
                echoed += chunk
                if len(echoed) >= MESSAGE_SIZE:
                    assert echoed == self._message
                    echoed.clear()
                    with contextlib.suppress(OSError):
                        sock.send(self._message)
                    with self._changed:
                        self.round_trips += 1
                        self._changed.notify_all()

    def wait_busy(self, round_trips: int) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self.round_trips >= round_trips, WAIT)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(WAIT)
        for key in list(self._selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self._selector.close()


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("model", ALL_MODELS)
def test_a_stop_signal_under_load_exits_0_within_the_drain_whatever_thread_gets_it(
    model: str, signum: signal.Signals, serve_process: type[ServeProcess]
) -> None:
    for round_number in range(ROUNDS):
        srv = serve_process(
            *("--model", model, "--port", "0", "--backlog", "1024", "-q"),
            *("--drain-timeout", str(DRAIN_TIMEOUT), "--idle-timeout", "0"),
        )
        pid = srv.proc.pid
        busy = BusyClients(srv.address, BUSY_CONNECTIONS)
        try:
            assert busy.wait_busy(BUSY_ROUND_TRIPS), f"round {round_number}: no load"
            if round_number == 0:
                target = "the process"
                os.kill(pid, signum)  # the kernel picks the thread
            else:
                threads = other_threads(pid)
                tid = threads[(round_number - 1) * len(threads) // (ROUNDS - 1)]
                target = f"thread {tid} of {len(threads) + 1}"
                tgkill(pid, tid, signum)  # the first one (serving thread), then a later one
            signalled = time.monotonic()
            try:
                code = srv.proc.wait(DRAIN_TIMEOUT + STOP_MARGIN)
            except subprocess.TimeoutExpired:
                code = None
            took = time.monotonic() - signalled
        finally:
            busy.close()
        assert code == 0, f"round {round_number}: {signum.name} to {target}: {code} after {took}"
        assert took < DRAIN_TIMEOUT + STOP_MARGIN


@pytest.mark.parametrize("model", ALL_MODELS)
def test_a_sigterm_delivered_to_the_serving_thread_stops_an_idle_server(
    model: str, serve_process: type[ServeProcess]
) -> None:
    """The lost signal of issue 9, made certain: the main thread is asleep in its wait and
    the kernel hands SIGTERM to another thread."""
    srv = serve_process("--model", model, "--port", "0")
    pid = srv.proc.pid
    with connect(srv.address) as sock:  # a round trip: the main thread is past the ready line
        sock.sendall(b"x")
        assert sock.recv(1) == b"x"
    assert wait_until(lambda: thread_state(pid, pid) == "S", WAIT)  # asleep in its wait
    serving = other_threads(pid)[0]  # the first thread started: the server's
    tgkill(pid, serving, signal.SIGTERM)
    assert srv.proc.wait(WAIT) == 0
    assert srv.wait_for_line("SIGTERM: stopping")


def thread_state(pid: int, tid: int) -> str:
    """R (running), S (sleeping)...: the state letter of a thread, from /proc."""
    try:
        with open(f"/proc/{pid}/task/{tid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0]
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return "gone"
        raise


def test_serve_gives_the_callers_wakeup_descriptor_back() -> None:
    mine, other = socket.socketpair()
    with mine, other:
        mine.setblocking(False)
        before = signal.set_wakeup_fd(mine.fileno())
        try:
            assert cli.main(["serve", "--host", "no-such-host.invalid", "--port", "0"]) == 1
        finally:
            assert signal.set_wakeup_fd(before) == mine.fileno()


def test_stop_signals_outside_the_main_thread_leave_nothing_open() -> None:
    before = open_fds()
    failures: list[BaseException] = []

    def enter() -> None:
        try:
            with StopSignals(cli.STOP_SIGNALS):
                pass
        except ValueError as exc:
            failures.append(exc)

    thread = threading.Thread(target=enter)
    thread.start()
    thread.join(WAIT)
    assert len(failures) == 1  # signal handlers belong to the main thread
    assert open_fds() - before == set()
