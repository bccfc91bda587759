"""The TCP probes (also run over TLS with ``--tls``). Each takes a :class:`Probe`, raises
:class:`Failure` when the server breaks the case's requirement, and returns a
:class:`Finding` otherwise. :mod:`.cases` names them, says why each matters, and orders
them."""

from __future__ import annotations

import ssl
import threading
import time

from sockecho.check.probe import (
    Connection,
    Failure,
    Finding,
    Probe,
    Writer,
    chunked,
    compare,
    describe_bytes,
    lost,
    size_text,
    stream_echo,
)

#: Seconds a probe listens for bytes that should not come (a banner, extra echo). Loopback
#: delivers in microseconds; half a second also covers a server that greets after a pause.
QUIET = 0.5
#: Seconds without progress after which a writer counts as pushed back by the server.
STALL = 0.3
#: Seconds a second client waits for its echo while the first stays connected.
SECOND_CLIENT_WAIT = 1.0
#: Seconds a connection stays idle in ``tcp.idle.two-seconds`` (the issue's figure).
IDLE = 2.0
#: Seconds between a client's reset and the next connection: a server that dies of the
#: reset dies when it next touches that socket, which a concurrent server may do a little
#: after the reset arrives.
RESET_SETTLE = 0.2
#: Clients of ``tcp.concurrency.100-clients`` and the bytes each sends: 16 KiB takes
#: several recv() calls each, so threads that share a buffer overwrite each other's data.
CLIENTS = 100
CLIENT_BYTES = 16 * 1024
#: What ``tcp.flow.back-pressure`` writes before reading anything (bytes).
BACKPRESSURE_BYTES = 8 * 1024 * 1024
#: Bytes per write in it: whole segments.
BACKPRESSURE_CHUNK = 64 * 1024
#: Times it writes the 8 MiB, waits for the push-back and drains them, on one connection.
#: A server that can deadlock on a full buffer (socat's PIPE, with its default 8 KiB
#: blocks, on its own pipe) does so only when its reads happened to leave its pipe
#: misaligned: one round caught socat in 5 runs of 10 here, three rounds in about 9 of 10
#: (2026-11-29, a shared 2-core machine: timing-dependent, noisy).
BACKPRESSURE_ROUNDS = 3
#: Seconds without progress that count as push-back after the first round (the buffers
#: have grown by then; this only needs to be long enough for them to fill).
LATER_STALL = 0.1

PARTIAL_SEND = "send() without checking its return value (a partial send drops the rest)?"


def all_values(probe: Probe) -> Finding | None:
    data = bytes(range(256))
    with probe.connect() as conn:
        conn.send(data)
        conn.expect_echo(data, "the bytes decoded as text, or changed on the way (a newline?)")
    return None


def one_byte_writes(probe: Probe) -> Finding | None:
    data = bytes(probe.rng.randrange(256) for _ in range(32))
    with probe.connect() as conn:
        for index, byte in enumerate(data):
            conn.send(bytes([byte]))
            try:
                echoed = conn.receive(1)
            except OSError as exc:
                raise Failure(
                    "each byte echoed before the next is written",
                    f"after {index} of 32 bytes: {lost(exc)}",
                    "one recv() per connection?",
                ) from None
            if echoed != bytes([byte]):
                raise Failure(
                    "each byte echoed before the next is written",
                    f"after {index} of 32 bytes came back, the next "
                    + ("did not come" if not echoed else f"was {describe_bytes(echoed)}"),
                    "one recv() per connection, or waiting for more bytes before echoing?",
                )
    return None


def random_chunks(probe: Probe) -> Finding | None:
    data = probe.rng.randbytes(64 * 1024)
    chunks: list[bytes] = []
    at = 0
    while at < len(data):
        size = probe.rng.randint(1, 4096)
        chunks.append(data[at : at + size])
        at += size
    with probe.connect() as conn:
        stream_echo(conn, data, chunks, "the echo assumes one recv() per send()?")
    return Finding(note=f"{len(chunks)} writes of 1-4096 bytes")


def size_case(size: int):  # type: ignore[no-untyped-def]
    def probe_size(probe: Probe) -> Finding | None:
        data = probe.rng.randbytes(size)
        with probe.connect() as conn:
            stream_echo(conn, data, chunked(data, 64 * 1024), PARTIAL_SEND)
        return None

    probe_size.__name__ = f"size_{size}"
    return probe_size


def back_pressure(probe: Probe) -> Finding | None:
    data = probe.rng.randbytes(BACKPRESSURE_BYTES)
    total = size_text(len(data))
    with probe.connect() as conn:
        stalled, absorbed = push_then_drain(conn, data, STALL)
        for _ in range(BACKPRESSURE_ROUNDS - 1):
            probe.restart_deadline()
            push_then_drain(conn, data, LATER_STALL)
    if not stalled:
        return Finding(
            informational=True,
            note=f"took all {total} (with the kernel's buffers) before the client read "
            f"anything: no push-back within {total} (a server that buffers without a bound "
            "is a memory risk with many such clients); echoed it all",
        )
    return Finding(
        note=f"took {size_text(absorbed)} (with the kernel's buffers) before pushing back, "
        f"then echoed all {total}, {BACKPRESSURE_ROUNDS} times"
    )


def push_then_drain(conn: Connection, data: bytes, quiet: float) -> tuple[bool, int]:
    """Write ``data`` without reading until the server stops taking it for ``quiet``
    seconds, then read it all back (writing on). Whether it pushed back, and how much it
    had taken by then."""
    total = size_text(len(data))
    writer = Writer(conn, chunked(data, BACKPRESSURE_CHUNK))
    stalled = writer.wait_for_stall(quiet)
    absorbed = writer.sent
    if writer.error is not None:
        raise Failure(f"the server to take {total}", lost(writer.error))
    try:
        received = conn.receive(len(data))
    except OSError as exc:
        raise Failure(f"all {total} back once the client reads", lost(exc)) from None
    writer.join()
    if received != data:
        raise Failure(
            f"all {total} back once the client reads",
            compare(data, received, conn.probe.timeout)
            + f" (the server took {size_text(writer.sent)} in all)",
            "the server blocks writing to a client that is not reading, and stops "
            "reading its input meanwhile (a pipe or buffer full in both directions)?",
        )
    return stalled, absorbed


def no_banner(probe: Probe) -> Finding | None:
    with probe.connect() as conn:
        expect_silence(
            conn, "silence until the client writes", "bytes before the client wrote anything",
            "a greeting or prompt? An echo server sends only the echo.",
        )  # fmt: skip
    return None


def no_extra_bytes(probe: Probe) -> Finding | None:
    data = b"sockecho check: nothing but this\n"
    with probe.connect() as conn:
        conn.send(data)
        conn.expect_echo(data)
        expect_silence(
            conn, "silence after the echo", "more bytes",
            "a prompt, a newline or a status line added to the echo?",
        )  # fmt: skip
    return None


def expect_silence(conn: Connection, expected: str, what: str, cause: str) -> None:
    """Fail unless ``conn`` stays quiet for QUIET seconds: ``N <what>: <the bytes>``."""
    try:
        unexpected = conn.receive(4096, wait=QUIET)
    except OSError as exc:
        raise Failure(expected, lost(exc)) from None
    if unexpected:
        raise Failure(
            expected, f"{len(unexpected)} {what}: {describe_bytes(unexpected[:32])}", cause
        )


def half_close(probe: Probe) -> Finding | None:
    data = bytes(range(256))
    with probe.connect() as conn:
        conn.send(data)
        conn.half_close()
        try:
            received = conn.expect_eof()
        except OSError as exc:
            raise Failure("the 256 bytes back, then the server's FIN", lost(exc)) from None
    if received != data:
        raise Failure(
            "the 256 bytes back, then the server's FIN",
            compare(data, received, probe.timeout) + " before the server's FIN",
            "the server closes as soon as it reads the client's FIN, before sending "
            "what it still holds?",
        )
    return None


def empty_connection(probe: Probe) -> Finding | None:
    with probe.connect():
        pass  # connect and close without sending anything
    data = b"still there?\n"
    with probe.connect() as conn:
        conn.send(data)
        conn.expect_echo(
            data, "the accept loop ends (break) when a client sends nothing (recv() == b'')?"
        )
    return None


def reset_mid_stream(probe: Probe) -> Finding | None:
    with probe.connect() as conn:
        conn.send(probe.rng.randbytes(64 * 1024))
        conn.reset()
    deadline = time.monotonic() + RESET_SETTLE
    for _ in range(2):  # before and after the server has had time to trip over the reset
        data = b"still there?\n"
        with probe.connect() as conn:
            conn.send(data)
            conn.expect_echo(data, "a try/except around the whole server instead of each client?")
        left = deadline - time.monotonic()
        if left > 0:
            threading.Event().wait(left)
    return None


def second_client(probe: Probe) -> Finding | None:
    with probe.connect() as first:
        first.send(b"1")
        first.expect_echo(b"1")
        second = probe.connect(handshake=False)
        data = b"a second client\n"
        received = b""
        served = second.handshake(SECOND_CLIENT_WAIT)  # True at once without TLS
        if served:
            second.send(data)
            received = second.receive(len(data), wait=SECOND_CLIENT_WAIT)
            if received == data:
                second.close()
                return None
    # The first client is gone now: the second one must be served.
    with second:
        if not served and not second.handshake():
            raise Failure("the second client served once the first closed", "it never was")
        if not served:
            second.send(data)
        rest = second.receive(len(data) - len(received))
        if received + rest != data:
            raise Failure(
                "the second client served once the first closed",
                compare(data, received + rest, probe.timeout),
            )
    return Finding(
        non_strict=True,
        expected="a second client served while the first stays connected",
        note="the second client was served only after the first closed: one client at a time",
    )


def many_clients(probe: Probe) -> Finding | None:
    # Each client's bytes are its own number, so a byte in the wrong echo names its owner.
    payloads = [bytes([index]) * CLIENT_BYTES for index in range(CLIENTS)]
    echoes: list[bytes | None] = [None] * CLIENTS
    errors: list[str] = []

    def client(index: int) -> None:
        try:
            with probe.connect() as conn:
                writer = Writer(conn, chunked(payloads[index], 4096))
                echoes[index] = conn.receive(CLIENT_BYTES)
                writer.join()
        except (Failure, OSError) as exc:
            errors.append(str(exc))

    threads = [
        threading.Thread(target=client, args=(index,), name="sockecho-check-client", daemon=True)
        for index in range(CLIENTS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(probe.remaining())
    wrong = [
        index
        for index, echo in enumerate(echoes)
        if echo is not None and echo != payloads[index][: len(echo)]
    ]
    if wrong:
        index = wrong[0]
        echo = echoes[index]
        assert echo is not None
        at = next(i for i, (a, b) in enumerate(zip(payloads[index], echo, strict=False)) if a != b)
        other = f" (client {echo[at]}'s?)" if echo[at] < CLIENTS else ""
        raise Failure(
            "each client gets exactly its own bytes back",
            f"{len(wrong)} of {CLIENTS} clients got bytes that are not theirs; client "
            f"{index}'s echo differs from byte {at}: {describe_bytes(echo[at : at + 8])}{other}",
            "threads that share one buffer (or one global variable)?",
        )
    served = sum(1 for index, echo in enumerate(echoes) if echo == payloads[index])
    if served < CLIENTS:
        reason = f"; first error: {errors[0]}" if errors else ""
        return Finding(
            non_strict=True,
            expected=f"{CLIENTS} clients served at once",
            note=f"{CLIENTS - served} of {CLIENTS} clients had no complete echo after "
            f"{probe.timeout:g} s{reason} (a small listen backlog? one client at a time?)",
        )
    return None


def stalled_reader(probe: Probe) -> Finding | None:
    data = b"not stalled\n"
    with probe.connect() as first:
        first.send(b"1")
        first.expect_echo(b"1")
        second = probe.connect(handshake=False)
        if not second.handshake(SECOND_CLIENT_WAIT):
            second.close()
            return Finding(
                non_strict=True,
                expected="other clients served while one stops reading",
                note="the server serves one client at a time (see tcp.concurrency.second-client)",
            )
        with second:
            second.send(data)
            if second.receive(len(data), wait=SECOND_CLIENT_WAIT) != data:
                second.close()
                return Finding(
                    non_strict=True,
                    expected="other clients served while one stops reading",
                    note="a second client is not served while the first is connected",
                )
            # The first client writes without reading until the server stops taking bytes.
            flood = Writer(first, [b"\0" * 65536] * (64 * 1024 * 1024 // 65536))
            flood.wait_for_stall(STALL)
            with probe.connect(handshake=False) as third:
                if third.handshake(probe.remaining() / 2):
                    third.send(data)
                    received = third.receive(len(data), wait=probe.remaining() / 2)
                else:
                    received = b""
            if received != data:
                raise Failure(
                    "other clients served while one client stops reading",
                    f"a new client got {len(received)} of {len(data)} bytes back while one "
                    "client was not reading",
                    "a blocking sendall() inside a select() loop?",
                )
    return Finding(note=f"one client stopped reading after the server took {flood.sent} bytes")


def idle(probe: Probe) -> Finding | None:
    with probe.connect() as conn:
        conn.send(b"1")
        conn.expect_echo(b"1")
        started = time.monotonic()
        try:
            unexpected = conn.receive(1, wait=IDLE)
        except OSError as exc:
            unexpected = b""
            closed: str | None = lost(exc)
        else:
            closed = None if unexpected or time.monotonic() - started >= IDLE else "closed it"
        if closed is not None:
            return Finding(
                informational=True,
                note=f"the server {closed} after {time.monotonic() - started:.1f} s idle "
                "(an idle timeout)",
            )
        if unexpected:
            raise Failure("silence while the client is idle", "bytes came that nobody sent")
        data = b"after a pause\n"
        conn.send(data)
        conn.expect_echo(data)
    return None


def tls_handshake(probe: Probe) -> Finding | None:
    assert probe.tls is not None
    with probe.connect(handshake=False) as conn:
        conn.sock.settimeout(probe.remaining())
        try:
            tls = probe.tls.wrap_socket(conn.sock, server_hostname=probe.host)
        except ssl.SSLCertVerificationError as exc:
            raise Failure(
                "a certificate the client trusts",
                f"{exc.verify_message}",
                "pass --tls-ca FILE with the CA that signed it, or --insecure for a test server",
            ) from None
        except (OSError, ssl.SSLError) as exc:
            raise Failure("a TLS handshake", str(exc)) from None
        try:
            version, cipher = tls.version(), tls.cipher()
        finally:
            tls.close()
    if version is None or cipher is None:
        raise Failure("a TLS handshake", "no TLS session")
    return Finding(note=f"{version}, {cipher[0]}")
