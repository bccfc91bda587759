"""The checker against servers that misbehave in time, not in bytes: one that hangs mid-case
fails that case within its deadline, one that dies mid-run fails the rest with "connection
refused", a probe stuck past its deadline is abandoned; and the TLS cases."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from sockecho import ClientTLSConfig, Server, ServerConfig, client_context
from sockecho.check import CASES, Case, Level, Verdict, check
from sockecho.check.probe import Probe
from sockecho.check.runner import ABANDON_GRACE, run_case
from tests.conftest import WAIT, run_cli

pytestmark = pytest.mark.timeout(60)

#: A short per-case deadline keeps these tests quick (seconds).
TIMEOUT = 1.0


@pytest.fixture
def hanging_server() -> Iterator[tuple[str, int]]:
    """Echoes the first 4 bytes of each connection, then holds it without a word."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    done = threading.Event()

    def serve() -> None:
        with contextlib.suppress(OSError):
            while not done.is_set():
                conn, _ = listener.accept()
                held.append(conn)
                conn.sendall(conn.recv(4))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    address = listener.getsockname()[:2]
    yield address
    done.set()
    socket.create_connection(address, timeout=WAIT).close()  # wakes the accept() above
    thread.join(WAIT)
    listener.close()
    for conn in held:
        conn.close()


def test_a_server_that_hangs_mid_case_fails_it_within_the_deadline(
    hanging_server: tuple[str, int],
) -> None:
    started = time.monotonic()
    report = check(*hanging_server, cases=["tcp.bytes.all-values"], timeout=TIMEOUT)
    result = report.result("tcp.bytes.all-values")
    assert result.verdict is Verdict.FAILED
    assert result.actual.startswith("4 of 256 bytes came back, then nothing"), result.actual
    assert time.monotonic() - started < TIMEOUT + ABANDON_GRACE + 1


def test_a_server_that_dies_mid_run_fails_the_rest_with_connection_refused() -> None:
    server = Server(ServerConfig(model="threading", port=0, drain_timeout=0))
    server.start()
    host, port = server.address

    def stop_after_first(result: object) -> None:
        server.stop(graceful=False, timeout=WAIT)

    try:
        report = check(host, port, cases=["tcp.bytes", "tcp.close"], on_result=stop_after_first)
    finally:
        server.stop(graceful=False, timeout=WAIT)
    first, *rest = report.results
    assert first.verdict is Verdict.PASSED
    assert len(rest) == 5
    for result in rest:
        assert result.verdict is Verdict.FAILED
        assert "connection refused by 127.0.0.1" in result.actual, result


def test_a_probe_stuck_past_its_deadline_is_abandoned_and_failed(
    hanging_server: tuple[str, int],
) -> None:
    def stuck(probe: Probe) -> None:
        conn = probe.connect()
        conn.sock.settimeout(None)  # a probe that forgot its deadline
        conn.sock.recv(1)  # the server never sends: only the runner's abort ends this

    case = Case("tcp.test.stuck", "a stuck probe", "none", Level.MUST, stuck)
    started = time.monotonic()
    result = run_case(case, *hanging_server, tls=None, timeout=TIMEOUT, seed=1)
    assert result.verdict is Verdict.FAILED
    assert time.monotonic() - started < TIMEOUT + 2 * ABANDON_GRACE + 1


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    paths = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    ca.cert_pem.write_to_path(str(paths[0]))
    paths[1].write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(paths[2]))
    return paths


def test_the_tcp_cases_pass_over_tls_and_the_handshake_is_reported(
    tls_files: tuple[Path, Path, Path],
) -> None:
    ca, cert, key = tls_files
    config = ServerConfig(model="selectors", port=0, tls_cert=str(cert), tls_key=str(key))
    context = client_context(ClientTLSConfig(ca_file=str(ca)))
    with Server(config) as server:
        report = check(
            *server.address,
            tls=context,
            cases=["tls", "tcp.bytes", "tcp.close", "tcp.concurrency.second-client"],
        )
    assert report.target.startswith("tls://")
    assert not report.failed, [(r.id, r.actual) for r in report.results]
    assert report.result("tls.handshake").actual.startswith("TLSv1.")


def test_an_untrusted_certificate_fails_the_handshake_case_with_the_hint(
    tls_files: tuple[Path, Path, Path],
) -> None:
    _ca, cert, key = tls_files
    config = ServerConfig(model="selectors", port=0, tls_cert=str(cert), tls_key=str(key))
    context = ssl.create_default_context()  # the system's roots: our test CA is not there
    with Server(config) as server:
        report = check(*server.address, tls=context, cases=["tls.handshake"])
    result = report.result("tls.handshake")
    assert result.verdict is Verdict.FAILED
    assert "--tls-ca" in result.cause


def test_the_check_command_over_tls_trusts_tls_ca_and_insecure_and_names_the_fix_otherwise(
    tls_files: tuple[Path, Path, Path],
) -> None:
    ca, cert, key = tls_files
    config = ServerConfig(model="selectors", port=0, tls_cert=str(cert), tls_key=str(key))
    cases = ("--case", "tls.handshake", "--case", "tcp.bytes.all-values")
    with Server(config) as server:
        target = "{}:{}".format(*server.address)
        trusted = run_cli("check", "--tls", "--tls-ca", str(ca), *cases, target)
        insecure = run_cli("check", "--tls", "--insecure", *cases, target)
        untrusted = run_cli("check", "--tls", *cases, target)
    assert trusted.returncode == 0, trusted.stdout.decode() + trusted.stderr.decode()
    assert b"2 cases, 2 passed, 0 failed" in trusted.stdout
    assert b"tls://" in trusted.stdout
    assert insecure.returncode == 0, insecure.stdout.decode() + insecure.stderr.decode()
    assert untrusted.returncode == 1
    assert b"--tls-ca" in untrusted.stdout  # the usual cause, in the failure's words


def test_the_tls_cases_run_only_with_tls() -> None:
    with Server(ServerConfig(model="selectors", port=0)) as server:
        report = check(*server.address, cases=["tcp.bytes.all-values"])
    assert [r.id for r in report.results] == ["tcp.bytes.all-values"]
    assert "tls.handshake" in CASES
