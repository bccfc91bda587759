"""Property: arbitrary byte strings, in arbitrary chunkings, come back unchanged."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sockecho import Server, ServerConfig
from tests.conftest import ALL_MODELS, WAIT, recv_until_eof


@pytest.fixture(scope="module", params=ALL_MODELS)
def shared_server(request: pytest.FixtureRequest) -> Iterator[Server]:
    with Server(ServerConfig(model=str(request.param), port=0, drain_timeout=1.0)) as srv:
        yield srv


chunkings = st.lists(st.binary(min_size=0, max_size=4096), min_size=0, max_size=40)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(chunks=chunkings)
def test_any_bytes_in_any_chunking_come_back_unchanged(
    shared_server: Server, chunks: list[bytes]
) -> None:
    with socket.create_connection(shared_server.address, timeout=WAIT) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def send_all() -> None:
            for chunk in chunks:
                sock.sendall(chunk)  # zero-length chunks included: they must change nothing
            sock.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send_all)
        sender.start()
        echoed = recv_until_eof(sock)
        sender.join(WAIT)
    assert echoed == b"".join(chunks)
