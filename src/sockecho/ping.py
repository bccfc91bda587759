"""``sockecho ping``: round-trip time to an echo server, modelled on ping(8).

::

    $ sockecho ping -c 3 127.0.0.1:7007
    PING 127.0.0.1:7007 (tcp): 56 data bytes
    56 bytes from 127.0.0.1:7007: seq=1 time=0.081 ms
    ...
    --- 127.0.0.1 ping statistics ---
    3 packets transmitted, 3 received, 0% packet loss, time 2002ms
    rtt min/avg/max/mdev = 0.074/0.079/0.081/0.003 ms

Summary
    The last three lines are ping(8)'s own (iputils), word for word, so tools
    that parse ping output (pingparsing, monitoring plugins, a regex in a
    script) read ours unchanged: the headline names the host as ping(8) does
    (the port is on the first line), the loss is printed with ``%g`` (``33.3333%``),
    failed probes add ``+N errors`` after ``received``, and ``time`` is the run's
    length in whole milliseconds with no space before ``ms``.

Probes
    Each probe carries its sequence number in its first 8 bytes and a fixed
    pattern after it, and the whole echo is compared with it. TCP probes share
    one connection (the RTT of an established connection); ``--connect`` opens a
    new connection per probe and shows the connect time too (the handshake is
    one more round trip). A TCP probe that times out or fails ends its
    connection (a late echo would put the stream out of step); the next probe
    reconnects. UDP probes are datagrams on one socket; a reply is matched by
    its sequence number, so a late echo of an earlier probe is recognised and
    ignored, as ping(8) does.

Timing
    Probes are sent every ``interval`` seconds from the start (a slow reply does
    not shift the schedule); a probe is lost when its echo is not back within
    ``timeout``. mdev is the population standard deviation, as ping(8) prints.

Exit status 0 when at least one probe came back, 1 when every probe was lost.
"""

from __future__ import annotations

import argparse
import math
import select
import signal
import socket
import struct
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, TextIO

from sockecho.arguments import ExitCode, add_trace_argument, positive_int, seconds, tracer_for
from sockecho.config import DEFAULT_PORT
from sockecho.errors import ConfigError
from sockecho.identity import IdentityError, read_identity
from sockecho.net import format_host_port, resolve

#: ping(8)'s default payload (bytes).
DEFAULT_SIZE = 56
#: Bytes of sequence number at the start of every probe.
SEQ = struct.Struct("!Q")
#: Probes sent when --count is not given (a bounded default; ping(8) runs until Ctrl-C).
DEFAULT_COUNT = 5
#: Seconds a probe may take before it counts as lost.
DEFAULT_TIMEOUT = 2.0
#: Largest probe over UDP/IPv4 (bytes).
MAX_UDP_SIZE = 65507
#: Largest TCP probe (bytes): bigger ones measure bulk transfer, not round-trip time.
MAX_TCP_SIZE = 1024 * 1024


@dataclass(slots=True)
class PingStats:
    """Probes sent and the RTTs (seconds) of those that came back intact."""

    transmitted: int = 0
    rtts: list[float] = field(default_factory=list)
    errors: int = 0

    @property
    def received(self) -> int:
        return len(self.rtts)

    @property
    def loss(self) -> float:
        return 1 - self.received / self.transmitted if self.transmitted else 0.0

    @property
    def loss_percent(self) -> float:
        """The loss as ping(8) computes it (so ``%g`` prints the same digits)."""
        if not self.transmitted:
            return 0.0
        return (self.transmitted - self.received) * 100.0 / self.transmitted

    def summary(self) -> tuple[float, float, float, float]:
        """min, avg, max, mdev in seconds (mdev as ping(8): population standard deviation)."""
        rtts = self.rtts
        mean = sum(rtts) / len(rtts)
        mdev = math.sqrt(max(0.0, sum(r * r for r in rtts) / len(rtts) - mean * mean))
        return min(rtts), mean, max(rtts), mdev


def parse_target(text: str) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 address → (host, port)."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ConfigError(f"bad address {text!r}", "write [IPv6]:PORT")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) <= 65535:
        raise ConfigError(f"bad port in {text!r}", "a port is 1-65535")
    return host, int(port_text)


def probe_payload(sequence: int, size: int) -> bytes:
    pattern = bytes(range(32, 127)) * (size // 95 + 1)
    return (SEQ.pack(sequence) + pattern)[:size]


class Pinger:
    """Sends probes and prints a line for each, as ping(8) does."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        size: int = DEFAULT_SIZE,
        udp: bool = False,
        connect_each: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
        out: TextIO | None = None,
        clock: Callable[[], float] = time.perf_counter,
        socket_class: type[socket.socket] = socket.socket,
        identify: bool = False,
    ) -> None:
        self.udp = udp
        self.identify = identify  # read each connection's --identify line; show the instance
        self.instance: str | None = None
        self.socket_class = socket_class  # --trace passes a narrating one
        family, sockaddr = resolve(
            host, port, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM, passive=False
        )[0]
        self.family = family
        self.sockaddr = sockaddr
        self.where = format_host_port(str(sockaddr[0]), port)
        self.size = size
        self.connect_each = connect_each
        self.timeout = timeout
        self.out = out if out is not None else sys.stdout  # looked up now: tests swap it
        self.clock = clock
        self.stats = PingStats()
        self.sock: socket.socket | None = None

    def say(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def probe(self, sequence: int) -> None:
        """Send one probe, wait for its echo, print the outcome."""
        self.stats.transmitted += 1
        payload = probe_payload(sequence, self.size)
        if self.udp:
            self._probe_udp(sequence, payload)
        else:
            self._probe_tcp(sequence, payload)

    def _lost(self, sequence: int, why: str) -> None:
        self.say(f"no echo from {self.where}: seq={sequence} {why}")

    def _probe_tcp(self, sequence: int, payload: bytes) -> None:
        connect_time: float | None = None
        try:
            if self.sock is None:
                sock = self.socket_class(self.family, socket.SOCK_STREAM)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.settimeout(self.timeout)
                started = self.clock()
                try:
                    sock.connect(self.sockaddr)
                except BaseException:
                    sock.close()
                    raise
                connect_time = self.clock() - started
                self.sock = sock
                if self.identify:
                    self.instance = self._read_identity(sock)
            sock = self.sock
            started = self.clock()
            sock.sendall(payload)
            echoed = bytearray()
            deadline = started + self.timeout
            while len(echoed) < len(payload):
                sock.settimeout(max(0.0, deadline - self.clock()) or 1e-6)
                chunk = sock.recv(len(payload) - len(echoed))
                if not chunk:
                    raise ConnectionResetError("the server closed the connection")
                echoed += chunk
            rtt = self.clock() - started
        except TimeoutError:
            self.close()
            self._lost(sequence, f"timeout after {self.timeout:g} s")
            return
        except OSError as exc:
            self.close()
            self.stats.errors += 1
            reason = exc.strerror or str(exc)
            self._lost(sequence, reason[0].lower() + reason[1:] if reason else type(exc).__name__)
            return
        if self.connect_each:
            self.close()
        if echoed != payload:
            self.close()
            self.stats.errors += 1
            self._lost(sequence, "echo differs from the probe")
            return
        self.stats.rtts.append(rtt)
        connect = f" connect={connect_time * 1000:.3f} ms" if connect_time is not None else ""
        instance = f" instance={self.instance}" if self.identify else ""
        self.say(
            f"{len(echoed)} bytes from {self.where}: seq={sequence}{connect} "
            f"time={rtt * 1000:.3f} ms{instance}"
        )

    def _read_identity(self, sock: socket.socket) -> str:
        """The instance named by the server's --identify line (read before any probe)."""
        data = b""
        try:
            while (found := read_identity(data)) is None:
                chunk = sock.recv(4096)
                if not chunk:
                    raise ConnectionResetError("the server closed before its identity line")
                data += chunk
        except IdentityError as exc:
            raise OSError(f"no identity line: {exc}") from None
        return str(found[0].get("instance"))

    def _probe_udp(self, sequence: int, payload: bytes) -> None:
        if self.sock is None:
            self.sock = self.socket_class(self.family, socket.SOCK_DGRAM)
            self.sock.connect(self.sockaddr)
        sock = self.sock
        started = self.clock()
        try:
            sock.send(payload)
        except OSError as exc:
            self.stats.errors += 1
            self._lost(sequence, exc.strerror or str(exc))
            return
        deadline = started + self.timeout
        while (remaining := deadline - self.clock()) > 0:
            readable, _, _ = select.select([sock], [], [], remaining)
            if not readable:
                break
            try:
                reply = sock.recv(MAX_UDP_SIZE + 1)
            except ConnectionRefusedError:
                self.stats.errors += 1
                self._lost(sequence, "port unreachable (nothing listens there)")
                return
            if len(reply) < SEQ.size or SEQ.unpack_from(reply)[0] != sequence:
                continue  # a late echo of an earlier probe
            rtt = self.clock() - started
            if reply != payload:
                self.stats.errors += 1
                self._lost(sequence, "echo differs from the probe")
                return
            self.stats.rtts.append(rtt)
            self.say(
                f"{len(reply)} bytes from {self.where}: seq={sequence} time={rtt * 1000:.3f} ms"
            )
            return
        self._lost(sequence, f"timeout after {self.timeout:g} s")

    def print_summary(self, elapsed: float) -> None:
        """ping(8)'s summary, in its words (see "Summary" in the module docstring)."""
        stats = self.stats
        self.say(f"\n--- {self.sockaddr[0]} ping statistics ---")
        errors = f" +{stats.errors} errors," if stats.errors else ""
        self.say(
            f"{stats.transmitted} packets transmitted, {stats.received} received,{errors} "
            f"{stats.loss_percent:g}% packet loss, time {elapsed * 1000:.0f}ms"
        )
        if stats.rtts:
            low, mean, high, mdev = (value * 1000 for value in stats.summary())
            self.say(f"rtt min/avg/max/mdev = {low:.3f}/{mean:.3f}/{high:.3f}/{mdev:.3f} ms")


def ping(
    host: str,
    port: int,
    *,
    count: int = DEFAULT_COUNT,
    interval: float = 1.0,
    size: int = DEFAULT_SIZE,
    udp: bool = False,
    connect_each: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    out: TextIO | None = None,
    interrupted: Callable[[], bool] = lambda: False,
    socket_class: type[socket.socket] = socket.socket,
    identify: bool = False,
) -> PingStats:
    """Send ``count`` probes ``interval`` seconds apart, print each and a summary."""
    pinger = Pinger(
        host,
        port,
        size=size,
        udp=udp,
        connect_each=connect_each,
        timeout=timeout,
        out=out,
        socket_class=socket_class,
        identify=identify,
    )
    proto = "udp" if udp else "tcp"
    pinger.say(f"PING {pinger.where} ({proto}): {size} data bytes")
    started = time.monotonic()
    try:
        for sequence in range(1, count + 1):
            if interrupted():
                break
            pinger.probe(sequence)
            if sequence < count:
                wake = started + sequence * interval
                while (pause := wake - time.monotonic()) > 0 and not interrupted():
                    time.sleep(min(pause, 0.1))  # pacing the probes, and noticing Ctrl-C
    finally:
        pinger.close()
    pinger.print_summary(time.monotonic() - started)
    return pinger.stats


def add_parser(commands: Any) -> None:
    """Add ``ping`` to the CLI's subcommands."""
    parser = commands.add_parser(
        "ping",
        help="measure round-trip time to an echo server, like ping(8)",
        description=textwrap.dedent(
            """\
            Send probes to an echo server and time their echoes: a line per probe,
            then loss and min/avg/max/mdev. TCP probes share one connection unless
            --connect; --udp sends datagrams."""
        ),
        epilog=textwrap.dedent(
            f"""\
            examples:
              sockecho ping 127.0.0.1:7007             {DEFAULT_COUNT} TCP probes, one a second
              sockecho ping -c 20 -i 0.2 --connect ::1 connect time and RTT, 20 connections
              sockecho ping --udp -s 1200 host:7       UDP probes of 1200 bytes

            Exit status: 0 when at least one probe came back, 1 when all were lost."""
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("target", metavar="HOST[:PORT]", help=f"server (port {DEFAULT_PORT})")
    parser.add_argument("--udp", action="store_true", help="UDP probes")
    parser.add_argument(
        "-c", "--count", type=positive_int, default=DEFAULT_COUNT, help=f"({DEFAULT_COUNT})"
    )
    parser.add_argument(
        "-i", "--interval", type=seconds, default=1.0, metavar="S", help="between probes (1)"
    )
    parser.add_argument(
        "-s", "--size", type=positive_int, default=DEFAULT_SIZE, metavar="B", help="(56)"
    )
    parser.add_argument(
        "-W",
        "--timeout",
        type=seconds,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help=f"a probe not back after S seconds is lost ({DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--connect", action="store_true", help="a new TCP connection per probe (times connect)"
    )
    parser.add_argument(
        "--identify",
        action="store_true",
        help="read the server's --identify line on each connection; show the instance per probe",
    )
    add_trace_argument(parser)  # the narration's own cost is inside the times it prints
    parser.set_defaults(run=run_ping, parser=parser)


def run_ping(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args.parser
    try:
        host, port = parse_target(args.target)
    except ConfigError as exc:
        parser.error(str(exc))
    if args.size < SEQ.size:
        parser.error(f"--size must be at least {SEQ.size} bytes (the sequence number)")
    if args.size > (MAX_UDP_SIZE if args.udp else MAX_TCP_SIZE):
        parser.error(f"--size must be at most {MAX_UDP_SIZE if args.udp else MAX_TCP_SIZE} bytes")
    if args.udp and args.connect:
        parser.error("--connect is for TCP (UDP has no connection to time)")
    if args.udp and args.identify:
        parser.error("--identify is for TCP (ask a UDP server with 'sockecho-identify')")
    if args.timeout <= 0:
        parser.error("--timeout must be more than 0 seconds")
    tracer = tracer_for(args, "client")
    stop = False

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        if stop:  # a second Ctrl-C: do not wait for the probe in flight
            raise KeyboardInterrupt
        stop = True  # ping(8): Ctrl-C ends the run (after the probe in flight) with the summary

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        stats = ping(
            host,
            port,
            count=args.count,
            interval=args.interval,
            size=args.size,
            udp=args.udp,
            connect_each=args.connect,
            timeout=args.timeout,
            interrupted=lambda: stop,
            socket_class=tracer.socket_class() if tracer else socket.socket,
            identify=args.identify,
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    return ExitCode.OK if stats.received else ExitCode.FAILURE
