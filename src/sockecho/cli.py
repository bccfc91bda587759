"""The ``sockecho`` command: a thin layer over the library, ``main(argv) -> exit code``.

Results go to stdout; the ready line, logs and errors to stderr. Errors are one
line, ``sockecho: error: <what happened> (<hint>)``, never a traceback; the exit
codes are :class:`ExitCode`. This module is the only place that maps errors to
exit codes.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import inspect
import json
import logging
import os
import signal
import socket
import sys
import textwrap
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any, TextIO

from sockecho import __version__, bench, client, faults, i18n, logs, ping, tls, workers
from sockecho.arguments import (
    ExitCode,
    add_address_arguments,
    add_trace_argument,
    backlog_size,
    non_negative_number,
    positive_int,
    positive_seconds,
    seconds,
    tracer_for,
)
from sockecho.config import (
    DEFAULT_BACKLOG,
    DEFAULT_DRAIN_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_TLS_HANDSHAKE_TIMEOUT,
    DEFAULT_UDP_RATE,
    EVENT_LOOPS,
    PROXY_VERSIONS,
    UDP_BURST_SECONDS,
    ClientTLSConfig,
    ServerConfig,
)
from sockecho.core import StatsSnapshot
from sockecho.errors import ConfigError, OutputError, SockechoError
from sockecho.i18n import _, ngettext
from sockecho.logs import LOG_FORMATS
from sockecho.server import Server
from sockecho.servers import DEFAULT_MODEL, MODELS
from sockecho.stop_signals import StopSignals

#: Signals that stop ``serve`` (gracefully; the second one at once).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

#: The line printed to stderr when a listener is ready; scripts and tests wait for it.
READY_LINE = "listening on {endpoint}"

log = logging.getLogger("sockecho")


SERVE_EXAMPLES = """\
examples:
  sockecho serve                          asyncio model on 127.0.0.1:50010
  sockecho serve --model iterative        the course's first exercise: one client at a time
  sockecho serve --port 0                 pick a free port (read it from the ready line)
  sockecho serve --host :: --port 7007    IPv4 and IPv6 clients on every interface
  sockecho serve --udp                    UDP echo too, on the same port number
  sockecho serve --tls-cert cert.pem --tls-key key.pem
                                          echo over TLS ("listening on tls://...")
  sockecho serve --fault latency=100:20 --fault reset-after=10000
                                          every echo 80-120 ms late, a reset after 10 kB
  sockecho serve --udp --fault drop=0.1 --seed 1
                                          lose a tenth of the UDP echoes, repeatably

When a listener is ready, one line goes to stderr: "listening on tcp://HOST:PORT"
(IPv6 hosts in brackets), one per address of HOST; with --tls-cert they say
tls://, and with --udp "listening on udp://HOST:PORT" lines follow. SIGINT or
SIGTERM stops it gracefully (exit 0); a second signal stops at once.
"""

SEND_EXAMPLES = """\
examples:
  sockecho send hola                      prints "hola" as echoed by the server
  sockecho send --port 7007 hello world   sends "hello world\\n", waits for all of it
  sockecho send < big.bin > copy.bin      streams a file through the server
  echo hi | sockecho send                 the same with a pipe
  sockecho send --tls --tls-ca ca.pem hi  over TLS, checking the server against ca.pem
  sockecho send --tls --insecure hi       over TLS to a self-signed test server

Exit status: 0 when the echo came back complete and identical, 1 otherwise.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sockecho",
        description="An Echo Protocol (RFC 862) server in five classic designs, and its client.",
        epilog="Run 'sockecho COMMAND --help' for a command's options and examples.",
    )
    parser.add_argument("--version", action="version", version=f"sockecho {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = commands.add_parser(
        "serve",
        help="run an echo server",
        description="Run an echo server: every byte received is sent back, in order, unchanged.",
        epilog=SERVE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument(
        "--model",
        choices=list(MODELS),
        default=DEFAULT_MODEL,
        help=f"server design (default: {DEFAULT_MODEL}); 'sockecho models' describes each",
    )
    add_address_arguments(serve, listening=True)
    serve.add_argument(
        "--backlog",
        type=backlog_size,
        default=DEFAULT_BACKLOG,
        help="connections the kernel queues before accept(); Linux caps it at "
        f"net.core.somaxconn (default: socket.SOMAXCONN = {DEFAULT_BACKLOG})",
    )
    serve.add_argument(
        "--idle-timeout",
        type=seconds,
        default=DEFAULT_IDLE_TIMEOUT,
        metavar="SECONDS",
        help=f"close connections idle this long; 0 disables (default: {DEFAULT_IDLE_TIMEOUT:g})",
    )
    serve.add_argument(
        "--max-connections",
        type=positive_int,
        default=None,
        metavar="N",
        help="connections served at once; more are closed at once "
        "(default: 10000; select model: 1000)",
    )
    serve.add_argument(
        "--max-per-source",
        type=int,
        default=0,
        metavar="N",
        help="connections at once from one source address; 0 means no limit (default: 0)",
    )
    serve.add_argument(
        "--drain-timeout",
        type=seconds,
        default=DEFAULT_DRAIN_TIMEOUT,
        metavar="SECONDS",
        help="on SIGINT or SIGTERM, let open connections finish for this long "
        f"(default: {DEFAULT_DRAIN_TIMEOUT:g})",
    )
    serve.add_argument(
        "--loop",
        choices=EVENT_LOOPS,
        default="asyncio",
        help="event loop of the asyncio model: uvloop needs the sockecho[uvloop] extra and "
        "cannot be traced (default: asyncio)",
    )
    add_trace_argument(serve)
    add_udp_arguments(serve)
    add_tls_server_arguments(serve)
    add_fault_arguments(serve)
    add_operations_arguments(serve)
    add_verbosity_arguments(serve)
    add_flaw_argument(serve)
    add_workers_argument(serve)
    serve.set_defaults(run=run_serve, parser=serve)

    send = commands.add_parser(
        "send",
        help="send a message (or stdin) and print the echo",
        description=textwrap.dedent(
            """\
            With MESSAGE words: send them joined by spaces plus a newline, wait for the
            whole echo and print it. Without: stream stdin through the server to stdout,
            half-close after the end of input, and check that every byte came back."""
        ),
        epilog=SEND_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_address_arguments(send)
    send.add_argument(
        "--timeout",
        type=seconds,
        default=client.DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="give up connecting, or waiting for an outstanding echo, after this long "
        f"(default: {client.DEFAULT_TIMEOUT:g}; 0 waits forever)",
    )
    add_tls_client_arguments(send)
    add_trace_argument(send)
    send.add_argument(
        "--proxy",
        choices=("v1", "v2"),
        default=None,
        help="send a PROXY protocol header first, with this connection's real addresses "
        "(for a server started with --proxy-protocol)",
    )
    send.add_argument(
        "--identify",
        action="store_true",
        help="expect the server's --identify line first: print it to stderr, check the echo "
        "after it",
    )
    send.add_argument("message", nargs="*", metavar="MESSAGE", help="words to send")
    send.set_defaults(run=run_send, parser=send)

    models = commands.add_parser(
        "models",
        help="list the server models and where their source lives",
        description="The server designs, in teaching order, each with the file to read it in.",
    )
    models.add_argument(
        "--flaws",
        action="store_true",
        help="list the deliberately broken servers of 'serve --flaw' instead",
    )
    models.set_defaults(run=run_models, parser=models)
    add_check_parser(commands)

    bench.add_parser(commands)
    ping.add_parser(commands)
    return parser


def add_udp_arguments(parser: argparse.ArgumentParser) -> None:
    udp = parser.add_argument_group(
        "UDP echo (limits: docs/security.md, section 6; per model: docs/models.md)"
    )
    udp.add_argument(
        "--udp",
        action="store_true",
        help="also echo UDP datagrams (up to 65507 bytes, whole) on the same port number",
    )
    udp.add_argument(
        "--udp-allow-low-ports",
        action="store_true",
        help="also reply to source ports below 1024 (off by default: two echo-like "
        "services could bounce a datagram between them forever)",
    )
    udp.add_argument(
        "--udp-rate",
        type=non_negative_number,
        default=DEFAULT_UDP_RATE,
        metavar="N",
        help="replies per second to one source address; more are dropped and counted, so "
        f"the server cannot flood a spoofed victim; 0: no limit (default: {DEFAULT_UDP_RATE:g})",
    )
    udp.add_argument(
        "--udp-burst",
        type=positive_int,
        default=None,
        metavar="N",
        help="replies one source address may get at once before --udp-rate applies "
        f"(default: {UDP_BURST_SECONDS:g} s of the rate, 100 at the default rate)",
    )


def add_tls_server_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("TLS (see docs/udp-tls.md)")
    group.add_argument(
        "--tls-cert", metavar="FILE", help="serve echo over TLS with this PEM certificate chain"
    )
    group.add_argument("--tls-key", metavar="FILE", help="the PEM private key of --tls-cert")
    group.add_argument(
        "--tls-handshake-timeout",
        type=positive_seconds,
        default=DEFAULT_TLS_HANDSHAKE_TIMEOUT,
        metavar="SECONDS",
        help="close clients that have not completed the TLS handshake by then "
        f"(default: {DEFAULT_TLS_HANDSHAKE_TIMEOUT:g})",
    )


def fault_probability(text: str) -> float:
    try:
        return faults.parse_probability(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_fault_arguments(parser: argparse.ArgumentParser) -> None:
    forms = "; ".join(faults.FORMS.values())
    group = parser.add_argument_group(
        "fault injection (see docs/operations.md; models: asyncio, selectors, select, threading)"
    )
    group.add_argument(
        "--fault",
        action="append",
        metavar="SPEC",
        help=f"misbehave on the echo path, repeatable: {forms} (MS milliseconds, "
        "KBPS kilobytes/s, P a probability 0-1; drop, duplicate, reorder and corrupt are "
        "for --udp)",
    )
    group.add_argument(
        "--fault-probability",
        type=fault_probability,
        default=1.0,
        metavar="P",
        help="share of connections (and datagrams) the faults apply to (default: 1)",
    )
    group.add_argument(
        "--seed",
        type=int,
        default=None,
        metavar="N",
        help="seed the fault draws so a run can be repeated (default: a fresh seed each run)",
    )


def add_tls_client_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("TLS")
    group.add_argument("--tls", action="store_true", help="talk TLS to the server")
    group.add_argument(
        "--tls-ca",
        metavar="FILE",
        help="trust the server's certificate if this PEM CA signed it "
        "(default: the system's trusted roots; implies --tls)",
    )
    group.add_argument(
        "--insecure",
        action="store_true",
        help="do not check the server's certificate at all (test servers only; implies --tls)",
    )


def add_operations_arguments(parser: argparse.ArgumentParser) -> None:
    """serve's options for running behind load balancers and monitoring (docs/operations.md)."""
    group = parser.add_argument_group("operations (docs/operations.md)")
    group.add_argument(
        "--proxy-protocol",
        choices=PROXY_VERSIONS,
        default=None,
        help="every TCP client must start with a PROXY protocol header of this version "
        "(haproxy send-proxy: v1, send-proxy-v2: v2); its client address is used in logs, "
        "--max-per-source and --identify",
    )
    group.add_argument(
        "--identify",
        metavar="NAME",
        default=None,
        help="send each TCP connection a JSON line naming this instance before the echo; "
        "UDP answers the datagram 'sockecho-identify' with it",
    )
    group.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        default=None,
        help="serve Prometheus metrics on http://HOST:PORT/metrics and /healthz "
        "(the sockecho[metrics] extra)",
    )
    group.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="log lines as text (default) or one JSON object per event",
    )


def add_verbosity_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "-q", "--quiet", action="store_true", help="only the ready line, warnings and errors"
    )
    group.add_argument("-v", "--verbose", action="store_true", help="debug detail")


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record is emitted, not when it was made
    (a server thread may outlive a redirected stderr, as in tests that capture output)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass  # always sys.stderr


def configure_logging(args: argparse.Namespace) -> None:
    level = logging.INFO
    if getattr(args, "quiet", False):
        level = logging.WARNING
    elif getattr(args, "verbose", False):
        level = logging.DEBUG
    handler = StderrHandler()
    handler.setFormatter(logs.formatter(getattr(args, "log_format", "text")))
    root = logging.getLogger("sockecho")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def run_serve(args: argparse.Namespace) -> int:
    if args.flaw:
        return run_flaw(args)
    try:
        config = ServerConfig(
            model=args.model,
            host=args.host,
            port=args.port,
            backlog=args.backlog,
            idle_timeout=args.idle_timeout,
            max_connections=args.max_connections,
            max_per_source=args.max_per_source,
            drain_timeout=args.drain_timeout,
            udp=args.udp,
            udp_allow_low_ports=args.udp_allow_low_ports,
            udp_rate=args.udp_rate,
            udp_burst=args.udp_burst,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            tls_handshake_timeout=args.tls_handshake_timeout,
            loop=args.loop,
            faults=tuple(args.fault or ()),
            fault_probability=args.fault_probability,
            seed=args.seed,
            proxy_protocol=args.proxy_protocol,
            identify=args.identify,
            metrics=args.metrics,
        )
        if args.trace and config.loop != "asyncio":
            raise ConfigError(f"--trace cannot narrate --loop {config.loop}", "drop one of them")
        if args.workers is not None:
            return run_workers(args, config)
        tracer = tracer_for(args, "server")
        server = Server(config, calls=tracer.socket_calls() if tracer else None)
    except ConfigError as exc:
        args.parser.error(str(exc))  # exits 2 with the usage line

    # The main thread only waits: for a stop signal (whatever thread the kernel delivered it
    # to, see stop_signals.py) or the end of the serving thread. Logging and stopping happen
    # here, not in a signal handler, which runs between two bytecodes of a thread that may be
    # in the middle of a write to stderr or hold a lock.
    with StopSignals(STOP_SIGNALS) as stop_signals:
        for endpoint in server.start():
            say(READY_LINE.format(endpoint=endpoint))
        if server.metrics_url is not None:
            say(f"metrics on {server.metrics_url}")

        def report_end() -> None:
            server.stopped.wait()
            stop_signals.ended()

        threading.Thread(target=report_end, name="sockecho-ended", daemon=True).start()
        while (received := stop_signals.wait()) is not None:
            name = signal.Signals(received).name
            log.info(_("%s: stopping"), name, extra=logs.event("stopping", signal=name))
            server.request_stop()  # a second signal makes it stop at once (no drain)
        server.join()
    log_stopped(server.snapshot())
    return ExitCode.OK


def say(line: str) -> None:
    """One line to stderr (the ready line, a warning) in one write, not print()'s two: the
    serving thread (its log, --trace) writes to stderr too, and must not land between the line
    and its newline. A reader that went away (``2>&1 | head -3``) takes the output with it, not
    the server."""
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


def log_stopped(snapshot: StatsSnapshot, workers: int | None = None) -> None:
    """The stop line, with the totals as fields of the JSON log."""
    totals = {
        "connections": snapshot.connections_accepted,
        "bytes": snapshot.bytes_echoed,
        "rejected": snapshot.connections_rejected,
        "datagrams": snapshot.datagrams_echoed,
    }
    if workers is None:
        log.info(_("stopped: %s"), summarize(snapshot), extra=logs.event("stop", **totals))
    else:
        log.info(
            _("stopped: %s (%d workers)"),
            summarize(snapshot),
            workers,
            extra=logs.event("stop", **totals, workers=workers),
        )


def summarize(snapshot: StatsSnapshot) -> str:
    """The stop line's totals: what was served, and what was refused or dropped (the
    rate-limited warnings may have folded the last few of those)."""

    def counted(singular: str, plural: str, count: int) -> str:
        return ngettext(singular, plural, count) % count

    parts = [
        counted("%d connection served", "%d connections served", snapshot.connections_accepted),
        counted("%d byte echoed", "%d bytes echoed", snapshot.bytes_echoed),
    ]
    if snapshot.connections_rejected:
        parts.append(
            counted(
                "%d connection refused", "%d connections refused", snapshot.connections_rejected
            )
        )
    if snapshot.datagrams_received:
        parts.append(
            counted("%d datagram echoed", "%d datagrams echoed", snapshot.datagrams_echoed)
        )
    dropped = snapshot.datagrams_dropped_low_port + snapshot.datagrams_dropped_rate
    if dropped:
        parts.append(counted("%d datagram dropped", "%d datagrams dropped", dropped))
    return ", ".join(parts)


def run_models(args: argparse.Namespace) -> int:
    if args.flaws:
        return run_flaw_list()
    width = max(len(name) for name in MODELS) + len(" (default)")
    for name, cls in MODELS.items():
        label = f"{name} (default)" if name == DEFAULT_MODEL else name
        print(f"{label:<{width}}  {cls.summary}")
        print(f"{'':<{width}}  {inspect.getsourcefile(cls)}")
    return ExitCode.OK


def run_send(args: argparse.Namespace) -> int:
    timeout = args.timeout or None
    context = None
    if args.tls or args.tls_ca or args.insecure:
        try:
            tls_config = ClientTLSConfig(ca_file=args.tls_ca, insecure=args.insecure)
        except ConfigError as exc:
            args.parser.error(str(exc))
        context = tls.client_context(tls_config)
    tracer = tracer_for(args, "client")
    socket_class = tracer.socket_class() if tracer else socket.socket
    if sys.stdout is None or (not args.message and sys.stdin is None):
        raise SockechoError("standard input or output is closed", "run it with both open")
    operations: dict[str, Any] = {"proxy": args.proxy}
    if args.identify:
        operations["on_identity"] = print_identity
    if args.message:
        # fsencode: the bytes the words came as, even ones that are not valid UTF-8.
        message = os.fsencode(" ".join(args.message)) + b"\n"
        reply = client.echo(
            message,
            args.host,
            args.port,
            timeout,
            tls=context,
            socket_class=socket_class,
            **operations,
        )
        try:
            sys.stdout.buffer.write(reply)
            sys.stdout.buffer.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise OutputError(f"cannot write the echo: {exc.strerror or exc}") from None
    else:
        client.stream(
            sys.stdin.buffer,
            sys.stdout.buffer,
            args.host,
            args.port,
            timeout,
            tls=context,
            socket_class=socket_class,
            **operations,
        )
    return ExitCode.OK


def print_identity(identity: dict[str, Any]) -> None:
    """``send --identify``: the server's identity line, as it came, on stderr."""
    say(json.dumps(identity, ensure_ascii=False))


# --- sockecho check -------------------------------------------------------------------

CHECK_EXAMPLES = """\
examples:
  sockecho check 127.0.0.1:7007              every TCP case against a server
  sockecho check --udp 127.0.0.1:7007        its UDP echo instead
  sockecho check --tls --insecure host:7007  the TCP cases over TLS, and the handshake
  sockecho check --case tcp.close host       one section (or --case ID for one case)
  sockecho check --junit check.xml host      also write JUnit XML for CI
  sockecho check --list                      the cases and what each requires

Exit status: 0 when no case FAILED, 1 when one did or the server cannot be
reached, 2 for usage errors. docs/check.md explains every case.
"""


def add_check_parser(commands: Any) -> None:
    from sockecho.check import DEFAULT_TIMEOUT  # noqa: PLC0415 - loads only with the CLI

    check = commands.add_parser(
        "check",
        help="check that a server really echoes (RFC 862 conformance cases)",
        description="Run conformance cases against any echo server and report, per case, "
        "PASSED, FAILED (with Expected / Actual), NON-STRICT, INFORMATIONAL or SKIPPED.",
        epilog=CHECK_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("target", nargs="?", metavar="HOST[:PORT]", help="the server (port 50010)")
    check.add_argument("--udp", action="store_true", help="check the UDP echo instead of TCP")
    add_tls_client_arguments(check)
    check.add_argument(
        "--case",
        action="append",
        default=[],
        metavar="ID",
        help="run this case, or every case of this section (repeatable; default: all)",
    )
    check.add_argument(
        "--list", action="store_true", help="list the cases and their requirements, then exit"
    )
    check.add_argument(
        "--strict", action="store_true", help="add the SHOULD-level cases a plain server may lack"
    )
    check.add_argument(
        "--timeout",
        type=positive_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"each case's deadline (default: {DEFAULT_TIMEOUT:g})",
    )
    check.add_argument(
        "--seed",
        type=seed_number,
        metavar="N",
        help="replay the random choices of the run that printed this seed",
    )
    check.add_argument("--junit", metavar="FILE", help="also write the results as JUnit XML")
    check.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    group = check.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true", help="only failures and the summary")
    group.add_argument("-v", "--verbose", action="store_true", help="each case's requirement too")
    check.set_defaults(run=run_check, parser=check)


def seed_number(text: str) -> int:
    if not text.isdigit() or int(text) >= 2**32:
        raise argparse.ArgumentTypeError(f"{text!r} is not a seed (0 to 2**32 - 1)")
    return int(text)


def run_check(args: argparse.Namespace) -> int:
    from sockecho.check import CASES, cases, json_report, junit, runner  # noqa: PLC0415
    from sockecho.check.terminal import TerminalView, render_list  # noqa: PLC0415

    parser: argparse.ArgumentParser = args.parser
    use_tls = bool(args.tls or args.tls_ca or args.insecure)
    try:
        if args.list:
            listed = [
                case
                for case in CASES.values()
                if not args.case or any(cases.matches(case, chosen) for chosen in args.case)
            ]
            render_list(listed, sys.stdout)
            return ExitCode.OK
        if args.target is None:
            parser.error("the server's HOST[:PORT] is missing")
        host, port = ping.parse_target(args.target)
        cases.select(args.case, udp=args.udp, tls=use_tls, strict=args.strict)
        if args.udp and use_tls:
            raise ConfigError("--udp and --tls do not go together", "TLS runs over TCP only")
        context = None
        if use_tls:
            context = tls.client_context(
                ClientTLSConfig(ca_file=args.tls_ca, insecure=args.insecure)
            )
    except ConfigError as exc:
        parser.error(str(exc))
    view = TerminalView(sys.stdout, quiet=args.quiet, verbose=args.verbose)
    report = runner.run_check(
        host,
        port,
        udp=args.udp,
        tls=context,
        cases=args.case,
        strict=args.strict,
        timeout=args.timeout,
        seed=args.seed,
        on_start=view.start,
        on_result=view.case,
    )
    view.finish(report)
    for path, write in ((args.junit, junit.write_junit), (args.json, json_report.write_json)):
        if path:
            try:
                write(report, path)
            except OSError as exc:
                raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    return ExitCode.FAILURE if report.failed else ExitCode.OK


# --- sockecho serve --flaw, sockecho models --flaws ------------------------------------


def add_flaw_argument(parser: argparse.ArgumentParser) -> None:
    from sockecho.flaws import FLAWS  # noqa: PLC0415 - loads only with the CLI

    parser.add_argument(
        "--flaw",
        choices=list(FLAWS),
        metavar="NAME",
        help="serve a deliberately broken echo instead (only --host and --port apply); "
        "'sockecho models --flaws' lists them and the check case that catches each",
    )


def run_flaw(args: argparse.Namespace) -> int:
    """Serve a flawed server in this thread until SIGINT/SIGTERM (or until it stops itself,
    as the handout's does)."""
    from sockecho.flaws import FLAWS  # noqa: PLC0415
    from sockecho.net import endpoint_url  # noqa: PLC0415

    flaw = FLAWS[args.flaw]
    say(f"warning: --flaw {flaw.name} serves a deliberately broken echo")
    sock = flaw.open_socket(args.host, args.port)  # BindError: one line, exit 1

    def interrupt(signum: int, frame: FrameType | None) -> None:
        # The flaws are a dozen lines of blocking code each, like the exercises they copy:
        # stopping them the way Ctrl-C stops a student's script keeps them that simple.
        raise KeyboardInterrupt

    previous = {signum: signal.signal(signum, interrupt) for signum in STOP_SIGNALS}
    try:
        say(READY_LINE.format(endpoint=endpoint_url("udp" if flaw.udp else "tcp", sock)))
        flaw.serve(sock)
        log.info("the flawed server stopped by itself")
    except KeyboardInterrupt:
        log.info("stopping")
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        sock.close()
    return ExitCode.OK


def run_flaw_list() -> int:
    from sockecho.flaws import FLAWS  # noqa: PLC0415

    width = max(len(name) for name in FLAWS)
    for name, flaw in FLAWS.items():
        print(f"{name:<{width}}  {flaw.bug}")
        print(f"{'':<{width}}  caught by: sockecho check --case {flaw.caught_by}")
        print(f"{'':<{width}}  {inspect.getsourcefile(flaw.module)}")
    return ExitCode.OK


# ---------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: sys.argv[1:]) and return the exit code.

    Usage errors, ``--help`` and ``--version`` return argparse's code (2, 0, 0)
    after it printed its message; nothing here calls ``sys.exit``.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        i18n.set_language(getattr(args, "lang", None))  # None: the environment's language
        configure_logging(args)
        code: int = args.run(args)
    except SystemExit as exc:  # argparse: usage error, --help, --version
        return exc.code if isinstance(exc.code, int) else ExitCode.USAGE
    except SockechoError as exc:
        return fail(str(exc))
    except BrokenPipeError:
        return fail("output closed before the echo was written (a closed pipe)")
    except KeyboardInterrupt:
        return fail("interrupted")
    except Exception as exc:  # no traceback ever reaches a user; -v logs it
        log.debug("unexpected error", exc_info=True)
        return fail(f"unexpected {type(exc).__name__}: {exc} (please report this)")
    return code


def fail(message: str) -> int:
    print(f"sockecho: error: {message}", file=sys.stderr, flush=True)
    return ExitCode.FAILURE


# --- sockecho serve --workers (src/sockecho/workers.py) --------------------------------


def add_workers_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workers",
        type=worker_count,
        default=None,
        metavar="N",
        help="serve from N processes sharing the port (SO_REUSEPORT, Linux), under a "
        "supervisor that restarts any that dies; auto: one per CPU (default: one process)",
    )


def worker_count(text: str) -> int:
    return workers.usable_cpus() if text == "auto" else positive_int(text)


def run_workers(args: argparse.Namespace, config: ServerConfig) -> int:
    """``serve --workers N``: the supervisor runs in this (main) thread until stopped."""
    if args.trace:
        raise ConfigError("--trace narrates one process", "drop --workers, or --trace")

    def print_ready(endpoints: list[str]) -> None:
        for endpoint in endpoints:
            say(READY_LINE.format(endpoint=endpoint))
        if supervisor.metrics_url is not None:
            say(f"metrics on {supervisor.metrics_url}")

    root = logging.getLogger("sockecho")
    prepare = functools.partial(
        configure_worker_logging, root.level, getattr(args, "log_format", "text")
    )
    supervisor = workers.Supervisor(config, args.workers, prepare=prepare, on_ready=print_ready)
    log_stopped(supervisor.run(), workers=args.workers)
    return ExitCode.OK


class WorkerTag(logging.Filter):
    """Prefixes a worker's log lines with its number: ``worker 2: open 127.0.0.1:40312``."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = f"worker {self.index}: {record.msg}"
        return True


def configure_worker_logging(level: int, log_format: str, index: int) -> None:
    """Logging in a worker process (it starts with none): the CLI's, tagged with its number."""
    handler = StderrHandler()
    handler.setFormatter(logs.formatter(log_format))
    handler.addFilter(WorkerTag(index))
    root = logging.getLogger("sockecho")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


if __name__ == "__main__":
    sys.exit(main())
