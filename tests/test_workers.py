"""``serve --workers N``: processes sharing one port, supervised (src/sockecho/workers.py).

The supervisor runs as ``sockecho serve`` in a child process; which worker holds a connection
is read from /proc (the worker's socket inodes against /proc/net/tcp), as ``ss -tnp`` would.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from pathlib import Path

import pytest

from sockecho.cli import main
from tests.conftest import CONCURRENT_MODELS, WAIT, ServeProcess, connect, recv_exactly
from tests.procinfo import wait_until
from tests.test_metrics import Samples, read_samples

#: Connections opened to see them spread: with 2 workers, the chance that the kernel's hash
#: sends all 40 to one worker is 2 * 2**-40.
SPREAD_CONNECTIONS = 40


def children(pid: int) -> set[int]:
    """Live processes whose parent is ``pid``."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                found.add(int(entry.name))
    return found


def workers_of(supervisor: int) -> set[int]:
    """The worker processes of a supervisor (not multiprocessing's resource tracker)."""
    found = set()
    for pid in children(supervisor):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in command:
            found.add(pid)
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"  # a zombie has ended


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def server_side_inodes(server_port: int) -> dict[int, int]:
    """Client port -> inode of the server's end of each connection on ``server_port``."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if local_port == server_port and remote_port:
                found[remote_port] = int(fields[9])
    return found


def holders(supervisor: int, server_port: int, clients: list[socket.socket]) -> dict[int, int]:
    """Worker pid -> how many of ``clients`` it serves."""
    by_inode = {inode: pid for pid in workers_of(supervisor) for inode in socket_inodes(pid)}
    inodes = server_side_inodes(server_port)
    counts: dict[int, int] = {}
    for sock in clients:
        pid = by_inode.get(inodes.get(sock.getsockname()[1], -1), -1)
        counts[pid] = counts.get(pid, 0) + 1
    return counts


def echo(sock: socket.socket, message: bytes = b"ping") -> bytes:
    sock.sendall(message)
    return recv_exactly(sock, len(message))


def start(serve_process: type[ServeProcess], *args: str, ready_lines: int = 1) -> ServeProcess:
    server = serve_process("--port", "0", *args, ready_lines=ready_lines)
    assert server.endpoints, server.logged_lines()
    return server


@pytest.mark.parametrize("model", CONCURRENT_MODELS)
def test_every_concurrent_model_serves_tcp_and_udp_from_two_workers(
    model: str, serve_process: type[ServeProcess]
) -> None:
    server = start(serve_process, "--model", model, "--workers", "2", "--udp", "-q", ready_lines=2)
    assert len(server.endpoints) == 2, server.logged_lines()  # tcp and udp, printed once
    assert len(workers_of(server.proc.pid)) == 2
    with connect(server.address) as sock:
        assert echo(sock, b"hello workers") == b"hello workers"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.settimeout(WAIT)
        udp.sendto(b"datagram", server.address)
        assert udp.recvfrom(100)[0] == b"datagram"
    assert server.stop(signal.SIGTERM) == 0


def test_connections_spread_over_the_workers(serve_process: type[ServeProcess]) -> None:
    server = start(serve_process, "--workers", "2", "--model", "selectors", "-q")
    clients = [connect(server.address) for _ in range(SPREAD_CONNECTIONS)]
    try:
        for sock in clients:
            assert echo(sock) == b"ping"
        counts = holders(server.proc.pid, server.address[1], clients)
    finally:
        for sock in clients:
            sock.close()
    assert -1 not in counts, f"connections held by no worker: {counts}"
    assert len(counts) == 2, f"all connections went to one worker: {counts}"
    assert sum(counts.values()) == SPREAD_CONNECTIONS


def test_a_killed_worker_is_replaced_while_the_others_keep_echoing(
    serve_process: type[ServeProcess],
) -> None:
    server = start(serve_process, "--workers", "2", "--model", "asyncio")
    supervisor = server.proc.pid
    clients = [connect(server.address) for _ in range(SPREAD_CONNECTIONS)]
    try:
        for sock in clients:
            assert echo(sock) == b"ping"
        by_inode = {inode: pid for pid in workers_of(supervisor) for inode in socket_inodes(pid)}
        inodes = server_side_inodes(server.address[1])
        owner = {sock: by_inode[inodes[sock.getsockname()[1]]] for sock in clients}
        victim = next(iter(owner.values()))
        survivors = [sock for sock in clients if owner[sock] != victim]
        assert survivors, "every connection is on one worker (see the spread test)"
        os.kill(victim, signal.SIGKILL)
        # New connections while it is down and while it restarts: never refused.
        deadline = time.monotonic() + WAIT
        replaced = False
        attempts = 0
        while not replaced and time.monotonic() < deadline:
            # Queued on the dying worker's listener: reset (never refused).
            with connect(server.address) as fresh, contextlib.suppress(ConnectionResetError):
                assert echo(fresh, b"still here") == b"still here"
            attempts += 1
            current = workers_of(supervisor)
            replaced = len(current) == 2 and victim not in current
        assert replaced, server.logged_lines()
        for sock in survivors:  # the other worker's connections never noticed
            assert echo(sock, b"unharmed") == b"unharmed"
    finally:
        for sock in clients:
            sock.close()
    assert server.wait_for_line("exited with signal SIGKILL"), server.logged_lines()
    assert server.wait_for_line("restarted (pid"), server.logged_lines()
    assert attempts >= 1
    assert server.stop(signal.SIGTERM) == 0


def test_the_supervisor_serves_every_workers_counters_and_keeps_a_killed_ones(
    serve_process: type[ServeProcess],
) -> None:
    server = start(serve_process, "--workers", "2", "--metrics", "127.0.0.1:0")
    assert server.wait_for_line("metrics on http://127.0.0.1:"), server.logged_lines()
    url = next(line for line in server.logged_lines() if "metrics on " in line).split()[-1]
    served = ("sockecho_connections_total", (("result", "served"),))
    echoed = ("sockecho_bytes_sent_total", ())
    latest: list[Samples] = []

    def metrics_show(connections: int) -> bool:
        latest[:] = [read_samples(url)]
        return latest[0].get(served) == connections and latest[0].get(echoed) == 4 * connections

    clients = [connect(server.address) for _ in range(SPREAD_CONNECTIONS)]
    for sock in clients:
        assert echo(sock) == b"ping"
        sock.close()
    # Each worker reports every STATS_INTERVAL (1 s): both workers' counters, added up.
    assert wait_until(lambda: metrics_show(SPREAD_CONNECTIONS), WAIT), latest
    assert latest[0][("sockecho_workers", ())] == 2
    assert latest[0][("sockecho_worker_restarts_total", ())] == 0
    assert latest[0][("sockecho_connections_open", ())] == 0

    victim = next(iter(workers_of(server.proc.pid)))
    os.kill(victim, signal.SIGKILL)
    assert server.wait_for_line("restarted (pid"), server.logged_lines()
    assert wait_until(
        lambda: read_samples(url).get(("sockecho_worker_restarts_total", ())) == 1, WAIT
    )
    # The killed worker's connections are still counted (its last report is kept).
    assert read_samples(url)[served] == SPREAD_CONNECTIONS
    assert server.stop(signal.SIGTERM) == 0
    assert server.wait_for_line(f"stopped: {SPREAD_CONNECTIONS} connections served")


def test_sigterm_drains_every_worker_and_exits_zero_within_the_drain_timeout(
    serve_process: type[ServeProcess],
) -> None:
    drain = 1.0
    server = start(serve_process, "--workers", "2", "--drain-timeout", str(drain))
    workers = workers_of(server.proc.pid)
    idle = [connect(server.address) for _ in range(6)]  # held open: the drain runs out
    try:
        for sock in idle:
            assert echo(sock) == b"ping"
        started = time.monotonic()
        code = server.stop(signal.SIGTERM)
        took = time.monotonic() - started
    finally:
        for sock in idle:
            sock.close()
    assert code == 0
    assert took < drain + 5.0, f"stopping took {took:.1f} s"
    assert server.wait_for_line("stopped: 6 connections served, 24 bytes echoed (2 workers)")
    assert not any(alive(pid) for pid in workers)
    assert children(server.proc.pid) == set()


def test_a_second_signal_stops_every_worker_at_once(serve_process: type[ServeProcess]) -> None:
    server = start(serve_process, "--workers", "2", "--drain-timeout", "60")
    with connect(server.address) as sock:
        assert echo(sock) == b"ping"
        server.proc.send_signal(signal.SIGTERM)
        assert server.wait_for_line("SIGTERM: stopping 2 workers")
        started = time.monotonic()
        code = server.stop(signal.SIGTERM)
    assert code == 0
    assert time.monotonic() - started < 10.0  # not the 60 s drain


def test_a_killed_supervisor_takes_its_workers_with_it(serve_process: type[ServeProcess]) -> None:
    server = start(serve_process, "--workers", "2", "-q")
    workers = workers_of(server.proc.pid)
    assert len(workers) == 2
    server.proc.kill()
    server.proc.wait(WAIT)
    assert wait_until(lambda: not any(alive(pid) for pid in workers), WAIT), workers


def test_a_worker_that_cannot_start_fails_the_start_with_one_line(
    serve_process: type[ServeProcess],
) -> None:
    with socket.socket() as taken:  # a port in use without SO_REUSEPORT: nobody may share it
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = serve_process("--port", str(taken.getsockname()[1]), "--workers", "2")
        assert server.proc.wait(WAIT) == 1
    server.close()
    errors = [line for line in server.stderr_lines if line.startswith("sockecho: error:")]
    assert len(errors) == 1, server.stderr_lines
    assert "in use" in errors[0]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--workers", "0"], "out of range"),
        (["--workers", "many"], "not a whole number"),
        (["--workers", "2", "--trace"], "--trace narrates one process"),
    ],
)
def test_bad_worker_arguments_are_usage_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--port", "0", *argv]) == 2
    assert message in capsys.readouterr().err
