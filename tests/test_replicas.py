"""Replicas on one PostgreSQL: the notice codec, the backoff, the feed against a real
server (delivery at commit only, own notices skipped, reconnect after the connection
is killed), and the per-process state that must stay correct with two replicas (the
expiry sweep emits each removal once). The HAProxy + SIGKILL test is in the lab
(netns_tests/test_replicas.py)."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from punchd.errors import EventNoticeError
from punchd.wire import api
from signal_server.event_feed import (
    Backoff,
    Notice,
    PostgresEventFeed,
    encode_notice,
    new_origin,
    parse_notice,
)
from signal_server.service import EventHub, Service
from signal_server.store import Store, open_store

from .pgcluster import PgCluster, pg_cluster  # noqa: F401  (the session fixture)
from .test_store_postgres import join_request

ORIGIN = "0123456789abcdef"
WAIT_S = 10.0  # a real PostgreSQL delivers in milliseconds; this only bounds a failure


# -- the notice codec --------------------------------------------------------------------

def test_a_notice_round_trips() -> None:
    notice = Notice(new_origin(), "office-1", 2**63 - 1)
    assert parse_notice(encode_notice(notice)) == notice
    assert len(encode_notice(Notice(ORIGIN, "a" * 63, 2**63 - 1))) < 8000  # NOTIFY's limit


@pytest.mark.parametrize("payload", [
    "", "/", "//", f"{ORIGIN}/net", f"{ORIGIN}/net/1/2", f"{ORIGIN.upper()}/net/1",
    f"{ORIGIN[:-1]}/net/1", f"{ORIGIN}0/net/1", f"{ORIGIN}/Net/1", f"{ORIGIN}/-net/1",
    f"{ORIGIN}/{'a' * 64}/1", f"{ORIGIN}/net/", f"{ORIGIN}/net/-1", f"{ORIGIN}/net/+1",
    f"{ORIGIN}/net/ 1", f"{ORIGIN}/net/1_0", f"{ORIGIN}/net/\u0661", f"{ORIGIN}/net/{2**63}",
    f"{ORIGIN}/net/{'9' * 20}", f"{ORIGIN}/n\u00e9t/1", "x" * 9000,
])
def test_a_malformed_notice_is_one_codec_error(payload: str) -> None:
    with pytest.raises(EventNoticeError):
        parse_notice(payload)


def test_every_truncated_prefix_of_a_notice_is_refused_or_a_shorter_seq() -> None:
    text = encode_notice(Notice(ORIGIN, "net", 12345))
    for cut in range(len(text)):
        prefix = text[:cut]
        if prefix.startswith(f"{ORIGIN}/net/") and cut > len(f"{ORIGIN}/net/"):
            assert parse_notice(prefix).seq == int(prefix.rsplit("/", 1)[1])
        else:
            with pytest.raises(EventNoticeError):
                parse_notice(prefix)


@given(st.text(max_size=200))
def test_any_text_parses_or_is_refused_cleanly(text: str) -> None:
    try:
        notice = parse_notice(text)
    except EventNoticeError:
        return
    assert encode_notice(notice) == text


# -- backoff -------------------------------------------------------------------------------

def test_backoff_doubles_to_its_cap_with_jitter_and_resets() -> None:
    backoff = Backoff(low=0.1, high=1.0, rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(8)]
    ceilings = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    backoff.reset()
    assert 0.05 <= backoff.next_delay() <= 0.1


# -- sorting notices -----------------------------------------------------------------------

def test_the_feed_skips_its_own_and_malformed_notices_and_names_each_network_once() -> None:
    feed = PostgresEventFeed("postgresql://unused", ORIGIN)
    other = "fedcba9876543210"
    payloads = [f"{other}/b/1", f"{ORIGIN}/a/2", f"{other}/a/3", "garbage", f"{other}/b/4"]
    assert feed.sort(payloads) == ["b", "a"]
    assert (feed.stats.notices, feed.stats.own, feed.stats.malformed) == (3, 1, 1)


def test_notify_all_wakes_every_waiting_network() -> None:
    hub = EventHub()
    waiting = [hub.changed("a"), hub.changed("b")]
    hub.notify_all()
    assert all(e.is_set() for e in waiting)
    assert hub.version == {"a": 1, "b": 1}


# -- against a real PostgreSQL ---------------------------------------------------------

@pytest.fixture
def url(pg_cluster: PgCluster) -> Iterator[str]:  # noqa: F811
    with pg_cluster.fresh_schema() as fresh:
        yield fresh


@pytest.fixture
def replicas(url: str) -> Iterator[tuple[Store, Store]]:
    a, b = open_store(url), open_store(url)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


class Heard:
    """What a feed reported, and a way to wait for it."""

    def __init__(self) -> None:
        self.networks: list[str] = []
        self.gaps = 0
        self._more = trio.Event()

    def changed(self, networks: list[str]) -> None:
        self.networks += networks
        self._more.set()

    def gap(self) -> None:
        self.gaps += 1
        self._more.set()

    async def wait_for(self, check: object) -> None:
        assert callable(check)
        with trio.fail_after(WAIT_S):
            while not check():
                self._more = trio.Event()
                await self._more.wait()


async def test_a_write_on_one_replica_is_heard_by_the_other_at_commit_only(
        replicas: tuple[Store, Store]) -> None:
    a, b = replicas
    heard_b, heard_a = Heard(), Heard()
    feed_b, feed_a = b.db.event_feed(), a.db.event_feed()
    assert feed_b is not None and feed_a is not None
    async with trio.open_nursery() as nursery:
        await nursery.start(feed_b.run, heard_b.changed, heard_b.gap)
        await nursery.start(feed_a.run, heard_a.changed, heard_a.gap)
        # A transaction that emits and then fails sends nothing: NOTIFY waits for COMMIT.
        def emit_then_fail() -> None:
            with a.db.transaction():
                a._emit("rolled-back", api.PunchRequest(seq=0, session="00", nodes=("x", "y"),
                                                        start_at=0.0))
                raise RuntimeError("abort")

        with pytest.raises(RuntimeError):
            await trio.to_thread.run_sync(emit_then_fail)
        await trio.to_thread.run_sync(
            a.create_network, api.NetworkCreate(name="net", ipv4_cidr="10.9.0.0/24"))
        _, secret = await trio.to_thread.run_sync(
            a.create_access_key, "net", api.AccessKeyCreate(uses=5))
        await trio.to_thread.run_sync(a.join, *join_request(secret))
        await heard_b.wait_for(lambda: heard_b.networks)
        # a hears its own notice on its own connection, in no order with b's: wait for
        # it too (a feed reports nothing for its own notices, so poll its count).
        with trio.fail_after(WAIT_S):
            while feed_a.stats.own < 1:  # noqa: ASYNC110
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert heard_b.networks == ["net"]  # the join's PeerAdded; never "rolled-back"
    assert feed_b.stats.notices == 1 and feed_b.stats.malformed == 0
    assert heard_a.networks == [] and feed_a.stats.own == 1  # a's own write: skipped
    assert heard_b.gaps == 0


async def test_the_feed_reconnects_after_its_connection_is_killed_and_wakes_everything(
        replicas: tuple[Store, Store]) -> None:
    a, b = replicas
    heard = Heard()
    feed = b.db.event_feed()
    assert feed is not None
    feed.backoff = Backoff(low=0.05, high=0.2)
    await trio.to_thread.run_sync(
        a.create_network, api.NetworkCreate(name="net", ipv4_cidr="10.9.0.0/24"))
    async with trio.open_nursery() as nursery:
        await nursery.start(feed.run, heard.changed, heard.gap)
        # What an operator's restart or a failover does to the listening connection.
        killed = a.db.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE query = 'LISTEN punchd_events' AND datname = current_database()"
        ).fetchall()
        assert killed == [(True,)]
        await heard.wait_for(lambda: heard.gaps == 1)
        await trio.to_thread.run_sync(
            a.update_network, "net", api.NetworkUpdate(require_approval=True))
        await heard.wait_for(lambda: heard.networks)
        nursery.cancel_scope.cancel()
    assert heard.networks == ["net"]
    assert feed.stats.losses == 1 and feed.stats.connects == 2


async def test_a_service_wakes_its_streams_and_hooks_on_the_other_replicas_write(
        replicas: tuple[Store, Store]) -> None:
    a, b = replicas
    service = Service(b, public_url="http://replica-b")
    hooks: list[int] = []
    service.on_change.append(lambda: hooks.append(1))
    await trio.to_thread.run_sync(
        a.create_network, api.NetworkCreate(name="net", ipv4_cidr="10.9.0.0/24"))
    feed = b.db.event_feed()
    assert feed is not None
    async with trio.open_nursery() as nursery:
        await nursery.start(service.follow, feed)
        woken = service.hub.changed("net")
        await trio.to_thread.run_sync(
            a.update_network, "net", api.NetworkUpdate(require_approval=True))
        with trio.fail_after(WAIT_S):
            await woken.wait()
        nursery.cancel_scope.cancel()
    assert hooks == [1]  # the DNS zone of replica b is rebuilt too


async def test_a_service_on_postgresql_runs_store_calls_side_by_side(
        replicas: tuple[Store, Store]) -> None:
    # Two calls that each wait for the other: they finish only if they run at once
    # (a herd of reconnecting streams must not queue behind one thread).
    a, _ = replicas
    service = Service(a, public_url="http://replica-a")
    both = threading.Barrier(2, timeout=WAIT_S)
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            for _ in range(2):
                nursery.start_soon(service.call, both.wait)
    assert a.db.threads > 1 and Service(Store(":memory:"), public_url="x").store.db.threads == 1


def test_the_expiry_sweep_on_two_replicas_removes_each_node_once(
        replicas: tuple[Store, Store]) -> None:
    a, b = replicas
    a.create_network(api.NetworkCreate(name="net", ipv4_cidr="10.9.0.0/24"))
    _, secret = a.create_access_key("net", api.AccessKeyCreate(uses=20))
    names = [a.join(*join_request(secret)).node.name for _ in range(20)]
    now = time.time()
    for name in names:
        a.set_node_expiry("net", name, api.NodeExpiry(expires_in=1), now=now - 10)
    start = threading.Barrier(8)
    changed: list[list[str]] = []

    def sweep(store: Store) -> None:
        start.wait(timeout=30)
        changed.append(store.remove_expired_nodes())

    threads = [threading.Thread(target=sweep, args=((a, b)[i % 2],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    events = b.events_since("net", 0, limit=1000) or []
    removed = [e.node_id for e in events if isinstance(e, api.PeerRemoved)]
    assert len(removed) == len(set(removed)) == 20
    assert sorted(changed) == [[]] * 7 + [["net"]]  # one sweep found them, seven nothing
    assert b.list_nodes("net") == []
