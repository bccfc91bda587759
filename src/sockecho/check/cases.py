"""The registry of check cases: stable dotted IDs in sections, each with what it requires,
why, how binding that is, and the probe that checks it.

IDs never change meaning once published (CI pipelines select them with ``--case``); a
section (``tcp.close``) selects all its cases. RFC 862 is short, so most requirements
quote its one sentence for each transport; the others give the reason.

Which cases a run includes (:func:`select`):

* ``tcp`` cases in a TCP run, over TLS as well with ``--tls``; ``tls`` cases only with
  ``--tls``; ``udp`` cases only with ``--udp``.
* ``strict`` cases (SHOULD-level behaviour a plain echo server may lack) only with
  ``--strict`` or when named by their full ID.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sockecho.check import tcp_cases, udp_cases
from sockecho.check.probe import Finding, Probe
from sockecho.check.report import Level, section_of
from sockecho.errors import ConfigError

ProbeFunction = Callable[[Probe], Finding | None]

RFC_TCP = (
    'RFC 862: "Once a connection is established any data received is sent back. '
    'This continues until the calling user terminates the connection."'
)
RFC_UDP = (
    'RFC 862: "When a datagram is received, the data from it is sent back in an '
    'answering datagram."'
)


@dataclass(frozen=True, slots=True)
class Case:
    id: str
    title: str
    requirement: str  # a quote from RFC 862, or the reason
    level: Level
    probe: ProbeFunction
    strict: bool = False  # run only with --strict (or when named by ID)

    @property
    def section(self) -> str:
        return section_of(self.id)

    @property
    def transport(self) -> str:
        return self.id.partition(".")[0]


def _tcp_size(name: str, size: int, label: str) -> Case:
    return Case(
        f"tcp.size.{name}",
        f"{label} sent while reading come back exactly",
        f"{RFC_TCP} A large echo takes many send() and recv() calls on both sides.",
        Level.MUST,
        tcp_cases.size_case(size),
    )


def _udp_size(size: int, why: str) -> Case:
    return Case(
        f"udp.size.{size}",
        f"a {size}-byte datagram comes back whole, from the port it was sent to",
        f"{RFC_UDP} {why}",
        Level.MUST,
        udp_cases.size_case(size),
    )


CASES: dict[str, Case] = {
    case.id: case
    for case in (
        Case(
            "tls.handshake",
            "the TLS handshake completes (version and cipher reported)",
            "An echo over TLS needs a handshake the client accepts before any byte.",
            Level.MUST,
            tcp_cases.tls_handshake,
        ),
        Case(
            "tcp.bytes.all-values",
            "all 256 byte values in one write come back exactly",
            f"{RFC_TCP} Data is bytes, not text: no byte is special.",
            Level.MUST,
            tcp_cases.all_values,
        ),
        Case(
            "tcp.bytes.one-byte-writes",
            "32 writes of one byte, each echoed before the next",
            f"{RFC_TCP} The echo continues for as long as the client keeps the connection.",
            Level.MUST,
            tcp_cases.one_byte_writes,
        ),
        Case(
            "tcp.bytes.random-chunks",
            "64 KiB in writes of random sizes (seeded) come back exactly",
            f"{RFC_TCP} TCP keeps no message boundaries: the server cannot rely on them.",
            Level.MUST,
            tcp_cases.random_chunks,
        ),
        _tcp_size("64k", 64 * 1024, "64 KiB"),
        _tcp_size("1m", 1024 * 1024, "1 MiB"),
        _tcp_size("16m", 16 * 1024 * 1024, "16 MiB"),
        Case(
            "tcp.flow.back-pressure",
            "8 MiB written before reading anything all come back once the client reads",
            "A client may write before it reads. A bounded server stops reading at some "
            "point (how much it took is reported); all must come back once the client reads.",
            Level.MUST,
            tcp_cases.back_pressure,
        ),
        Case(
            "tcp.silence.no-banner",
            "nothing arrives before the client writes",
            f"{RFC_TCP} Only received data is sent: no greeting, no prompt.",
            Level.MUST,
            tcp_cases.no_banner,
        ),
        Case(
            "tcp.silence.no-extra-bytes",
            "nothing arrives beyond the echo",
            f"{RFC_TCP} The echo is the data received and nothing else.",
            Level.MUST,
            tcp_cases.no_extra_bytes,
        ),
        Case(
            "tcp.close.half-close",
            "after the client's FIN every pending byte arrives, then the server's FIN",
            "A client that half-closes after its last write (sockecho send, socat, nc -N) "
            "still reads its echo; the server's FIN then says the echo is complete.",
            Level.MUST,
            tcp_cases.half_close,
        ),
        Case(
            "tcp.close.empty-connection",
            "a client that connects and closes without sending does not stop the server",
            f"{RFC_TCP} One client's end is not the server's end.",
            Level.MUST,
            tcp_cases.empty_connection,
        ),
        Case(
            "tcp.close.reset-mid-stream",
            "a client that resets mid-stream does not take the server down",
            "A client may vanish at any time (a crash, a cable): the error belongs to "
            "that connection only.",
            Level.MUST,
            tcp_cases.reset_mid_stream,
        ),
        Case(
            "tcp.concurrency.second-client",
            "a second client is served while the first stays connected and idle",
            "A server should serve more than one client at a time; otherwise one idle "
            "client denies service to all others.",
            Level.SHOULD,
            tcp_cases.second_client,
        ),
        Case(
            "tcp.concurrency.100-clients",
            "100 concurrent clients each get exactly their own bytes back",
            f"{RFC_TCP} Each connection's echo is its own data, however many run at once.",
            Level.SHOULD,
            tcp_cases.many_clients,
        ),
        Case(
            "tcp.concurrency.stalled-reader",
            "a client that stops reading does not stall the other clients",
            "A server should not let one slow or stuck client freeze the others.",
            Level.SHOULD,
            tcp_cases.stalled_reader,
            strict=True,
        ),
        Case(
            "tcp.idle.two-seconds",
            "a connection idle for 2 s is still echoed",
            f"{RFC_TCP} A pause is not the end; an idle timeout is reported, not failed.",
            Level.SHOULD,
            tcp_cases.idle,
        ),
        _udp_size(0, "An empty datagram gets an empty answer."),
        _udp_size(1, "The smallest payload."),
        _udp_size(1472, "The largest that fits one 1500-byte Ethernet frame over IPv4."),
        _udp_size(8193, "One byte more than socketserver.UDPServer reads (8192)."),
        _udp_size(65507, "The largest UDP payload over IPv4."),
        Case(
            "udp.burst.100",
            "100 datagrams sent at once: how many come back (loss is reported)",
            "UDP may lose datagrams; a server may also limit the replies one source gets.",
            Level.SHOULD,
            udp_cases.burst,
        ),
    )
}


def select(
    selectors: Iterable[str] = (), *, udp: bool = False, tls: bool = False, strict: bool = False
) -> list[Case]:
    """The cases of a run, in registry order. ConfigError for a selector that names no
    case or section (``--case`` reports it as a usage error)."""
    transports = {"udp"} if udp else ({"tcp", "tls"} if tls else {"tcp"})
    selectors = list(selectors)
    for selector in selectors:
        if not any(matches(case, selector) for case in CASES.values()):
            raise ConfigError(
                f"no case or section {selector!r}", "'sockecho check --list' lists them"
            )
    chosen = []
    for case in CASES.values():
        if case.transport not in transports:
            continue
        if selectors:
            if not any(matches(case, selector) for selector in selectors):
                continue
            if case.strict and not strict and case.id not in selectors:
                continue
        elif case.strict and not strict:
            continue
        chosen.append(case)
    if selectors and not chosen:
        run = "UDP" if udp else ("TLS" if tls else "TCP")
        raise ConfigError(
            f"no {run} case matches --case {' '.join(selectors)}",
            "tls cases need --tls, udp cases --udp, --strict cases --strict or their full ID",
        )
    return chosen


def matches(case: Case, selector: str) -> bool:
    """``tcp.close`` selects ``tcp.close.half-close``; ``tcp`` selects every TCP case."""
    return case.id == selector or case.id.startswith(selector.rstrip(".") + ".")


def docs_table() -> str:
    """The Markdown table of every case in docs/check.md (a test keeps the two equal)."""
    rows = ["| Case | Level | Checks | Requirement |", "|---|---|---|---|"]
    for case in CASES.values():
        level = f"{case.level.value} (--strict)" if case.strict else case.level.value
        requirement = case.requirement.replace("|", "\\|")
        rows.append(f"| `{case.id}` | {level} | {case.title} | {requirement} |")
    return "\n".join(rows)
