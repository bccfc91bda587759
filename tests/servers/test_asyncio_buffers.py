"""The asyncio model never changes bytes it has handed to its transport.

Every connection of the asyncio model reads into one shared buffer and writes a view of it
(no copy). Since Python 3.12 the selector transport keeps what it could not send at once
as that very view, not a copy (3.11 copied it into a bytearray): a later read into the same
buffer would change bytes still waiting to be sent, and corrupt the echo. The model switches
to a fresh read buffer whenever the transport kept something. On 3.11 no real transport
shows the difference, so these tests drive the protocol with a transport that keeps views,
as 3.12's does, whatever Python runs them.
"""

from __future__ import annotations

from typing import Any

import pytest

from sockecho import ServerConfig
from sockecho.servers.asyncio_impl import AsyncioServer, EchoProtocol


class ViewKeepingTransport:
    """A transport whose peer takes ``sends_at_once`` bytes of the first write and nothing
    after; the rest of each write is kept as given (a view stays a view, as in 3.12)."""

    def __init__(self, sends_at_once: int) -> None:
        self.sends_at_once = sends_at_once
        self.sent = bytearray()
        self.kept: list[Any] = []

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return sum(len(data) for data in self.kept)

    def write(self, data: Any) -> None:
        if not self.kept and self.sends_at_once:
            self.sent += data[: self.sends_at_once]
            data = data[self.sends_at_once :]
        if len(data):
            self.kept.append(data)

    def pending(self) -> bytes:
        """What the transport would send next, read from what it kept now."""
        return b"".join(bytes(data) for data in self.kept)


def receive(protocol: EchoProtocol, data: bytes) -> None:
    """What the event loop does when ``data`` arrives: get_buffer, recv_into, buffer_updated."""
    buffer = protocol.get_buffer(-1)
    buffer[: len(data)] = data
    protocol.buffer_updated(len(data))


@pytest.mark.parametrize("sends_at_once", [0, 3], ids=["nothing-sent", "partly-sent"])
def test_bytes_kept_by_the_transport_survive_later_reads(sends_at_once: int) -> None:
    server = AsyncioServer(ServerConfig(model="asyncio", port=0))
    protocol = EchoProtocol(server)
    transport = ViewKeepingTransport(sends_at_once)
    protocol.connection_made(transport)  # type: ignore[arg-type]
    assert protocol.session is not None  # admitted

    receive(protocol, b"first message")
    assert isinstance(transport.kept[0], memoryview)  # the fast path: a view, not a copy
    receive(protocol, b"SECOND MESSAGE, longer")
    receive(protocol, b"third")

    assert bytes(transport.sent) + transport.pending() == (
        b"first message" + b"SECOND MESSAGE, longer" + b"third"
    )


def test_reads_go_on_into_the_shared_buffer_while_nothing_is_kept() -> None:
    """The switch costs nothing while the peer reads: a transport that sends everything
    keeps nothing, and the next read lands in the same buffer."""
    server = AsyncioServer(ServerConfig(model="asyncio", port=0))
    protocol = EchoProtocol(server)
    transport = ViewKeepingTransport(sends_at_once=1 << 20)
    protocol.connection_made(transport)  # type: ignore[arg-type]
    shared = server.read_buffer
    receive(protocol, b"one")
    assert transport.kept == []
    assert server.read_buffer is shared
