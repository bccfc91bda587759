"""What a check run found: one :class:`CheckReport` holding a :class:`CaseResult` per case.

The report is plain data; the terminal tree (:mod:`.terminal`), JUnit XML
(:mod:`.junit`) and JSON (:mod:`.json_report`) are views of it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime


class Verdict(enum.Enum):
    """How a server fared on one case (h2spec's outcomes, plus the two a SHOULD needs)."""

    PASSED = "passed"
    FAILED = "failed"
    NON_STRICT = "non-strict"  # works, but misses a SHOULD (one client at a time...)
    INFORMATIONAL = "informational"  # nothing wrong; a fact worth knowing (buffering, loss)
    SKIPPED = "skipped"  # not run, with the reason


class Level(enum.Enum):
    """How binding a case's requirement is (RFC 2119 words)."""

    MUST = "MUST"
    SHOULD = "SHOULD"


@dataclass(frozen=True, slots=True)
class CaseResult:
    """One case's verdict. ``expected``/``actual`` are sentences for a learner; ``cause`` is
    the usual reason for a failure (a question: "one recv() per connection?"); ``actual``
    also carries the finding of a passed or informational case ("absorbed 2.5 MiB")."""

    id: str
    title: str
    requirement: str
    level: Level
    verdict: Verdict
    expected: str = ""
    actual: str = ""
    cause: str = ""
    duration: float = 0.0  # seconds

    @property
    def section(self) -> str:
        return section_of(self.id)


def section_of(case_id: str) -> str:
    """``tcp.bytes`` for ``tcp.bytes.all-values``."""
    return case_id.rpartition(".")[0]


@dataclass(frozen=True, slots=True)
class CheckOptions:
    """How the run was asked for (recorded in the report)."""

    udp: bool
    tls: bool
    strict: bool
    timeout: float  # seconds per case
    cases: tuple[str, ...]  # the --case selectors, empty for all


@dataclass(frozen=True, slots=True)
class CheckReport:
    """A whole run: the target, how it ran, and each case's result in run order."""

    target: str  # tcp://127.0.0.1:50010, udp://..., tls://...
    options: CheckOptions
    seed: int
    started: datetime  # UTC
    duration: float  # seconds
    results: tuple[CaseResult, ...]

    def count(self, verdict: Verdict) -> int:
        return sum(1 for result in self.results if result.verdict is verdict)

    @property
    def totals(self) -> dict[Verdict, int]:
        return {verdict: self.count(verdict) for verdict in Verdict}

    @property
    def failed(self) -> bool:
        """Whether any case FAILED (the command then exits 1)."""
        return any(result.verdict is Verdict.FAILED for result in self.results)

    def verdict_of(self, case_id: str) -> Verdict:
        return self.result(case_id).verdict

    def result(self, case_id: str) -> CaseResult:
        for result in self.results:
            if result.id == case_id:
                return result
        raise KeyError(case_id)

    def sections(self) -> Iterator[tuple[str, list[CaseResult]]]:
        """Results grouped by section, sections in the order they first ran."""
        grouped: dict[str, list[CaseResult]] = {}
        for result in self.results:
            grouped.setdefault(result.section, []).append(result)
        yield from grouped.items()


def summary_line(report: CheckReport) -> str:
    """``20 cases, 17 passed, 1 failed, 0 skipped``, then the other verdicts when present."""
    totals = report.totals
    line = (
        f"{len(report.results)} cases, {totals[Verdict.PASSED]} passed, "
        f"{totals[Verdict.FAILED]} failed, {totals[Verdict.SKIPPED]} skipped"
    )
    others = [
        f"{totals[verdict]} {verdict.value}"
        for verdict in (Verdict.NON_STRICT, Verdict.INFORMATIONAL)
        if totals[verdict]
    ]
    return f"{line} ({', '.join(others)})" if others else line
