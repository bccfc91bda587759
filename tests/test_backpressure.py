"""Promise 1, bounded memory: clients that send and never read cannot grow the server.

The server runs in a child process so its resident memory (``VmRSS``/``VmHWM``
in /proc) is its own. A hundred clients push as fast as the kernel takes their
bytes and never read; the kernel's socket buffers fill, the server stops reading
from each connection above its high-water mark, and every sender stalls. The
server's peak RSS may then exceed its RSS before the flood by less than 32 MiB
(the issue's bound), and a well-behaved client still gets its echo meanwhile.
"""

from __future__ import annotations

import selectors
import socket
import time

import pytest

from tests.conftest import ALL_MODELS, ServeProcess, connect, recv_exactly
from tests.procinfo import status_kib

PUSHERS = 100
#: Bytes each pusher may send at most (the issue's figure); the kernel stalls them far sooner.
PUSH_LIMIT = 50 * 1024 * 1024
#: Allowed growth of the server's peak RSS over its RSS before the flood (KiB).
RSS_BOUND_KIB = 32 * 1024
#: Seconds without any pusher making progress after which every sender counts as stalled.
STALL = 0.4
#: Hard bound on the whole push (seconds), so a server that never stops reading ends the test.
PUSH_DEADLINE = 15.0
CHUNK = bytes(64 * 1024)


def push_without_reading(address: tuple[str, int]) -> tuple[list[socket.socket], int, bool]:
    """Open PUSHERS non-reading clients and push until all stall; return them, bytes, stalled."""
    waiting = selectors.DefaultSelector()
    pushers: list[socket.socket] = []
    progress: list[list[int]] = []
    for _ in range(PUSHERS):
        sock = socket.socket()
        # The client never reads: a small receive buffer keeps the kernel's share small too.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(address)
        sock.setblocking(False)
        sent = [0]  # bytes this pusher has sent so far
        waiting.register(sock, selectors.EVENT_WRITE, sent)
        pushers.append(sock)
        progress.append(sent)
    started = last_progress = time.monotonic()
    while waiting.get_map() and time.monotonic() - last_progress < STALL:
        if time.monotonic() - started > PUSH_DEADLINE:
            break
        for key, _events in waiting.select(0.1):
            sock, sent = key.fileobj, key.data
            assert isinstance(sock, socket.socket)
            try:
                sent[0] += sock.send(CHUNK)
            except BlockingIOError:
                continue
            last_progress = time.monotonic()
            if sent[0] >= PUSH_LIMIT:
                waiting.unregister(sock)
    pushed = sum(sent[0] for sent in progress)
    stalled = time.monotonic() - last_progress >= STALL
    waiting.close()
    return pushers, pushed, stalled


@pytest.mark.parametrize("model", ALL_MODELS)
def test_100_clients_that_never_read_grow_the_server_by_less_than_32_mib(
    model: str, serve_process: type[ServeProcess]
) -> None:
    srv = serve_process("--model", model, "--port", "0", "-q", "--idle-timeout", "0")
    pid = srv.proc.pid
    with connect(srv.address) as warm_up:  # allocate what one echo needs before measuring
        warm_up.sendall(bytes(200_000))
        assert recv_exactly(warm_up, 200_000) == bytes(200_000)
    before = status_kib(pid, "VmRSS")
    pushers, pushed, stalled = push_without_reading(srv.address)
    try:
        growth = status_kib(pid, "VmHWM") - before
        print(f"{model}: pushed {pushed >> 20} MiB, peak RSS growth {growth} KiB")
        assert stalled, "the server kept reading from clients that never read"
        assert growth < RSS_BOUND_KIB
        if model != "iterative":  # iterative serves the first pusher only, by design
            with connect(srv.address, timeout=5.0) as witness:
                witness.sendall(b"still echoing")
                assert recv_exactly(witness, 13) == b"still echoing"
        assert srv.proc.poll() is None
    finally:
        for sock in pushers:
            sock.close()
