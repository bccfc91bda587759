"""Promises 4 and 5: out of descriptors, and descriptors the ``select`` model cannot watch.

4. When ``accept()`` fails for lack of descriptors (EMFILE), the listener stays
   readable: a naive loop spins at 100% CPU retrying it. The server must back off
   (rate-limited warning), keep serving the clients it has, and accept again when
   descriptors free up. The test lowers the running server's ``RLIMIT_NOFILE``
   with ``prlimit`` so that exactly as many descriptors are free as it wants.
5. ``select()`` cannot watch descriptor numbers >= FD_SETSIZE (1024). A wrapper
   fills the server process with descriptors up to past 1024 before it starts,
   so that new connections land above the limit: they must be refused with a log
   line, while connections on low descriptors keep being served.
"""

from __future__ import annotations

import errno
import os
import resource
import selectors
import threading
import time
from typing import Any

import pytest

from sockecho import Server, ServerConfig
from sockecho.servers.base import SocketCalls
from tests.conftest import (
    CONCURRENT_MODELS,
    WAIT,
    ServeProcess,
    connect,
    recv_exactly,
    recv_until_eof,
)
from tests.procinfo import cpu_seconds, descriptors, wait_until

#: Seconds over which the CPU use of a server that is out of descriptors is measured.
EXHAUSTED_WINDOW = 0.6
#: CPU seconds it may use in that window: backing off costs a few wake-ups; spinning costs all.
EXHAUSTED_CPU = 0.15
#: Seconds between two "accept failed" (or FD_SETSIZE) warnings at most (the default interval
#: of core.RateLimitedNotice).
ACCEPT_NOTICE_INTERVAL = 5.0


def limit_free_descriptors(pid: int, free: int) -> int:
    """Lower ``pid``'s soft RLIMIT_NOFILE so that exactly ``free`` descriptor numbers are
    still available to it; return the soft limit it had."""
    used = descriptors(pid)
    limit = max(used) + 1  # the numbers below it that are not in use stay available
    holes = limit - len(used)
    assert holes <= free, f"{holes} descriptors below {limit} are free already"
    return set_soft_descriptor_limit(pid, limit + free - holes)


def set_soft_descriptor_limit(pid: int, soft: int) -> int:
    """Set ``pid``'s soft RLIMIT_NOFILE (as the kernel's prlimit does); return the old one."""
    old_soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
    return old_soft


def settled_descriptors(pid: int, count: int) -> bool:
    return wait_until(lambda: len(descriptors(pid)) == count, WAIT)


def test_out_of_descriptors_backs_off_without_spinning_and_serves_again(
    model: str, serve_process: type[ServeProcess]
) -> None:
    srv = serve_process("--model", model, "--port", "0", "--idle-timeout", "0")
    pid = srv.proc.pid
    with connect(srv.address) as warm_up:
        warm_up.sendall(b"w")
        assert recv_exactly(warm_up, 1) == b"w"
        with_one_client = len(descriptors(pid))
    assert settled_descriptors(pid, with_one_client - 1)
    # iterative holds one client at a time, so only an empty table makes its accept() fail
    holder_count = 0 if model == "iterative" else 1
    original = limit_free_descriptors(pid, holder_count)
    holders = [connect(srv.address) for _ in range(holder_count)]
    for holder in holders:
        holder.sendall(b"held")
        assert recv_exactly(holder, 4) == b"held"
    # accept() can only fail once a client is waiting for it: no warning comes before this.
    queued_at = time.monotonic()
    with connect(srv.address) as queued:
        queued.sendall(b"queued")  # the kernel takes it; the server cannot accept it yet
        assert srv.wait_for_line("accept failed")
        cpu_before = cpu_seconds(pid)
        time.sleep(EXHAUSTED_WINDOW)  # a measurement window, not a synchronisation
        used = cpu_seconds(pid) - cpu_before
        print(f"{model}: {used:.3f} CPU s in {EXHAUSTED_WINDOW} s out of descriptors")
        assert used < EXHAUSTED_CPU, "the server spins while it cannot accept"
        for holder in holders:  # still served while out of descriptors
            holder.sendall(b"still")
            assert recv_exactly(holder, 5) == b"still"
        if holders:
            holders.pop().close()  # frees a descriptor in the server
        else:
            set_soft_descriptor_limit(pid, original)
        assert recv_exactly(queued, 6) == b"queued"  # accepted and served at last
        out_of_descriptors = time.monotonic() - queued_at
    assert srv.proc.poll() is None
    warnings = [line for line in srv.stderr_lines if "accept failed" in line]
    # Rate-limited, not one line per retry (one every ACCEPT_BACKOFF, 0.1 s): one line per
    # RateLimitedNotice interval (5 s) that began while accept() failed. Usually one; a busy
    # machine may stretch the test over an interval's end.
    assert 1 <= len(warnings) <= 1 + int(out_of_descriptors // ACCEPT_NOTICE_INTERVAL), warnings
    assert "EMFILE" in warnings[0]


#: Run before ``sockecho serve``: fill the descriptor table past FD_SETSIZE, then free the
#: lowest few so the server's own sockets (and its first clients) get numbers below 1024.
CROWDED_LAUNCHER = """
import os, resource, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 2048)), hard))
fillers = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
for fd in fillers[: int(os.environ.get("SOCKECHO_TEST_LOW_FREE", "0"))]:
    os.close(fd)
from sockecho.cli import main
sys.exit(main(sys.argv[1:]))
"""


def crowded(serve_process: type[ServeProcess]) -> type[ServeProcess]:
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 1200:
        pytest.fail("RLIMIT_NOFILE's hard limit is below 1200; the test cannot pass FD_SETSIZE")
    return type("CrowdedServe", (serve_process,), {"launcher": ("-c", CROWDED_LAUNCHER)})


@pytest.mark.parametrize("model", CONCURRENT_MODELS)
def test_descriptors_above_fd_setsize_are_refused_by_select_only_and_never_crash(
    model: str, serve_process: type[ServeProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOCKECHO_TEST_LOW_FREE", "12")
    srv = crowded(serve_process)("--model", model, "--port", "0", "--idle-timeout", "0")
    started = time.monotonic()  # no refusal, so no notice, before this
    clients = [connect(srv.address) for _ in range(25)]  # kept open: their numbers stay taken
    try:
        refused = 0
        for sock in clients:  # past the few low numbers left, every new socket is >= 1024
            sock.sendall(b"x")
            try:
                refused += sock.recv(1) == b""
            except ConnectionResetError:
                refused += 1
        for sock in clients[:5]:  # the loop neither crashed nor stopped serving
            sock.sendall(b"alive")
            assert recv_exactly(sock, 5) == b"alive"
        refusing = time.monotonic() - started  # every refusal happened by now
    finally:
        for sock in clients:
            sock.close()
    assert srv.proc.poll() is None
    if model == "select":  # logged before the refusal, but read from a pipe: may lag behind
        assert srv.wait_for_line("FD_SETSIZE")
    notices = [line for line in srv.stderr_lines if "FD_SETSIZE" in line]
    if model == "select":
        assert refused >= 15
        # Rate-limited: one line per notice interval (5 s) the refusals spanned. Usually one;
        # a busy machine may stretch them over an interval's end.
        assert 1 <= len(notices) <= 1 + int(refusing // ACCEPT_NOTICE_INTERVAL), notices
        assert "refused 1 connection(s) on descriptors >= 1024" in notices[0]
    else:  # epoll and threads have no such limit
        assert refused == 0
        assert notices == []


@pytest.mark.parametrize(
    ("low_free", "options"),
    [("0", []), ("3", ["--udp"])],  # 3: the wake-up pair and the TCP listener fit, UDP does not
    ids=["tcp", "udp"],
)
def test_select_refuses_to_start_when_its_own_sockets_are_above_fd_setsize(
    serve_process: type[ServeProcess],
    monkeypatch: pytest.MonkeyPatch,
    low_free: str,
    options: list[str],
) -> None:
    monkeypatch.setenv("SOCKECHO_TEST_LOW_FREE", low_free)
    srv = crowded(serve_process)("--model", "select", "--port", "0", *options)
    assert srv.proc.wait(WAIT) == 1
    srv.close()
    assert not srv.endpoints  # no ready line for a server that cannot serve
    assert srv.stderr_lines[-1].startswith("sockecho: error: the select model cannot watch")


class RefusingSelector(selectors.EpollSelector):
    """An epoll selector that fails one registration when armed, as epoll_ctl does past
    ``fs.epoll.max_user_watches`` (ENOSPC)."""

    armed = threading.Event()

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        if self.armed.is_set():
            self.armed.clear()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().register(fileobj, events, data)


def test_selectors_model_ends_only_the_connection_epoll_refuses() -> None:
    calls = SocketCalls(new_selector=RefusingSelector)
    with Server(ServerConfig(model="selectors", port=0, drain_timeout=0.5), calls=calls) as srv:
        with connect(srv.address) as first:  # once served, the listeners are registered
            first.sendall(b"1")
            assert recv_exactly(first, 1) == b"1"
        RefusingSelector.armed.set()  # the next registration is the next client's
        with connect(srv.address) as refused:
            assert recv_until_eof(refused) == b""
        assert srv.stats.wait_for(lambda s: s.connection_errors == 1, WAIT)
        with connect(srv.address) as served:
            served.sendall(b"next")
            assert recv_exactly(served, 4) == b"next"
