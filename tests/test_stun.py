"""STUN codec (RFC 5769 vectors, truncation, fuzz) and the responder's RFC 5780 logic."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from punchd.errors import StunParseError
from punchd.wire import stun
from signal_server.stun_server import StunCore, StunResponder

from .conftest import free_port

PASSWORD = b"VOkJxbRl1RmTxUk/WvJxBt"  # RFC 5769 §2

REQUEST = bytes.fromhex(  # RFC 5769 §2.1
    "000100582112a442b7e7a701bc34d686fa87dfae"
    "802200105354554e20746573742063 6c69656e74".replace(" ", "")
    + "002400046e0001ff80290008932ff9b151263b36"
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


def test_rfc5769_request() -> None:
    msg = stun.parse(REQUEST, integrity_key=PASSWORD)
    assert msg.message_method == stun.Method.BINDING
    assert msg.message_class == stun.Class.REQUEST
    assert msg.transaction_id == TXID
    assert msg.attributes["USERNAME"] == "evtj:h6vY"
    assert msg.attributes["SOFTWARE"] == "STUN test client"


@pytest.mark.parametrize(("vector", "address"), [
    (RESPONSE_V4, ("192.0.2.1", 32853)),
    (RESPONSE_V6, ("2001:db8:1234:5678:11:2233:4455:6677", 32853)),
])
def test_rfc5769_responses(vector: bytes, address: tuple[str, int]) -> None:
    msg = stun.parse(vector, integrity_key=PASSWORD)
    assert msg.message_class == stun.Class.RESPONSE
    assert msg.attributes["XOR-MAPPED-ADDRESS"] == address


def test_wrong_password_fails_integrity() -> None:
    with pytest.raises(StunParseError, match="MESSAGE-INTEGRITY"):
        stun.parse(REQUEST, integrity_key=b"wrong")


def test_flipped_bit_fails_fingerprint() -> None:
    damaged = bytearray(RESPONSE_V4)
    damaged[30] ^= 0x01
    with pytest.raises(StunParseError):
        stun.parse(bytes(damaged))


@pytest.mark.parametrize("vector", [REQUEST, RESPONSE_V4, RESPONSE_V6])
def test_every_truncated_prefix_is_a_stun_parse_error(vector: bytes) -> None:
    for n in range(len(vector)):
        with pytest.raises(StunParseError):
            stun.parse(vector[:n])


@given(st.binary(max_size=200))
def test_fuzz_only_stun_parse_error(data: bytes) -> None:
    try:
        stun.parse(data)
    except StunParseError:
        pass


@given(st.binary(min_size=0, max_size=120))
def test_fuzz_with_valid_header(body: bytes) -> None:
    body = body[: len(body) - len(body) % 4]
    data = b"\x00\x01" + len(body).to_bytes(2, "big") + b"\x21\x12\xa4\x42" + TXID + body
    try:
        stun.parse(data)
    except StunParseError:
        pass


def test_is_stun() -> None:
    assert stun.is_stun(REQUEST)
    assert not stun.is_stun(b"\x01\x00\x00\x00" + REQUEST[4:])  # WireGuard initiation type
    assert not stun.is_stun(REQUEST[:19])


PRIMARY, ALTERNATE = ("192.0.2.10", 3478), ("192.0.2.11", 3479)


def test_binding_answer_carries_the_mapped_address_and_rfc5780_attributes() -> None:
    core = StunCore(PRIMARY, ALTERNATE)
    request = stun.binding_request(TXID)
    reply, sent_from = core.handle(request, ("198.51.100.7", 40000), PRIMARY) or (b"", None)
    msg = stun.parse(reply)
    assert sent_from == PRIMARY
    assert msg.transaction_id == TXID
    assert msg.attributes["XOR-MAPPED-ADDRESS"] == ("198.51.100.7", 40000)
    assert msg.attributes["OTHER-ADDRESS"] == ALTERNATE
    assert msg.attributes["RESPONSE-ORIGIN"] == PRIMARY
    assert len(reply) <= len(request) + 40  # never an amplifier


@pytest.mark.parametrize(("change", "origin"), [
    (stun.CHANGE_IP, ("192.0.2.11", 3478)),
    (stun.CHANGE_PORT, ("192.0.2.10", 3479)),
    (stun.CHANGE_IP | stun.CHANGE_PORT, ALTERNATE),
])
def test_change_request_answers_from_the_other_socket(change: int, origin: tuple[str, int]) -> None:
    core = StunCore(PRIMARY, ALTERNATE)
    answer = core.handle(stun.binding_request(TXID, change=change), ("198.51.100.7", 1), PRIMARY)
    assert answer is not None
    assert answer[1] == origin
    assert stun.parse(answer[0]).attributes["RESPONSE-ORIGIN"] == origin


def test_change_request_without_second_address_is_an_error() -> None:
    core = StunCore(PRIMARY)
    answer = core.handle(stun.binding_request(TXID, change=stun.CHANGE_IP), ("198.51.100.7", 1),
                         PRIMARY)
    assert answer is not None
    assert stun.parse(answer[0]).message_class == stun.Class.ERROR


def test_malformed_and_non_requests_are_dropped_and_counted() -> None:
    core = StunCore(PRIMARY)
    assert core.handle(b"garbage", ("198.51.100.7", 1), PRIMARY) is None
    assert core.handle(RESPONSE_V4, ("198.51.100.7", 1), PRIMARY) is None
    stats = core.statistics()
    assert (stats.malformed, stats.ignored, stats.responses) == (1, 1, 0)


async def test_responder_on_loopback_answers_a_real_socket() -> None:
    p1, p2 = free_port(2), free_port(2)
    responder = StunResponder(("127.0.0.1", p1), ("127.0.0.2", p2))
    async with trio.open_nursery() as nursery:
        await nursery.start(responder.run)
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        await sock.bind(("127.0.0.1", 0))
        await sock.sendto(stun.binding_request(TXID, change=stun.CHANGE_IP), ("127.0.0.1", p1))
        with trio.fail_after(5):
            data, src = await sock.recvfrom(2048)
        assert src == ("127.0.0.2", p1)
        assert stun.parse(data).attributes["XOR-MAPPED-ADDRESS"] == sock.getsockname()
        sock.close()
        nursery.cancel_scope.cancel()


@pytest.mark.skipif(shutil.which("turnutils_stunclient") is None,
                    reason="coturn's turnutils_stunclient is not installed (scripts/setup installs it)")
async def test_interop_with_coturn_stun_client(tmp_path: Path) -> None:
    p1, p2 = free_port(2), free_port(2)
    responder = StunResponder(("127.0.0.1", p1), ("127.0.0.2", p2))
    out_path = tmp_path / "stunclient.out"
    async with trio.open_nursery() as nursery:
        await nursery.start(responder.run)
        with open(out_path, "wb") as out:  # noqa: ASYNC230 (a local file for the child)
            # turnutils_stunclient sometimes lingers after printing its results: bound it.
            proc = await trio.lowlevel.open_process(
                ["turnutils_stunclient", "-p", str(p1), "127.0.0.1"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
            with trio.move_on_after(8):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        nursery.cancel_scope.cancel()
    text = out_path.read_text(errors="replace")
    assert f"Other addr: : 127.0.0.2:{p2}" in text, text
    assert "UDP reflexive addr: 127.0.0.1:" in text, text
    assert responder.statistics().responses >= 1
