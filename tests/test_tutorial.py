"""Every command in the tutorials runs here, so the tutorials cannot rot.

The convention (also stated at the top of each tutorial):

* Commands live in fenced ```` ```console ```` blocks, one per ``$ `` line. They
  run with bash from the repository root, with this interpreter's ``bin`` first
  on PATH (``python`` and ``sockecho`` are the ones under test) and NO_COLOR set.
* A command ending in `` &`` runs in the background until the end of its block,
  then gets Ctrl-C (SIGINT) and must exit 0. It must print a ready line
  ``listening on tcp://HOST:PORT``. The tutorials use port 50010: the test
  starts background servers with port 0 instead, and writes the real port in
  place of 50010 in the block's later commands. In a block without a server,
  50010 becomes a port where nothing listens. sockecho and example commands
  must name the port, so no test ever touches the real 50010.
* The lines under a command are its output, checked after normalising: digits
  become ``N`` (descriptors, ports, times), runs of spaces one space, and the
  ``-> port N (port 0: the kernel chose)`` that port 0 adds to ``bind`` is
  dropped (in Spanish too). ``...`` inside a line matches anything; a line that is only ``...``
  elides output. Each line must appear, in order, in the command's stdout or
  stderr, or else in a background process's output (a server writes its trace
  to the same terminal): the order is checked per stream.
* A command must exit 0, unless its shown output has an error line
  (``sockecho: error:`` or the examples' ``error en el socket:``).
* Both tutorials run the same commands, in the same order (the Spanish one may add
  ``--lang es`` to narrate in Spanish).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import REPO, WAIT

TUTORIALS = [REPO / "docs" / "tutorial.es.md", REPO / "docs" / "tutorial.md"]
#: The port the tutorials show; the test substitutes a real one (see the module docstring).
DOC_PORT = "50010"
ERROR_PREFIXES = ("sockecho: error:", "error en el socket:")


@dataclass
class Command:
    text: str
    shown: list[str] = field(default_factory=list)

    @property
    def background(self) -> bool:
        return self.text.endswith(" &")


@dataclass
class Block:
    doc: Path
    line: int
    commands: list[Command]

    def __str__(self) -> str:
        return f"{self.doc.name}:{self.line}"


def fenced_blocks(path: Path) -> list[tuple[str, int, list[str]]]:
    """(info string, first line number, lines) of every fenced block."""
    blocks: list[tuple[str, int, list[str]]] = []
    current: tuple[str, int, list[str]] | None = None
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.startswith("```"):
            if current is None:
                current = (line[3:].strip(), number, [])
            else:
                blocks.append(current)
                current = None
        elif current is not None:
            current[2].append(line)
    assert current is None, f"{path.name}: unclosed fence at line {current[1]}"
    return blocks


def console_blocks(path: Path) -> list[Block]:
    result = []
    for info, number, lines in fenced_blocks(path):
        if info != "console":
            continue
        commands: list[Command] = []
        for line in lines:
            if line.startswith("$ "):
                commands.append(Command(line[2:].strip()))
            else:
                assert commands, f"{path.name}:{number}: output before the first command"
                commands[-1].shown.append(line)
        result.append(Block(path, number, commands))
    return result


ALL_BLOCKS = [block for doc in TUTORIALS for block in console_blocks(doc)]


def normalise(line: str) -> str:
    line = re.sub(r" -> port \d+ \(port 0: the kernel chose\)", "", line)
    line = re.sub(r" -> puerto \d+ \(puerto 0: lo eligió el kernel\)", "", line)
    line = re.sub(r"\d+", "N", line)
    return re.sub(r"\s+", " ", line).strip()


def pattern(shown: str) -> re.Pattern[str]:
    return re.compile(re.escape(normalise(shown)).replace(r"\.\.\.", ".*"))


class Stream:
    """One output stream's normalised lines and how far the shown output has matched."""

    def __init__(self, name: str, text: str = "") -> None:
        self.name = name
        self.lines = [normalise(line) for line in text.splitlines()]
        self.cursor = 0

    def take(self, wanted: re.Pattern[str]) -> bool:
        for index in range(self.cursor, len(self.lines)):
            if wanted.fullmatch(self.lines[index]):
                self.cursor = index + 1
                return True
        return False


class Background:
    """A ``cmd &`` of a block: started, ready line awaited, stopped with Ctrl-C at the end."""

    def __init__(self, command: str, env: dict[str, str]) -> None:
        self.command = command
        self.proc = subprocess.Popen(
            ["bash", "-c", f"exec {command}"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        )
        self.output: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self.ready_line = ""
        self._ready = threading.Event()
        self._readers = [
            threading.Thread(target=self._read, args=(name,), daemon=True)
            for name in ("stdout", "stderr")
        ]
        for reader in self._readers:
            reader.start()
        self._ready.wait(WAIT)
        assert self.ready_line, f"{command!r} printed no ready line: {self.output}"
        self.port = self.ready_line.rsplit(":", 1)[1]

    def _read(self, name: str) -> None:
        stream = self.proc.stdout if name == "stdout" else self.proc.stderr
        assert stream is not None
        for line in stream:
            self.output[name].append(line.rstrip("\n"))
            if line.startswith("listening on tcp://") and not self.ready_line:
                self.ready_line = line.strip()
                self._ready.set()
        self._ready.set()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(WAIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(WAIT)
        for reader in self._readers:
            reader.join(WAIT)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return code

    def streams(self) -> list[Stream]:
        return [Stream(name, "\n".join(lines)) for name, lines in self.output.items()]


def closed_port() -> str:
    """A port on 127.0.0.1 where nothing listens (bound for a moment, never listening)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


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
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "NO_COLOR": "1",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("FORCE_COLOR", None)
    background: list[Background] = []
    checks: list[tuple[Command, Background | list[Stream]]] = []
    port = ""
    try:
        for command in block.commands:
            text = command.text
            if re.search(r"sockecho (serve|send|bench|ping)|examples/", text):
                assert DOC_PORT in text, f"{block}: {text!r} must name port {DOC_PORT}"
            if command.background:
                server = Background(text.removesuffix(" &").replace(DOC_PORT, "0"), env)
                background.append(server)
                port = server.port
                checks.append((command, server))
                continue
            done = subprocess.run(
                ["bash", "-c", text.replace(DOC_PORT, port or closed_port())],
                cwd=REPO,
                env=env,
                capture_output=True,
                timeout=WAIT,
                check=False,
            )
            stdout = done.stdout.decode(errors="replace")
            stderr = done.stderr.decode(errors="replace")
            expect_error = any(line.startswith(ERROR_PREFIXES) for line in command.shown)
            assert (done.returncode != 0) == expect_error, (
                f"{block}: {text!r} exited {done.returncode}\n{stdout}\n{stderr}"
            )
            checks.append((command, [Stream("stderr", stderr), Stream("stdout", stdout)]))
    finally:
        codes = [server.stop() for server in background]
    assert codes == [0] * len(background), [s.output for s in background]

    # Match the shown output now that every process has finished writing.
    streams_of = {id(server): server.streams() for server in background}
    shared = [stream for streams in streams_of.values() for stream in streams]
    for command, source in checks:
        own = streams_of[id(source)] if isinstance(source, Background) else source
        for shown in command.shown:
            if shown.strip() == "...":
                continue
            wanted = pattern(shown)
            assert any(stream.take(wanted) for stream in [*own, *shared]), (
                f"{block}: after {command.text!r}, {shown!r} not found in order in:\n"
                + "\n".join(f"[{s.name}] " + "\n".join(s.lines) for s in [*own, *shared])
            )
