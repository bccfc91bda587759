"""The registry of server models: one name, one class, one module.

This dict feeds ``--model``'s choices, ``sockecho models``, the docs and the
parametrized test suite, so a model added here is offered, documented and
tested everywhere at once.
"""

from __future__ import annotations

from sockecho.servers.asyncio_impl import AsyncioServer
from sockecho.servers.base import EchoServer
from sockecho.servers.iterative import IterativeServer
from sockecho.servers.select_loop import SelectServer
from sockecho.servers.selectors_loop import SelectorsServer
from sockecho.servers.threading_model import ThreadingServer

#: Models in teaching order: from one client at a time to the fastest.
MODELS: dict[str, type[EchoServer]] = {
    cls.name: cls
    for cls in (IterativeServer, ThreadingServer, SelectServer, SelectorsServer, AsyncioServer)
}
DEFAULT_MODEL = "asyncio"

__all__ = ["DEFAULT_MODEL", "MODELS", "EchoServer"]
