"""Every command in the tutorials runs here, so the tutorials cannot rot.

The convention (also stated at the top of each tutorial) is in :mod:`tests.console_docs`:
every ``$ `` line of a ```` ```console ```` block runs; the lines under it are its output,
shown whole or cut with a ``...`` line; servers started with ``&`` run on port 0. Both
tutorials run the same commands, in the same order (the Spanish one may add ``--lang es``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.console_docs import Block, console_blocks, fenced_blocks, reader_env, run_block

TUTORIALS = [REPO / "docs" / "tutorial.es.md", REPO / "docs" / "tutorial.md"]
ALL_BLOCKS = [block for doc in TUTORIALS for block in console_blocks(doc)]


def test_tutorials_exist_and_have_commands() -> None:
    for doc in TUTORIALS:
        assert doc.is_file()
        assert len(console_blocks(doc)) >= 8, doc.name


def test_both_tutorials_run_the_same_commands() -> None:
    """The same commands, but the Spanish one may ask for Spanish narration (``--lang es``)."""
    spanish, english = (
        [[c.text.replace(" --lang es", "") for c in b.commands] for b in console_blocks(d)]
        for d in TUTORIALS
    )
    assert spanish == english


def test_no_command_hides_outside_a_console_block() -> None:
    for doc in TUTORIALS:
        for info, number, lines in fenced_blocks(doc):
            if info != "console":
                assert not any(line.startswith("$ ") for line in lines), f"{doc.name}:{number}"


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=str)
def test_tutorial_block_runs_as_shown(block: Block) -> None:
    run_block(block, reader_env())


def code_listings() -> list[tuple[str, Path, list[str]]]:
    """(where, file, lines) of every ```python block that starts with ``# examples/...``."""
    found = []
    for doc in TUTORIALS:
        for info, number, lines in fenced_blocks(doc):
            if info == "python" and lines and lines[0].startswith("# examples/"):
                found.append((f"{doc.name}:{number}", REPO / lines[0][2:].strip(), lines[1:]))
    return found


@pytest.mark.parametrize("listing", code_listings(), ids=lambda listing: listing[0])
def test_code_listings_are_the_files_lines_with_every_cut_marked(
    listing: tuple[str, Path, list[str]],
) -> None:
    where, path, lines = listing
    source = path.read_text().splitlines()
    pieces: list[list[str]] = [[]]
    for line in lines:
        if line == "...":
            pieces.append([])
        else:
            pieces[-1].append(line)
    start = 0
    for piece in pieces:
        at = next(
            (i for i in range(start, len(source)) if source[i : i + len(piece)] == piece), None
        )
        assert at is not None, f"{where}: these lines are not in {path.name} in this order:\n" + (
            "\n".join(piece)
        )
        start = at + len(piece)


def test_the_tutorials_show_the_corrected_handout_server() -> None:
    assert len(code_listings()) == len(TUTORIALS)
