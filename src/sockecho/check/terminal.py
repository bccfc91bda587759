"""The terminal view of a check, after h2spec: a tree of sections with a mark per case,
Expected / Actual under each failure, a ``Failures:`` recap, and a last line
``N cases, N passed, N failed, N skipped``.

Colour only on a terminal and without ``NO_COLOR`` (rich decides); the text is the same
either way. :class:`TerminalView` prints each case as it completes (:meth:`case`), then
the recap (:meth:`finish`).
"""

from __future__ import annotations

from typing import TextIO

from rich.console import Console
from rich.markup import escape

from sockecho.check.cases import Case
from sockecho.check.report import CaseResult, CheckReport, Verdict, summary_line

#: The mark and colour of each verdict.
MARKS: dict[Verdict, tuple[str, str]] = {
    Verdict.PASSED: ("✔", "green"),
    Verdict.FAILED: ("×", "red"),  # noqa: RUF001 - h2spec's mark
    Verdict.NON_STRICT: ("~", "yellow"),
    Verdict.INFORMATIONAL: ("i", "cyan"),
    Verdict.SKIPPED: ("-", "dim"),
}


class TerminalView:
    """Writes a run to ``stream`` as it happens. ``quiet``: only failures and the summary;
    ``verbose``: the requirement under every case."""

    def __init__(self, stream: TextIO, *, quiet: bool = False, verbose: bool = False) -> None:
        self.console = Console(file=stream, highlight=False, soft_wrap=True, emoji=False)
        self.quiet = quiet
        self.verbose = verbose
        self._section: str | None = None

    def start(self, target: str, seed: int) -> None:
        if not self.quiet:
            self.console.print(f"sockecho check {escape(target)} (seed {seed})")

    def case(self, result: CaseResult) -> None:
        if self.quiet and result.verdict is not Verdict.FAILED:
            return
        if result.section != self._section:
            self._section = result.section
            self.console.print(f"\n[bold]{escape(result.section)}[/]")
        self._print_case(result, indent="  ")

    def _print_case(self, result: CaseResult, indent: str) -> None:
        mark, colour = MARKS[result.verdict]
        label = "" if result.verdict is Verdict.PASSED else f" ({result.verdict.value})"
        self.console.print(
            f"{indent}[{colour}]{mark}[/] {escape(result.id)}: {escape(result.title)}"
            f"[{colour}]{escape(label)}[/]"
        )
        deeper = indent + "    "
        if self.verbose:
            self.console.print(f"{deeper}[dim]-> {escape(result.requirement)}[/]")
        if result.verdict in (Verdict.FAILED, Verdict.NON_STRICT):
            if result.expected:
                self.console.print(f"{deeper}Expected: {escape(result.expected)}")
            self.console.print(f"{deeper}  Actual: {escape(result.actual)}")
            if result.cause:
                self.console.print(f"{deeper}   Cause: {escape(result.cause)}")
        elif result.actual:
            self.console.print(f"{deeper}[dim]{escape(result.actual)}[/]")

    def finish(self, report: CheckReport) -> None:
        failures = [result for result in report.results if result.verdict is Verdict.FAILED]
        if failures:
            self.console.print("\nFailures:")
            section = None
            for result in failures:
                if result.section != section:
                    section = result.section
                    self.console.print(f"\n[bold]{escape(section)}[/]")
                self._print_case(result, indent="  ")
        self.console.print(f"\nFinished in {report.duration:.1f} s")
        self.console.print(escape(summary_line(report)))


def render_text(report: CheckReport, stream: TextIO, *, verbose: bool = False) -> None:
    """The whole report at once (the live view, replayed)."""
    view = TerminalView(stream, verbose=verbose)
    view.start(report.target, report.seed)
    for result in report.results:
        view.case(result)
    view.finish(report)


def render_list(cases: list[Case], stream: TextIO) -> None:
    """``--list``: ID, level and title of each case, the requirement under it."""
    console = Console(file=stream, highlight=False, soft_wrap=True, emoji=False)
    section = None
    for case in cases:
        if case.section != section:
            section = case.section
            console.print(f"\n[bold]{escape(section)}[/]")
        strict = " (--strict)" if case.strict else ""
        level = escape(f"[{case.level.value}]")
        console.print(f"  {escape(case.id)} {level}{strict}: {escape(case.title)}")
        console.print(f"      [dim]{escape(case.requirement)}[/]")
