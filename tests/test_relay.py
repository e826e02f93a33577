"""The relay: bind codec, the sans-IO allocation table under a fake clock, the API
(get-or-create per pair, 503 without a relay, 429 over the limit), and the userspace
relay forwarding real datagrams on loopback between two bound "nodes"."""

from __future__ import annotations

import random
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from punchd.errors import APIError, RelayBindError, StunParseError, TooMany, Unavailable
from punchd.serverapi import ServerClient
from punchd.wire import relay as wire
from signal_server.main import ServerOptions, SignalServer
from signal_server.relay import RelayPool, RelayService
from signal_server.relay.table import CLOCK_SKEW_MS, BindOutcome, RelayTable

from .conftest import RunningServer, bound_socket, port_of
from .test_api import joined_client

SECRET = b"s" * 16
A, B, ELSEWHERE = ("198.51.100.2", 40001), ("198.51.100.10", 50002), ("192.0.2.66", 9)


# -- the bind codec ----------------------------------------------------------------------

def test_bind_round_trip_and_integrity() -> None:
    data, txid = wire.bind_request("abc", 1, SECRET, 1_700_000_000_123)
    claim = wire.parse_bind_request(data)
    assert (claim.alloc_id, claim.side, claim.transaction_id, claim.wall_ms) == (
        "abc", 1, txid, 1_700_000_000_123)
    assert wire.verify_bind_request(data, SECRET)
    assert not wire.verify_bind_request(data, b"x" * 16)
    answer = wire.bind_success(txid, A, SECRET)
    assert wire.parse_bind_success(answer, SECRET) == (txid, A)
    with pytest.raises(RelayBindError):
        wire.parse_bind_success(answer, b"x" * 16)
    with pytest.raises(RelayBindError):
        wire.parse_bind_success(data, SECRET)  # a request is not an answer


def test_binds_without_the_right_username_are_refused() -> None:
    from punchd.wire import stun

    for username in ("abc", "abc:2", ":0", "x" * 70 + ":0"):
        msg = stun.Message(stun.Method.BINDING, stun.Class.REQUEST, bytes(12),
                           {"USERNAME": username})
        msg.add_message_integrity(SECRET)
        with pytest.raises(RelayBindError):
            wire.parse_bind_request(bytes(msg))
    with pytest.raises(RelayBindError):  # no integrity
        wire.parse_bind_request(stun.binding_request(bytes(12)))


@given(st.binary(max_size=200))
def test_bind_parser_never_crashes(data: bytes) -> None:
    try:
        wire.parse_bind_request(data)
    except StunParseError:
        pass
    assert wire.verify_bind_request(data, SECRET) in (True, False)


# -- the table -----------------------------------------------------------------------------

def table(**kw: float) -> RelayTable:
    return RelayTable([RelayPool("203.0.113.10", 40000, 40005)], **kw)  # type: ignore[arg-type]


def test_one_allocation_per_pair_and_a_side_each() -> None:
    t = table()
    alloc, side = t.allocate("net", "a", "b", 0.0)
    again, other = t.allocate("net", "b", "a", 1.0)
    assert again is alloc and (side, other) == (0, 1)
    assert alloc.sides[0].local == ("203.0.113.10", 40000)
    assert alloc.sides[1].local == ("203.0.113.10", 40001)
    assert alloc.sides[0].secret != alloc.sides[1].secret
    assert t.allocate("other-net", "a", "b", 0.0)[0] is not alloc


def test_ports_run_out_and_come_back_on_expiry() -> None:
    t = table(idle_timeout=100.0)
    t.allocate("net", "a", "b", 0.0)
    t.allocate("net", "a", "c", 0.0)
    t.allocate("net", "a", "d", 50.0)
    with pytest.raises(Unavailable):
        t.allocate("net", "a", "e", 50.0)
    assert [x.sides[1].node_id for x in t.expire(120.0)] == ["b", "c"]
    assert t.allocate("net", "a", "e", 120.0)[0].sides[0].local[1] in (40000, 40001, 40002, 40003)


def test_per_node_limit() -> None:
    t = table(per_node_limit=2)
    t.allocate("net", "a", "b", 0.0)
    t.allocate("net", "a", "c", 0.0)
    with pytest.raises(TooMany):
        t.allocate("net", "d", "a", 0.0)


def test_binds_refresh_move_and_refuse_replays() -> None:
    t = table()
    alloc, _ = t.allocate("net", "a", "b", 0.0)
    local = alloc.sides[0].local
    now_ms = 1_000_000
    assert t.bind(local, alloc.id, 0, A, now_ms, 1.0, now_ms) == BindOutcome.BOUND
    assert not alloc.ready
    assert t.bind(local, alloc.id, 0, A, now_ms, 2.0, now_ms) == BindOutcome.REFRESHED
    # a copy of that bind replayed from elsewhere cannot steal the side
    assert t.bind(local, alloc.id, 0, ELSEWHERE, now_ms, 3.0, now_ms) == BindOutcome.STALE
    # a newer bind from a new source (the node's NAT rebinding) moves it
    assert t.bind(local, alloc.id, 0, ELSEWHERE, now_ms + 5, 4.0, now_ms) == BindOutcome.MOVED
    assert alloc.sides[0].bound == ELSEWHERE
    assert t.bind(local, alloc.id, 1, B, now_ms, 4.0, now_ms) == BindOutcome.UNKNOWN  # wrong port
    far = now_ms + CLOCK_SKEW_MS + 1
    assert t.bind(alloc.sides[1].local, alloc.id, 1, B, far, 4.0, now_ms) == BindOutcome.CLOCK
    assert t.bind(alloc.sides[1].local, alloc.id, 1, B, now_ms, 4.0, now_ms) == BindOutcome.BOUND
    assert alloc.ready


def test_traffic_keeps_an_allocation_alive() -> None:
    t = table(idle_timeout=100.0)
    alloc, _ = t.allocate("net", "a", "b", 0.0)
    t.traffic(alloc, 10, 90.0)
    assert t.expire(150.0) == []
    t.traffic(alloc, 10, 180.0)  # no new datagrams: not activity
    assert t.expire(200.0) == [alloc]


# -- the API ---------------------------------------------------------------------------------

async def test_relay_api_without_a_relay_is_503(signal_server: RunningServer) -> None:
    await signal_server.create_network("net")
    token = await signal_server.create_token("net")
    client, _ = await joined_client(signal_server, token, "alpha")
    other, _ = await joined_client(signal_server, token, "beta")
    try:
        with pytest.raises(APIError) as refused:
            await client.relay("beta")
        assert refused.value.status == 503 and "--relay" in str(refused.value)
    finally:
        await client.aclose()
        await other.aclose()


@pytest.fixture
async def relay_server(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[RunningServer]:
    # Any ten ports: the relay binds an allocation's ports when it makes it and skips
    # one someone else holds (RelayService.allocate), so no port needs reserving here.
    low = random.randrange(41000, 61000)
    listener = bound_socket()
    options = ServerOptions(data_dir=tmp_path / "server", http=("127.0.0.1", port_of(listener)),
                            relay=[RelayPool("127.0.0.1", low, low + 9)], relay_mode="userspace")
    server = SignalServer(options, http_socket=listener)
    await nursery.start(server.run)
    running = RunningServer(server)
    yield running
    await running.admin.aclose()


async def test_relay_api_get_or_create_per_pair(relay_server: RunningServer) -> None:
    await relay_server.create_network("net")
    token = await relay_server.create_token("net")
    alpha, ja = await joined_client(relay_server, token, "alpha")
    beta, jb = await joined_client(relay_server, token, "beta")
    try:
        await _get_or_create(alpha, beta, ja.node.id, jb.node.id)
    finally:
        await alpha.aclose()
        await beta.aclose()


async def _get_or_create(alpha: ServerClient, beta: ServerClient, id_a: str, id_b: str) -> None:
    mine = await alpha.relay("beta")
    theirs = await beta.relay("alpha")
    assert mine.id == theirs.id and {mine.side, theirs.side} == {0, 1}
    assert mine.peer == id_b and theirs.peer == id_a
    assert mine.relay != theirs.relay and mine.secret != theirs.secret
    assert (await alpha.relay("beta")).relay == mine.relay  # the same on asking again
    for bad, status in (("alpha", 422), ("nobody", 404)):
        with pytest.raises(APIError) as refused:
            await alpha.relay(bad)
        assert refused.value.status == status


async def test_userspace_relay_forwards_between_bound_endpoints(
        relay_server: RunningServer) -> None:
    await relay_server.create_network("net")
    token = await relay_server.create_token("net")
    alpha, _ = await joined_client(relay_server, token, "alpha")
    beta, _ = await joined_client(relay_server, token, "beta")
    sides = [await alpha.relay("beta"), await beta.relay("alpha")]
    socks = [trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in sides]
    for sock in socks:
        await sock.bind(("127.0.0.1", 0))
    relays = [(s.relay.split(":")[0], int(s.relay.split(":")[1])) for s in sides]
    # Before binding, nothing is forwarded.
    await socks[0].sendto(b"early", relays[0])
    for sock, side, relay in zip(socks, sides, relays, strict=True):
        data, txid = wire.bind_request(side.id, side.side, bytes.fromhex(side.secret),
                                       int(time.time() * 1000))
        await sock.sendto(data, relay)
        with trio.fail_after(2):
            answer, src = await sock.recvfrom(2048)
        assert src == relay
        assert wire.parse_bind_success(answer, bytes.fromhex(side.secret)) == (
            txid, sock.getsockname())
    for sender, receiver, relay in ((0, 1, relays[0]), (1, 0, relays[1])):
        await socks[sender].sendto(b"wireguard bytes %d" % sender, relay)
        with trio.fail_after(2):
            data, src = await socks[receiver].recvfrom(2048)
        assert data == b"wireguard bytes %d" % sender and src == relays[receiver]
    # A stranger and a forged bind are dropped.
    with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
        await stranger.bind(("127.0.0.1", 0))
        await stranger.sendto(b"let me in", relays[0])
        forged, _ = wire.bind_request(sides[0].id, sides[0].side, b"guess" * 4,
                                      int(time.time() * 1000))
        await stranger.sendto(forged, relays[0])
    # The relay reads side 0's socket in arrival order: once a datagram sent after the
    # stranger's comes out of side 1, the stranger's two have been judged.
    await socks[0].sendto(b"after the stranger", relays[0])
    with trio.fail_after(2):
        data, _ = await socks[1].recvfrom(2048)
    assert data == b"after the stranger"
    status = (await relay_server.admin.get("/relay")).json()
    stats = status["statistics"]
    assert status["forwarder"] == "userspace"
    # Dropped: "early" (before any bind) and the stranger's; refused: the forged bind.
    assert stats["dropped"] == 2 and stats["binds_refused"] == 1
    assert stats["forwarded_userspace"] == 3
    [alloc] = status["allocations"]
    assert all(side["bound"] for side in alloc["sides"]) and alloc["forwarded"] == 3
    for sock in socks:
        sock.close()
    await alpha.aclose()
    await beta.aclose()


async def test_relay_service_refuses_before_running() -> None:
    service = RelayService([RelayPool("127.0.0.1", 41000, 41001)], "userspace")
    with pytest.raises(Unavailable):
        await service.allocate("net", "a", "b")
