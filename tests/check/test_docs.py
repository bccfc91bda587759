"""docs/check.md against the registry: every case is listed, with today's wording."""

from __future__ import annotations

from sockecho.check import CASES
from sockecho.check.cases import docs_table
from tests.conftest import REPO

CHECK_DOC = REPO / "docs" / "check.md"


def test_check_md_lists_every_case_as_the_registry_has_it() -> None:
    text = CHECK_DOC.read_text()
    start = text.index("<!-- cases:")
    block = text[text.index("\n", start) + 1 : text.index("<!-- /cases -->")].strip()
    assert block == docs_table(), (
        "docs/check.md is out of date: paste the output of "
        "python -c 'from sockecho.check.cases import docs_table; print(docs_table())'"
    )


def test_check_md_explains_every_section() -> None:
    text = CHECK_DOC.read_text()
    for section in {case.rpartition(".")[0] for case in CASES}:
        assert f"**`{section}" in text, f"docs/check.md says nothing about {section}"


def test_check_md_lists_every_flaw_with_its_case() -> None:
    from sockecho.flaws import FLAWS  # noqa: PLC0415

    text = CHECK_DOC.read_text()
    for name, flaw in FLAWS.items():
        assert f"| `{name}` |" in text
        assert f"| `{flaw.caught_by}` |" in text
