"""The chaos test: many clients misbehaving at once, then an audit of the server.

Against each model (in a child process, so that its memory and descriptors are
its own), a seeded random mix of clients runs concurrently: well-behaved ones
(echo rounds, half-close, slow reader, arbitrary binary "garbage") and hostile
ones (abrupt close, reset, half-close then reset, non-reader, idle). Afterwards:

* the server is alive and still echoes;
* it holds exactly the descriptors it held before (none leaked);
* its peak RSS grew by less than the bound of promise 1 (32 MiB);
* every well-behaved client got exactly its bytes back;
* it logged no warning or traceback (hostile peers are ordinary, not errors).

It is short by default (a few seconds per model, CI runs it); set
``SOCKECHO_CHAOS_CLIENTS`` (default 120) and ``SOCKECHO_CHAOS_SEED`` to vary it.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from tests.conftest import WAIT, ServeProcess, connect, recv_exactly, recv_until_eof, reset
from tests.procinfo import descriptors, status_kib, wait_until

CLIENTS = int(os.environ.get("SOCKECHO_CHAOS_CLIENTS", "120"))
SEED = int(os.environ.get("SOCKECHO_CHAOS_SEED", "862"))
#: Clients at once; the iterative model serves one at a time, so it gets fewer in all.
CONCURRENCY = 40
#: Seconds of silence after which the server closes a connection (some idle clients exceed it).
#: A well-behaved client must never get near it: on a busy 2-core machine, with 40 client
#: threads here and as many in a threading server, a thread can wait over a second for its turn.
IDLE_TIMEOUT = 3.0
RSS_BOUND_KIB = 32 * 1024

Outcome = tuple[bytes, bytes] | None  # (sent, echoed) for a well-behaved client, else None
Behaviour = Callable[[tuple[str, int], random.Random], Outcome]


def exchange(sock: socket.socket, payload: bytes) -> bytes:
    """Send ``payload`` from a thread while reading its echo: neither side can stall."""
    sender = threading.Thread(target=sock.sendall, args=(payload,))
    sender.start()
    echoed = recv_exactly(sock, len(payload))
    sender.join(WAIT)
    return echoed


def echo_rounds(address: tuple[str, int], rng: random.Random) -> Outcome:
    sent = bytearray()
    echoed = bytearray()
    with connect(address) as sock:
        for _ in range(rng.randint(1, 5)):
            message = rng.randbytes(rng.choice([1, 10, 1000, 70_000, 300_000]))
            sent += message
            echoed += exchange(sock, message)
    return bytes(sent), bytes(echoed)


def half_close(address: tuple[str, int], rng: random.Random) -> Outcome:
    """Send everything, half-close, then get everything and the server's close. The echo is
    read all along: a client that reads only after sending 200 kB relies on the socket
    buffers holding it, and when they do not, it and the server wait on each other until
    the idle timeout cuts it off."""
    payload = rng.randbytes(rng.randint(0, 200_000))
    echoed = bytearray()
    with connect(address) as sock:
        reader = threading.Thread(target=lambda: echoed.extend(recv_until_eof(sock)))
        reader.start()
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        reader.join(WAIT)
    return payload, bytes(echoed)


def slow_reader(address: tuple[str, int], rng: random.Random) -> Outcome:
    payload = rng.randbytes(256 * 1024)
    received = bytearray()
    with connect(address) as sock:
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        sender.start()
        while len(received) < len(payload):
            chunk = sock.recv(4096)
            if not chunk:
                break
            received += chunk
            time.sleep(0.0005)  # a reader slower than the writer: the server must buffer/pause
        sender.join(WAIT)
    return payload, bytes(received)


def garbage(address: tuple[str, int], rng: random.Random) -> Outcome:
    """Arbitrary bytes in arbitrary pieces: a TLS hello, HTTP, NULs - echo does not parse."""
    payload = rng.choice([b"\x16\x03\x01\x02\x00\x01", b"GET / HTTP/1.1\r\n\r\n", b"\0" * 9000])
    payload += rng.randbytes(rng.randint(1, 50_000))
    with connect(address) as sock:
        cuts = sorted(rng.sample(range(1, len(payload)), min(20, len(payload) - 1)))
        echoed = bytearray()
        for start, end in zip([0, *cuts], [*cuts, len(payload)], strict=True):
            echoed += exchange(sock, payload[start:end])
    return payload, bytes(echoed)


def push(sock: socket.socket, rng: random.Random, limit: int) -> None:
    """Send up to ``limit`` bytes without blocking and without reading."""
    sock.setblocking(False)
    sent = 0
    while sent < limit:
        try:
            sent += sock.send(rng.randbytes(min(65536, limit - sent)))
        except (BlockingIOError, ConnectionError):
            break
    sock.setblocking(True)


def abrupt_close(address: tuple[str, int], rng: random.Random) -> Outcome:
    sock = connect(address)
    push(sock, rng, rng.randint(0, 500_000))
    sock.close()  # with unread echo in its buffer: the kernel answers with an RST
    return None


def reset_mid_stream(address: tuple[str, int], rng: random.Random) -> Outcome:
    sock = connect(address)
    push(sock, rng, rng.randint(0, 300_000))
    reset(sock)
    return None


def half_close_then_reset(address: tuple[str, int], rng: random.Random) -> Outcome:
    sock = connect(address)
    push(sock, rng, rng.randint(1, 300_000))
    sock.shutdown(socket.SHUT_WR)
    reset(sock)
    return None


def non_reader(address: tuple[str, int], rng: random.Random) -> Outcome:
    with connect(address) as sock:
        push(sock, rng, 4 * 1024 * 1024)  # until the server stops reading
        time.sleep(rng.uniform(0, 0.5))  # holding its slot for a while
    return None


def idle(address: tuple[str, int], rng: random.Random) -> Outcome:
    with connect(address) as sock:
        if rng.random() < 0.2:  # outlive the idle timeout: the server hangs up
            sock.settimeout(WAIT)
            recv_until_eof(sock)
        else:
            time.sleep(rng.uniform(0, 0.3))
    return None


WELL_BEHAVED: list[Behaviour] = [echo_rounds, half_close, slow_reader, garbage]
HOSTILE: list[Behaviour] = [
    abrupt_close,
    reset_mid_stream,
    half_close_then_reset,
    non_reader,
    idle,
]


def run_client(address: tuple[str, int], behaviour: Behaviour, seed: int) -> Outcome:
    try:
        return behaviour(address, random.Random(seed))
    except ConnectionError:
        if behaviour in WELL_BEHAVED:
            raise  # a well-behaved client must never be cut off
        return None  # the server closing a hostile client first is fine


def test_chaos_leaves_the_server_alive_leak_free_bounded_and_exact(
    model: str, serve_process: type[ServeProcess]
) -> None:
    srv = serve_process("--model", model, "--port", "0", "-q", "--idle-timeout", str(IDLE_TIMEOUT))
    pid = srv.proc.pid
    with connect(srv.address) as warm_up:
        warm_up.sendall(b"w")
        assert recv_exactly(warm_up, 1) == b"w"
        with_one_client = descriptors(pid)
    assert wait_until(lambda: len(descriptors(pid)) == len(with_one_client) - 1, WAIT)
    baseline = descriptors(pid)
    rss_before = status_kib(pid, "VmRSS")

    rng = random.Random(f"{SEED}-{model}")
    clients = CLIENTS if model != "iterative" else CLIENTS // 8
    plan = [
        (rng.choice(WELL_BEHAVED if rng.random() < 0.5 else HOSTILE), rng.getrandbits(32))
        for _ in range(clients)
    ]
    workers = CONCURRENCY if model != "iterative" else 4
    with ThreadPoolExecutor(max_workers=workers) as pool:
        outcomes = list(
            pool.map(lambda step: run_client(srv.address, *step), plan, timeout=WAIT * 2)
        )
    kinds = sorted({behaviour.__name__ for behaviour, _seed in plan})
    print(f"{model}: seed {SEED}, {clients} clients: {', '.join(kinds)}")

    checked = 0
    for (behaviour, seed), outcome in zip(plan, outcomes, strict=True):
        if outcome is not None:
            sent, echoed = outcome
            assert echoed == sent, f"{behaviour.__name__} (seed {seed}) got other bytes back"
            checked += 1
    assert checked >= clients // 4
    assert srv.proc.poll() is None, "the server died"
    with connect(srv.address) as last:
        last.sendall(b"alive")
        assert recv_exactly(last, 5) == b"alive"
    leaked = wait_until(lambda: descriptors(pid) == baseline, WAIT)
    assert leaked, f"descriptors {sorted(descriptors(pid) - baseline)} leaked"
    growth = status_kib(pid, "VmHWM") - rss_before
    print(f"{model}: peak RSS growth {growth} KiB")
    assert growth < RSS_BOUND_KIB
    noise = [line for line in srv.stderr_lines if not line.startswith("listening on ")]
    assert noise == [], "warnings or errors logged"
