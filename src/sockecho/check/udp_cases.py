"""The UDP probes (``--udp``): datagrams of several sizes come back whole, as one datagram,
from the port they were sent to; a burst shows how many replies are lost.

A server may limit the replies one source gets (sockecho answers 1000 per second per
source, in bursts of 100, so that it cannot be used to flood a forged address). The
runner waits :data:`PACE` between UDP cases, which refills such a bucket, and each size
case sends its datagram :data:`ATTEMPTS` times at most before calling it lost.
"""

from __future__ import annotations

import socket
import time

from sockecho.check.probe import Failure, Finding, Probe, describe_bytes

#: Seconds between two UDP cases: sockecho's default bucket (100 replies, refilled at
#: 1000 a second) is full again after 0.1 s; half as much again for a loaded machine.
PACE = 0.15
#: Tries of a size case before the datagram counts as lost (UDP may lose one; not three).
ATTEMPTS = 3
#: Datagrams of ``udp.burst.100``, sent at once.
BURST = 100
#: Seconds ``udp.burst.100`` waits for the last reply.
BURST_WAIT = 1.0
#: Bytes asked of recvfrom(): more than the largest datagram, so a longer reply is seen.
RECEIVE_SIZE = 65536

CUT_AT_8192 = "recvfrom(8192) (socketserver.UDPServer's max_packet_size) cuts longer datagrams"


def size_case(size: int):  # type: ignore[no-untyped-def]
    def probe_size(probe: Probe) -> Finding | None:
        data = probe.rng.randbytes(size)
        sock, server = probe.open_datagram()
        with sock:
            for _attempt in range(ATTEMPTS):
                try:
                    sock.sendto(data, server)
                except OSError as exc:
                    raise Failure(
                        f"a {size}-byte datagram sent", exc.strerror or str(exc)
                    ) from None
                reply = receive(sock, server, probe.remaining() / ATTEMPTS)
                if reply is not None:
                    break
            else:
                raise Failure(
                    f"one {size}-byte datagram back",
                    f"no reply to {ATTEMPTS} tries within {probe.timeout:g} s",
                    CUT_AT_8192 if size > 8192 else "",
                )
        payload, source = reply
        if source != server:
            raise Failure(
                f"the reply from {format_address(server)}, where the datagram went",
                f"it came from {format_address(source)}",
                "a reply sent from a new socket instead of the one that received?",
            )
        if payload != data:
            if len(payload) < size and data.startswith(payload):
                actual = f"a {len(payload)}-byte datagram came back"
                cause = CUT_AT_8192 if len(payload) == 8192 else "a receive buffer too small?"
            else:
                at = next(
                    (i for i, (a, b) in enumerate(zip(data, payload, strict=False)) if a != b),
                    min(len(data), len(payload)),
                )
                actual = (
                    f"a {len(payload)}-byte datagram that differs from byte {at}: "
                    f"{describe_bytes(payload[at : at + 8])}"
                )
                cause = ""
            raise Failure(f"one {size}-byte datagram back, whole", actual, cause)
        return None

    probe_size.__name__ = f"size_{size}"
    return probe_size


def burst(probe: Probe) -> Finding | None:
    sock, server = probe.open_datagram()
    with sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024 * 1024)
        sent: set[bytes] = set()
        for index in range(BURST):
            data = b"burst %03d " % index + probe.rng.randbytes(54)
            sent.add(data)
            try:
                sock.sendto(data, server)
            except BlockingIOError:
                continue
        received: set[bytes] = set()
        until = time.monotonic() + min(BURST_WAIT, probe.remaining())
        while len(received) < len(sent) and (left := until - time.monotonic()) > 0:
            reply = receive(sock, server, left)
            if reply is None:
                break
            if reply[0] in sent:
                received.add(reply[0])
    lost = BURST - len(received)
    if lost:
        return Finding(
            informational=True,
            note=f"{lost} of {BURST} datagrams sent at once got no reply within "
            f"{BURST_WAIT:g} s (a reply rate limit, or a full receive buffer)",
        )
    return Finding(note=f"all {BURST} datagrams came back")


def receive(
    sock: socket.socket, server: tuple[str, int], wait: float
) -> tuple[bytes, tuple[str, int]] | None:
    """The next datagram and where it came from; None after ``wait`` seconds."""
    sock.settimeout(max(wait, 0.001))
    try:
        payload, source = sock.recvfrom(RECEIVE_SIZE)
    except TimeoutError:
        return None
    except ConnectionRefusedError:
        raise Failure("a UDP echo", f"port {server[1]} is closed (ICMP port unreachable)") from None
    return payload, (str(source[0]), int(source[1]))


def format_address(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
