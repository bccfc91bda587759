"""``sockecho check``: a conformance checker for any echo server (RFC 862).

::

    report = sockecho.check("127.0.0.1", 7007)
    assert not report.failed, [r.id for r in report.results if r.verdict is Verdict.FAILED]

The parts: :mod:`.cases` (the registry: IDs, requirements, probes), :mod:`.probe` (what
a probe works with), :mod:`.tcp_cases` and :mod:`.udp_cases` (the probes),
:mod:`.runner` (deadlines, seed, order), :mod:`.report` (the result as data) and its
views :mod:`.terminal`, :mod:`.junit` and :mod:`.json_report`. docs/check.md lists every
case and why it exists.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterable

from sockecho.check.cases import CASES, Case
from sockecho.check.report import CaseResult, CheckOptions, CheckReport, Level, Verdict
from sockecho.check.runner import DEFAULT_TIMEOUT, run_check


def check(
    host: str,
    port: int,
    *,
    udp: bool = False,
    tls: ssl.SSLContext | None = None,
    cases: Iterable[str] | None = None,
    strict: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    seed: int | None = None,
    on_result: Callable[[CaseResult], None] | None = None,
) -> CheckReport:
    """Check the echo server at ``host``:``port`` and return what each case found.

    ``udp`` checks its UDP echo instead of TCP; ``tls`` (an SSL context, see
    :func:`sockecho.client_context`) checks the TCP echo over TLS plus the handshake.
    ``cases`` selects case IDs or sections (default: all of the transport); ``strict``
    adds the SHOULD-level cases that a plain server may lack. Each case may take
    ``timeout`` seconds. ``seed`` replays a run's random choices. ``on_result`` is called
    with each case's result as it completes.

    Raises ConnectError when the server cannot be reached at all, ResolveError for an
    unknown host and ConfigError for a selector that names no case. A server that
    fails cases is not an exception: look at ``report.failed``.
    """
    return run_check(
        host,
        port,
        udp=udp,
        tls=tls,
        cases=cases or (),
        strict=strict,
        timeout=timeout,
        seed=seed,
        on_result=on_result,
    )


__all__ = [
    "CASES",
    "DEFAULT_TIMEOUT",
    "Case",
    "CaseResult",
    "CheckOptions",
    "CheckReport",
    "Level",
    "Verdict",
    "check",
]
