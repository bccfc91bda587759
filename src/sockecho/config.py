"""Server settings, their defaults and the reasons for them.

Every limit a model obeys is defined here once, validated once, and read by
the I/O-free core (:mod:`sockecho.core`); models never hard-code a number.
"""

from __future__ import annotations

import dataclasses
import math
import socket
from dataclasses import dataclass

from sockecho.errors import ConfigError
from sockecho.faults import FaultInjector, parse_fault, parse_probability

DEFAULT_HOST = "127.0.0.1"
#: The port of the course's exercises (RFC 862's own port 7 needs root).
DEFAULT_PORT = 50010
#: Connections the kernel completes and queues before accept(): the C library's SOMAXCONN (4096
#: on Linux), which the kernel caps at net.core.somaxconn anyway. A short queue drops SYNs when
#: clients connect in a burst, and each dropped SYN costs its client a 1 s retransmission
#: (docs/models.md, "The listen queue"); real servers ask for the maximum (Go: somaxconn).
DEFAULT_BACKLOG = socket.SOMAXCONN
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
#: The longest timeout any setting takes (seconds): a year. Longer ones overflow the
#: kernel's and the threading module's timeouts (OverflowError), and mean "never" anyway.
MAX_SECONDS = 365 * 24 * 3600.0
#: The largest listen backlog accepted: Linux silently caps it at net.core.somaxconn
#: (4096 by default), and listen() takes a C int.
MAX_BACKLOG = 65535
#: UDP replies per second to one source address: enough for any honest test client, while a
#: spoofed flood aimed at a victim is cut to this much (the reflection limit, issue 4).
DEFAULT_UDP_RATE = 1000.0
#: Seconds of ``udp_rate`` a quiet source may spend at once (the token bucket's depth):
#: 0.1 s at 1000/s lets a burst of 100 datagrams through, then the rate applies.
UDP_BURST_SECONDS = 0.1
#: Source ports below this are privileged (echo 7, discard 9, daytime 13, chargen 19,
#: time 37 live there): replying to them could start an endless loop between two services.
UDP_LOWEST_REPLY_PORT = 1024
#: Seconds a TLS client gets to complete its handshake: ample for a real client on any
#: network, short enough that silent connections cannot hold connection slots for long.
DEFAULT_TLS_HANDSHAKE_TIMEOUT = 10.0


#: The PROXY protocol header must arrive within this many seconds. The spec: "at least 3
#: seconds to cover a TCP retransmit"; haproxy's own ``timeout client`` is usually longer.
DEFAULT_PROXY_HEADER_TIMEOUT = 3.0
#: ``--proxy-protocol`` choices (the versions a server accepts).
PROXY_VERSIONS = ("v1", "v2", "any")
#: Longest ``--identify`` name (characters): it is repeated in every identity line.
MAX_INSTANCE_NAME = 64

#: Event loops the asyncio model can run on. "uvloop" (libuv, in C) needs the
#: ``sockecho[uvloop]`` extra; the default install meets its targets without it.
EVENT_LOOPS = ("asyncio", "uvloop")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything a server model needs to know; immutable once built.

    ``port=0`` asks the kernel for a free port (read it back from
    :attr:`sockecho.Server.address`). ``idle_timeout=0`` disables the idle limit.
    ``max_per_source=0`` disables the per-source-address limit.

    ``loop="uvloop"`` runs the asyncio model on uvloop (the ``uvloop`` extra).

    ``udp=True`` also serves UDP echo on the same port number. ``udp_rate`` is
    replies per second per source address (0 disables the limit);
    ``udp_burst`` the token bucket's depth in datagrams (default: 0.1 s of the
    rate, at least 1).

    ``tls_cert`` and ``tls_key`` (PEM files, both or neither) serve echo over
    TLS; a client that has not finished its handshake after
    ``tls_handshake_timeout`` seconds is closed. The files are read (and their
    errors reported) when the server is built, by :mod:`sockecho.tls`.

    ``faults`` are ``--fault`` specs (``"latency=100:20"``, ``"drop=0.1"``...,
    :mod:`sockecho.faults`); ``fault_probability`` is the share of connections
    (and datagrams) they apply to, and ``seed`` makes the draws repeatable.
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
    udp: bool = False
    udp_allow_low_ports: bool = False
    udp_rate: float = DEFAULT_UDP_RATE
    udp_burst: int | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_handshake_timeout: float = DEFAULT_TLS_HANDSHAKE_TIMEOUT
    loop: str = "asyncio"
    faults: tuple[str, ...] = ()
    fault_probability: float = 1.0
    seed: int | None = None
    # -- operations (docs/operations.md) --
    proxy_protocol: str | None = None  # "v1", "v2" or "any": every TCP client sends a header
    proxy_header_timeout: float = DEFAULT_PROXY_HEADER_TIMEOUT
    identify: str | None = None  # instance name: each connection first gets an identity line
    metrics: str | None = None  # "HOST:PORT" of the Prometheus endpoint
    #: SO_REUSEPORT on every socket: several servers (``--workers``) share the port and the
    #: kernel spreads connections (and datagrams) over them (Linux).
    reuse_port: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(
                f"port {self.port} is out of range", "use 0-65535; 0 picks a free port"
            )
        if not 1 <= self.backlog <= MAX_BACKLOG:
            raise ConfigError(f"backlog {self.backlog} must be between 1 and {MAX_BACKLOG}")
        if self.read_size < 1:
            raise ConfigError(f"read size {self.read_size} must be at least 1 byte")
        if not 0 <= self.low_water <= self.high_water:
            raise ConfigError(
                f"low water {self.low_water} must be between 0 and high water {self.high_water}"
            )
        if not 0 <= self.idle_timeout <= MAX_SECONDS:  # also rejects NaN and infinity
            raise ConfigError(
                f"idle timeout must be 0 (off) or a number of seconds up to {MAX_SECONDS:g}"
            )
        if self.max_connections is not None and self.max_connections < 1:
            raise ConfigError("max connections must be at least 1")
        if self.max_per_source < 0:
            raise ConfigError("max per source must be 0 (off) or positive")
        if not 0 <= self.drain_timeout <= MAX_SECONDS:
            raise ConfigError(f"drain timeout must be 0 to {MAX_SECONDS:g} seconds")
        if not 0 <= self.udp_rate < math.inf:  # also rejects NaN
            raise ConfigError("UDP rate must be 0 (no limit) or a positive number per second")
        if self.udp_burst is not None and self.udp_burst < 1:
            raise ConfigError("UDP burst must be at least 1 datagram")
        if self.tls_cert == "" or self.tls_key == "":
            raise ConfigError("a TLS certificate or key path is empty")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError(
                "TLS needs both a certificate and its private key",
                "pass --tls-cert FILE and --tls-key FILE together",
            )
        if not 0 < self.tls_handshake_timeout <= MAX_SECONDS:
            raise ConfigError(
                f"TLS handshake timeout must be more than 0 and at most {MAX_SECONDS:g} seconds"
            )
        self._check_operations()
        if self.loop not in EVENT_LOOPS:
            raise ConfigError(f"unknown event loop {self.loop!r}", f"use one of {EVENT_LOOPS}")
        if self.loop != "asyncio" and self.model != "asyncio":
            raise ConfigError(
                f"--loop {self.loop} applies to the asyncio model only", "add --model asyncio"
            )
        injector = self.fault_injector()  # every spec parsed (and rejected) here, once
        if injector.faults and self.tls:
            raise ConfigError(
                "--fault does not apply to TLS connections",
                "inject faults on a plain TCP or UDP port",
            )
        if injector.datagram_kinds and not self.udp:
            kinds = ", ".join(kind.value for kind in injector.datagram_kinds)
            raise ConfigError(f"fault {kinds} applies to UDP echo only", "add --udp")

    def fault_injector(self) -> FaultInjector:
        """A fresh injector for ``faults`` (its generator seeded with ``seed``)."""
        return FaultInjector(
            [parse_fault(spec) for spec in self.faults],
            parse_probability(self.fault_probability),
            self.seed,
        )

    def _check_operations(self) -> None:
        if self.proxy_protocol is not None and self.proxy_protocol not in PROXY_VERSIONS:
            raise ConfigError(
                f"unknown PROXY protocol version {self.proxy_protocol!r}",
                f"use one of {', '.join(PROXY_VERSIONS)}",
            )
        if not 0 < self.proxy_header_timeout <= MAX_SECONDS:
            raise ConfigError("PROXY header timeout must be more than 0 seconds")
        if self.identify is not None and not (
            0 < len(self.identify) <= MAX_INSTANCE_NAME and self.identify.isprintable()
        ):
            raise ConfigError(
                f"instance name {self.identify!r} must be 1 to {MAX_INSTANCE_NAME} "
                "printable characters"
            )

    def replace(self, **changes: object) -> ServerConfig:
        """Return a copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @property
    def tls(self) -> bool:
        """Whether TCP clients are served over TLS."""
        return self.tls_cert is not None

    @property
    def udp_burst_size(self) -> int:
        """Datagrams one source may get back at once before ``udp_rate`` applies."""
        if self.udp_burst is not None:
            return self.udp_burst
        return max(1, math.ceil(self.udp_rate * UDP_BURST_SECONDS))

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


@dataclass(frozen=True, slots=True)
class ClientTLSConfig:
    """How the client checks a TLS server.

    By default the server's certificate must chain to the system's trusted
    roots, or to ``ca_file`` (PEM) when given, and name the host connected to.
    ``insecure`` skips both checks (the connection is still encrypted, but a
    man in the middle goes unnoticed): for self-signed test servers only.
    """

    ca_file: str | None = None
    insecure: bool = False

    def __post_init__(self) -> None:
        if self.insecure and self.ca_file:
            raise ConfigError(
                "--insecure and --tls-ca contradict each other",
                "--tls-ca checks the server against a CA; --insecure checks nothing",
            )
