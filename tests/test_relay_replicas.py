"""Relay allocations shared by replicas (issue #19).

The registry's table on every store backend (SQLite file, in-memory, PostgreSQL) with
explicit times, so who is dead is decided without sleeping; then two relay services
and two whole signal servers on one real PostgreSQL: both sides of a pair asking
different replicas meet on one allocation, and when its owner stops or dies the
survivor makes a new one that forwards datagrams on loopback."""

from __future__ import annotations

import random
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

from punchd.errors import ConfigError, Unavailable
from punchd.serverapi import ServerClient
from punchd.wire import api
from punchd.wire import relay as wire
from punchd.wire.addr import parse_addr
from signal_server.main import ServerOptions, SignalServer
from signal_server.relay import RelayPool, RelayService
from signal_server.relay.registry import (
    DEAD_AFTER_S,
    PRUNE_AFTER_S,
    RelayRegistry,
    StoredAllocation,
    StoredSide,
)
from signal_server.store import Store, open_store

from .conftest import RunningServer, bound_socket, port_of
from .pgcluster import PgCluster, pg_cluster  # noqa: F401  (the session fixture)
from .test_api import joined_client
from .test_store import store  # noqa: F401  (the three-backend fixture)

T0 = 1_000_000.0
R1, R2 = "1" * 16, "2" * 16


def stored(alloc_id: str, owner: str, a: str = "node-a", b: str = "node-b",
           network: str = "net") -> StoredAllocation:
    return StoredAllocation(
        id=alloc_id, network=network, owner=owner, created=T0, refreshed=T0,
        sides=(StoredSide(a, "203.0.113.10:40000", "00" * 16),
               StoredSide(b, "203.0.113.10:40001", "11" * 16)))


# -- the table, on every backend ----------------------------------------------------------

def test_a_replica_is_alive_until_its_heartbeat_is_old_or_it_leaves(
        store: Store) -> None:  # noqa: F811
    one = RelayRegistry(store.db, R1)
    assert not one.alive(R1, T0)
    one.heartbeat(T0)
    assert one.alive(R1, T0 + DEAD_AFTER_S - 0.01)
    assert not one.alive(R1, T0 + DEAD_AFTER_S)
    one.heartbeat(T0 + 5)
    assert one.alive(R1, T0 + 5.5)
    one.claim(stored("aa", R1), T0 + 5)
    one.leave()
    assert not one.alive(R1, T0 + 5.5)
    assert one.owned() == []


def test_both_sides_get_the_first_claim_and_a_dead_owners_is_taken_over(
        store: Store) -> None:  # noqa: F811
    one, two = RelayRegistry(store.db, R1), RelayRegistry(store.db, R2)
    one.heartbeat(T0)
    two.heartbeat(T0)
    assert one.claim(stored("aa", R1), T0).id == "aa"
    # The pair asked in either order is one pair; replica two lost the race.
    assert two.claim(stored("bb", R2, a="node-b", b="node-a"), T0).id == "aa"
    found = two.lookup("net", "node-b", "node-a", T0 + 0.5)
    assert found is not None and found.owner == R1
    mine = found.answer("node-b", now=T0, idle_timeout=120, refresh_s=1.0)
    assert (mine.id, mine.side, mine.peer, mine.relay, mine.secret) == (
        "aa", 1, "node-a", "203.0.113.10:40001", "11" * 16)
    # Another network's pair of the same names is another allocation.
    assert two.claim(stored("cc", R2, network="other"), T0).id == "cc"
    # Replica one stops heartbeating: its row is not live, and two takes the pair over.
    two.heartbeat(T0 + 2)
    assert two.lookup("net", "node-a", "node-b", T0 + 2) is None
    assert two.claim(stored("bb", R2), T0 + 2).id == "bb"
    taken = two.lookup("net", "node-a", "node-b", T0 + 2.5)
    assert taken is not None and (taken.id, taken.owner, taken.refreshed) == ("bb", R2, T0 + 2)
    assert [a.id for a in two.owned()] == ["bb", "cc"] and one.owned() == []
    # Our own row is replaced by our table's answer (the old one expired here).
    assert two.claim(stored("dd", R2), T0 + 2).id == "dd"


def test_retain_removes_what_expired_here_only(store: Store) -> None:  # noqa: F811
    one, two = RelayRegistry(store.db, R1), RelayRegistry(store.db, R2)
    one.heartbeat(T0)
    two.heartbeat(T0)
    one.claim(stored("aa", R1), T0)
    one.claim(stored("ab", R1, b="node-c"), T0)
    two.claim(stored("bb", R2, a="node-x"), T0)
    assert one.retain(["ab"], T0 + 1) == 1
    assert [a.id for a in one.owned()] == ["ab"] and [a.id for a in two.owned()] == ["bb"]


def test_prune_removes_long_dead_replicas_and_their_allocations_only(
        store: Store) -> None:  # noqa: F811
    live, dead, gone = (RelayRegistry(store.db, r) for r in (R1, R2, "3" * 16))
    live.heartbeat(T0 + PRUNE_AFTER_S + 10)
    dead.heartbeat(T0)
    gone.heartbeat(T0)
    live.claim(stored("aa", R1), T0)  # old, but its owner lives
    dead.claim(stored("bb", R2, a="node-x"), T0)
    store.db.execute("DELETE FROM replicas WHERE id = ?", ("3" * 16,))
    gone.claim(stored("cc", "3" * 16, a="node-y"), T0 + PRUNE_AFTER_S)  # recent: stays
    assert live.prune(T0 + PRUNE_AFTER_S + 10) == 1
    ids = [row[0] for row in store.db.execute("SELECT id FROM relay_allocations ORDER BY id")]
    assert ids == ["aa", "cc"]
    assert live.alive(R1, T0 + PRUNE_AFTER_S + 10) and not dead.alive(R2, T0)
    assert store.db.execute("SELECT id FROM replicas").fetchall() == [(R1,)]


def test_a_row_that_does_not_decode_is_a_config_error_naming_the_table(
        store: Store) -> None:  # noqa: F811
    one = RelayRegistry(store.db, R1)
    one.heartbeat(T0)
    store.db.execute("INSERT INTO relay_allocations (network, node_a, node_b, id, owner, "
                     "created, refreshed, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                     ("net", "node-a", "node-b", "zz", R1, T0, T0, b"{not json"))
    with pytest.raises(ConfigError, match="relay_allocations"):
        one.lookup("net", "node-a", "node-b", T0)


# -- two relay services on one PostgreSQL ----------------------------------------------

@pytest.fixture
def url(pg_cluster: PgCluster) -> Iterator[str]:  # noqa: F811
    with pg_cluster.fresh_schema() as fresh:
        yield fresh


@pytest.fixture
def stores(url: str) -> Iterator[tuple[Store, Store]]:
    a, b = open_store(url), open_store(url)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


class _Killed(RelayRegistry):
    """A replica that dies without a word: no clean leave."""

    def leave(self) -> None:
        pass


def pool() -> RelayPool:
    # Any ten ports: a port someone holds is skipped (RelayService.allocate).
    low = random.randrange(41000, 61000)
    return RelayPool("127.0.0.1", low, low + 9)


async def test_two_relay_services_answer_one_allocation_and_the_survivor_remakes_it(
        stores: tuple[Store, Store]) -> None:
    a, b = stores
    one = RelayService([pool()], "userspace", registry=_Killed(a.db, R1))
    two = RelayService([pool()], "userspace", registry=RelayRegistry(b.db, R2))
    bare = RelayService([], "userspace", registry=RelayRegistry(b.db, "3" * 16))
    async with trio.open_nursery() as nursery:
        await nursery.start(two.run)
        await nursery.start(bare.run)
        with trio.CancelScope() as one_scope:
            async with trio.open_nursery() as inner:
                await inner.start(one.run)
                mine = await one.allocate("net", "node-a", "node-b")
                theirs = await two.allocate("net", "node-b", "node-a")
                assert theirs.id == mine.id and {mine.side, theirs.side} == {0, 1}
                assert theirs.secret != mine.secret and two.table.allocations == {}
                assert two.stats.answered_elsewhere == 1
                # A replica without relay ports answers the others' allocations too.
                assert (await bare.allocate("net", "node-a", "node-b")).id == mine.id
                await flows(mine, theirs)
                one_scope.cancel()
        # SIGKILL leaves the row and an old heartbeat: what the survivor sees after 2 s.
        b.db.execute("UPDATE replicas SET heartbeat = heartbeat - 2 WHERE id = ?", (R1,))
        with pytest.raises(Unavailable, match="--relay"):
            await bare.allocate("net", "node-a", "node-b")
        moved = await two.allocate("net", "node-b", "node-a")
        again = await bare.allocate("net", "node-a", "node-b")
        assert moved.id != mine.id and again.id == moved.id
        await flows(moved, again)
        nursery.cancel_scope.cancel()
    assert RelayRegistry(a.db, R2).owned() == []  # the survivor left cleanly


async def test_a_replica_that_stops_hands_its_pairs_over_at_once(
        stores: tuple[Store, Store]) -> None:
    a, b = stores
    one = RelayService([pool()], "userspace", registry=RelayRegistry(a.db, R1))
    two = RelayService([pool()], "userspace", registry=RelayRegistry(b.db, R2))
    async with trio.open_nursery() as nursery:
        await nursery.start(two.run)
        with trio.CancelScope() as one_scope:
            async with trio.open_nursery() as inner:
                await inner.start(one.run)
                first = await one.allocate("net", "node-a", "node-b")
                one_scope.cancel()
        assert RelayRegistry(b.db, R1).owned() == []
        # No heartbeat aged by hand: the clean stop removed the rows and the replica.
        second = await two.allocate("net", "node-a", "node-b")
        assert second.id != first.id and two.table.allocations.keys() == {second.id}
        nursery.cancel_scope.cancel()


async def test_racing_replicas_leave_one_allocation_and_free_the_losers_ports(
        stores: tuple[Store, Store]) -> None:
    a, b = stores
    one = RelayService([pool()], "userspace", registry=RelayRegistry(a.db, R1))
    two = RelayService([pool()], "userspace", registry=RelayRegistry(b.db, R2))
    answers: list[api.RelayAllocation] = []

    async def ask(service: RelayService, node: str, peer: str) -> None:
        answers.append(await service.allocate("net", node, peer))

    async with trio.open_nursery() as nursery:
        await nursery.start(one.run)
        await nursery.start(two.run)
        async with trio.open_nursery() as racers:
            for _ in range(4):
                racers.start_soon(ask, one, "node-a", "node-b")
                racers.start_soon(ask, two, "node-b", "node-a")
        assert len({x.id for x in answers}) == 1
        held = len(one.table.allocations) + len(two.table.allocations)
        assert held == 1 and one.stats.lost_races + two.stats.lost_races <= 1
        free = sum(len(p) for p in (*one.table._free.values(), *two.table._free.values()))
        assert free == 20 - 2  # the loser's two ports are back
        nursery.cancel_scope.cancel()


async def flows(x: api.RelayAllocation, y: api.RelayAllocation) -> None:
    """Both sides bind on loopback, then a datagram crosses each way."""
    socks = [trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    try:
        relays = [parse_addr(x.relay), parse_addr(y.relay)]
        for sock, side, relay in zip(socks, (x, y), relays, strict=True):
            await sock.bind(("127.0.0.1", 0))
            data, txid = wire.bind_request(side.id, side.side, bytes.fromhex(side.secret),
                                           int(time.time() * 1000))
            await sock.sendto(data, relay)
            with trio.fail_after(5):
                answer, _ = await sock.recvfrom(2048)
            assert wire.parse_bind_success(answer, bytes.fromhex(side.secret))[0] == txid
        for sender, receiver in ((0, 1), (1, 0)):
            await socks[sender].sendto(b"ciphertext %d" % sender, relays[sender])
            with trio.fail_after(5):
                data, source = await socks[receiver].recvfrom(2048)
            assert data == b"ciphertext %d" % sender and source == relays[receiver]
    finally:
        for sock in socks:
            sock.close()


# -- two whole signal servers on one PostgreSQL ------------------------------------------

class Replica:
    """A signal server in the test's nursery that the test can stop and wait for."""

    def __init__(self, server: SignalServer) -> None:
        self.running = RunningServer(server)
        self.scope = trio.CancelScope()
        self.stopped = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        try:
            with self.scope:
                await self.running.server.run(task_status=task_status)
        finally:
            self.stopped.set()

    async def stop(self) -> None:
        self.scope.cancel()
        with trio.fail_after(10):
            await self.stopped.wait()


@pytest.fixture
async def two_servers(tmp_path: Path, url: str, nursery: trio.Nursery
                      ) -> AsyncIterator[tuple[Replica, Replica]]:
    replicas: list[Replica] = []
    try:
        for name in ("one", "two"):
            listener = bound_socket()
            options = ServerOptions(data_dir=tmp_path / name,
                                    http=("127.0.0.1", port_of(listener)), database=url,
                                    relay=[pool()], relay_mode="userspace")
            replica = Replica(SignalServer(options, http_socket=listener))
            replicas.append(replica)
            await nursery.start(replica.run)
        yield replicas[0], replicas[1]
    finally:
        for replica in replicas:
            await replica.running.admin.aclose()
            await replica.stop()
            replica.running.server.store.close()


async def test_nodes_asking_different_servers_meet_and_move_when_one_stops(
        two_servers: tuple[Replica, Replica]) -> None:
    one, two = two_servers
    await one.running.create_network("net")
    token = await one.running.create_token("net")
    alpha, _ = await joined_client(one.running, token, "alpha")
    beta, _ = await joined_client(two.running, token, "beta")
    alpha_on_two = ServerClient(two.running.url, alpha.signing_key)
    try:
        mine, theirs = await alpha.relay("beta"), await beta.relay("alpha")
        assert mine.id == theirs.id and mine.refresh_s == 1.0
        relay_one = one.running.server.relay
        assert relay_one is not None and relay_one.table.allocations.keys() == {mine.id}
        await flows(mine, theirs)
        await one.stop()  # alpha's server, and the allocation's owner
        moved = await beta.relay("alpha")
        alpha_side = await alpha_on_two.relay("beta")  # alpha's next ask reaches two
        assert moved.id == alpha_side.id != mine.id
        await flows(alpha_side, moved)
    finally:
        for client in (alpha, beta, alpha_on_two):
            await client.aclose()
