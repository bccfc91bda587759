"""The PROXY protocol (versions 1 and 2), free of I/O: a header parser and an encoder.

A load balancer in TCP mode (haproxy's ``send-proxy``/``send-proxy-v2``) opens its own
connection to the server, so the server sees the balancer's address. The PROXY protocol
puts one header in front of the client's bytes that says who the client really was.
The specification is haproxy's ``doc/proxy-protocol.txt`` (2020/03/05); the section
numbers below are its own.

Parsing, as a server drives it::

    parser = ProxyHeaderParser("any")          # accepted versions: "v1", "v2" or "any"
    outcome = parser.feed(chunk)               # every chunk read, until the outcome is final
      NEED_MORE                                 read more (the caller bounds the wait: 3 s)
      Parsed(header, rest)                      the header; ``rest`` is the client's first data
      Invalid(reason)                           close the connection; ``reason`` is the log line

The rules the parser enforces (each has a test in ``tests/test_proxy_protocol.py``):

Detection (2.2, end)
    The receiver is configured for the protocol and never guesses (5.): bytes that cannot
    start an accepted header are refused as soon as they are seen, not after 107 bytes.
    A v2 signature is 12 fixed bytes (a NUL among them) and the version nibble ``2``;
    a v1 header starts with ``PROXY``.
Version 1 (2.1)
    One US-ASCII line ending in CRLF within the first 107 bytes (the longest legal line,
    ``PROXY UNKNOWN`` with two full IPv6 addresses); a lone CR or LF is an error.
    ``PROXY TCP4|TCP6 SRC DST SPORT DPORT``: fields separated by exactly one space,
    IPv4 in dotted decimal without leading zeros, IPv6 in the protocol family announced,
    ports 0-65535 without leading zeros. ``PROXY UNKNOWN`` ignores the rest of its line;
    the connection keeps its real endpoints.
Version 2 (2.2)
    A 16-byte block: signature, version and command (``LOCAL`` = 0: the balancer's own
    connection, e.g. a health check, real endpoints used; ``PROXY`` = 1; any other command
    is refused), family and transport (family 0-3 and transport 0-2, anything else
    refused), and the length of what follows. Addresses: 12 bytes (IPv4), 36 (IPv6),
    216 (UNIX); a length shorter than its family's block is refused. A valid family with
    an unspecified transport, or the reverse, falls back to UNSPEC (no addresses), as the
    spec allows. The length is bounded (:data:`MAX_V2_LENGTH`): a flood of headers
    announcing 64 KiB costs nothing.
TLVs (2.2.1-2.2.8)
    After the addresses, type-length-value records up to the end of the header: ALPN,
    AUTHORITY (UTF-8), CRC32C (checked: a wrong checksum refuses the connection),
    NOOP (ignored), UNIQUE_ID (at most 128 bytes), SSL (client flags, verify result and
    the sub-TLVs VERSION, CN, CIPHER, SIG_ALG, KEY_ALG), NETNS. Unknown types are
    skipped by their length. A record running past the end of the header is refused.
    With ``LOCAL`` or an unspecified family the block is skipped whole (the spec: "discard
    the protocol block including the family").

The encoder (:func:`encode_v1`, :func:`encode_v2`) is the client side: ``sockecho send
--proxy`` and ``bench --proxy`` speak to a PROXY-expecting server without a balancer.
"""

from __future__ import annotations

import enum
import ipaddress
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from sockecho import config

#: What ``--proxy-protocol`` accepts.
ProxyVersions = Literal["v1", "v2", "any"]
PROXY_VERSIONS: Final = config.PROXY_VERSIONS

V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX: Final = b"PROXY "
#: The longest legal v1 line, CRLF included (2.1: ``PROXY UNKNOWN`` with two full IPv6
#: addresses and ports). A receiver that has this many bytes without a CRLF refuses.
MAX_V1_LENGTH: Final = 107
V2_FIXED_LENGTH: Final = 16
#: The most bytes a v2 header may announce after its fixed 16. The spec bounds none but
#: says a header fits in one segment; the largest real one is a UNIX address block (216)
#: with SSL details, an authority (255) and a unique id (128), well under 1 KiB. 2048
#: leaves room for custom TLVs and keeps a parser's buffer at ~2 KiB per connection.
MAX_V2_LENGTH: Final = 2048
#: 2.2.5: a unique id is "up to 128 bytes".
MAX_UNIQUE_ID: Final = 128

# v2 command, family and transport nibbles (2.2)
LOCAL: Final = 0x0
PROXY: Final = 0x1
_FAMILY_NAMES: Final = {0x0: "unspec", 0x1: "inet", 0x2: "inet6", 0x3: "unix"}
_TRANSPORT_NAMES: Final = {0x0: "unspec", 0x1: "stream", 0x2: "dgram"}
_ADDRESS_LENGTHS: Final = {0x1: 12, 0x2: 36, 0x3: 216}

# TLV types (2.2)
PP2_TYPE_ALPN: Final = 0x01
PP2_TYPE_AUTHORITY: Final = 0x02
PP2_TYPE_CRC32C: Final = 0x03
PP2_TYPE_NOOP: Final = 0x04
PP2_TYPE_UNIQUE_ID: Final = 0x05
PP2_TYPE_SSL: Final = 0x20
PP2_SUBTYPE_SSL_VERSION: Final = 0x21
PP2_SUBTYPE_SSL_CN: Final = 0x22
PP2_SUBTYPE_SSL_CIPHER: Final = 0x23
PP2_SUBTYPE_SSL_SIG_ALG: Final = 0x24
PP2_SUBTYPE_SSL_KEY_ALG: Final = 0x25
PP2_TYPE_NETNS: Final = 0x30
PP2_CLIENT_SSL: Final = 0x01
PP2_CLIENT_CERT_CONN: Final = 0x02
PP2_CLIENT_CERT_SESS: Final = 0x04

_SSL_SUBTYPES: Final = {
    PP2_SUBTYPE_SSL_VERSION: "version",
    PP2_SUBTYPE_SSL_CN: "cn",
    PP2_SUBTYPE_SSL_CIPHER: "cipher",
    PP2_SUBTYPE_SSL_SIG_ALG: "sig_alg",
    PP2_SUBTYPE_SSL_KEY_ALG: "key_alg",
}

_V4_PART = r"(?:0|[1-9][0-9]{0,2})"
_V4_RE: Final = re.compile(rf"{_V4_PART}(?:\.{_V4_PART}){{3}}")
_V6_RE: Final = re.compile(r"[0-9A-Fa-f:.]{2,45}")
_PORT_RE: Final = re.compile(r"0|[1-9][0-9]{0,4}")


class ProxyCommand(enum.Enum):
    """Whose endpoints the header carries."""

    PROXY = "proxy"  # a relayed connection: the header's addresses are the client's
    LOCAL = "local"  # the balancer's own connection (health check): keep the real endpoints


@dataclass(frozen=True, slots=True)
class SSLInfo:
    """The v2 SSL TLV (2.2.6): how the client reached the balancer."""

    client: int  # bit field of PP2_CLIENT_*
    verify: int  # 0: the client's certificate was verified
    version: str | None = None
    cn: str | None = None
    cipher: str | None = None
    sig_alg: str | None = None
    key_alg: str | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "ssl": bool(self.client & PP2_CLIENT_SSL),
            "cert_conn": bool(self.client & PP2_CLIENT_CERT_CONN),
            "cert_sess": bool(self.client & PP2_CLIENT_CERT_SESS),
            "verified": self.verify == 0,
            "version": self.version,
            "cn": self.cn,
            "cipher": self.cipher,
            "sig_alg": self.sig_alg,
            "key_alg": self.key_alg,
        }


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """One parsed header. ``source``/``destination`` are None when the real endpoints stand
    (v2 ``LOCAL``, v1 ``UNKNOWN``, an unspecified family)."""

    version: int
    command: ProxyCommand
    family: str  # "inet", "inet6", "unix", "unspec"
    transport: str  # "stream", "dgram", "unspec"
    source: tuple[str, int] | None = None
    destination: tuple[str, int] | None = None
    length: int = 0  # bytes the header took on the wire
    alpn: bytes | None = None
    authority: str | None = None
    unique_id: bytes | None = None
    ssl: SSLInfo | None = None
    netns: str | None = None
    unknown_tlvs: tuple[int, ...] = field(default=())  # types skipped, in order

    @property
    def relayed(self) -> bool:
        """Whether the header names the client (use its addresses instead of the socket's)."""
        return self.source is not None

    def describe(self) -> dict[str, Any]:
        """A JSON-ready description (the ``proxy`` field of ``--identify``)."""
        return {
            "version": self.version,
            "command": self.command.value.upper(),
            "family": self.family,
            "transport": self.transport,
            "source": _format_endpoint(self.source),
            "destination": _format_endpoint(self.destination),
            "alpn": self.alpn.decode("ascii", "replace") if self.alpn is not None else None,
            "authority": self.authority,
            "unique_id": self.unique_id.hex() if self.unique_id is not None else None,
            "ssl": self.ssl.describe() if self.ssl is not None else None,
        }


def _format_endpoint(endpoint: tuple[str, int] | None) -> str | None:
    if endpoint is None:
        return None
    host, port = endpoint
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}" if port or "." in host else host


class _NeedMore:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_MORE"


#: :meth:`ProxyHeaderParser.feed`: the header is not complete yet; read more.
NEED_MORE: Final = _NeedMore()


@dataclass(frozen=True, slots=True)
class Parsed:
    """The header is complete; ``rest`` are the bytes after it (the client's data)."""

    header: ProxyHeader
    rest: bytes


@dataclass(frozen=True, slots=True)
class Invalid:
    """Not a valid header: close the connection. ``reason`` says what was wrong (for a log)."""

    reason: str


Outcome = _NeedMore | Parsed | Invalid


class ProxyHeaderParser:
    """Reads one PROXY header from the start of a byte stream, fed in chunks of any size.

    Memory is bounded by the header limits (107 bytes for v1, 16 + :data:`MAX_V2_LENGTH`
    for v2) plus the last chunk fed. Once :meth:`feed` returned :class:`Parsed` or
    :class:`Invalid` the parser is done; feeding it again returns the same outcome.
    """

    __slots__ = ("_buffer", "_outcome", "_versions")

    def __init__(self, versions: ProxyVersions = "any") -> None:
        if versions not in PROXY_VERSIONS:
            raise ValueError(f"versions must be one of {', '.join(PROXY_VERSIONS)}")
        self._versions = versions
        self._buffer = bytearray()
        self._outcome: Outcome = NEED_MORE

    @property
    def done(self) -> bool:
        return self._outcome is not NEED_MORE

    @property
    def buffered(self) -> int:
        """Bytes held while the header is incomplete."""
        return len(self._buffer)

    @property
    def bytes_wanted(self) -> int:
        """How many bytes may be read next without reading past the header (0 once done).

        For a receiver that must leave what follows the header in the kernel, such as
        TLS after a PROXY header (the ClientHello belongs to the SSL object): read at
        most this many, feed them, ask again. A v2 header takes two reads (its fixed 16
        bytes, then the length they announce); a v1 line is read a byte or two at a time
        once its shortest form (15 bytes) is in, as its end is known only at the CRLF.
        """
        if self._outcome is not NEED_MORE:
            return 0
        buf = self._buffer
        if buf[:1] == V2_SIGNATURE[:1] and self._versions != "v1":
            if len(buf) < V2_FIXED_LENGTH:
                return V2_FIXED_LENGTH - len(buf)
            return V2_FIXED_LENGTH + int.from_bytes(buf[14:16], "big") - len(buf)
        shortest = len(b"PROXY UNKNOWN\r\n")
        return max(shortest - len(buf), 1 if buf.endswith(b"\r") else 2)

    def feed(self, data: bytes | bytearray | memoryview) -> Outcome:
        """Add the next bytes read from the connection; the outcome so far."""
        if self._outcome is not NEED_MORE:
            return self._outcome
        self._buffer += data
        self._outcome = self._parse()
        if self._outcome is not NEED_MORE:
            self._buffer = bytearray()
        return self._outcome

    def _parse(self) -> Outcome:
        buf = self._buffer
        if not buf:
            return NEED_MORE
        v1 = self._versions in ("v1", "any") and _starts_like(buf, V1_PREFIX)
        v2 = self._versions in ("v2", "any") and _starts_like(buf, V2_SIGNATURE)
        if not (v1 or v2):
            return Invalid(self._not_a_header())
        if v2:
            return self._parse_v2()
        return self._parse_v1()

    def _not_a_header(self) -> str:
        wanted = {"v1": "a v1 header", "v2": "a v2 header", "any": "a PROXY header"}
        start = bytes(self._buffer[:16])
        return f"not {wanted[self._versions]}: the connection starts with {start!r}"

    # -- version 1 ---------------------------------------------------------------------------

    def _parse_v1(self) -> Outcome:
        buf = self._buffer
        window = bytes(buf[:MAX_V1_LENGTH])
        cr = _v1_line_end(window)
        if isinstance(cr, str):
            return Invalid(f"v1 header: {cr}")
        if cr < 0:
            if len(buf) >= MAX_V1_LENGTH:
                return Invalid(f"v1 header: no CRLF within {MAX_V1_LENGTH} bytes")
            return NEED_MORE
        line, rest = window[:cr], bytes(buf[cr + 2 :])
        if line.startswith(b"PROXY UNKNOWN") and line[13:14] in (b"", b" "):
            # 2.1: the receiver ignores anything presented before the CRLF
            return Parsed(
                ProxyHeader(1, ProxyCommand.PROXY, "unspec", "unspec", length=cr + 2), rest
            )
        result = _parse_v1_line(line)
        if isinstance(result, str):
            return Invalid(f"v1 header: {result}: {line!r}")
        header = ProxyHeader(
            version=1,
            command=ProxyCommand.PROXY,
            family=result[0],
            transport="stream",
            source=result[1],
            destination=result[2],
            length=cr + 2,
        )
        return Parsed(header, rest)

    # -- version 2 ---------------------------------------------------------------------------

    def _parse_v2(self) -> Outcome:
        buf = self._buffer
        if len(buf) < V2_FIXED_LENGTH:
            if len(buf) > len(V2_SIGNATURE) and buf[12] >> 4 != 2:
                return Invalid(f"v2 header: version {buf[12] >> 4}, only 2 is defined")
            return NEED_MORE
        ver_cmd, fam, length = struct.unpack_from("!BBH", buf, 12)
        wrong = _v2_fixed_block_error(ver_cmd, fam, length)
        if wrong:
            return Invalid(f"v2 header: {wrong}")
        total = V2_FIXED_LENGTH + length
        if len(buf) < total:
            return NEED_MORE
        header = _v2_header(buf, total)
        if isinstance(header, str):
            return Invalid(f"v2 header: {header}")
        return Parsed(header, bytes(buf[total:]))


def _v2_header(buf: bytearray, total: int) -> ProxyHeader | str:
    """The v2 header in ``buf[:total]`` (its fixed block already checked), or what is wrong."""
    command, family, transport = buf[12] & 0x0F, buf[13] >> 4, buf[13] & 0x0F
    if command == LOCAL:
        return ProxyHeader(2, ProxyCommand.LOCAL, "unspec", "unspec", length=total)
    if family == 0 or transport == 0:
        return ProxyHeader(
            2, ProxyCommand.PROXY, _FAMILY_NAMES[family], _TRANSPORT_NAMES[transport], length=total
        )
    needed = _ADDRESS_LENGTHS[family]
    source, destination = _v2_addresses(
        family, bytes(buf[V2_FIXED_LENGTH : V2_FIXED_LENGTH + needed])
    )
    fields = _parse_tlvs(buf, total, V2_FIXED_LENGTH + needed)
    if isinstance(fields, str):
        return fields
    return ProxyHeader(
        version=2,
        command=ProxyCommand.PROXY,
        family=_FAMILY_NAMES[family],
        transport=_TRANSPORT_NAMES[transport],
        source=source,
        destination=destination,
        length=total,
        **fields,
    )


def _starts_like(buf: bytearray, prefix: bytes) -> bool:
    """Whether ``buf`` begins with ``prefix``, or with as much of it as has arrived."""
    n = min(len(buf), len(prefix))
    return buf[:n] == prefix[:n]


def _v1_line_end(window: bytes) -> int | str:
    """Where the CRLF starts in ``window`` (-1: not yet), or why the line cannot end well."""
    cr, lf = window.find(b"\r"), window.find(b"\n")
    if lf >= 0 and (cr < 0 or lf < cr):
        return "a line feed without a carriage return before it"
    if cr < 0 or cr + 1 >= len(window):
        return -1
    if window[cr + 1] != 0x0A:
        return "a carriage return not followed by a line feed"
    return cr


def _parse_v1_line(line: bytes) -> tuple[str, tuple[str, int], tuple[str, int]] | str:
    """(family, source, destination) from a TCP4/TCP6 line without its CRLF, or what was
    wrong."""
    try:
        parts = line.decode("ascii").split(" ")
    except UnicodeDecodeError:
        return "bytes that are not US-ASCII"
    if len(parts) < 2 or parts[1] not in ("TCP4", "TCP6"):
        return "the protocol must be TCP4, TCP6 or UNKNOWN"
    if len(parts) != 6:
        return "expected PROXY, a protocol, two addresses and two ports, one space apart"
    _, proto, src, dst, sport, dport = parts
    family = "inet" if proto == "TCP4" else "inet6"
    hosts = []
    for address in (src, dst):
        host = _v1_address(address, family)
        if host is None:
            kind = "IPv4" if family == "inet" else "IPv6"
            return f"{address!r} is not an {kind} address in canonical form"
        hosts.append(host)
    ports = []
    for port in (sport, dport):
        if not _PORT_RE.fullmatch(port) or int(port) > 65535:
            return f"{port!r} is not a port (0-65535, no leading zeros)"
        ports.append(int(port))
    return (family, (hosts[0], ports[0]), (hosts[1], ports[1]))


def _v2_fixed_block_error(ver_cmd: int, fam: int, length: int) -> str:
    """What is wrong with bytes 13-16 of a v2 header ('' if nothing)."""
    version, command, family, transport = ver_cmd >> 4, ver_cmd & 0x0F, fam >> 4, fam & 0x0F
    needed = _ADDRESS_LENGTHS.get(family, 0) if command == PROXY and transport else 0
    family_name = _FAMILY_NAMES.get(family, "")
    checks = (
        (version != 2, f"version {version}, only 2 is defined"),
        (command not in (LOCAL, PROXY), f"unassigned command {command:#x}"),
        (not family_name, f"unassigned address family {family:#x}"),
        (transport not in _TRANSPORT_NAMES, f"unassigned transport protocol {transport:#x}"),
        (
            length > MAX_V2_LENGTH,
            f"announces {length} bytes after its first 16, more than the {MAX_V2_LENGTH} accepted",
        ),
        (
            length < needed,
            f"{length} bytes cannot hold the {needed}-byte {family_name} address block",
        ),
    )
    return next((reason for wrong, reason in checks if wrong), "")


def _v1_address(text: str, family: str) -> str | None:
    try:
        if family == "inet":
            if not _V4_RE.fullmatch(text):
                return None
            return str(ipaddress.IPv4Address(text))
        if not _V6_RE.fullmatch(text):
            return None
        return str(ipaddress.IPv6Address(text))
    except ValueError:
        return None


def _v2_addresses(family: int, block: bytes) -> tuple[tuple[str, int], tuple[str, int]]:
    if family == 0x1:
        src, dst, sport, dport = struct.unpack_from("!4s4sHH", block)
        return (
            (str(ipaddress.IPv4Address(src)), sport),
            (str(ipaddress.IPv4Address(dst)), dport),
        )
    if family == 0x2:
        src, dst, sport, dport = struct.unpack_from("!16s16sHH", block)
        return (
            (str(ipaddress.IPv6Address(src)), sport),
            (str(ipaddress.IPv6Address(dst)), dport),
        )
    src_path, dst_path = block[:108], block[108:216]
    return (_unix_path(src_path), 0), (_unix_path(dst_path), 0)


def _unix_path(raw: bytes) -> str:
    return raw.split(b"\x00", 1)[0].decode("utf-8", "backslashreplace")


def _tlv_records(data: bytes | bytearray, start: int, end: int) -> list[tuple[int, int, int]] | str:
    """(type, value start, value end) for each record in ``data[start:end]``, or the error."""
    records = []
    pos = start
    while pos < end:
        if end - pos < 3:
            return f"{end - pos} stray byte(s) where a TLV needs at least 3"
        kind, length = data[pos], int.from_bytes(data[pos + 1 : pos + 3], "big")
        value_start = pos + 3
        if value_start + length > end:
            return f"TLV {kind:#04x} of {length} bytes runs past the end of the header"
        records.append((kind, value_start, value_start + length))
        pos = value_start + length
    return records


def _parse_tlvs(buf: bytearray, total: int, start: int) -> dict[str, Any] | str:
    records = _tlv_records(buf, start, total)
    if isinstance(records, str):
        return records
    fields: dict[str, Any] = {}
    unknown: list[int] = []
    for kind, lo, hi in records:
        value = bytes(buf[lo:hi])
        if kind == PP2_TYPE_CRC32C:
            zeroed = bytes(buf[:lo]) + bytes(len(value)) + bytes(buf[hi:total])
            wrong = _checksum_error(value, zeroed)
        elif kind in _TLV_READERS:
            name, reader = _TLV_READERS[kind]
            read = reader(value)
            if isinstance(read, _TLVError):
                return read.reason
            fields[name] = read
            wrong = ""
        else:
            wrong = ""
            if kind != PP2_TYPE_NOOP:
                unknown.append(kind)
        if wrong:
            return wrong
    fields["unknown_tlvs"] = tuple(unknown)
    return fields


@dataclass(frozen=True, slots=True)
class _TLVError:
    reason: str


def _checksum_error(value: bytes, zeroed_header: bytes) -> str:
    if len(value) != 4:
        return f"the CRC32C TLV holds {len(value)} bytes, not 4"
    if crc32c(zeroed_header) != int.from_bytes(value, "big"):
        return "the CRC32C checksum does not match the header"
    return ""


def _read_authority(value: bytes) -> str | _TLVError:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return _TLVError("the AUTHORITY TLV is not UTF-8")


def _read_unique_id(value: bytes) -> bytes | _TLVError:
    if len(value) > MAX_UNIQUE_ID:
        return _TLVError(f"the UNIQUE_ID TLV holds {len(value)} bytes, more than {MAX_UNIQUE_ID}")
    return value


def _read_ssl(value: bytes) -> SSLInfo | _TLVError:
    ssl = _parse_ssl(value)
    return _TLVError(ssl) if isinstance(ssl, str) else ssl


_TLV_READERS: Final[dict[int, tuple[str, Callable[[bytes], object]]]] = {
    PP2_TYPE_ALPN: ("alpn", bytes),
    PP2_TYPE_AUTHORITY: ("authority", _read_authority),
    PP2_TYPE_UNIQUE_ID: ("unique_id", _read_unique_id),
    PP2_TYPE_SSL: ("ssl", _read_ssl),
    PP2_TYPE_NETNS: ("netns", lambda value: value.decode("ascii", "replace")),
}


def _parse_ssl(value: bytes) -> SSLInfo | str:
    if len(value) < 5:
        return f"the SSL TLV holds {len(value)} bytes, fewer than its 5 fixed ones"
    client, verify = struct.unpack_from("!BI", value)
    records = _tlv_records(value, 5, len(value))
    if isinstance(records, str):
        return f"in the SSL TLV: {records}"
    details: dict[str, str] = {}
    for kind, lo, hi in records:
        name = _SSL_SUBTYPES.get(kind)
        if name is not None:
            details[name] = value[lo:hi].decode("utf-8", "replace")
    return SSLInfo(client=client, verify=verify, **details)


# -- CRC32C (Castagnoli, RFC 4960 appendix B) ----------------------------------------------------


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE: Final = _crc32c_table()


def crc32c(data: bytes | bytearray) -> int:
    """The CRC32C of ``data`` (a header is at most ~2 KiB: a table loop is fast enough)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# -- the client side ---------------------------------------------------------------------------


def encode_v1(source: tuple[str, int] | None, destination: tuple[str, int] | None) -> bytes:
    """A v1 line for a TCP connection from ``source`` to ``destination`` (host, port);
    ``PROXY UNKNOWN`` when either is None."""
    if source is None or destination is None:
        return b"PROXY UNKNOWN\r\n"
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    if src.version != dst.version:
        raise ValueError("source and destination must be of the same address family")
    proto = "TCP4" if src.version == 4 else "TCP6"
    return f"PROXY {proto} {src} {dst} {source[1]} {destination[1]}\r\n".encode("ascii")


def encode_tlv(kind: int, value: bytes) -> bytes:
    """One type-length-value record."""
    if len(value) > 0xFFFF:
        raise ValueError("a TLV value is at most 65535 bytes")
    return struct.pack("!BH", kind, len(value)) + value


def encode_v2(
    source: tuple[str, int] | None,
    destination: tuple[str, int] | None,
    *,
    local: bool = False,
    tlvs: bytes = b"",
    checksum: bool = False,
) -> bytes:
    """A v2 header: ``PROXY`` over TCP from ``source`` to ``destination``, or ``LOCAL``
    (``local=True``, or when an endpoint is None: no addresses). ``tlvs`` are records from
    :func:`encode_tlv`; ``checksum`` appends a CRC32C TLV."""
    if local or source is None or destination is None:
        command, fam, block = LOCAL, 0x00, b""
    else:
        src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
        if src.version != dst.version:
            raise ValueError("source and destination must be of the same address family")
        fam = 0x11 if src.version == 4 else 0x21
        command = PROXY
        block = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1])
    payload = block + tlvs
    if checksum:
        payload += encode_tlv(PP2_TYPE_CRC32C, b"\x00\x00\x00\x00")
    header = bytearray(V2_SIGNATURE + struct.pack("!BBH", 0x20 | command, fam, len(payload)))
    header += payload
    if checksum:
        header[-4:] = crc32c(header).to_bytes(4, "big")
    return bytes(header)


def encode(
    version: Literal["v1", "v2"], source: tuple[str, int], destination: tuple[str, int]
) -> bytes:
    """The header ``sockecho send --proxy VERSION`` sends first."""
    return encode_v1(source, destination) if version == "v1" else encode_v2(source, destination)
