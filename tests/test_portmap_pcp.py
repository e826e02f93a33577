"""PCP codec (RFC 6887): MAP and ANNOUNCE layouts, IPv4-mapped addresses, framing, fuzz."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from punchd.errors import PortmapParseError
from punchd.portmap import pcp

NONCE = bytes.fromhex("0123456789abcdef01234567")
# §7.2 header + §11.1 MAP data: success, 7200 s, epoch 42, UDP 51820 -> 198.51.100.2:40000.
MAP_SUCCESS = bytes.fromhex(
    "02 81 00 00 00001c20 0000002a" + "00" * 12   # version, R|MAP, rsvd, result, life, epoch
    + "0123456789abcdef01234567"                   # mapping nonce
    + "11 000000 ca6c 9c40"                        # UDP, reserved, internal, external port
    + "00000000000000000000ffff c6336402"          # ::ffff:198.51.100.2 (§5)
)
ANNOUNCE_SUCCESS = bytes.fromhex("02 80 00 00 00000000 0000002a" + "00" * 12)
UNSUPP_VERSION_HEADER = bytes.fromhex("02 81 00 01 00000000 00000007" + "00" * 12)
ANSWERS = [MAP_SUCCESS, ANNOUNCE_SUCCESS, UNSUPP_VERSION_HEADER]


def test_map_request_layout() -> None:
    data = pcp.map_request("198.18.0.10", NONCE, 51820, 7200, external_port=51820)
    assert len(data) == 60 and len(data) % 4 == 0
    assert data[:8] == bytes.fromhex("02 01 0000 00001c20")  # §7.1: version 2, R=0, MAP
    assert data[8:24] == bytes.fromhex("00000000000000000000ffff c612000a")  # client, §5
    assert data[24:36] == NONCE
    assert data[36:44] == bytes.fromhex("11 000000 ca6c ca6c")
    # §11.1: no preference for the external IPv4 address is ::ffff:0.0.0.0.
    assert data[44:60] == bytes.fromhex("00000000000000000000ffff00000000")


def test_announce_request_is_a_bare_header() -> None:
    data = pcp.announce_request("198.18.0.10")
    assert data == bytes.fromhex("02 00 0000 00000000 00000000000000000000ffff c612000a")


def test_ipv6_client_addresses_are_not_mapped() -> None:
    data = pcp.map_request("2001:db8::5", NONCE, 1, 60)
    assert pcp.parse_request(data).client_ip == "2001:db8::5"


def test_map_request_refuses_bad_values() -> None:
    with pytest.raises(ValueError):
        pcp.map_request("198.18.0.10", b"short", 51820, 60)
    with pytest.raises(ValueError):
        pcp.map_request("198.18.0.10", NONCE, 0, 60)
    with pytest.raises(ValueError):
        pcp.map_request("198.18.0.10", NONCE, 1, 2**32)


def test_map_success() -> None:
    answer = pcp.parse_response(MAP_SUCCESS)
    assert answer == pcp.Response(version=2, opcode=1, result=0, lifetime=7200, epoch=42,
                                  nonce=NONCE, protocol=17, internal_port=51820,
                                  external_port=40000, external_address="198.51.100.2")


def test_announce_and_header_only_unsupp_version() -> None:
    assert pcp.parse_response(ANNOUNCE_SUCCESS).opcode == pcp.OP_ANNOUNCE
    refused = pcp.parse_response(UNSUPP_VERSION_HEADER)
    assert refused.result == pcp.Result.UNSUPP_VERSION and refused.nonce is None


def test_a_newer_version_server_may_only_say_unsupp_version() -> None:
    # §9: a server answers with the version it speaks; only UNSUPP_VERSION makes sense.
    other = b"\x03" + UNSUPP_VERSION_HEADER[1:]
    assert pcp.parse_response(other).version == 3
    with pytest.raises(PortmapParseError, match="version 3"):
        pcp.parse_response(b"\x03" + MAP_SUCCESS[1:])


def test_options_are_framed_and_skipped() -> None:
    option = bytes.fromhex("01 00 0010") + bytes(16)  # THIRD_PARTY (§13.1), 16 bytes
    answer = pcp.parse_response(MAP_SUCCESS + option)
    assert answer.external_port == 40000
    with pytest.raises(PortmapParseError, match="past the end"):
        pcp.parse_response(MAP_SUCCESS + bytes.fromhex("01 00 0020") + bytes(16))
    with pytest.raises(PortmapParseError):
        pcp.parse_response(ANNOUNCE_SUCCESS + b"\x01\x00")  # not a multiple of 4 either


@pytest.mark.parametrize("vector", ANSWERS)
def test_every_truncated_prefix_is_a_portmap_parse_error(vector: bytes) -> None:
    # A success cut anywhere is too short (the error answer of 8 bytes, or a 24-byte
    # header, is the shortest thing that parses).
    for n in range(len(vector)):
        with pytest.raises(PortmapParseError):
            pcp.parse_response(vector[:n])


@pytest.mark.parametrize(("data", "message"), [
    (b"\x00" + MAP_SUCCESS[1:], "NAT-PMP"),
    (MAP_SUCCESS[:1] + b"\x01" + MAP_SUCCESS[2:], "request"),
    (MAP_SUCCESS[:1] + b"\x83" + MAP_SUCCESS[2:], "opcode 3"),
    (MAP_SUCCESS + bytes(1100), "at most 1100"),
    (MAP_SUCCESS[:42] + b"\x00\x00" + MAP_SUCCESS[44:], "external port 0"),
])
def test_wrong_version_opcode_size_and_impossible_success(data: bytes, message: str) -> None:
    with pytest.raises(PortmapParseError, match=message):
        pcp.parse_response(data)


def test_error_answers_may_omit_the_map_data() -> None:
    short = pcp.encode_response(pcp.OP_MAP, pcp.Result.NOT_AUTHORIZED, 60, 3)
    answer = pcp.parse_response(short)
    assert answer.result == pcp.Result.NOT_AUTHORIZED and answer.external_port == 0


def test_server_half_round_trips() -> None:
    request = pcp.parse_request(pcp.map_request("198.18.0.10", NONCE, 51820, 60,
                                                external_port=51820))
    assert (request.opcode, request.nonce, request.protocol, request.internal_port,
            request.external_port, request.external_address) == (
        1, NONCE, 17, 51820, 51820, "0.0.0.0")
    reply = pcp.encode_response(1, 0, 60, 9, map_data=(NONCE, 17, 51820, 51820, "192.0.2.9"))
    assert pcp.parse_response(reply).external_address == "192.0.2.9"
    # A NAT-PMP request (version 0) parses as a request of another version: UNSUPP_VERSION.
    assert pcp.parse_request(b"\x00\x01" + bytes(22)).version == 0
    with pytest.raises(PortmapParseError):
        pcp.parse_request(MAP_SUCCESS)


def test_result_names() -> None:
    assert pcp.result_name(8) == "NO_RESOURCES"
    assert pcp.result_name(200) == "result 200"
    assert pcp.Result.NOT_AUTHORIZED in pcp.LONG_LIVED_ERRORS


@settings(max_examples=500, deadline=None, derandomize=True, database=None)
@given(st.one_of(
    st.binary(max_size=80),
    st.sampled_from(ANSWERS).flatmap(
        lambda v: st.binary(min_size=len(v), max_size=len(v)).map(
            lambda noise: bytes(a ^ (b & 0x0F) for a, b in zip(v, noise, strict=True)))),
    st.builds(lambda op, result, opts: struct.pack("!BBxB", 2, op, result) + MAP_SUCCESS[4:]
              + opts, st.integers(0, 255), st.integers(0, 255), st.binary(max_size=24)),
))
def test_fuzz_only_the_codec_error_comes_out(data: bytes) -> None:
    for parse in (pcp.parse_response, pcp.parse_request):
        try:
            parse(data)
        except PortmapParseError:
            pass
