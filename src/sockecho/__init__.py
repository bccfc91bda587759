"""sockecho: the Echo Protocol (RFC 862) in five classic server designs, and a client.

The public API::

    import sockecho

    with sockecho.Server(model="selectors", port=0) as srv:
        host, port = srv.address
        assert sockecho.echo(b"hola\\n", host, port) == b"hola\\n"

See :class:`Server`, :class:`ServerConfig`, :func:`echo`, :func:`stream` and
:data:`MODELS` (the registry of server designs).
"""

from __future__ import annotations

__version__ = "0.1.0"

from sockecho.client import StreamResult, connect, echo, stream
from sockecho.config import ServerConfig
from sockecho.core import EchoSession, ServerStats, StatsSnapshot
from sockecho.errors import (
    BindError,
    ClientError,
    ConfigError,
    ConnectError,
    EchoMismatch,
    EchoTimeout,
    ResolveError,
    ServerFailed,
    SockechoError,
    TLSSetupError,
)
from sockecho.server import Server
from sockecho.servers import DEFAULT_MODEL, MODELS

__all__ = [
    "DEFAULT_MODEL",
    "MODELS",
    "BindError",
    "ClientError",
    "ConfigError",
    "ConnectError",
    "EchoMismatch",
    "EchoSession",
    "EchoTimeout",
    "ResolveError",
    "Server",
    "ServerConfig",
    "ServerFailed",
    "ServerStats",
    "SockechoError",
    "StatsSnapshot",
    "StreamResult",
    "TLSSetupError",
    "__version__",
    "connect",
    "echo",
    "stream",
]
