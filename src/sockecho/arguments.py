"""What every subcommand's command line shares: argument types, the address and ``--trace``
arguments, the tracer they ask for, and the exit codes.

``cli.py`` builds the ``sockecho`` command; ``bench`` and ``ping`` add their own subcommands
to it. They all take their argument helpers from here, so the library never imports
``sockecho.cli`` (which imports them): ``import sockecho.bench`` does not load the CLI.
"""

from __future__ import annotations

import argparse
import enum
import sys
from typing import TYPE_CHECKING, Any

from sockecho.config import DEFAULT_HOST, DEFAULT_PORT, MAX_BACKLOG, MAX_SECONDS
from sockecho.i18n import LANGUAGES

if TYPE_CHECKING:
    from sockecho.trace import Tracer


class ExitCode(enum.IntEnum):
    """The exit status of every subcommand."""

    OK = 0
    FAILURE = 1  # a runtime error: address in use, refused, echo mismatch...
    USAGE = 2  # bad arguments (argparse's own code)


def port_number(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is out of range 0-65535")
    return port


#: The largest count any option takes (connections, requests, backlog...): a C int.
MAX_COUNT = 2**31 - 1


def _bounded(text: str, parse: type[int] | type[float], low: float, high: float, what: str) -> Any:
    """Parse ``text`` as ``what`` within [low, high]; NaN and infinities are rejected."""
    try:
        value = parse(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if not low <= value <= high:  # NaN compares false: rejected too
        raise argparse.ArgumentTypeError(f"{text} is out of range {low:g}-{high:g}")
    return value


def positive_int(text: str) -> int:
    value: int = _bounded(text, int, 1, MAX_COUNT, "a whole number")
    return value


def non_negative_number(text: str) -> float:
    value: float = _bounded(text, float, 0, float(MAX_COUNT), "a number")
    return value


def positive_seconds(text: str) -> float:
    value = seconds(text)
    if not value:
        raise argparse.ArgumentTypeError(f"{text} must be more than 0 seconds")
    return value


def seconds(text: str) -> float:
    """0 up to MAX_SECONDS (a year): larger values overflow the kernel's timeouts."""
    value: float = _bounded(text, float, 0, MAX_SECONDS, "a number of seconds")
    return value


def backlog_size(text: str) -> int:
    value: int = _bounded(text, int, 1, MAX_BACKLOG, "a whole number")
    return value


def add_address_arguments(parser: argparse.ArgumentParser, *, listening: bool = False) -> None:
    """--host and --port; ``listening`` for a server (where port 0 means "pick one")."""
    parser.add_argument(
        "--host", default=DEFAULT_HOST, help=f"host name or address (default: {DEFAULT_HOST})"
    )
    parser.add_argument(
        "--port",
        type=port_number,
        default=DEFAULT_PORT,
        help=f"TCP port (default: {DEFAULT_PORT}; 0 picks a free one)"
        if listening
        else f"the server's port (default: {DEFAULT_PORT})",
    )


def add_trace_argument(parser: argparse.ArgumentParser) -> None:
    """``--trace`` and the language it (and the connection log) speaks, ``--lang``."""
    parser.add_argument(
        "--trace",
        action="store_true",
        help="narrate each socket API call (arguments, result, errno, and the kernel calls "
        "behind it) on stderr",
    )
    parser.add_argument(
        "--lang",
        choices=LANGUAGES,
        help="language of --trace and of the connection log (default: from LANGUAGE, "
        "LC_ALL, LC_MESSAGES or LANG; English otherwise); the ready line is never translated",
    )


def tracer_for(args: argparse.Namespace, role: str) -> Tracer | None:
    """The stderr tracer when ``--trace`` was given (the trace module loads only then)."""
    if not getattr(args, "trace", False):
        return None
    from sockecho.trace import Tracer  # noqa: PLC0415 - rich loads only for --trace

    return Tracer(role, sys.stderr)
