"""The STUN responder: sans-IO RFC 8489/5780 logic, a real trio responder on loopback
(127.0.0.1 + 127.0.0.2 — all of 127/8 is loopback, so RFC 5780 works here — and ::1),
and interop with two clients no one here wrote: coturn's ``turnutils_stunclient``
(RFC 5780) and Debian's ``stun`` (RFC 3489, no magic cookie)."""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from punchd.errors import StunServerError
from punchd.wire import stun
from signal_server.stun_server import MAX_RESPONSE_BYTES, StunCore, StunResponder

from .conftest import PORT_ATTEMPTS, bound_socket, port_of

TXID = bytes.fromhex("b7e7a701bc34d686fa87dfae")
PRIMARY, ALTERNATE = ("192.0.2.10", 3478), ("192.0.2.11", 3479)
CLIENT = ("198.51.100.7", 40000)
CLASSIC_TXID = bytes(range(16))


def classic_request(change: int = 0) -> bytes:
    """An RFC 3489 Binding request, as Debian's ``stun`` sends it."""
    return b"\x00\x01\x00\x08" + CLASSIC_TXID + b"\x00\x03\x00\x04" + struct.pack("!I", change)


def test_binding_answer_carries_the_mapped_address_and_rfc5780_attributes() -> None:
    core = StunCore(PRIMARY, ALTERNATE)
    request = stun.binding_request(TXID)
    answer = core.handle(request, CLIENT, PRIMARY)
    assert answer is not None
    reply, sent_from, dest = answer
    msg = stun.parse(reply)
    assert sent_from == PRIMARY and dest == CLIENT
    assert msg.transaction_id == TXID
    assert msg.message_class == stun.Class.RESPONSE
    assert msg.attributes["XOR-MAPPED-ADDRESS"] == CLIENT
    assert msg.attributes["OTHER-ADDRESS"] == ALTERNATE
    assert msg.attributes["RESPONSE-ORIGIN"] == PRIMARY
    assert "FINGERPRINT" in msg.attributes
    assert len(reply) <= MAX_RESPONSE_BYTES


def test_without_alternate_only_the_mapped_address() -> None:
    core = StunCore(PRIMARY)
    answer = core.handle(stun.binding_request(TXID), CLIENT, PRIMARY)
    assert answer is not None and answer[1] == PRIMARY
    attrs = stun.parse(answer[0]).attributes
    assert "OTHER-ADDRESS" not in attrs and attrs["XOR-MAPPED-ADDRESS"] == CLIENT
    assert core.local_addresses() == [PRIMARY]


def test_four_sockets_and_other_address_is_relative_to_the_receiving_socket() -> None:
    core = StunCore(PRIMARY, ALTERNATE)
    locals_ = core.local_addresses()
    assert locals_ == [PRIMARY, ("192.0.2.10", 3479), ("192.0.2.11", 3478), ALTERNATE]
    for local in locals_:
        answer = core.handle(stun.binding_request(TXID), CLIENT, local)
        assert answer is not None
        other = stun.parse(answer[0]).attributes["OTHER-ADDRESS"]
        assert other[0] != local[0] and other[1] != local[1]  # RFC 5780 §7.4


@pytest.mark.parametrize("local", [PRIMARY, ALTERNATE, ("192.0.2.11", 3478)])
@pytest.mark.parametrize("change", [0, stun.CHANGE_IP, stun.CHANGE_PORT,
                                    stun.CHANGE_IP | stun.CHANGE_PORT])
def test_change_request_answers_from_the_other_socket(local: tuple[str, int],
                                                      change: int) -> None:
    core = StunCore(PRIMARY, ALTERNATE)
    answer = core.handle(stun.binding_request(TXID, change=change), CLIENT, local)
    assert answer is not None
    flip_ip = {PRIMARY[0]: ALTERNATE[0], ALTERNATE[0]: PRIMARY[0]}
    flip_port = {PRIMARY[1]: ALTERNATE[1], ALTERNATE[1]: PRIMARY[1]}
    expected = (flip_ip[local[0]] if change & stun.CHANGE_IP else local[0],
                flip_port[local[1]] if change & stun.CHANGE_PORT else local[1])
    assert answer[1] == expected
    assert stun.parse(answer[0]).attributes["RESPONSE-ORIGIN"] == expected


def test_change_request_without_second_address_is_420() -> None:
    core = StunCore(PRIMARY)
    answer = core.handle(stun.binding_request(TXID, change=stun.CHANGE_IP), CLIENT, PRIMARY)
    assert answer is not None
    msg = stun.parse(answer[0])
    assert msg.message_class == stun.Class.ERROR
    assert msg.attributes["ERROR-CODE"][0] == 420


def test_unknown_comprehension_required_attribute_is_420() -> None:
    request = bytearray(stun.binding_request(TXID, fingerprint=False))
    request += b"\x70\x01\x00\x04\x00\x00\x00\x00"  # unassigned, comprehension-required
    request[2:4] = struct.pack("!H", len(request) - 20)
    answer = StunCore(PRIMARY, ALTERNATE).handle(bytes(request), CLIENT, PRIMARY)
    assert answer is not None
    msg = stun.parse(answer[0])
    assert msg.attributes["ERROR-CODE"] == (420, "Unknown Attribute")
    assert b"\x00\x0a\x00\x02\x70\x01" in answer[0]


def test_response_port_sends_the_answer_to_that_port_of_the_source_ip() -> None:
    request = bytearray(stun.binding_request(TXID, fingerprint=False))
    request += b"\x00\x27\x00\x04" + struct.pack("!H", 41000) + b"\x00\x00"
    request[2:4] = struct.pack("!H", len(request) - 20)
    answer = StunCore(PRIMARY, ALTERNATE).handle(bytes(request), CLIENT, PRIMARY)
    assert answer is not None
    assert answer.dest == (CLIENT[0], 41000)  # never another IP: no reflection
    assert stun.parse(answer.reply).attributes["XOR-MAPPED-ADDRESS"] == CLIENT
    request[24:26] = b"\x00\x00"  # port 0 is malformed: dropped and counted
    core = StunCore(PRIMARY, ALTERNATE)
    assert core.handle(bytes(request), CLIENT, PRIMARY) is None
    assert core.statistics().malformed == 1


def test_ipv6_binding() -> None:
    p, a = ("2001:db8::10", 3478), ("2001:db8::11", 3479)
    core = StunCore(p, a)
    answer = core.handle(stun.binding_request(TXID, change=stun.CHANGE_IP), ("2001:db8::7", 5),
                         p)
    assert answer is not None and answer[1] == ("2001:db8::11", 3478)
    attrs = stun.parse(answer[0]).attributes
    assert attrs["XOR-MAPPED-ADDRESS"] == ("2001:db8::7", 5)
    assert attrs["OTHER-ADDRESS"] == a
    assert len(answer[0]) <= MAX_RESPONSE_BYTES


@pytest.mark.parametrize(("primary", "alternate"), [
    (("192.0.2.10", 3478), ("2001:db8::1", 3479)),  # mixed families
    (("192.0.2.10", 3478), ("192.0.2.10", 3479)),  # no second IP
    (("192.0.2.10", 3478), ("192.0.2.11", 3478)),  # no second port
])
def test_unusable_address_pairs_are_refused(primary: tuple[str, int],
                                            alternate: tuple[str, int]) -> None:
    with pytest.raises(StunServerError):
        StunCore(primary, alternate)


def test_classic_rfc3489_request_gets_a_classic_answer() -> None:
    core = StunCore(PRIMARY, ALTERNATE)
    answer = core.handle(classic_request(stun.CHANGE_PORT), CLIENT, PRIMARY)
    assert answer is not None
    reply, sent_from, dest = answer
    assert sent_from == ("192.0.2.10", 3479) and dest == CLIENT
    assert reply[4:20] == CLASSIC_TXID  # the whole 16-byte RFC 3489 id echoed
    assert stun.parse(reply, classic=True).attributes == {
        "MAPPED-ADDRESS": CLIENT, "SOURCE-ADDRESS": sent_from, "CHANGED-ADDRESS": ALTERNATE}


def test_malformed_and_non_requests_are_dropped_and_counted() -> None:
    core = StunCore(PRIMARY)
    response = stun.binding_success(TXID, CLIENT)
    indication = b"\x00\x11\x00\x00\x21\x12\xa4\x42" + TXID
    assert core.handle(b"garbage", CLIENT, PRIMARY) is None
    assert core.handle(b"\x01\x00\x00\x00" + b"\x00" * 144, CLIENT, PRIMARY) is None  # WireGuard
    assert core.handle(response, CLIENT, PRIMARY) is None
    assert core.handle(indication, CLIENT, PRIMARY) is None
    stats = core.statistics()
    assert (stats.malformed, stats.ignored, stats.requests, stats.responses) == (2, 2, 0, 0)


@given(st.binary(max_size=120))
def test_fuzz_never_raises_and_never_amplifies(data: bytes) -> None:
    core = StunCore(PRIMARY, ALTERNATE)
    for candidate in (data, b"\x00\x01" + struct.pack("!H", len(data) & ~3) +
                      b"\x21\x12\xa4\x42" + TXID + data[: len(data) & ~3]):
        answer = core.handle(candidate, CLIENT, PRIMARY)
        if answer is not None:
            assert len(answer[0]) <= MAX_RESPONSE_BYTES
            assert answer[1] in core.local_addresses()


# -- the trio responder on loopback ---------------------------------------------------------


def bind_rfc5780_sockets() -> dict[tuple[str, int], trio.socket.SocketType]:
    """UDP sockets on the four (IP, port) pairs of 127.0.0.1/127.0.0.2 and two ports.

    The kernel picks both ports on 127.0.0.1; should 127.0.0.2 have one of them taken,
    all four are let go and two others picked."""
    for _ in range(PORT_ATTEMPTS):
        socks = [bound_socket(socket.SOCK_DGRAM) for _ in range(2)]
        try:
            for port in [port_of(s) for s in socks]:
                other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(other)
                other.bind(("127.0.0.2", port))
        except OSError:
            for sock in socks:
                sock.close()
            continue
        return {sock.getsockname(): trio.socket.from_stdlib_socket(sock) for sock in socks}
    raise RuntimeError(f"127.0.0.2 had none of {PORT_ATTEMPTS} pairs of ports free")


@pytest.fixture
async def loopback_responder(nursery: trio.Nursery) -> AsyncIterator[StunResponder]:
    sockets = bind_rfc5780_sockets()
    (ip1, p1), (_, p2), (ip2, _), _ = sockets
    responder = StunResponder((ip1, p1), (ip2, p2), sockets=sockets)
    await nursery.start(responder.run)
    yield responder


async def ask(dest: tuple[str, int], request: bytes, family: int = socket.AF_INET,
              ) -> tuple[bytes, tuple[str, int], tuple[str, int]]:
    """Send ``request`` from a fresh socket: the answer, where it came from, our address."""
    with trio.socket.socket(family, socket.SOCK_DGRAM) as sock:
        await sock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
        await sock.sendto(request, dest)
        with trio.fail_after(5):
            data, src = await sock.recvfrom(2048)
        mine = sock.getsockname()
    return data, (src[0], src[1]), (mine[0], mine[1])


async def test_responder_on_loopback_honours_every_change_request(
        loopback_responder: StunResponder) -> None:
    (ip1, p1), (ip2, p2) = loopback_responder.core.primary, loopback_responder.core.alternate \
        or ("", 0)
    expected = {0: (ip1, p1), stun.CHANGE_IP: (ip2, p1), stun.CHANGE_PORT: (ip1, p2),
                stun.CHANGE_IP | stun.CHANGE_PORT: (ip2, p2)}
    for change, origin in expected.items():
        data, src, mine = await ask((ip1, p1), stun.binding_request(TXID, change=change))
        assert src == origin
        attrs = stun.parse(data).attributes
        assert attrs["XOR-MAPPED-ADDRESS"] == mine
        assert attrs["RESPONSE-ORIGIN"] == origin
        assert attrs["OTHER-ADDRESS"] == (ip2, p2)
    stats = loopback_responder.statistics()
    assert (stats.requests, stats.responses, stats.malformed) == (4, 4, 0)


async def test_responder_drops_garbage_and_keeps_serving(
        loopback_responder: StunResponder) -> None:
    primary = loopback_responder.core.primary
    with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        await sock.sendto(b"\x00" * 7, primary)
        await sock.sendto(stun.binding_success(TXID, ("127.0.0.1", 9)), primary)
    data, _, mine = await ask(primary, stun.binding_request(TXID))
    assert stun.parse(data).attributes["XOR-MAPPED-ADDRESS"] == mine
    stats = loopback_responder.statistics()
    assert (stats.malformed, stats.ignored, stats.responses) == (1, 1, 1)


async def test_responder_on_ipv6_loopback(nursery: trio.Nursery) -> None:
    try:
        sock = bound_socket(socket.SOCK_DGRAM, "::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    port = port_of(sock)
    responder = StunResponder(("::1", port), sockets={("::1", port):
                                                      trio.socket.from_stdlib_socket(sock)})
    await nursery.start(responder.run)
    data, src, mine = await ask(("::1", port), stun.binding_request(TXID), socket.AF_INET6)
    assert src == ("::1", port)
    assert stun.parse(data).attributes["XOR-MAPPED-ADDRESS"] == mine


async def test_a_busy_port_is_a_clear_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        with pytest.raises(StunServerError, match=f"127.0.0.1:{port}"):
            await StunResponder(("127.0.0.1", port)).run()


# -- interop with clients no one here wrote ------------------------------------------------


async def run_client(argv: list[str], out_path: Path, limit: float = 10) -> str:
    """Run a STUN client to completion (bounded: some linger), return its output."""
    with open(out_path, "wb") as out:  # noqa: ASYNC230 (a local file for the child)
        proc = await trio.lowlevel.open_process(argv, stdin=subprocess.DEVNULL, stdout=out,
                                                stderr=subprocess.STDOUT)
        try:
            with trio.move_on_after(limit):
                await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                with trio.CancelScope(shield=True):
                    await proc.wait()
    return await trio.Path(out_path).read_text(errors="replace")


@pytest.mark.skipif(shutil.which("turnutils_stunclient") is None,
                    reason="coturn's turnutils_stunclient is not installed (scripts/setup)")
async def test_interop_with_coturn_stun_client(loopback_responder: StunResponder,
                                               tmp_path: Path) -> None:
    (ip1, p1), (ip2, p2) = loopback_responder.core.local_addresses()[::3]
    text = await run_client(["turnutils_stunclient", "-p", str(p1), ip1], tmp_path / "out")
    assert f"Other addr: : {ip2}:{p2}" in text, text
    assert "UDP reflexive addr: 127.0.0.1:" in text, text
    assert loopback_responder.statistics().responses >= 1
    assert loopback_responder.statistics().malformed == 0


@pytest.mark.skipif(shutil.which("stun") is None,
                    reason="Debian's stun client (package stun-client) is not installed")
async def test_interop_with_debian_rfc3489_stun_client(loopback_responder: StunResponder,
                                                       tmp_path: Path) -> None:
    (ip1, p1), (ip2, p2) = loopback_responder.core.local_addresses()[::3]
    text = await run_client(["stun", f"{ip1}:{p1}", "-v"], tmp_path / "out")
    # Its RFC 3489 tests I, II (change IP+port), I(2) (to CHANGED-ADDRESS) and III
    # (change port) all answered, and it sees no NAT on loopback.
    for test in ("test I = 1", "test II = 1", "test III = 1", "test I(2) = 1", "is nat  = 0"):
        assert test in text, text
    assert f"ChangedAddress = {ip2}:{p2}" in text, text
    assert "Primary: Open" in text, text
    stats = loopback_responder.statistics()
    assert stats.requests >= 4 and stats.malformed == 0


async def test_responder_refuses_sockets_for_other_addresses() -> None:
    with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        with pytest.raises(StunServerError, match="expected one for each"):
            StunResponder(("127.0.0.1", 3478), sockets={("127.0.0.1", 3479): sock})
