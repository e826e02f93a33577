"""STUN codec: RFC 5769 vectors, every truncated prefix, header checks, builders, fuzz."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from punchd.errors import StunParseError
from punchd.wire import stun

PASSWORD = b"VOkJxbRl1RmTxUk/WvJxBt"  # RFC 5769 §2

REQUEST = bytes.fromhex(  # RFC 5769 §2.1
    "000100582112a442b7e7a701bc34d686fa87dfae"
    "802200105354554e207465737420636c69656e74"
    "002400046e0001ff80290008932ff9b151263b36"
    "000600096576746a3a6836765920202000080014"
    "9aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a2"
    "80280004e57a3bcf"
)
RESPONSE_V4 = bytes.fromhex(  # RFC 5769 §2.2
    "0101003c2112a442b7e7a701bc34d686fa87dfae"
    "8022000b7465737420766563746f722000200008"
    "0001a147e112a643000800142b91f599fd9e90c3"
    "8c7489f92af9ba53f06be7d780280004c07d4c96"
)
RESPONSE_V6 = bytes.fromhex(  # RFC 5769 §2.3
    "010100482112a442b7e7a701bc34d686fa87dfae"
    "8022000b7465737420766563746f722000200014"
    "0002a1470113a9faa5d3f179bc25f4b5bed2b9d9"
    "00080014a382954e4be67bf11784c97c8292c275"
    "bfe3ed4180280004c8fb0b4c"
)
TXID = bytes.fromhex("b7e7a701bc34d686fa87dfae")
VECTORS = [REQUEST, RESPONSE_V4, RESPONSE_V6]


def test_rfc5769_request() -> None:
    msg = stun.parse(REQUEST, integrity_key=PASSWORD)
    assert msg.message_method == stun.Method.BINDING
    assert msg.message_class == stun.Class.REQUEST
    assert msg.transaction_id == TXID
    assert msg.attributes["USERNAME"] == "evtj:h6vY"
    assert msg.attributes["SOFTWARE"] == "STUN test client"
    assert msg.attributes["PRIORITY"] == 0x6E0001FF
    assert msg.attributes["ICE-CONTROLLED"] == 0x932FF9B151263B36
    assert msg.attributes["FINGERPRINT"] == 0xE57A3BCF


@pytest.mark.parametrize(("vector", "address"), [
    (RESPONSE_V4, ("192.0.2.1", 32853)),
    (RESPONSE_V6, ("2001:db8:1234:5678:11:2233:4455:6677", 32853)),
])
def test_rfc5769_responses(vector: bytes, address: tuple[str, int]) -> None:
    msg = stun.parse(vector, integrity_key=PASSWORD)
    assert msg.message_class == stun.Class.RESPONSE
    assert msg.attributes["XOR-MAPPED-ADDRESS"] == address
    assert msg.attributes["SOFTWARE"] == "test vector"


@pytest.mark.parametrize("vector", VECTORS)
def test_wrong_password_fails_integrity(vector: bytes) -> None:
    with pytest.raises(StunParseError, match="MESSAGE-INTEGRITY"):
        stun.parse(vector, integrity_key=b"wrong")


def test_integrity_checked_only_when_asked_and_absent_integrity_fails() -> None:
    plain = stun.binding_request(TXID)
    stun.parse(plain)
    with pytest.raises(StunParseError, match="MESSAGE-INTEGRITY"):
        stun.parse(plain, integrity_key=PASSWORD)


def test_message_integrity_round_trip() -> None:
    msg = stun.Message(stun.Method.BINDING, stun.Class.REQUEST, TXID, {"USERNAME": "evtj:h6vY"})
    msg.add_message_integrity(PASSWORD)
    data = bytes(msg)
    assert stun.parse(data, integrity_key=PASSWORD).attributes["USERNAME"] == "evtj:h6vY"
    with pytest.raises(StunParseError):
        stun.parse(data, integrity_key=PASSWORD + b"x")


@pytest.mark.parametrize("vector", VECTORS)
def test_every_flipped_bit_after_the_header_is_caught(vector: bytes) -> None:
    # FINGERPRINT covers everything before it, MESSAGE-INTEGRITY everything before
    # itself: a flipped bit anywhere in the body fails one of them. The one exception
    # is FINGERPRINT's own type field: the attribute becomes an unknown
    # comprehension-optional one, which RFC 8489 §14 says to ignore.
    fingerprint_type = len(vector) - 8
    for i in range(stun.HEADER_LENGTH * 8, len(vector) * 8):
        damaged = bytearray(vector)
        damaged[i // 8] ^= 0x80 >> (i % 8)
        if fingerprint_type <= i // 8 < fingerprint_type + 2:
            msg = stun.parse(bytes(damaged), integrity_key=PASSWORD)
            assert "FINGERPRINT" not in msg.attributes
            continue
        with pytest.raises(StunParseError):
            stun.parse(bytes(damaged), integrity_key=PASSWORD)


@pytest.mark.parametrize("vector", VECTORS)
def test_every_truncated_prefix_is_a_stun_parse_error(vector: bytes) -> None:
    for n in range(len(vector)):
        with pytest.raises(StunParseError):
            stun.parse(vector[:n])


@pytest.mark.parametrize("vector", VECTORS)
def test_truncation_with_a_fixed_up_length_is_a_stun_parse_error(vector: bytes) -> None:
    # A cut on a 4-byte boundary with the length field rewritten to match: the header
    # agrees, the attribute framing or FINGERPRINT must not.
    for n in range(stun.HEADER_LENGTH + 4, len(vector), 4):
        cut = vector[:2] + struct.pack("!H", n - stun.HEADER_LENGTH) + vector[4:n]
        try:
            msg = stun.parse(cut)
        except StunParseError:
            continue
        assert "FINGERPRINT" not in msg.attributes  # only a clean cut before FINGERPRINT


def test_bad_cookie_top_bits_and_length_are_rejected() -> None:
    with pytest.raises(StunParseError, match="cookie"):
        stun.parse(RESPONSE_V4[:4] + b"\x21\x12\xa4\x43" + RESPONSE_V4[8:])
    with pytest.raises(StunParseError, match="top two bits"):
        stun.parse(b"\x41" + RESPONSE_V4[1:])
    with pytest.raises(StunParseError, match="length"):
        stun.parse(RESPONSE_V4 + b"\x00\x00\x00\x00")
    with pytest.raises(StunParseError, match="length"):
        stun.parse(RESPONSE_V4[:2] + b"\x00\x3d" + RESPONSE_V4[4:] + b"\x00")


def test_attribute_after_fingerprint_is_rejected() -> None:
    data = stun.binding_request(TXID) + b"\x80\x22\x00\x00"  # empty SOFTWARE after it
    data = data[:2] + struct.pack("!H", len(data) - 20) + data[4:]
    with pytest.raises(StunParseError, match="follows FINGERPRINT"):
        stun.parse(data)


def test_unknown_method_is_a_stun_parse_error() -> None:
    data = b"\x00\x3f\x00\x00\x21\x12\xa4\x42" + TXID
    with pytest.raises(StunParseError):
        stun.parse(data)


def test_classic_rfc3489_messages_only_when_asked() -> None:
    classic = b"\x00\x01\x00\x08" + bytes(range(16)) + b"\x00\x03\x00\x04\x00\x00\x00\x04"
    with pytest.raises(StunParseError, match="cookie"):
        stun.parse(classic)
    msg = stun.parse(classic, classic=True)
    assert stun.is_classic(classic) and not stun.is_classic(REQUEST)
    assert msg.attributes["CHANGE-REQUEST"] == stun.CHANGE_IP
    assert msg.transaction_id == bytes(range(4, 16))


def test_unknown_comprehension_required_attributes_are_listed() -> None:
    # An unassigned 0x7001 is unknown and required; RESPONSE-PORT (0x0027) is known
    # (RFC 5780) and 0x8055 is comprehension-optional: neither counts.
    attrs = b"\x00\x27\x00\x04\x12\x34\x00\x00" + b"\x70\x01\x00\x00" + b"\x80\x55\x00\x00"
    data = b"\x00\x01" + struct.pack("!H", len(attrs)) + b"\x21\x12\xa4\x42" + TXID + attrs
    stun.parse(data)
    assert stun.unknown_comprehension_required(data) == (0x7001,)
    assert stun.unknown_comprehension_required(REQUEST) == ()


def test_builders_round_trip() -> None:
    req = stun.parse(stun.binding_request(TXID, change=stun.CHANGE_IP | stun.CHANGE_PORT,
                                          software="punchd"))
    assert req.attributes["CHANGE-REQUEST"] == 6 and req.attributes["SOFTWARE"] == "punchd"
    assert "FINGERPRINT" in req.attributes
    ok = stun.parse(stun.binding_success(TXID, ("2001:db8::1", 4000),
                                         response_origin=("2001:db8::a", 3478),
                                         other_address=("2001:db8::b", 3479)))
    assert ok.attributes["XOR-MAPPED-ADDRESS"] == ("2001:db8::1", 4000)
    assert ok.attributes["RESPONSE-ORIGIN"] == ("2001:db8::a", 3478)
    assert ok.attributes["OTHER-ADDRESS"] == ("2001:db8::b", 3479)
    err = stun.binding_error(TXID, 420, "Unknown Attribute", unknown=(0x27, 0x7001, 0x7002))
    msg = stun.parse(err)
    assert msg.attributes["ERROR-CODE"] == (420, "Unknown Attribute")
    # UNKNOWN-ATTRIBUTES (0x000A): three types, padded to 8 bytes, before FINGERPRINT.
    assert err[-20:-8] == b"\x00\x0a\x00\x06\x00\x27\x70\x01\x70\x02\x00\x00"


def test_classic_answers_echo_the_cookie_and_use_rfc3489_attributes() -> None:
    cookie = b"\xde\xad\xbe\xef"
    data = stun.binding_success(TXID, ("198.51.100.7", 4000), response_origin=("192.0.2.10", 1),
                                other_address=("192.0.2.11", 2), classic_cookie=cookie)
    assert data[4:8] == cookie
    msg = stun.parse(data, classic=True)
    assert msg.attributes == {"MAPPED-ADDRESS": ("198.51.100.7", 4000),
                              "SOURCE-ADDRESS": ("192.0.2.10", 1),
                              "CHANGED-ADDRESS": ("192.0.2.11", 2)}
    err = stun.binding_error(TXID, 420, "Unknown Attribute", unknown=(3,), classic_cookie=cookie)
    assert err[4:8] == cookie and "FINGERPRINT" not in stun.parse(err, classic=True).attributes


def test_is_stun() -> None:
    for vector in VECTORS:
        assert stun.is_stun(vector)
    assert not stun.is_stun(b"\x01\x00\x00\x00" + REQUEST[4:])  # WireGuard initiation type
    assert not stun.is_stun(REQUEST[:19])
    assert not stun.is_stun(REQUEST + b"\x00\x00\x00\x00")  # length field disagrees
    assert not stun.is_stun(b"PNCH" + REQUEST[4:])  # a punch probe


@given(st.binary(max_size=200))
def test_fuzz_only_stun_parse_error(data: bytes) -> None:
    for classic in (False, True):
        try:
            stun.parse(data, classic=classic)
        except StunParseError:
            pass


@given(st.lists(st.tuples(st.sampled_from([*sorted(stun.KNOWN_TYPES), 0x000A, 0x7FFF]),
                          st.binary(max_size=24)), max_size=6),
       st.sampled_from([0x0001, 0x0101, 0x0111, 0x0011]))
def test_fuzz_well_framed_attributes_only_stun_parse_error(
        attrs: list[tuple[int, bytes]], msg_type: int) -> None:
    body = b"".join(struct.pack("!HH", t, len(v)) + v + bytes(-len(v) % 4) for t, v in attrs)
    data = struct.pack("!HHI", msg_type, len(body), stun.MAGIC_COOKIE) + TXID + body
    try:
        stun.parse(data, integrity_key=PASSWORD)
    except StunParseError:
        pass
    else:
        assert stun.is_stun(data)


@given(st.integers(0, len(RESPONSE_V6) - 1), st.integers(0, 255))
def test_fuzz_one_byte_changed(index: int, value: int) -> None:
    data = bytearray(RESPONSE_V6)
    data[index] = value
    try:
        stun.parse(bytes(data))
    except StunParseError:
        pass
