"""Every flawed server is caught, each by the case its registry entry names, and each
serves the way ``sockecho serve`` does (warning, ready line, SIGTERM)."""

from __future__ import annotations

import signal

import pytest

import sockecho
from sockecho.check import CASES, Verdict
from sockecho.flaws import FLAWS
from tests.conftest import ServeProcess, run_cli

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("name", list(FLAWS))
def test_each_flaw_fails_the_case_that_names_it(
    name: str, serve_process: type[ServeProcess]
) -> None:
    flaw = FLAWS[name]
    server = serve_process("--flaw", name, "--port", "0")
    assert server.stderr_lines[0] == f"warning: --flaw {name} serves a deliberately broken echo"
    scheme = "udp" if flaw.udp else "tcp"
    assert server.endpoints[0].startswith(f"{scheme}://127.0.0.1:")
    host, port = server.address
    # A short deadline: a flaw that hangs fails sooner, and a correct answer is quick anyway.
    report = sockecho.check(host, port, udp=flaw.udp, cases=[flaw.caught_by], timeout=2)
    result = report.result(flaw.caught_by)
    assert result.verdict is Verdict.FAILED, result
    assert result.actual
    if name != "handout":  # the handout's server has stopped itself by now: that is its bug
        assert server.stop(signal.SIGTERM) == 0


def test_every_flaw_names_an_existing_case_and_one_sentence() -> None:
    for flaw in FLAWS.values():
        assert flaw.caught_by in CASES
        assert flaw.bug.count(". ") == 0


def test_a_udp_flaw_fails_only_above_8192_bytes(serve_process: type[ServeProcess]) -> None:
    server = serve_process("--flaw", "udp-8192", "--port", "0")
    report = sockecho.check(*server.address, udp=True, cases=["udp.size"])
    failed = {r.id for r in report.results if r.verdict is Verdict.FAILED}
    assert failed == {"udp.size.8193", "udp.size.65507"}
    assert "a 8192-byte datagram came back" in report.result("udp.size.8193").actual


def test_models_flaws_lists_each_flaw_with_its_bug_and_case() -> None:
    result = run_cli("models", "--flaws")
    assert result.returncode == 0
    text = result.stdout.decode()
    for name, flaw in FLAWS.items():
        assert f"{name}" in text
        assert flaw.bug in text
        assert f"caught by: sockecho check --case {flaw.caught_by}" in text
