"""The documentation against the code: cheap checks that fail when the docs rot.

* every ``sockecho serve``/``send`` option that the README, docs/models.md or
  docs/architecture.md names exists in the parser, and every option the parser has is in the
  README's reference tables, with its real default;
* every subcommand is in the README's synopsis, and serve/send/models have their sections;
* the ready line and the exit codes the README documents are the ones ``cli.py`` uses, and its
  ``-v`` transcript shows today's settings;
* every model in the registry has its section in docs/models.md;
* the README's Python example runs and prints what the README says it prints;
* relative links in the docs point to files that exist.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sockecho import MODELS, ServerConfig, cli
from tests.conftest import REPO, WAIT

README = REPO / "README.md"
MODELS_DOC = REPO / "docs" / "models.md"
ARCHITECTURE_DOC = REPO / "docs" / "architecture.md"
#: Documents the README's "More" list announces before they are written in other branches;
#: remove a name once its file exists, so its link is checked like every other.
ANNOUNCED_DOCS: set[str] = set()
#: Subcommands the README documents in full; the others (bench, ping) have their own docs.
README_COMMANDS = ("serve", "send", "models")
OPTION = re.compile(r"(?<![\w-])(--?[a-zA-Z][\w-]*)")


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("sockecho has no subcommands")


def options_of(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Every option string of a parser except -h/--help, mapped to its action."""
    return {
        option: action
        for action in parser._actions
        for option in action.option_strings
        if not isinstance(action, argparse._HelpAction)
    }


def section(text: str, heading: str) -> str:
    """The lines under ``heading`` up to the next heading of the same or a higher level."""
    level = heading.split(" ", 1)[0]
    lines = text.splitlines()
    start = lines.index(heading) + 1
    for end in range(start, len(lines)):
        marker = lines[end].split(" ", 1)[0]
        if set(marker) == {"#"} and len(marker) <= len(level):
            return "\n".join(lines[start:end])
    return "\n".join(lines[start:])


def reference_table(command: str) -> dict[str, str]:
    """The README's option table for ``command``: option string -> its Default cell."""
    rows: dict[str, str] = {}
    for line in section(README.read_text(), f"### `sockecho {command}`").splitlines():
        if not line.startswith("| `"):
            continue
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        for option in OPTION.findall(cells[0]):
            rows[option] = cells[1]
    return rows


def command_lines(text: str) -> list[tuple[str, str]]:
    """(subcommand, arguments) of every ``sockecho serve|send`` invocation in ``text``."""
    found = []
    for match in re.finditer(r"\bsockecho (serve|send)\b([^\n`]*)", text):
        arguments = re.split(r"\s(?:#|\||;|&&|&)|\s[<>]|\s2>", match.group(2))[0]
        found.append((match.group(1), arguments))
    return found


@pytest.mark.parametrize("command", ["serve", "send"])
def test_every_option_the_docs_mention_exists(command: str) -> None:
    known = options_of(subcommands()[command])
    texts = [doc.read_text() for doc in (README, MODELS_DOC, ARCHITECTURE_DOC)]
    invocations = [args for text in texts for name, args in command_lines(text) if name == command]
    assert invocations, f"the docs never show 'sockecho {command}'"
    mentioned = {option for args in invocations for option in OPTION.findall(args)}
    mentioned |= set(reference_table(command))
    assert mentioned - set(known) == set(), f"options the parser of {command} does not have"


@pytest.mark.parametrize("command", ["serve", "send"])
def test_every_option_is_in_the_readme_reference_with_its_default(command: str) -> None:
    table = reference_table(command)
    for option, action in options_of(subcommands()[command]).items():
        assert option in table, f"sockecho {command} {option} is missing from the README table"
        default = action.default
        if default is None or isinstance(default, bool):
            continue  # documented in words ("off", "10000; select: 1000")
        shown = f"{default:g}" if isinstance(default, float) else str(default)
        assert f"`{shown}`" in table[option], f"{option}: the README's default is not {shown}"


def test_every_subcommand_is_in_the_readme_synopsis_and_its_own_have_sections() -> None:
    text = README.read_text()
    synopsis = section(text, "## Command-line reference").split("```")[1]
    for command in subcommands():
        assert f"\nsockecho {command} " in synopsis or f"\nsockecho {command}\n" in synopsis, (
            command
        )
    headings = text.splitlines()
    for command in README_COMMANDS:
        assert f"### `sockecho {command}`" in headings, f"no README section for {command}"


def test_readme_documents_the_ready_line_and_the_exit_codes() -> None:
    text = README.read_text()
    assert cli.READY_LINE.format(endpoint="tcp://127.0.0.1:50010") in text
    assert cli.READY_LINE.format(endpoint="tcp://[::1]:") in text  # IPv6 in brackets
    codes = section(text, "### Exit codes and errors")
    for code in cli.ExitCode:
        assert f"\n| {code.value} |" in codes, f"exit code {code.value} is not documented"


def test_readme_verbose_transcript_shows_the_current_settings() -> None:
    # The -v example is a pasted transcript of `sockecho serve -v`: re-run it when settings change.
    assert f"starting the asyncio model with {ServerConfig()!r}" in README.read_text()


def test_every_model_has_its_section_and_column_in_models_md() -> None:
    text = MODELS_DOC.read_text()
    headings = [line for line in text.splitlines() if line.startswith("### `")]
    comparison = section(text, "## Comparison").splitlines()[1]
    for name in MODELS:
        assert any(line.startswith(f"### `{name}`") for line in headings), name
        assert f"`{name}`" in comparison, f"{name} has no column in the comparison table"
        assert f"`{name}`" in README.read_text(), f"the README does not name {name}"


def test_readme_python_example_runs_and_prints_what_the_readme_shows() -> None:
    text = README.read_text()
    blocks = re.findall(r"^```python\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    assert len(blocks) == 1, "the README should have exactly one runnable Python example"
    result = subprocess.run(
        [sys.executable, "-c", blocks[0]],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    shown = text.split(blocks[0], 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    printed = result.stdout.splitlines()
    for name, model in MODELS.items():
        assert f"{name:10} {model.summary}" in printed
    # Ports differ from run to run; every other line is printed exactly as the README shows it.
    assert [re.sub(r":\d+", ":PORT", line) for line in printed] == [
        re.sub(r":\d+", ":PORT", line) for line in shown.splitlines()
    ]


def heading_anchors(markdown: str) -> set[str]:
    """GitHub's anchors for the headings of a Markdown text."""
    anchors = set()
    for line in markdown.splitlines():
        if match := re.match(r"#+ (.*)", line):
            title = re.sub(r"[^\w\- ]", "", match.group(1).lower())
            anchors.add(title.replace(" ", "-"))
    return anchors


@pytest.mark.parametrize("doc", [README, MODELS_DOC, ARCHITECTURE_DOC], ids=lambda p: p.name)
def test_relative_links_point_to_existing_files_and_headings(doc: Path) -> None:
    for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", doc.read_text()):
        if "://" in target:
            continue
        path = (doc.parent / target).resolve() if target else doc
        relative = path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else target
        if relative in ANNOUNCED_DOCS and not path.exists():
            continue
        assert path.exists(), f"{doc.name} links to {target}, which does not exist"
        if anchor:
            assert anchor in heading_anchors(path.read_text()), f"{doc.name}: no #{anchor}"


def test_every_document_the_help_cites_exists() -> None:
    cited = {
        path
        for name, parser in subcommands().items()
        for path in re.findall(r"\bdocs/[\w.-]+\.md\b", parser.format_help())
        if name
    }
    assert cited, "no subcommand's help cites a document"
    for path in cited:
        assert (REPO / path).exists() or path in ANNOUNCED_DOCS, f"--help cites {path}"
