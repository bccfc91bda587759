"""sockecho.locust under real Locust: headless runs, one of them distributed, read back from --csv.

Locust monkey-patches the process it is imported in (gevent), so it never is imported here:
every run is ``python -m locust`` in child processes, on 127.0.0.1, for a few seconds, with a
hard timeout. The servers are sockecho's own (the plugin's ``make_echo_server``) or, for the
faults sockecho does not make, small socketserver servers written below.
"""

from __future__ import annotations

import csv
import datetime
import os
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sockecho.testing import EchoServerFactory, RunningEchoServer, TestCertificates
from tests.conftest import REPO, WAIT, report_child_output

LOCUSTFILE = REPO / "examples" / "locustfile.py"
#: Seconds each Locust run generates load (-t): enough for every user to echo many times.
RUN_SECONDS = 3
#: Seconds a whole Locust run may take, start-up and shutdown included, before it is killed.
RUN_TIMEOUT = 40.0
#: Seconds the delaying server holds each echo in the interleaving test.
ECHO_DELAY = 0.5


@dataclass
class LocustRun:
    """One ``python -m locust`` child process, its output in a file."""

    proc: subprocess.Popen[bytes]
    log: Path

    def wait(self) -> int:
        try:
            return self.proc.wait(RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(WAIT)
            raise

    def output(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines() if self.log.exists() else []


class Locust:
    """Starts Locust processes for one test in ``directory``; kills any left at the end."""

    def __init__(self, directory: Path, request: pytest.FixtureRequest) -> None:
        self.directory = directory
        self.request = request
        self.runs: list[LocustRun] = []

    def start(self, name: str, *args: str) -> LocustRun:
        log = self.directory / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "locust", *args],
                cwd=self.directory,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        run = LocustRun(proc, log)
        self.runs.append(run)
        report_child_output(self.request, f"output of locust {name}", run.output)
        return run

    def close(self) -> None:
        for run in self.runs:
            if run.proc.poll() is None:
                run.proc.kill()
                run.proc.wait(WAIT)


@pytest.fixture
def locust(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Locust]:
    runner = Locust(tmp_path, request)
    yield runner
    runner.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def load_args(
    host: str | None, users: int, csv_prefix: str, locustfile: Path = LOCUSTFILE
) -> list[str]:
    """A headless run of ``users`` users, all started at once, for RUN_SECONDS."""
    return [
        "-f",
        str(locustfile),
        *(["--host", host] if host else []),
        "--headless",
        "--only-summary",
        "-u",
        str(users),
        "-r",
        str(users),
        "-t",
        f"{RUN_SECONDS}s",
        "--csv",
        csv_prefix,
    ]


def run_distributed(locust: Locust, host: str, csv_prefix: str) -> int:
    """One master expecting two workers, two workers; the master's exit code."""
    port = free_port()
    master = locust.start(
        "master",
        *load_args(host, 20, csv_prefix),
        "--master",
        "--master-bind-host",
        "127.0.0.1",
        "--master-bind-port",
        str(port),
        "--expect-workers",
        "2",
        "--expect-workers-max-wait",
        "30",
    )
    workers = [
        locust.start(
            f"worker{n}",
            "-f",
            str(LOCUSTFILE),
            "--worker",
            "--master-host",
            "127.0.0.1",
            "--master-port",
            str(port),
        )
        for n in (1, 2)
    ]
    code = master.wait()
    for worker in workers:
        worker.wait()
    return code


def stats_rows(directory: Path, prefix: str) -> dict[str, dict[str, str]]:
    with (directory / f"{prefix}_stats.csv").open() as stats:
        return {row["Name"]: row for row in csv.DictReader(stats)}


def failure_errors(directory: Path, prefix: str) -> list[str]:
    with (directory / f"{prefix}_failures.csv").open() as failures:
        return [row["Error"] for row in csv.DictReader(failures)]


class MisbehavingEcho(socketserver.ThreadingTCPServer):
    """An echo server that does what sockecho's servers never do: delay or alter echoes."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # socketserver's 5 drops SYNs when failed users reconnect at once

    def __init__(self, *, delay: float = 0.0, corrupt: bool = False) -> None:
        self.delay = delay
        self.corrupt = corrupt
        super().__init__(("127.0.0.1", 0), MisbehavingHandler)

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.server_address[1]}"


class MisbehavingHandler(socketserver.BaseRequestHandler):
    server: MisbehavingEcho

    def handle(self) -> None:
        try:
            while data := self.request.recv(65536):
                if self.server.delay:
                    time.sleep(self.server.delay)  # the fault under test: a slow server
                if self.server.corrupt:
                    data = bytes([data[0] ^ 0x01]) + data[1:]  # flip one bit of each read
                self.request.sendall(data)
        except OSError:
            pass  # the load generator went away mid-echo: its problem, not the test's


@pytest.fixture
def misbehaving() -> Iterator[type[MisbehavingEcho]]:
    started: list[MisbehavingEcho] = []

    class Tracked(MisbehavingEcho):
        def __init__(self, **faults: float | bool) -> None:
            super().__init__(**faults)  # type: ignore[arg-type]
            started.append(self)
            threading.Thread(target=self.serve_forever, daemon=True).start()

    yield Tracked
    for server in started:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_a_master_and_two_workers_echo_without_failures(
    locust: Locust, echo_server: RunningEchoServer, tmp_path: Path
) -> None:
    assert run_distributed(locust, echo_server.url, "good") == 0
    rows = stats_rows(tmp_path, "good")
    aggregated = rows["Aggregated"]
    assert int(aggregated["Request Count"]) > 0
    assert int(aggregated["Failure Count"]) == 0
    assert rows["echo 64 B"]["Type"] == "TCP"
    assert int(rows["echo 16 KiB"]["Request Count"]) > 0
    # the requests reached our server, from both workers' connections
    assert echo_server.snapshot().connections_accepted >= 2
    assert echo_server.snapshot().bytes_echoed >= int(aggregated["Request Count"]) * 64


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_a_corrupting_server_gives_failures_naming_the_mismatch(
    locust: Locust, misbehaving: type[MisbehavingEcho], tmp_path: Path
) -> None:
    server = misbehaving(corrupt=True)
    assert run_distributed(locust, server.url, "bad") != 0  # Locust exits 1 on failures
    aggregated = stats_rows(tmp_path, "bad")["Aggregated"]
    assert int(aggregated["Failure Count"]) > 0
    errors = failure_errors(tmp_path, "bad")
    assert errors
    assert all("the echo differs from what was sent at byte 0" in error for error in errors)


INTERLEAVING_LOCUSTFILE = """
from locust import constant, task
from sockecho.locust import EchoUser

class Waiter(EchoUser):
    wait_time = constant(0)

    @task
    def wait_for_a_slow_echo(self):
        self.client.echo(16)
"""


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_fifty_users_on_one_process_wait_for_their_echoes_together(
    locust: Locust, misbehaving: type[MisbehavingEcho], tmp_path: Path
) -> None:
    server = misbehaving(delay=ECHO_DELAY)
    locustfile = tmp_path / "waiters.py"
    locustfile.write_text(INTERLEAVING_LOCUSTFILE)
    run = locust.start("local", *load_args(server.url, 50, "slow", locustfile))
    assert run.wait() == 0
    aggregated = stats_rows(tmp_path, "slow")["Aggregated"]
    assert int(aggregated["Failure Count"]) == 0
    assert int(aggregated["Request Count"]) >= 50  # every user had its echo at least once
    # One user at a time could finish at most 1 / ECHO_DELAY echoes a second (2); fifty
    # users waiting together finish about fifty times that. Ten times is the bound. The rate
    # is Locust's own, over the time it really ran: -t is not exact (gevent starts the timer
    # from the event loop's clock, which a slow start-up leaves seconds behind).
    assert float(aggregated["Requests/s"]) >= 10 / ECHO_DELAY
    # each echo took about the delay, not the delay times the number of users queued
    assert float(aggregated["Median Response Time"]) < 3 * ECHO_DELAY * 1000


SCHEMES_LOCUSTFILE = """
import os
from locust import constant, task
from sockecho.locust import EchoUser

class Udp(EchoUser):
    host = os.environ["UDP_HOST"]
    wait_time = constant(0.05)

    @task
    def datagram(self):
        self.client.echo(512, name="udp 512")

class Tls(EchoUser):
    host = os.environ["TLS_HOST"]
    tls_ca_file = os.environ["TLS_CA"]
    wait_time = constant(0.05)

    @task
    def tls(self):
        self.client.echo(b"over tls", name="tls")

class Refused(EchoUser):
    host = os.environ["REFUSED_HOST"]
    timeout = 5
    wait_time = constant(0.2)

    @task
    def refused(self):
        self.client.echo(8, name="refused")
"""


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_udp_and_tls_hosts_echo_and_a_refusal_is_a_failure(
    locust: Locust,
    make_echo_server: EchoServerFactory,
    echo_tls_certificates: TestCertificates,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    udp = make_echo_server(udp=True)
    tls = make_echo_server(tls=True)
    locustfile = tmp_path / "schemes.py"
    locustfile.write_text(SCHEMES_LOCUSTFILE)
    monkeypatch.setenv("UDP_HOST", udp.udp_url)
    monkeypatch.setenv("TLS_HOST", tls.url)
    monkeypatch.setenv("TLS_CA", str(echo_tls_certificates.ca_file))
    monkeypatch.setenv("REFUSED_HOST", f"tcp://127.0.0.1:{free_port()}")
    run = locust.start("local", *load_args(None, 3, "schemes", locustfile))
    assert run.wait() == 1  # the refusals are failures
    rows = stats_rows(tmp_path, "schemes")
    assert rows["udp 512"]["Type"] == "UDP"
    assert int(rows["udp 512"]["Request Count"]) > 0
    assert int(rows["udp 512"]["Failure Count"]) == 0
    assert rows["tls"]["Type"] == "TLS"
    assert int(rows["tls"]["Request Count"]) > 0
    assert int(rows["tls"]["Failure Count"]) == 0
    assert int(rows["refused"]["Failure Count"]) == int(rows["refused"]["Request Count"]) > 0
    assert all("connection refused by 127.0.0.1" in e for e in failure_errors(tmp_path, "schemes"))
    assert udp.snapshot().datagrams_echoed > 0


SLOW_START_LOCUSTFILE = """
import os
from locust import constant, task
from sockecho.locust import EchoUser

os.system("sleep 3")  # a slow start-up that blocks without letting gevent's loop run

class Echoer(EchoUser):
    wait_time = constant(0.1)

    @task
    def echo(self):
        self.client.echo(8)
"""


def logged_at(lines: list[str], fragment: str) -> datetime.datetime:
    """When Locust logged the first line containing ``fragment``."""
    line = next(line for line in lines if fragment in line)
    return datetime.datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f")


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_a_slow_start_up_does_not_shorten_the_run(
    locust: Locust, echo_server: RunningEchoServer, tmp_path: Path
) -> None:
    locustfile = tmp_path / "slow_start.py"
    locustfile.write_text(SLOW_START_LOCUSTFILE)
    run = locust.start("local", *load_args(echo_server.url, 1, "slow_start", locustfile))
    assert run.wait() == 0
    lines = run.output()
    ran_for = logged_at(lines, "limit reached") - logged_at(lines, "Run time limit set")
    # without sockecho.locust's clock refresh, the timer fired at once (3 s behind)
    assert ran_for.total_seconds() >= RUN_SECONDS - 0.5
