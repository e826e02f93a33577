"""Issue #14 items 5, 8 and 10: an event stream is bound to its node and its network's
identity, closes within a second of removal, shows a pending node only itself, resumes
a cursor from a restored database with a snapshot, and is bounded per node."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
import trio

from punchd.errors import APIError, ServerUnreachable
from punchd.serverapi import ServerClient
from punchd.wire import api
from punchd.wire.signing import b64

from .conftest import RunningServer
from .test_api import joined_client

CLOSE_WITHIN_S = 1.0


@asynccontextmanager
async def stream_of(client: ServerClient, since: int | None = None
                    ) -> AsyncIterator[AsyncIterator[api.Event]]:
    async with client.events(since=since) as stream:
        yield stream


async def next_event(stream: AsyncIterator[api.Event], within: float = 5.0) -> api.Event:
    with trio.fail_after(within):
        return await stream.__anext__()


async def test_a_deleted_network_closes_its_streams_and_a_new_one_of_that_name_is_unseen(
        signal_server: RunningServer) -> None:
    srv = signal_server
    await srv.create_network("net")
    alpha, _ = await joined_client(srv, await srv.create_token("net"), "alpha")
    async with stream_of(alpha) as stream:
        assert isinstance(await next_event(stream), api.Snapshot)
        deleted = time.monotonic()
        assert (await srv.admin.delete("/networks/net")).status_code == 204
        closed = await next_event(stream, CLOSE_WITHIN_S)
        assert time.monotonic() - deleted < CLOSE_WITHIN_S
        assert isinstance(closed, api.StreamClosed) and closed.removed
        assert "deleted" in closed.reason
        # Re-created under the same name: the old member hears nothing of it.
        await srv.create_network("net")
        beta, _ = await joined_client(srv, await srv.create_token("net"), "beta")
        with pytest.raises(ServerUnreachable, match="closed by the server"):
            await next_event(stream)
    with pytest.raises(APIError) as refused:
        async with stream_of(alpha) as again:
            await next_event(again)
    assert refused.value.status == 401
    await alpha.aclose()
    await beta.aclose()


async def test_an_expired_node_is_closed_within_a_second(signal_server: RunningServer) -> None:
    srv = signal_server
    await srv.create_network("net")
    alpha, _ = await joined_client(srv, await srv.create_token("net"), "alpha")
    async with stream_of(alpha) as stream:
        assert isinstance(await next_event(stream), api.Snapshot)
        resp = await srv.admin.patch("/networks/net/nodes/alpha", json={"expires_in": 1})
        assert resp.status_code == 200
        event = await next_event(stream)
        while isinstance(event, api.PeerChanged):  # its own expiry being set
            event = await next_event(stream, 1.0 + CLOSE_WITHIN_S)
        # Its own removal, as the event or as the stream's last word.
        assert (isinstance(event, api.PeerRemoved) and event.name == "alpha") or (
            isinstance(event, api.StreamClosed) and event.removed), event
        with pytest.raises(ServerUnreachable, match="closed by the server"):
            await next_event(stream)
    await alpha.aclose()


async def test_a_node_behind_the_retention_that_was_removed_gets_no_snapshot(
        signal_server: RunningServer) -> None:
    srv = signal_server
    await srv.create_network("net")
    token = await srv.create_token("net")
    alpha, joined = await joined_client(srv, token, "alpha")
    beta, _ = await joined_client(srv, token, "beta")
    store = srv.server.store
    cursor = store.last_seq()
    store.delete_node("net", "alpha")
    for port in range(2100):  # push alpha's removal out of the 2,000-event window
        store.update_node(b64(bytes(beta.signing_key.verify_key)), api.NodeUpdate(listen_port=1024 + port % 1000))
    # alpha's key is no longer known: the stream is refused before it starts.
    with pytest.raises(APIError) as refused:
        async with stream_of(alpha, since=cursor) as stream:
            await next_event(stream)
    assert refused.value.status == 401
    assert joined.node.id not in {n.id for n in store.list_nodes("net")}
    await alpha.aclose()
    await beta.aclose()


async def test_a_pending_node_sees_only_itself_until_approved(
        signal_server: RunningServer) -> None:
    srv = signal_server
    await srv.create_network("net", require_approval=True)
    token = await srv.create_token("net")
    alpha, _ = await joined_client(srv, token, "alpha")
    assert (await srv.admin.post("/networks/net/nodes/alpha/approve")).status_code == 200
    pending, _ = await joined_client(srv, token, "pending")
    state = await pending.get_state()
    assert state.peers == () and state.node.name == "pending"
    async with stream_of(pending) as stream:
        snap = await next_event(stream)
        assert isinstance(snap, api.Snapshot)
        assert [p.name for p in snap.peers] == ["pending"]
        # Another node's change is not shown; a punch or relay request is refused.
        await alpha.update_self(api.NodeUpdate(listen_port=51999))
        with pytest.raises(APIError) as refused:
            await pending.request_punch("alpha")
        assert refused.value.status == 403
        with pytest.raises(APIError) as refused:
            await pending.relay("alpha")
        assert refused.value.status == 403
        # Approval: a fresh snapshot with the peers.
        assert (await srv.admin.post("/networks/net/nodes/pending/approve")).status_code == 200
        event = await next_event(stream)
        assert isinstance(event, api.Snapshot), event
        assert sorted(p.name for p in event.peers) == ["alpha", "pending"]
    await alpha.aclose()
    await pending.aclose()


async def test_a_cursor_beyond_the_log_gets_a_snapshot(signal_server: RunningServer) -> None:
    # A database restored from a backup: the node's cursor is ahead of the server's log.
    srv = signal_server
    await srv.create_network("net")
    alpha, _ = await joined_client(srv, await srv.create_token("net"), "alpha")
    async with stream_of(alpha, since=srv.server.store.last_seq() + 500) as stream:
        assert isinstance(await next_event(stream), api.Snapshot)
    await alpha.aclose()


@pytest.mark.parametrize("since", [str(2**63), "-1", "1e3", "99999999999999999999999"])
async def test_a_cursor_out_of_range_is_a_422_naming_since(signal_server: RunningServer,
                                                          since: str) -> None:
    srv = signal_server
    await srv.create_network("net")
    alpha, _ = await joined_client(srv, await srv.create_token("net"), "alpha")
    with pytest.raises(APIError) as refused:
        async with alpha.events(since=since) as stream:  # type: ignore[arg-type]
            await next_event(stream)
    assert refused.value.status == 422 and refused.value.field == "since"
    await alpha.aclose()


async def test_past_four_streams_a_node_supersedes_its_oldest(
        signal_server: RunningServer) -> None:
    srv = signal_server
    await srv.create_network("net")
    alpha, joined = await joined_client(srv, await srv.create_token("net"), "alpha")
    hub = srv.server.service.hub
    async with stream_of(alpha) as first:
        assert isinstance(await next_event(first), api.Snapshot)
        async with stream_of(alpha) as s2, stream_of(alpha) as s3, stream_of(alpha) as s4:
            for s in (s2, s3, s4):
                assert isinstance(await next_event(s), api.Snapshot)
            assert hub.open_streams(joined.node.id) == 4
            async with stream_of(alpha) as fifth:
                assert isinstance(await next_event(fifth), api.Snapshot)
                assert hub.open_streams(joined.node.id) == 4
                # The oldest ends at its next wake-up, told it may reconnect.
                await alpha.update_self(api.NodeUpdate(listen_port=51999))
                closed = await next_event(first)
                assert isinstance(closed, api.StreamClosed) and not closed.removed
    await alpha.aclose()


async def test_unknown_keys_cannot_open_streams(signal_server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=signal_server.url) as http:
        resp = await http.get("/api/v1/events")
    assert resp.status_code == 401


async def test_a_heartbeat_reads_nothing_from_the_store_when_nothing_changed(
        autojump_clock: trio.testing.MockClock) -> None:
    """Issue #19: a quiet stream's heartbeats cost no store read, so the server's idle
    cost does not grow with every stream it holds; a change is still read and sent."""
    from signal_server.routes.events import EventStream
    from signal_server.service import Service
    from signal_server.store import Store

    from .test_store import join, network

    store = Store(":memory:")
    net = network(store)
    secret = store.create_access_key("net", api.AccessKeyCreate())[1]
    alpha = join(store, secret, "alpha").node
    reads = 0
    real = store.stream_view

    def counting(name: str, since: int | None) -> object:
        nonlocal reads
        reads += 1
        return real(name, since)

    store.stream_view = counting  # type: ignore[assignment,method-assign]
    service = Service(store, public_url="http://127.0.0.1:1")
    stream = EventStream(service, alpha, net.id, since=store.last_seq())
    assert await stream.__anext__() == b": heartbeat\n\n"
    assert reads == 1
    for _ in range(5):
        assert await stream.__anext__() == b": heartbeat\n\n"
    assert reads == 1  # the old stream read once per heartbeat: 6
    await service.write("net", join, store, secret, "beta")
    assert b"event: peer_added" in await stream.__anext__()
    assert reads == 2
    store.close()
