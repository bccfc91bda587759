"""Every solution in the lab sheets runs here, with the tutorials' convention (tests.console_docs).

The exercise on ``0.0.0.0`` and ``127.0.0.1`` builds two network namespaces joined by a veth
pair (examples/netns_pair.sh): it needs root. Without root it is skipped, except in CI (root
there), where it must run; the namespaces are deleted afterwards whatever happens.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import REPO, WAIT
from tests.console_docs import Block, console_blocks, fenced_blocks, reader_env, run_block

LABS = [REPO / "docs" / "lab.es.md", REPO / "docs" / "lab.md"]
ALL_BLOCKS = [block for doc in LABS for block in console_blocks(doc)]
NETNS_SCRIPT = REPO / "examples" / "netns_pair.sh"
EXERCISES = 7


def test_both_lab_sheets_have_the_exercises_and_run_the_same_commands() -> None:
    for doc in LABS:
        headings = [line for line in doc.read_text().splitlines() if line.startswith("## ")]
        assert len(headings) == EXERCISES, (doc.name, headings)
    spanish, english = ([[c.text for c in b.commands] for b in console_blocks(d)] for d in LABS)
    assert spanish == english


def test_no_lab_command_hides_outside_a_console_block() -> None:
    for doc in LABS:
        for info, number, lines in fenced_blocks(doc):
            if info != "console":
                assert not any(line.startswith("$ ") for line in lines), f"{doc.name}:{number}"


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=str)
def test_lab_solution_runs_as_shown(block: Block) -> None:
    uses_namespaces = any("netns_pair.sh" in command.text for command in block.commands)
    if uses_namespaces and os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("the network-namespace exercise needs root; CI runs as root")
        pytest.skip("the network-namespace exercise needs root")
    try:
        run_block(block, reader_env())
    finally:
        if uses_namespaces:
            subprocess.run(
                [str(NETNS_SCRIPT), "down"], capture_output=True, timeout=WAIT, check=True
            )
