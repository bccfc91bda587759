"""Running a check: choose the cases, make sure the server is there, run each case under
its own deadline, and collect a :class:`CheckReport`.

Each case runs in a thread of its own with a fresh :class:`Probe`, whose socket timeouts
stop at the case's deadline. Should a probe still be running :data:`ABANDON_GRACE` after
it, the runner closes the probe's sockets, waits as long again, and records the case as
FAILED; a hung server costs one deadline per case, never the whole run. A server that
dies mid-run fails the remaining cases quickly ("connection refused").

Randomness (chunk sizes, payloads) comes from one seed, printed with the report; each
case draws from its own generator seeded with the seed and its ID, so ``--seed N``
replays a case the same way whichever other cases run with it.
"""

from __future__ import annotations

import logging
import random
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from sockecho.check.cases import Case, select
from sockecho.check.probe import Failure, Finding, Probe, lost
from sockecho.check.report import CaseResult, CheckOptions, CheckReport, Verdict
from sockecho.check.udp_cases import PACE
from sockecho.client import connect_tcp
from sockecho.errors import ConfigError, ConnectError, SockechoError
from sockecho.net import format_host_port, resolve

#: Seconds each case may take (``--timeout``).
DEFAULT_TIMEOUT = 5.0
#: Seconds a probe may overrun its deadline before the runner closes its sockets.
ABANDON_GRACE = 1.0

log = logging.getLogger("sockecho.check")


def run_check(
    host: str,
    port: int,
    *,
    udp: bool = False,
    tls: ssl.SSLContext | None = None,
    cases: Iterable[str] = (),
    strict: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    seed: int | None = None,
    on_start: Callable[[str, int], None] | None = None,
    on_result: Callable[[CaseResult], None] | None = None,
) -> CheckReport:
    """Check the echo server at ``host``:``port``; see :func:`sockecho.check`."""
    if udp and tls is not None:
        raise ConfigError("--udp and --tls do not go together", "TLS runs over TCP only")
    if not timeout > 0:
        raise ConfigError(f"the timeout must be more than 0 seconds, not {timeout}")
    selectors = tuple(cases)
    chosen = select(selectors, udp=udp, tls=tls is not None, strict=strict)
    scheme = "udp" if udp else ("tls" if tls is not None else "tcp")
    target = f"{scheme}://{format_host_port(host, port)}"
    seed = secrets.randbelow(2**32) if seed is None else seed
    if udp:
        check_udp_port(host, port, timeout)
    else:
        connect_tcp(host, port, timeout).close()  # ConnectError: the server is not there
    if on_start is not None:
        on_start(target, seed)
    started = datetime.now(UTC)
    clock = time.monotonic()
    results = []
    for index, case in enumerate(chosen):
        if udp and index:
            time.sleep(PACE)  # let a per-source reply limit refill (see udp_cases)
        result = run_case(case, host, port, tls=tls, timeout=timeout, seed=seed)
        results.append(result)
        if on_result is not None:
            on_result(result)
    options = CheckOptions(
        udp=udp, tls=tls is not None, strict=strict, timeout=timeout, cases=selectors
    )
    return CheckReport(target, options, seed, started, time.monotonic() - clock, tuple(results))


#: Seconds to wait for the answer to the UDP reachability datagram (an ICMP "port
#: unreachable" comes back at once on loopback; silence proves nothing either way).
UDP_REACH_WAIT = 0.5


def check_udp_port(host: str, port: int, timeout: float) -> None:
    """ConnectError when the server's host says nothing listens on its UDP port.

    Only a connected UDP socket is told of the ICMP error; the cases use unconnected
    ones, to see which port a reply comes from."""
    family, sockaddr = resolve(host, port, socket.SOCK_DGRAM, passive=False)[0]
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(min(timeout, UDP_REACH_WAIT))
        try:
            sock.connect(sockaddr)
            sock.send(b"sockecho check")
            sock.recv(65536)
        except TimeoutError:
            pass  # no answer: the cases will say more
        except ConnectionRefusedError:
            where = format_host_port(str(sockaddr[0]), port)
            raise ConnectError(
                f"nothing listens on UDP port {where}", "is a UDP echo server running?"
            ) from None
        except OSError as exc:
            raise ConnectError(
                f"cannot reach {format_host_port(host, port)} over UDP: {exc.strerror or exc}"
            ) from None


def run_case(
    case: Case, host: str, port: int, *, tls: ssl.SSLContext | None, timeout: float, seed: int
) -> CaseResult:
    """Run one case under its deadline and say how it went."""
    probe = Probe(host, port, tls=tls, timeout=timeout, rng=random.Random(f"{seed}/{case.id}"))
    outcome: list[CaseResult] = []
    started = time.monotonic()

    def attempt() -> None:
        outcome.append(judge(case, probe))

    thread = threading.Thread(target=attempt, name=f"sockecho-check-{case.id}", daemon=True)
    thread.start()
    # The deadline may move (a case made of rounds restarts it for each round).
    while thread.is_alive() and (left := probe.deadline + ABANDON_GRACE - time.monotonic()) > 0:
        thread.join(left)
    if thread.is_alive():
        probe.abort()  # wakes whatever it is blocked on
        thread.join(ABANDON_GRACE)
    probe.close_all()
    duration = time.monotonic() - started
    if not outcome or probe.aborted:  # an aborted probe's own verdict saw closed sockets
        return result_of(
            case,
            Verdict.FAILED,
            duration,
            expected="the case to finish",
            actual=f"no progress within {timeout:g} s: the server stopped answering",
        )
    result = outcome[0]
    return result_of(
        case,
        result.verdict,
        duration,
        expected=result.expected,
        actual=result.actual,
        cause=result.cause,
    )


def judge(case: Case, probe: Probe) -> CaseResult:
    """Run ``case``'s probe and turn what happened into a verdict (duration filled later)."""
    try:
        finding = case.probe(probe) or Finding()
    except Failure as failure:
        return result_of(
            case,
            Verdict.FAILED,
            0,
            expected=failure.expected,
            actual=failure.actual,
            cause=failure.cause,
        )
    except SockechoError as exc:
        return result_of(case, Verdict.FAILED, 0, expected="a working echo", actual=exc.message)
    except OSError as exc:
        if probe.aborted:
            return result_of(
                case, Verdict.FAILED, 0, expected="the case to finish", actual="timed out"
            )
        return result_of(case, Verdict.FAILED, 0, expected="a working echo", actual=lost(exc))
    except Exception as exc:  # a bug in the checker: reported, the run goes on
        log.debug("case %s raised", case.id, exc_info=True)
        return result_of(
            case,
            Verdict.FAILED,
            0,
            actual=f"the checker itself failed: {type(exc).__name__}: {exc}",
        )
    verdict = Verdict.PASSED
    if finding.non_strict:
        verdict = Verdict.NON_STRICT
    elif finding.informational:
        verdict = Verdict.INFORMATIONAL
    return result_of(case, verdict, 0, expected=finding.expected, actual=finding.note)


def result_of(
    case: Case,
    verdict: Verdict,
    duration: float,
    *,
    expected: str = "",
    actual: str = "",
    cause: str = "",
) -> CaseResult:
    return CaseResult(
        id=case.id,
        title=case.title,
        requirement=case.requirement,
        level=case.level,
        verdict=verdict,
        expected=expected,
        actual=actual,
        cause=cause,
        duration=duration,
    )
