"""Run the ```` ```console ```` blocks of a document as a reader would, and check what they show.

The convention (stated at the top of each tutorial and lab sheet):

* Commands live in fenced ```` ```console ```` blocks, one per ``$ `` line. They
  run with bash from the repository root, with this interpreter's ``bin`` first
  on PATH (``python`` and ``sockecho`` are the ones under test) and NO_COLOR set.
* A command ending in `` &`` runs in the background until the end of its block,
  then gets Ctrl-C (SIGINT) and must exit 0 (or have ended by itself with 0).
  A background **server** prints a ready line ``listening on tcp://HOST:PORT``
  (its shown output has one). The documents use port 50010: the test starts
  background servers on a port the kernel picks and no socket uses yet, in any
  state (``unused_port``), and writes the real port in place of
  50010 in the block's later commands. Any other background command (a client
  left running) is ready when its last shown line appears. In a block without
  a server, 50010 becomes a port where nothing listens. sockecho and example
  commands must name the port, so no test ever touches the real 50010.
* The lines under a command are its output, checked after normalising: digits
  become ``N`` (descriptors, ports, times), runs of spaces one space, and the
  ``-> port N (port 0: the kernel chose)`` that port 0 adds to ``bind`` is
  dropped (in Spanish too). ``...`` inside a line matches any text.
* A listing is the output, not a selection of it: shown lines that follow each
  other in one stream (stdout or stderr of the command, or of a background
  process, which writes to the same terminal) must follow each other there. A
  line that is only ``...`` marks a cut: there, and only there, lines may be
  missing. A command's own output must be shown to its end unless it ends in a
  cut; a background process's output must be shown from its first line. One
  exception: a server's ready line is written by its main thread while the
  model's thread starts and traces, so it is matched wherever it landed.
* A command must exit 0, unless its shown output has an error line
  (``sockecho: error:``, the examples' ``error en el socket:``, a Python
  traceback, or the summary of a ``sockecho check`` run with failed cases).
* A background job that ends by itself shows it as bash does, with the line
  ``[N]+  Done    COMMAND`` under the command that ended it: the test waits
  for job N (the block's N-th ``&`` command) to exit, with status 0.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import REPO, WAIT, require_tool

#: The port the documents show; the test substitutes a real one (see the module docstring).
DOC_PORT = "50010"
ERROR_PREFIXES = ("sockecho: error:", "error en el socket:", "Traceback (most recent call last):")
#: The summary of a ``sockecho check`` run with failed cases: it exits 1.
CHECK_FAILED = re.compile(r"\d+ cases?, \d+ passed, [1-9]\d* failed.*")
READY_PREFIX = "listening on tcp://"
#: The shell's notice that background job N ended by itself with status 0.
JOB_DONE = re.compile(r"\[(\d+)\][+-]?\s+Done\s+(.+)")


@dataclass
class Command:
    text: str
    shown: list[str] = field(default_factory=list)

    @property
    def background(self) -> bool:
        return self.text.endswith(" &")

    @property
    def is_server(self) -> bool:
        return any(line.startswith(READY_PREFIX) for line in self.shown)


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


def normalise(line: str) -> str:
    line = re.sub(r" -> port \d+ \(port 0: the kernel chose\)", "", line)
    line = re.sub(r" -> puerto \d+ \(puerto 0: lo eligió el kernel\)", "", line)
    line = re.sub(r"\d+", "N", line)
    return re.sub(r"\s+", " ", line).strip()


def pattern(shown: str) -> re.Pattern[str]:
    return re.compile(re.escape(normalise(shown)).replace(r"\.\.\.", ".*"))


def is_cut(shown: str) -> bool:
    return shown.strip() == "..."


class Stream:
    """One output stream's normalised lines and how far the shown output has matched.

    ``cut`` says whether lines may be skipped before the next match: only after a
    ``...`` line of the listing.
    """

    def __init__(self, name: str, text: str = "") -> None:
        self.name = name
        self.lines = [normalise(line) for line in text.splitlines()]
        self.cursor = 0
        self.cut = False

    def take(self, wanted: re.Pattern[str], *, floating: bool = False) -> bool:
        if floating:  # found anywhere ahead, and removed: the others keep their adjacency
            for index in range(self.cursor, len(self.lines)):
                if wanted.fullmatch(self.lines[index]):
                    del self.lines[index]
                    return True
            return False
        stop = len(self.lines) if self.cut else min(self.cursor + 1, len(self.lines))
        for index in range(self.cursor, stop):
            if wanted.fullmatch(self.lines[index]):
                self.cursor = index + 1
                self.cut = False
                return True
        return False

    @property
    def shown_to_the_end(self) -> bool:
        return self.cut or self.cursor == len(self.lines)

    def describe(self) -> str:
        marked = [
            ("> " if index == self.cursor else "  ") + line for index, line in enumerate(self.lines)
        ]
        return f"[{self.name}]{' (cut)' if self.cut else ''}\n" + "\n".join(marked)


class Background:
    """A ``cmd &`` of a block: started, ready line awaited, stopped with Ctrl-C at the end."""

    def __init__(self, command: str, env: dict[str, str], ready: re.Pattern[str] | None) -> None:
        self.command = command
        self.proc = subprocess.Popen(
            ["bash", "-c", f"exec {command}"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            start_new_session=True,  # a job of its own, as bash gives it: Ctrl-C reaches all
        )
        self.output: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self.ready_line = ""
        self._wanted = ready
        self._ready = threading.Event()
        self._readers = [
            threading.Thread(target=self._read, args=(name,), daemon=True)
            for name in ("stdout", "stderr")
        ]
        for reader in self._readers:
            reader.start()
        self._ready.wait(WAIT)
        assert self.ready_line, f"{command!r} printed no ready line: {self.output}"
        self.port = self.ready_line.rsplit(":", 1)[1] if ready is None else ""

    def _read(self, name: str) -> None:
        stream = self.proc.stdout if name == "stdout" else self.proc.stderr
        assert stream is not None
        for line in stream:
            self.output[name].append(line.rstrip("\n"))
            if self.ready_line:
                continue
            if (self._wanted is None and line.startswith(READY_PREFIX)) or (
                self._wanted is not None and self._wanted.fullmatch(normalise(line))
            ):
                self.ready_line = line.strip()
                self._ready.set()
        self._ready.set()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self._interrupt()
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

    def _interrupt(self) -> None:
        """Ctrl-C for the job: ``kill -INT %N``, to every process of it.

        Under strace, only the traced program gets it: strace exits with the program's
        status, but dies of a SIGINT of its own (a terminal's Ctrl-C reaches both).
        """
        if not self.command.startswith("strace "):
            os.killpg(self.proc.pid, signal.SIGINT)
            return
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        for child in children.read_text().split():
            os.kill(int(child), signal.SIGINT)

    def streams(self) -> list[Stream]:
        return [Stream(name, "\n".join(list(lines))) for name, lines in self.output.items()]


def unused_port() -> str:
    """A port that no TCP socket on this machine uses, in any state, for a block's server.

    The kernel picks it (as port 0 would), and it is taken only if neither end of any
    socket in /proc/net/tcp and tcp6 has that number, TIME_WAIT included: a listing of
    ``ss ... sport = :PORT`` then shows the block's own connections, not those a
    server of an earlier test left behind on a port that came around again.
    """
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port not in tcp_ports_in_use():
            return str(port)
    raise AssertionError("no TCP port free of old connections in 100 tries")


def tcp_ports_in_use() -> set[int]:
    """Every port number at either end of a TCP socket of this network namespace."""
    used: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            next(rows)  # the header
            for row in rows:
                local, remote = row.split()[1:3]
                used.add(int(local.rsplit(":", 1)[1], 16))
                used.add(int(remote.rsplit(":", 1)[1], 16))
    return used


def closed_port() -> str:
    """A port on 127.0.0.1 where nothing listens (bound for a moment, never listening)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def reader_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "NO_COLOR": "1",
        "PYTHONUNBUFFERED": "1",
        **(extra or {}),
    }
    env.pop("FORCE_COLOR", None)
    return env


#: External tools the documents run; missing, the block is skipped (failed in CI).
TOOLS = ("strace", "ncat", "nc", "ss", "ip", "unshare")


def run_block(block: Block, env: dict[str, str], timeout: float = WAIT) -> None:
    """Run every command of ``block`` and check its shown output (module docstring)."""
    for command in block.commands:
        for tool in TOOLS:
            if re.search(rf"(^|[|;&(] *|sudo ){tool} ", command.text):
                require_tool(tool)
    background: list[Background] = []
    checks: list[tuple[Command, Background | dict[str, str]]] = []
    port = ""
    try:
        for command in block.commands:
            text = command.text
            if re.search(r"sockecho (serve|send|bench|ping|check)|examples/\w+\.py", text):
                assert DOC_PORT in text, f"{block}: {text!r} must name port {DOC_PORT}"
            if command.background:
                text = text.removesuffix(" &")
                if command.is_server:
                    started = Background(text.replace(DOC_PORT, unused_port()), env, None)
                    port = started.port
                else:
                    last = [line for line in command.shown if not is_cut(line)][-1]
                    started = Background(
                        text.replace(DOC_PORT, port or closed_port()), env, pattern(last)
                    )
                background.append(started)
                checks.append((command, started))
                continue
            done = subprocess.run(
                ["bash", "-c", text.replace(DOC_PORT, port or closed_port())],
                cwd=REPO,
                env=env,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
            stdout = done.stdout.decode(errors="replace")
            stderr = done.stderr.decode(errors="replace")
            expect_error = any(
                line.startswith(ERROR_PREFIXES) or CHECK_FAILED.fullmatch(line)
                for line in command.shown
            )
            assert (done.returncode != 0) == expect_error, (
                f"{block}: {text!r} exited {done.returncode}\n{stdout}\n{stderr}"
            )
            checks.append((command, {"stderr": stderr, "stdout": stdout}))
            for shown in command.shown:
                if job := JOB_DONE.fullmatch(shown.strip()):
                    jobs = [c.text.removesuffix(" &") for c in block.commands if c.background]
                    number = int(job[1])
                    assert normalise(job[2]) == normalise(jobs[number - 1]), shown
                    ended = background[number - 1]
                    try:
                        code = ended.proc.wait(timeout)
                    except subprocess.TimeoutExpired:
                        raise AssertionError(f"{block}: job {job[1]} did not end") from None
                    assert code == 0, f"{block}: job {job[1]} ended with {code}"
        # A background process may still be writing what the last command caused (a
        # server's last trace lines): wait until the shown output is there, then stop it.
        deadline = time.monotonic() + timeout
        while background and mismatch(block, checks) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        codes = [process.stop() for process in background]
    assert codes == [0] * len(background), [s.output for s in background]
    problem = mismatch(block, checks)  # now that every process has finished writing
    assert problem is None, problem


def mismatch(block: Block, checks: list[tuple[Command, Background | dict[str, str]]]) -> str | None:
    """Why the shown output does not match what the commands printed, or None."""
    streams_of = {
        id(source): source.streams() for _, source in checks if isinstance(source, Background)
    }
    shared = [stream for streams in streams_of.values() for stream in streams]
    for command, source in checks:
        if isinstance(source, Background):
            own = streams_of[id(source)]
        else:
            own = [Stream(name, text) for name, text in source.items()]
        candidates = [*own, *(stream for stream in shared if stream not in own)]
        for shown in command.shown:
            if JOB_DONE.fullmatch(shown.strip()):
                continue  # checked when the command ran
            if is_cut(shown):
                for stream in candidates:
                    stream.cut = True
                continue
            wanted = pattern(shown)
            floating = shown.startswith(READY_PREFIX)
            if not any(stream.take(wanted, floating=floating) for stream in candidates):
                return (
                    f"{block}: after {command.text!r}, {shown!r} is not the next line of any "
                    "stream (mark a cut with a line '...'):\n"
                    + "\n".join(stream.describe() for stream in candidates)
                )
        if not isinstance(source, Background):
            for stream in own:
                if not stream.shown_to_the_end:
                    return (
                        f"{block}: {command.text!r} printed more than shown "
                        "(end the listing with '...' if it is cut):\n" + stream.describe()
                    )
    return None
