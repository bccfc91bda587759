"""Echo servers broken the way people break them, for ``sockecho serve --flaw NAME``.

Each flaw is a small module that reads as the mistake (not a switch inside a correct
model): ``NAME``, ``BUG`` (the mistake in one sentence), ``CAUGHT_BY`` (the
``sockecho check`` case that fails on it), ``UDP``, ``BACKLOG`` and ``serve(sock)``,
which serves on a bound socket (listening, for TCP) until the process is interrupted.
:data:`FLAWS` is the registry; ``sockecho models --flaws`` lists it, and the tests check
that each flaw fails its case.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

from sockecho.flaws import (
    banner,
    handout,
    no_half_close,
    partial_send,
    shared_buffer,
    stalling_select,
    udp_8192,
)
from sockecho.net import bind_error, resolve


@dataclass(frozen=True, slots=True)
class Flaw:
    name: str
    bug: str
    caught_by: str
    udp: bool
    backlog: int
    serve: Callable[[socket.socket], None]
    module: ModuleType

    def open_socket(self, host: str, port: int) -> socket.socket:
        """The flaw's socket, bound to the first address of ``host`` (port 0: any free
        port), listening for TCP. BindError if that fails."""
        kind = socket.SOCK_DGRAM if self.udp else socket.SOCK_STREAM
        family, sockaddr = resolve(host, port, kind, passive=True)[0]
        sock = socket.socket(family, kind)
        try:
            if not self.udp:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(sockaddr)
            if not self.udp:
                sock.listen(self.backlog)
        except OSError as exc:
            sock.close()
            raise bind_error(exc, host, port, "udp" if self.udp else "tcp") from None
        return sock


def _flaw(module: ModuleType) -> Flaw:
    return Flaw(
        name=module.NAME,
        bug=module.BUG,
        caught_by=module.CAUGHT_BY,
        udp=module.UDP,
        backlog=module.BACKLOG,
        serve=module.serve,
        module=module,
    )


FLAWS: dict[str, Flaw] = {
    flaw.name: flaw
    for flaw in map(
        _flaw,
        (handout, partial_send, no_half_close, shared_buffer, stalling_select, banner, udp_8192),
    )
}
