"""The JUnit XML view of a check, for CI systems (Jenkins, GitLab, GitHub's test reporters).

``<testsuites>`` holds one ``<testsuite>`` per section; each case is a
``<testcase name="ID" classname="SECTION" time="...">`` with a ``<failure>`` (Expected /
Actual / Cause) or a ``<skipped>``. NON-STRICT and INFORMATIONAL cases pass, with their
finding in ``<system-out>``. Every testcase has a ``name`` (h2spec leaves it out, which
Jenkins' and GitHub's readers reject).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from sockecho.check.report import CaseResult, CheckReport, Verdict


def to_junit(report: CheckReport) -> ET.ElementTree:
    root = ET.Element(
        "testsuites",
        name=f"sockecho check {report.target}",
        tests=str(len(report.results)),
        failures=str(report.count(Verdict.FAILED)),
        errors="0",
        skipped=str(report.count(Verdict.SKIPPED)),
        time=f"{report.duration:.3f}",
        timestamp=report.started.isoformat(timespec="seconds"),
    )
    for section, results in report.sections():
        suite = ET.SubElement(
            root,
            "testsuite",
            name=section,
            tests=str(len(results)),
            failures=str(sum(r.verdict is Verdict.FAILED for r in results)),
            errors="0",
            skipped=str(sum(r.verdict is Verdict.SKIPPED for r in results)),
            time=f"{sum(r.duration for r in results):.3f}",
            timestamp=report.started.isoformat(timespec="seconds"),
        )
        properties = ET.SubElement(suite, "properties")
        ET.SubElement(properties, "property", name="target", value=report.target)
        ET.SubElement(properties, "property", name="seed", value=str(report.seed))
        for result in results:
            add_testcase(suite, result)
    ET.indent(root)
    return ET.ElementTree(root)


def add_testcase(suite: ET.Element, result: CaseResult) -> None:
    case = ET.SubElement(
        suite, "testcase", name=result.id, classname=result.section, time=f"{result.duration:.3f}"
    )
    if result.verdict is Verdict.FAILED:
        failure = ET.SubElement(case, "failure", message=result.actual, type="FAILED")
        failure.text = describe(result)
    elif result.verdict is Verdict.SKIPPED:
        ET.SubElement(case, "skipped", message=result.actual)
    elif result.actual:
        out = ET.SubElement(case, "system-out")
        out.text = f"{result.verdict.value.upper()}: {describe(result)}"


def describe(result: CaseResult) -> str:
    lines = [f"{result.title}", f"Requirement ({result.level.value}): {result.requirement}"]
    if result.expected:
        lines.append(f"Expected: {result.expected}")
    lines.append(f"Actual: {result.actual}")
    if result.cause:
        lines.append(f"Cause: {result.cause}")
    return "\n".join(lines)


def write_junit(report: CheckReport, path: str) -> None:
    to_junit(report).write(path, encoding="utf-8", xml_declaration=True)
