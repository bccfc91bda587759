"""Server settings, their defaults and the reasons for them.

Every limit a model obeys is defined here once, validated once, and read by
the I/O-free core (:mod:`sockecho.core`); models never hard-code a number.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sockecho.errors import ConfigError

DEFAULT_HOST = "127.0.0.1"
#: The port of the course's exercises (RFC 862's own port 7 needs root).
DEFAULT_PORT = 50010
#: Pending connections the kernel queues before accept(); Linux caps it at somaxconn (4096).
DEFAULT_BACKLOG = 128
#: Bytes asked of one recv(): large enough for bulk transfers in few calls, small enough to
#: stay below glibc's mmap threshold (128 KiB) so a read never costs an mmap/munmap pair.
DEFAULT_READ_SIZE = 64 * 1024
#: Unsent echo bytes per connection above which the server stops reading from it (bytes).
#: A client that sends and never reads then costs at most this much, not unbounded memory.
DEFAULT_HIGH_WATER = 64 * 1024
#: Unsent echo bytes below which reading resumes (bytes); the gap avoids flapping.
DEFAULT_LOW_WATER = 16 * 1024
#: Seconds without traffic after which a connection is closed (0 disables).
DEFAULT_IDLE_TIMEOUT = 300.0
#: Connections served at once; beyond it new ones are closed at accept time.
DEFAULT_MAX_CONNECTIONS = 10_000
#: select.select() cannot watch descriptors >= FD_SETSIZE (1024 on Linux); the select model
#: keeps room for its listeners, the wake-up pair and stdio below that ceiling.
SELECT_MAX_CONNECTIONS = 1000
#: Seconds a graceful stop lets open connections finish their echoes.
DEFAULT_DRAIN_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything a server model needs to know; immutable once built.

    ``port=0`` asks the kernel for a free port (read it back from
    :attr:`sockecho.Server.address`). ``idle_timeout=0`` disables the idle limit.
    ``max_per_source=0`` disables the per-source-address limit.
    """

    model: str = "asyncio"
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    backlog: int = DEFAULT_BACKLOG
    read_size: int = DEFAULT_READ_SIZE
    high_water: int = DEFAULT_HIGH_WATER
    low_water: int = DEFAULT_LOW_WATER
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    max_connections: int | None = None
    max_per_source: int = 0
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(
                f"port {self.port} is out of range", "use 0-65535; 0 picks a free port"
            )
        if self.backlog < 1:
            raise ConfigError(f"backlog {self.backlog} must be at least 1")
        if self.read_size < 1:
            raise ConfigError(f"read size {self.read_size} must be at least 1 byte")
        if not 0 <= self.low_water <= self.high_water:
            raise ConfigError(
                f"low water {self.low_water} must be between 0 and high water {self.high_water}"
            )
        if self.idle_timeout < 0:
            raise ConfigError("idle timeout must be 0 (off) or a positive number of seconds")
        if self.max_connections is not None and self.max_connections < 1:
            raise ConfigError("max connections must be at least 1")
        if self.max_per_source < 0:
            raise ConfigError("max per source must be 0 (off) or positive")
        if self.drain_timeout < 0:
            raise ConfigError("drain timeout must be 0 or a positive number of seconds")

    def replace(self, **changes: object) -> ServerConfig:
        """Return a copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def connection_limit(self, model_ceiling: int | None) -> int:
        """The effective maximum number of connections for a model with ``model_ceiling``."""
        wanted = self.max_connections
        if model_ceiling is None:
            return wanted if wanted is not None else DEFAULT_MAX_CONNECTIONS
        if wanted is None:
            return model_ceiling
        if wanted > model_ceiling:
            raise ConfigError(
                f"max connections {wanted} is above this model's ceiling of {model_ceiling}",
                "select.select() cannot watch descriptors >= 1024; use --model selectors",
            )
        return wanted
