"""The JSON view of a check, schema ``sockecho-check/1`` (``schema.json`` beside this
module): the target, options, seed, start time, duration, one object per case and the
totals by verdict. Fields are only ever added within a schema version."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from sockecho.check.report import CheckReport, Verdict

SCHEMA = "sockecho-check/1"


def to_json(report: CheckReport) -> dict[str, Any]:
    options = report.options
    return {
        "schema": SCHEMA,
        "target": report.target,
        "options": {
            "udp": options.udp,
            "tls": options.tls,
            "strict": options.strict,
            "timeout": options.timeout,
            "cases": list(options.cases),
        },
        "seed": report.seed,
        "started": report.started.isoformat(),
        "duration": round(report.duration, 6),
        "cases": [
            {
                "id": result.id,
                "section": result.section,
                "title": result.title,
                "level": result.level.value,
                "requirement": result.requirement,
                "verdict": result.verdict.value,
                "expected": result.expected,
                "actual": result.actual,
                "cause": result.cause,
                "duration": round(result.duration, 6),
            }
            for result in report.results
        ],
        "totals": {verdict.value: count for verdict, count in report.totals.items()},
        "failed": report.failed,
    }


def write_json(report: CheckReport, path: str) -> None:
    with open(path, "w", encoding="utf-8") as out:
        json.dump(to_json(report), out, indent=2)
        out.write("\n")


def schema() -> dict[str, Any]:
    """The JSON Schema of :data:`SCHEMA`, shipped with the package."""
    text = resources.files("sockecho.check").joinpath("schema.json").read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


__all__ = ["SCHEMA", "Verdict", "schema", "to_json", "write_json"]
