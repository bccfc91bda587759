"""The errors sockecho raises, each carrying the one line a user sees.

::

    SockechoError                 message + hint; the CLI prints "sockecho: error: message (hint)"
    ├── ConfigError               a setting is out of range (the CLI reports it as a usage error)
    ├── ResolveError              a host name did not resolve
    ├── BindError                 a listening socket could not be opened (in use, permission)
    ├── TLSSetupError             a TLS certificate, key or CA file could not be loaded
    ├── ClientError               the client could not talk to the server
    │   ├── ConnectError          refused, unreachable, timed out while connecting
    │   ├── EchoTimeout           the server stopped answering
    │   ├── EchoMismatch          the echo came back short or different
    │   ├── InputError            the local input could not be read
    │   └── OutputError           the echo could not be written to the local output
    └── ServerFailed              a server model stopped on an unexpected error

Low-level ``OSError`` is translated into this tree only at the boundary (binding,
connecting); builtins such as ``ConnectionError`` are never shadowed.
"""

from __future__ import annotations


class SockechoError(Exception):
    """Base of every error sockecho raises on purpose."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ConfigError(SockechoError, ValueError):
    """A setting is out of range or inconsistent."""


class ResolveError(SockechoError):
    """A host name could not be resolved."""


class BindError(SockechoError):
    """A listening socket could not be opened."""


class TLSSetupError(SockechoError):
    """A TLS certificate, key or CA file is missing, unreadable or invalid."""


class ClientError(SockechoError):
    """The client could not complete an echo."""


class ConnectError(ClientError):
    """The connection could not be established."""


class EchoTimeout(ClientError):
    """The server did not answer in time."""


class EchoMismatch(ClientError):
    """The echo came back short or different from what was sent."""


class InputError(ClientError):
    """The local input could not be read."""


class OutputError(ClientError):
    """The echo could not be written to the local output (disk full...)."""


class ServerFailed(SockechoError):
    """A server model stopped on an unexpected error."""
