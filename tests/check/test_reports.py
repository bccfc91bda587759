"""The report's views: JUnit XML read back by a JUnit reader, JSON checked against the
shipped schema, and the terminal tree with its Failures: recap."""

from __future__ import annotations

import io
import json
from pathlib import Path

import jsonschema
import junitparser
import pytest

from sockecho import Server, ServerConfig
from sockecho.check import CheckReport, Verdict, check
from sockecho.check.json_report import schema, to_json
from sockecho.check.junit import write_junit
from sockecho.check.terminal import render_text
from tests.conftest import ServeProcess, run_cli

CASES = ["tcp.bytes.all-values", "tcp.silence.no-banner", "tcp.concurrency.second-client"]


@pytest.fixture(scope="module")
def iterative_report() -> CheckReport:
    """A run with PASSED cases and a NON-STRICT one: the iterative model serves one
    client at a time."""
    with Server(ServerConfig(model="iterative", port=0)) as server:
        return check(*server.address, cases=CASES, seed=3)


def test_junit_has_a_suite_per_section_and_a_named_testcase_per_case(
    iterative_report: CheckReport, tmp_path: Path
) -> None:
    path = tmp_path / "check.xml"
    write_junit(iterative_report, str(path))
    xml = junitparser.JUnitXml.fromfile(str(path))
    suites = {suite.name: suite for suite in xml}
    assert set(suites) == {"tcp.bytes", "tcp.silence", "tcp.concurrency"}
    cases = {case.name: (suite.name, case) for suite in xml for case in suite}
    assert set(cases) == set(CASES)
    for name, (section, case) in cases.items():
        assert case.classname == section
        assert name.startswith(section + ".")
        assert case.time >= 0
    assert cases["tcp.bytes.all-values"][1].is_passed
    assert cases["tcp.concurrency.second-client"][1].is_passed  # NON-STRICT is not a failure


def test_a_failed_case_is_a_junit_failure_with_expected_and_actual(
    serve_process: type[ServeProcess], tmp_path: Path
) -> None:
    server = serve_process("--flaw", "banner", "--port", "0")
    report = check(*server.address, cases=["tcp.silence.no-banner"])
    path = tmp_path / "check.xml"
    write_junit(report, str(path))
    xml = junitparser.JUnitXml.fromfile(str(path))
    (case,) = [case for suite in xml for case in suite]
    assert not case.is_passed
    (failure,) = case.result
    assert isinstance(failure, junitparser.Failure)
    assert "b'Welcome to the echo server!\\r\\n'" in failure.message
    assert "Expected: silence until the client writes" in failure.text
    assert xml.failures == 1


def test_json_matches_the_schema_and_the_report(iterative_report: CheckReport) -> None:
    document = json.loads(json.dumps(to_json(iterative_report)))
    jsonschema.validate(document, schema())
    assert document["schema"] == "sockecho-check/1"
    assert document["seed"] == 3
    assert [case["id"] for case in document["cases"]] == CASES
    assert document["totals"]["non-strict"] == 1
    assert document["failed"] is False


def test_the_schema_rejects_a_document_with_an_unknown_verdict(
    iterative_report: CheckReport,
) -> None:
    document = to_json(iterative_report)
    document["cases"][0]["verdict"] = "maybe"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, schema())


def test_the_terminal_tree_recaps_failures_and_ends_with_the_counts(
    serve_process: type[ServeProcess],
) -> None:
    server = serve_process("--flaw", "no-half-close", "--port", "0")
    report = check(*server.address, cases=["tcp.bytes.all-values", "tcp.close.half-close"])
    out = io.StringIO()
    render_text(report, out)
    text = out.getvalue()
    failed_line = "  \u00d7 tcp.close.half-close: after the client's FIN every pending byte"
    assert failed_line in text
    recap = text.split("\nFailures:\n", 1)[1]
    assert "tcp.close.half-close" in recap
    assert "Expected: the 256 bytes back, then the server's FIN" in recap
    assert "tcp.bytes.all-values" not in recap
    assert text.splitlines()[-1] == "2 cases, 1 passed, 1 failed, 0 skipped"
    assert report.verdict_of("tcp.close.half-close") is Verdict.FAILED


def test_the_command_writes_junit_and_json_and_exits_1_on_a_failure(
    serve_process: type[ServeProcess], tmp_path: Path
) -> None:
    server = serve_process("--flaw", "banner", "--port", "0")
    host, port = server.address
    junit, report = tmp_path / "c.xml", tmp_path / "c.json"
    result = run_cli(
        "check",
        f"{host}:{port}",
        "--case",
        "tcp.silence",
        "--junit",
        str(junit),
        "--json",
        str(report),
    )
    assert result.returncode == 1, result.stderr
    assert "Failures:" in result.stdout.decode()
    jsonschema.validate(json.loads(report.read_text()), schema())
    assert junitparser.JUnitXml.fromfile(str(junit)).failures == 2
