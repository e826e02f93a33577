"""NAT-PMP codec (RFC 6886): the RFC's layouts byte by byte, every truncated prefix, fuzz."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from punchd.errors import PortmapParseError
from punchd.portmap import natpmp

# RFC 6886 §3.2: the external address answer, 192.0.2.7 after 1000 s of epoch.
EXTERNAL_ANSWER = bytes.fromhex("00 80 0000 000003e8 c0000207")
# RFC 6886 §3.3: UDP mapping 51820 -> 40000 for 7200 s, epoch 1001.
MAP_ANSWER = bytes.fromhex("00 81 0000 000003e9 ca6c 9c40 00001c20")
# §3.5 with erratum 3618: "Unsupported Version" is 8 bytes with opcode 128.
UNSUPPORTED_VERSION = bytes.fromhex("00 80 0001 00000005")
ANSWERS = [EXTERNAL_ANSWER, MAP_ANSWER, UNSUPPORTED_VERSION]


def test_requests_have_the_rfc_layouts() -> None:
    assert natpmp.external_address_request() == b"\x00\x00"  # §3.2
    # §3.3: version, opcode 1, reserved, internal port, suggested external, lifetime.
    assert natpmp.map_request(51820, 51820, 7200) == bytes.fromhex(
        "00 01 0000 ca6c ca6c 00001c20")
    assert natpmp.map_request(51820, 0, 60, opcode=natpmp.OP_MAP_TCP)[1] == 2
    # §3.4: a delete is lifetime 0 and suggested external port 0.
    assert natpmp.delete_request(51820) == bytes.fromhex("00 01 0000 ca6c 0000 00000000")


@pytest.mark.parametrize(("args", "kwargs"), [
    ((0, 1, 1), {}), ((70000, 1, 1), {}), ((1, -1, 1), {}), ((1, 1, 2**32), {}),
    ((1, 1, 1), {"opcode": 0}),
])
def test_map_request_refuses_out_of_range_values(args: tuple[int, int, int],
                                                  kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        natpmp.map_request(*args, **kwargs)


def test_external_address_answer() -> None:
    answer = natpmp.parse_response(EXTERNAL_ANSWER)
    assert answer == natpmp.ExternalAddressResponse(result=0, epoch=1000, address="192.0.2.7")


def test_map_answer() -> None:
    answer = natpmp.parse_response(MAP_ANSWER)
    assert answer == natpmp.MapResponse(opcode=1, result=0, epoch=1001, internal_port=51820,
                                        external_port=40000, lifetime=7200)


def test_unsupported_version_answer_in_both_spellings() -> None:
    # Erratum 3618 sets the top bit; the original text (and some gateways) used opcode 0.
    for data in (UNSUPPORTED_VERSION, bytes.fromhex("00 00 0001 00000005")):
        answer = natpmp.parse_response(data)
        assert isinstance(answer, natpmp.ExternalAddressResponse)
        assert answer.result == natpmp.Result.UNSUPPORTED_VERSION and answer.address is None


def test_error_answers_never_carry_a_port_or_lifetime() -> None:
    # §3.3: on error the other fields are undefined; the codec zeroes them.
    refused = natpmp.encode_map(1, 5, 51820, 40000, 7200, result=natpmp.Result.NOT_AUTHORIZED)
    answer = natpmp.parse_response(refused)
    assert isinstance(answer, natpmp.MapResponse)
    assert (answer.result, answer.external_port, answer.lifetime) == (2, 0, 0)
    short = natpmp.parse_response(natpmp.encode_error(1, natpmp.Result.OUT_OF_RESOURCES, 9))
    assert isinstance(short, natpmp.MapResponse) and short.result == 4


def test_delete_answer_has_port_and_lifetime_zero() -> None:
    answer = natpmp.parse_response(natpmp.encode_map(1, 5, 51820, 0, 0))
    assert isinstance(answer, natpmp.MapResponse) and answer.lifetime == 0


@pytest.mark.parametrize("vector", ANSWERS)
def test_every_truncated_prefix_is_a_portmap_parse_error(vector: bytes) -> None:
    # A success cut anywhere is too short (the error answer of 8 bytes, or a 24-byte
    # header, is the shortest thing that parses).
    for n in range(len(vector)):
        with pytest.raises(PortmapParseError):
            natpmp.parse_response(vector[:n])


@pytest.mark.parametrize(("data", "message"), [
    (b"\x01" + EXTERNAL_ANSWER[1:], "version 1"),
    (b"\x02" + MAP_ANSWER[1:], "version 2"),
    (EXTERNAL_ANSWER[:1] + b"\x01" + EXTERNAL_ANSWER[2:], "request"),
    (MAP_ANSWER[:1] + b"\x85" + MAP_ANSWER[2:], "unknown"),
    (bytes.fromhex("00 81 0000 00000001 ca6c 0000 00000e10"), "external port 0"),
])
def test_wrong_version_opcode_and_impossible_success(data: bytes, message: str) -> None:
    with pytest.raises(PortmapParseError, match=message):
        natpmp.parse_response(data)


def test_pcp_answers_are_told_apart_by_their_first_byte() -> None:
    assert natpmp.is_pcp_answer(bytes.fromhex("0280000100000000") + bytes(16))
    assert not natpmp.is_pcp_answer(MAP_ANSWER)
    assert not natpmp.is_pcp_answer(b"\x02\x01")  # a PCP request is not an answer


def test_server_half_round_trips() -> None:
    assert natpmp.parse_request(natpmp.external_address_request()) == (0, 0, 0, 0)
    assert natpmp.parse_request(natpmp.map_request(51820, 1234, 60)) == (1, 51820, 1234, 60)
    assert natpmp.parse_response(natpmp.encode_external_address(7, "198.51.100.2")) == \
        natpmp.ExternalAddressResponse(result=0, epoch=7, address="198.51.100.2")
    for bad in (b"", b"\x00", b"\x02\x01" + bytes(58), b"\x00\x07", b"\x00\x01\x00"):
        with pytest.raises(PortmapParseError):
            natpmp.parse_request(bad)


def test_result_names() -> None:
    assert natpmp.result_name(2) == "NOT_AUTHORIZED"
    assert natpmp.result_name(99) == "result 99"


@settings(max_examples=500, deadline=None, derandomize=True, database=None)
@given(st.one_of(st.binary(max_size=40),
                 st.sampled_from(ANSWERS).flatmap(
                     lambda v: st.binary(min_size=len(v), max_size=len(v)).map(
                         lambda noise: bytes(a ^ b for a, b in zip(v, noise, strict=True)))),
                 st.builds(lambda op, rest: b"\x00" + bytes((op,)) + rest,
                           st.integers(0, 255), st.binary(max_size=20))))
def test_fuzz_only_the_codec_error_comes_out(data: bytes) -> None:
    for parse in (natpmp.parse_response, natpmp.parse_request):
        try:
            parse(data)
        except PortmapParseError:
            pass
