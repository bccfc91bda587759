"""Interop with real third-party peers: socat and ncat as clients of every model, and
``sockecho send`` against socat's PIPE echo server. .ci/run installs both tools."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator

import pytest

from sockecho import Server
from tests.conftest import WAIT, require_tool, run_cli

pytestmark = pytest.mark.interop

PAYLOAD_SIZE = 1024 * 1024


@pytest.fixture(scope="module")
def payload() -> bytes:
    return os.urandom(PAYLOAD_SIZE)


def test_socat_as_a_client_gets_its_bytes_back(server: Server, payload: bytes) -> None:
    socat = require_tool("socat")
    host, port = server.address
    # -t: after stdin's end socat half-closes and waits this long for the rest of the echo.
    result = subprocess.run(
        [socat, "-t", "10", "-", f"TCP:{host}:{port}"],
        input=payload,
        capture_output=True,
        timeout=WAIT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == payload


def test_ncat_as_a_client_gets_its_bytes_back(server: Server, payload: bytes) -> None:
    ncat = require_tool("ncat")
    host, port = server.address
    result = subprocess.run(
        [ncat, host, str(port)], input=payload, capture_output=True, timeout=WAIT, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == payload


@pytest.fixture
def socat_pipe_server() -> Iterator[int]:
    """socat's own echo server (PIPE), on a port it picks and reports on stderr."""
    socat = require_tool("socat")
    proc = subprocess.Popen(
        [socat, "-d", "-d", "TCP-LISTEN:0,bind=127.0.0.1,reuseaddr,fork", "PIPE"],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    port = 0
    for line in proc.stderr:  # blocks until socat says it is listening
        found = re.search(r"listening on AF=2 127\.0\.0\.1:(\d+)", line)
        if found:
            port = int(found.group(1))
            break
    try:
        assert port, "socat did not report its port"
        yield port
    finally:
        proc.terminate()
        proc.wait(WAIT)
        proc.stderr.close()


def test_sockecho_send_words_against_socat_pipe(socat_pipe_server: int) -> None:
    result = run_cli("send", "--port", str(socat_pipe_server), "hola", "socat")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"hola socat\n"


def test_sockecho_send_stream_against_socat_pipe(socat_pipe_server: int, payload: bytes) -> None:
    result = run_cli("send", "--port", str(socat_pipe_server), stdin=payload)
    assert result.returncode == 0, result.stderr
    assert result.stdout == payload
