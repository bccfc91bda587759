"""The PROXY protocol parser and encoder, rule by rule (haproxy doc/proxy-protocol.txt)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sockecho.proxy_protocol import (
    MAX_V1_LENGTH,
    MAX_V2_LENGTH,
    NEED_MORE,
    PP2_CLIENT_CERT_CONN,
    PP2_CLIENT_SSL,
    PP2_SUBTYPE_SSL_CIPHER,
    PP2_SUBTYPE_SSL_CN,
    PP2_SUBTYPE_SSL_VERSION,
    PP2_TYPE_ALPN,
    PP2_TYPE_AUTHORITY,
    PP2_TYPE_CRC32C,
    PP2_TYPE_NETNS,
    PP2_TYPE_NOOP,
    PP2_TYPE_SSL,
    PP2_TYPE_UNIQUE_ID,
    V2_SIGNATURE,
    Invalid,
    Outcome,
    Parsed,
    ProxyCommand,
    ProxyHeader,
    ProxyHeaderParser,
    ProxyVersions,
    crc32c,
    encode,
    encode_tlv,
    encode_v1,
    encode_v2,
)

V4_SRC, V4_DST = ("192.168.0.1", 56324), ("192.168.0.11", 443)
V6_SRC, V6_DST = ("2001:db8::1", 40000), ("2001:db8::2", 7)


def parse(data: bytes, versions: ProxyVersions = "any") -> Outcome:
    return ProxyHeaderParser(versions).feed(data)


def parsed(data: bytes, versions: ProxyVersions = "any") -> Parsed:
    outcome = parse(data, versions)
    assert isinstance(outcome, Parsed), outcome
    return outcome


def invalid(data: bytes, versions: ProxyVersions = "any") -> str:
    outcome = parse(data, versions)
    assert isinstance(outcome, Invalid), outcome
    return outcome.reason


def v2(ver_cmd: int, fam: int, payload: bytes, length: int | None = None) -> bytes:
    size = len(payload) if length is None else length
    return V2_SIGNATURE + struct.pack("!BBH", ver_cmd, fam, size) + payload


V4_BLOCK = bytes([192, 168, 0, 1, 192, 168, 0, 11]) + struct.pack("!HH", 56324, 443)


# -- version 1 ---------------------------------------------------------------------------------


def test_v1_tcp4_line_gives_the_client_addresses_and_the_bytes_after_it() -> None:
    outcome = parsed(b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n")
    assert outcome.header.version == 1
    assert outcome.header.command is ProxyCommand.PROXY
    assert outcome.header.family == "inet"
    assert outcome.header.source == V4_SRC
    assert outcome.header.destination == V4_DST
    assert outcome.header.relayed
    assert outcome.header.length == 47
    assert outcome.rest == b"GET / HTTP/1.1\r\n"


def test_v1_tcp6_line_gives_the_ipv6_addresses() -> None:
    header = parsed(b"PROXY TCP6 2001:db8::1 2001:DB8:0:0:0:0:0:2 40000 7\r\n").header
    assert header.family == "inet6"
    assert header.source == V6_SRC
    assert header.destination == V6_DST


def test_v1_unknown_keeps_the_real_endpoints_and_ignores_the_rest_of_its_line() -> None:
    for line in (b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN ffff:: whatever \xff 1 2\r\n"):
        outcome = parsed(line + b"data")
        assert not outcome.header.relayed
        assert outcome.header.family == "unspec"
        assert outcome.rest == b"data"


def test_v1_longest_legal_line_of_107_bytes_is_accepted() -> None:
    six = ":".join(["ffff"] * 8)
    line = f"PROXY UNKNOWN {six} {six} 65535 65535\r\n".encode()
    assert len(line) == MAX_V1_LENGTH
    assert parsed(line).header.length == MAX_V1_LENGTH
    full = f"PROXY TCP6 {six} {six} 65535 65535\r\n".encode()
    assert parsed(full).header.source == ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535)


def test_v1_without_crlf_in_107_bytes_is_refused() -> None:
    assert "no CRLF within 107" in invalid(b"PROXY UNKNOWN " + b"x" * 93)
    assert parse(b"PROXY UNKNOWN " + b"x" * 92) is NEED_MORE  # 106 bytes: may still end


def test_v1_crlf_at_the_108th_byte_is_too_late() -> None:
    assert "no CRLF" in invalid(b"PROXY UNKNOWN " + b"x" * 92 + b"\r\n")


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",  # LF alone
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX\n",  # CR alone
        b"PROXY TCP4 1.2.3.4\n 5.6.7.8 1 2\r\n",  # LF inside the line
    ],
)
def test_v1_single_cr_or_lf_does_not_end_the_line(line: bytes) -> None:
    assert "carriage return" in invalid(line) or "line feed" in invalid(line)


@pytest.mark.parametrize(
    ("line", "what"),
    [
        (b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", "one space apart"),  # two spaces
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "one space apart"),  # trailing space
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "one space apart"),  # a port missing
        (b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "TCP4, TCP6 or UNKNOWN"),
        (b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", "TCP4, TCP6 or UNKNOWN"),
        (b"PROXY UNKNOWNX\r\n", "TCP4, TCP6 or UNKNOWN"),
        (b"PROXY\r\n", "PROXY header"),  # "PROXY " with its space is the v1 start
        (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "IPv4"),  # leading zero
        (b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", "IPv4"),
        (b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", "IPv4"),
        (b"PROXY TCP4 1.2.3.4.5 5.6.7.8 1 2\r\n", "IPv4"),
        (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "IPv4"),  # family mismatch
        (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "IPv6"),
        (b"PROXY TCP6 ::1 1::2::3 1 2\r\n", "IPv6"),  # two double colons
        (b"PROXY TCP6 ::1 fe80::1%eth0 1 2\r\n", "IPv6"),  # a zone is no address
        (b"PROXY TCP6 ::1 1:2:3:4:5:6:7:8:9 1 2\r\n", "IPv6"),  # more than 128 bits
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "port"),  # leading zero
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n", "port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", "port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\xff\r\n", "US-ASCII"),
    ],
)
def test_v1_line_that_does_not_match_exactly_is_refused(line: bytes, what: str) -> None:
    assert what in invalid(line)


def test_v1_ports_zero_and_65535_are_in_range() -> None:
    header = parsed(b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n").header
    assert header.source == ("0.0.0.0", 0)
    assert header.destination == ("255.255.255.255", 65535)


def test_v1_is_refused_by_a_v2_only_receiver() -> None:
    assert "not a v2 header" in invalid(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "v2")


# -- detection -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "start", [b"GET / HTTP/1.1\r\n", b"\x16\x03\x01", b"hello", b"PROXZ", b"\r\n\r\n\x01"]
)
def test_bytes_that_cannot_start_a_header_are_refused_at_once(start: bytes) -> None:
    assert "not a PROXY header" in invalid(start)


def test_a_header_prefix_needs_more_bytes_in_every_version() -> None:
    for versions in ("v1", "any"):
        assert parse(b"PROX", versions) is NEED_MORE  # type: ignore[arg-type]
    for versions in ("v2", "any"):
        assert parse(V2_SIGNATURE[:5], versions) is NEED_MORE  # type: ignore[arg-type]


def test_the_receiver_never_guesses_a_missing_header() -> None:
    """5.: a connection without the header is refused, never echoed as plain data."""
    assert isinstance(parse(b"just data\r\n"), Invalid)


# -- incremental feeding -------------------------------------------------------------------


@pytest.mark.parametrize(
    "wire",
    [
        encode_v1(V4_SRC, V4_DST) + b"payload",
        encode_v2(V6_SRC, V6_DST, tlvs=encode_tlv(PP2_TYPE_AUTHORITY, b"example.com")) + b"payload",
    ],
)
def test_a_header_fed_one_byte_at_a_time_parses_like_one_chunk(wire: bytes) -> None:
    parser = ProxyHeaderParser("any")
    outcomes = [parser.feed(wire[i : i + 1]) for i in range(len(wire))]
    final = next(o for o in outcomes if o is not NEED_MORE)
    assert isinstance(final, Parsed)
    whole = parsed(wire)
    assert final.header == whole.header
    index = outcomes.index(final)
    assert final.rest == b""  # the header ended exactly at this byte
    assert wire[index + 1 :] == b"payload"
    assert parser.done


def test_the_outcome_is_final_once_given() -> None:
    parser = ProxyHeaderParser()
    first = parser.feed(b"nope")
    assert parser.feed(encode_v1(V4_SRC, V4_DST)) is first


def test_a_parser_holds_no_bytes_after_its_outcome() -> None:
    parser = ProxyHeaderParser()
    parser.feed(b"PROXY UNKNOWN")
    assert parser.buffered == 13
    parser.feed(b"\r\n" + b"x" * 10_000)
    assert parser.buffered == 0


def test_unknown_versions_value_is_refused() -> None:
    with pytest.raises(ValueError, match="v1, v2, any"):
        ProxyHeaderParser("v3")  # type: ignore[arg-type]


@given(st.binary(max_size=300))
def test_any_bytes_end_in_an_outcome_within_the_limits(data: bytes) -> None:
    outcome = ProxyHeaderParser().feed(data)
    if outcome is NEED_MORE:
        assert len(data) < 16 + MAX_V2_LENGTH


# -- version 2 -----------------------------------------------------------------------------


def test_v2_proxy_tcp4_gives_the_client_addresses_and_the_bytes_after_it() -> None:
    outcome = parsed(v2(0x21, 0x11, V4_BLOCK) + b"rest")
    assert outcome.header.version == 2
    assert outcome.header.command is ProxyCommand.PROXY
    assert (outcome.header.family, outcome.header.transport) == ("inet", "stream")
    assert outcome.header.source == V4_SRC
    assert outcome.header.destination == V4_DST
    assert outcome.header.length == 28
    assert outcome.rest == b"rest"


def test_v2_udp_over_ipv6_is_parsed() -> None:
    block = bytes(15) + b"\x01" + bytes(15) + b"\x02" + struct.pack("!HH", 5, 6)
    header = parsed(v2(0x21, 0x22, block)).header
    assert (header.family, header.transport) == ("inet6", "dgram")
    assert header.source == ("::1", 5)
    assert header.destination == ("::2", 6)


def test_v2_unix_addresses_are_the_paths() -> None:
    block = b"/run/client".ljust(108, b"\x00") + b"/run/server".ljust(108, b"\x00")
    header = parsed(v2(0x21, 0x31, block)).header
    assert header.family == "unix"
    assert header.source == ("/run/client", 0)
    assert header.describe()["source"] == "/run/client"


def test_v2_local_keeps_the_real_endpoints_whatever_the_block_says() -> None:
    """2.2: LOCAL must use the real endpoints and skip the block by its length."""
    for fam, payload in ((0x00, b""), (0x11, V4_BLOCK), (0x11, b"junk")):
        outcome = parsed(v2(0x20, fam, payload) + b"after")
        assert outcome.header.command is ProxyCommand.LOCAL
        assert not outcome.header.relayed
        assert outcome.rest == b"after"


def test_v2_proxy_with_unspecified_family_or_transport_falls_back_to_the_real_endpoints() -> None:
    for fam in (0x00, 0x10, 0x01):
        header = parsed(v2(0x21, fam, b"whatever")).header
        assert header.command is ProxyCommand.PROXY
        assert not header.relayed


@pytest.mark.parametrize(
    ("ver_cmd", "fam", "what"),
    [
        (0x11, 0x11, "version 1"),
        (0x31, 0x11, "version 3"),
        (0x22, 0x11, "unassigned command 0x2"),
        (0x2F, 0x11, "unassigned command 0xf"),
        (0x21, 0x41, "unassigned address family 0x4"),
        (0x21, 0x13, "unassigned transport protocol 0x3"),
    ],
)
def test_v2_unassigned_values_are_refused(ver_cmd: int, fam: int, what: str) -> None:
    assert what in invalid(v2(ver_cmd, fam, V4_BLOCK))


def test_v2_wrong_version_is_refused_before_the_16_bytes_arrive() -> None:
    assert "version 1" in invalid(V2_SIGNATURE + b"\x11")


def test_v2_is_refused_by_a_v1_only_receiver() -> None:
    assert "not a v1 header" in invalid(v2(0x21, 0x11, V4_BLOCK), "v1")


def test_v2_length_too_short_for_its_family_is_refused() -> None:
    assert "12-byte inet" in invalid(v2(0x21, 0x11, V4_BLOCK[:11]))
    assert "36-byte inet6" in invalid(v2(0x21, 0x21, V4_BLOCK))


def test_v2_partial_header_waits_for_its_announced_length() -> None:
    wire = v2(0x21, 0x11, V4_BLOCK)
    assert parse(wire[:-1]) is NEED_MORE


def test_v2_announcing_more_than_the_limit_is_refused_from_the_fixed_block_alone() -> None:
    reason = invalid(v2(0x21, 0x11, b"", length=MAX_V2_LENGTH + 1))
    assert f"more than the {MAX_V2_LENGTH}" in reason
    assert parse(v2(0x21, 0x11, b"", length=MAX_V2_LENGTH)) is NEED_MORE


# -- TLVs ----------------------------------------------------------------------------------


def test_v2_tlvs_alpn_authority_unique_id_and_netns_are_read() -> None:
    tlvs = (
        encode_tlv(PP2_TYPE_ALPN, b"h2")
        + encode_tlv(PP2_TYPE_AUTHORITY, "échø.example".encode())
        + encode_tlv(PP2_TYPE_UNIQUE_ID, b"\x01\x02")
        + encode_tlv(PP2_TYPE_NETNS, b"blue")
    )
    header = parsed(v2(0x21, 0x11, V4_BLOCK + tlvs)).header
    assert header.alpn == b"h2"
    assert header.authority == "échø.example"
    assert header.unique_id == b"\x01\x02"
    assert header.netns == "blue"
    assert header.describe()["unique_id"] == "0102"


def test_v2_ssl_tlv_and_its_subtypes_are_read() -> None:
    subs = (
        encode_tlv(PP2_SUBTYPE_SSL_VERSION, b"TLSv1.3")
        + encode_tlv(PP2_SUBTYPE_SSL_CN, b"client.example")
        + encode_tlv(PP2_SUBTYPE_SSL_CIPHER, b"TLS_AES_128_GCM_SHA256")
        + encode_tlv(0x2F, b"unknown sub-TLV")
    )
    ssl = struct.pack("!BI", PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN, 0) + subs
    header = parsed(v2(0x21, 0x11, V4_BLOCK + encode_tlv(PP2_TYPE_SSL, ssl))).header
    assert header.ssl is not None
    assert header.ssl.version == "TLSv1.3"
    assert header.ssl.cn == "client.example"
    assert header.ssl.cipher == "TLS_AES_128_GCM_SHA256"
    described = header.ssl.describe()
    assert described["ssl"]
    assert described["cert_conn"]
    assert not described["cert_sess"]
    assert described["verified"]


def test_v2_unknown_and_noop_tlvs_are_skipped_by_their_length() -> None:
    tlvs = (
        encode_tlv(0xE0, b"custom")
        + encode_tlv(PP2_TYPE_NOOP, b"")
        + encode_tlv(0xF8, b"x" * 300)
        + encode_tlv(PP2_TYPE_ALPN, b"echo")
    )
    header = parsed(v2(0x21, 0x11, V4_BLOCK + tlvs)).header
    assert header.unknown_tlvs == (0xE0, 0xF8)
    assert header.alpn == b"echo"


@pytest.mark.parametrize(
    ("tlvs", "what"),
    [
        (encode_tlv(PP2_TYPE_ALPN, b"h2")[:-1], "runs past the end"),
        (b"\x01\x00", "stray byte"),
        (encode_tlv(PP2_TYPE_AUTHORITY, b"\xff\xfe"), "not UTF-8"),
        (encode_tlv(PP2_TYPE_UNIQUE_ID, b"x" * 129), "more than 128"),
        (encode_tlv(PP2_TYPE_SSL, b"\x01\x00\x00"), "fewer than its 5"),
        (encode_tlv(PP2_TYPE_SSL, b"\x01\x00\x00\x00\x00\x21\x00\x09TLS"), "in the SSL TLV"),
        (encode_tlv(PP2_TYPE_CRC32C, b"\x00\x00"), "not 4"),
    ],
)
def test_v2_malformed_tlvs_are_refused(tlvs: bytes, what: str) -> None:
    assert what in invalid(v2(0x21, 0x11, V4_BLOCK + tlvs))


def test_v2_unique_id_of_128_bytes_is_accepted() -> None:
    tlv = encode_tlv(PP2_TYPE_UNIQUE_ID, b"u" * 128)
    assert parsed(v2(0x21, 0x11, V4_BLOCK + tlv)).header.unique_id == b"u" * 128


def test_crc32c_matches_the_rfc_4960_check_value() -> None:
    assert crc32c(b"123456789") == 0xE3069283


def test_v2_correct_checksum_is_accepted_and_a_wrong_one_refused() -> None:
    wire = encode_v2(V4_SRC, V4_DST, checksum=True)
    assert parsed(wire).header.source == V4_SRC
    broken = wire[:-1] + bytes([wire[-1] ^ 1])
    assert "CRC32C checksum does not match" in invalid(broken)
    tampered = bytearray(wire)
    tampered[17] ^= 1  # one address bit flipped
    assert "does not match" in invalid(bytes(tampered))


# -- the encoder ---------------------------------------------------------------------------


@pytest.mark.parametrize(("source", "destination"), [(V4_SRC, V4_DST), (V6_SRC, V6_DST)])
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_encoded_headers_parse_back_to_their_addresses(
    version: str, source: tuple[str, int], destination: tuple[str, int]
) -> None:
    header: ProxyHeader = parsed(encode(version, source, destination)).header  # type: ignore[arg-type]
    assert header.source == source
    assert header.destination == destination
    assert header.version == int(version[1])


def test_encoder_matches_the_spec_example_byte_for_byte() -> None:
    assert encode_v1(V4_SRC, V4_DST) == b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
    assert encode_v2(V4_SRC, V4_DST) == v2(0x21, 0x11, V4_BLOCK)


def test_encoder_local_and_unknown_forms() -> None:
    assert encode_v1(None, None) == b"PROXY UNKNOWN\r\n"
    assert encode_v2(None, None) == v2(0x20, 0x00, b"")
    assert parsed(encode_v2(V4_SRC, V4_DST, local=True)).header.command is ProxyCommand.LOCAL


def test_encoder_refuses_mixed_families() -> None:
    with pytest.raises(ValueError, match="same address family"):
        encode_v1(V4_SRC, V6_DST)
    with pytest.raises(ValueError, match="same address family"):
        encode_v2(V4_SRC, V6_DST)


def test_description_is_what_identify_shows() -> None:
    described = parsed(encode_v2(V6_SRC, V6_DST)).header.describe()
    assert described["source"] == "[2001:db8::1]:40000"
    assert described["destination"] == "[2001:db8::2]:7"
    assert described["command"] == "PROXY"
    assert described["version"] == 2


@pytest.mark.parametrize(
    "wire",
    [
        encode_v1(V4_SRC, V4_DST),
        encode_v1(V6_SRC, V6_DST),
        encode_v1(None, None),
        b"PROXY UNKNOWN whatever\r\n",
        encode_v2(V4_SRC, V4_DST, tlvs=encode_tlv(PP2_TYPE_ALPN, b"h2")),
        encode_v2(None, None),
    ],
)
def test_reading_what_the_parser_wants_never_reads_past_the_header(wire: bytes) -> None:
    stream = wire + b"\x16\x03\x01 the TLS ClientHello that follows"
    parser = ProxyHeaderParser("any")
    offset = 0
    while (wanted := parser.bytes_wanted) > 0:
        outcome = parser.feed(stream[offset : offset + wanted])
        offset += wanted
        assert offset <= len(wire)
    assert isinstance(outcome, Parsed)
    assert outcome.rest == b""
    assert offset == len(wire)
