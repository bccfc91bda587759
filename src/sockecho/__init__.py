"""sockecho: the Echo Protocol (RFC 862) in five classic server designs, and a client.

The public API::

    import sockecho

    with sockecho.Server(model="selectors", port=0) as srv:
        host, port = srv.address
        assert sockecho.echo(b"hola\\n", host, port) == b"hola\\n"

See :class:`Server`, :class:`ServerConfig` (and :class:`StatsSnapshot`, what
``srv.snapshot()`` returns), :func:`connect`, :func:`echo`, :func:`stream` and
:data:`MODELS` (the registry of server designs); :func:`check` runs the conformance
cases of ``sockecho check`` against any echo server and returns a :class:`CheckReport`.
Over TLS: pass
``tls=sockecho.client_context(sockecho.ClientTLSConfig(ca_file=...))`` to ``echo``
or ``stream``, and ``tls_cert=``/``tls_key=`` to the server. Every error raised on
purpose is a :class:`SockechoError` (the tree is drawn in :mod:`sockecho.errors`).
:class:`EchoSession` is for people writing a model of their own.
"""

from __future__ import annotations

__version__ = "0.1.0"

from sockecho.check import CheckReport, check
from sockecho.client import StreamResult, connect, echo, stream
from sockecho.config import ClientTLSConfig, ServerConfig
from sockecho.core import EchoSession, ServerStats, StatsSnapshot
from sockecho.errors import (
    BindError,
    ClientError,
    ConfigError,
    ConnectError,
    EchoMismatch,
    EchoTimeout,
    InputError,
    OutputError,
    ResolveError,
    ServerFailed,
    SockechoError,
    TLSSetupError,
)
from sockecho.server import Server
from sockecho.servers import DEFAULT_MODEL, MODELS
from sockecho.tls import client_context

__all__ = [
    "DEFAULT_MODEL",
    "MODELS",
    "BindError",
    "CheckReport",
    "ClientError",
    "ClientTLSConfig",
    "ConfigError",
    "ConnectError",
    "EchoMismatch",
    "EchoSession",
    "EchoTimeout",
    "InputError",
    "OutputError",
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
    "check",
    "client_context",
    "connect",
    "echo",
    "stream",
]
