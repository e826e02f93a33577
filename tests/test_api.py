"""Every API route against a real server on loopback, through punchd's own client."""

from __future__ import annotations

import httpx
import pytest
import trio
import trio.testing
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from punchd.errors import APIError
from punchd.serverapi import ServerClient
from punchd.wire import api
from punchd.wire.signing import b64
from punchd.wire.token import decode_token

from .conftest import RunningServer


def key32() -> str:
    return b64(bytes(PrivateKey.generate().public_key))


async def joined_client(srv: RunningServer, token: str, name: str) -> tuple[ServerClient, api.JoinResponse]:
    client = ServerClient(srv.url, SigningKey.generate())
    try:
        resp = await client.join(decode_token(token), name=name, wg_public_key=key32(),
                                 probe_public_key=key32(), listen_port=51820)
    except BaseException:
        await client.aclose()
        raise
    return client, resp


async def test_admin_routes_need_the_admin_token(signal_server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=signal_server.url) as anon:
        for method, path in [("GET", "/api/v1/networks"), ("POST", "/api/v1/networks"),
                             ("GET", "/api/v1/networks/x/nodes")]:
            resp = await anon.request(method, path, headers={"authorization": "Bearer nope"})
            assert resp.status_code == 401, (method, path)
            assert resp.json()["error"] == "admin token required"


@pytest.mark.parametrize(("body", "field"), [
    ({"name": "Bad_Name", "ipv4_cidr": "198.19.0.0/24"}, "name"),
    ({"name": "ok", "ipv4_cidr": "nonsense"}, "ipv4_cidr"),
    ({"name": "ok", "ipv4_cidr": "198.19.0.0/24", "mtu": 100}, "mtu"),
    ({"name": "ok", "ipv4_cidr": "198.19.0.0/24", "bogus": 1}, "bogus"),
])
async def test_bad_network_bodies_name_the_field(signal_server: RunningServer, body: dict[str, object],
                                                 field: str) -> None:
    resp = await signal_server.admin.post("/networks", json=body)
    assert resp.status_code == 422, resp.text
    assert resp.json()["field"] == field or field in resp.json()["error"]
    assert (await signal_server.admin.get("/networks")).json() == []  # nothing changed


async def test_malformed_json_is_a_clear_400(signal_server: RunningServer) -> None:
    resp = await signal_server.admin.post("/networks", content=b"{not json")
    assert resp.status_code == 422 and "malformed JSON" in resp.json()["error"]


async def test_network_lifecycle(signal_server: RunningServer) -> None:
    srv = signal_server
    await srv.create_network("net")
    assert (await srv.admin.post("/networks", json={"name": "net", "ipv4_cidr": "198.19.9.0/24"})
            ).status_code == 409
    resp = await srv.admin.patch("/networks/net", json={"mtu": 1380})
    assert resp.status_code == 200 and resp.json()["mtu"] == 1380
    assert (await srv.admin.get("/networks/nope")).status_code == 404
    assert (await srv.admin.delete("/networks/net")).status_code == 204
    assert (await srv.admin.get("/networks")).json() == []


async def test_keys_join_state_update_and_delete(signal_server: RunningServer) -> None:
    srv = signal_server
    await srv.create_network("net", require_approval=True)
    token = await srv.create_token("net", uses=2)
    keys = (await srv.admin.get("/networks/net/keys")).json()
    assert keys[0]["uses_left"] == 2 and "secret" not in str(keys)
    client, joined = await joined_client(srv, token, "alpha")
    assert joined.node.ipv4 == "198.19.0.1/24" and joined.node.approved is False
    assert (await srv.admin.post("/networks/net/nodes/alpha/approve")).json()["approved"]
    peer_client, _ = await joined_client(srv, token, "beta")
    with pytest.raises(APIError) as exhausted:
        await joined_client(srv, token, "gamma")
    assert exhausted.value.status == 401
    snap = await client.get_state()
    assert snap.node.name == "alpha" and [p.name for p in snap.peers] == ["beta"]
    cand = api.Candidate(kind="host", address="198.18.0.10:51820", priority=1)
    updated = await client.update_self(api.NodeUpdate(candidates=(cand,)))
    assert updated.candidates == (cand,)
    punch = await client.request_punch("beta")
    assert punch.nodes[0] == joined.node.id
    with pytest.raises(APIError) as unknown:
        await client.request_punch("nobody")
    assert unknown.value.status == 404
    nodes = (await srv.admin.get("/networks/net/nodes")).json()
    assert {n["name"] for n in nodes} == {"alpha", "beta"}
    await peer_client.leave()
    with pytest.raises(APIError) as gone:
        await peer_client.get_state()
    assert gone.value.status == 401
    assert (await srv.admin.delete("/networks/net/nodes/alpha")).status_code == 204
    assert (await srv.admin.delete("/networks/net/nodes/alpha")).status_code == 404
    await client.aclose()
    await peer_client.aclose()


async def test_unsigned_and_tampered_node_requests_are_refused(signal_server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=signal_server.url) as anon:
        resp = await anon.get("/api/v1/node")
        assert resp.status_code == 401 and "missing signature" in resp.json()["error"]
        from punchd.wire.signing import sign_request
        headers = sign_request(SigningKey.generate(), "GET", "/api/v1/node", b"")
        resp = await anon.get("/api/v1/node", headers=headers)
        assert resp.status_code == 401 and "unknown node" in resp.json()["error"]
        # A key nobody registered is not remembered (its nonces could fill the store).
        resp = await anon.get("/api/v1/node", headers=headers)
        assert resp.status_code == 401 and "unknown node" in resp.json()["error"]


async def test_event_stream_snapshot_deltas_and_resume(signal_server: RunningServer) -> None:
    srv = signal_server
    await srv.create_network("net")
    token = await srv.create_token("net")
    alpha, _ = await joined_client(srv, token, "alpha")
    seen: list[api.Event] = []
    with trio.fail_after(10):
        async with alpha.events(since=None) as stream:
            first = await stream.__anext__()
            assert isinstance(first, api.Snapshot)
            assert [p.name for p in first.peers] == ["alpha"]
            beta, _ = await joined_client(srv, token, "beta")
            event = await stream.__anext__()
            assert isinstance(event, api.PeerAdded) and event.peer.name == "beta"
            seen.append(event)
        # Changes while disconnected are delivered on resume, in order, without a snapshot.
        await beta.update_self(api.NodeUpdate(listen_port=51999))
        await srv.admin.delete("/networks/net/nodes/beta")
        async with alpha.events(since=seen[-1].seq) as stream:
            changed = await stream.__anext__()
            removed = await stream.__anext__()
    assert isinstance(changed, api.PeerChanged) and changed.peer.listen_port == 51999
    assert isinstance(removed, api.PeerRemoved) and removed.name == "beta"
    assert seen[-1].seq < changed.seq < removed.seq
    await alpha.aclose()
    await beta.aclose()


async def test_punch_request_reaches_both_streams(signal_server: RunningServer) -> None:
    srv = signal_server
    await srv.create_network("net")
    token = await srv.create_token("net")
    alpha, a = await joined_client(srv, token, "alpha")
    beta, b = await joined_client(srv, token, "beta")
    snap = await alpha.get_state()
    got: dict[str, api.PunchRequest] = {}

    async def watch(name: str, client: ServerClient) -> None:
        async with client.events(since=snap.seq) as stream:
            async for event in stream:
                if isinstance(event, api.PunchRequest):
                    got[name] = event
                    return

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch, "alpha", alpha)
            nursery.start_soon(watch, "beta", beta)
            # Punch once the server holds both streams open (no guessed sleep).
            hub = srv.server.service.hub
            while not (hub.open_streams(a.node.id) and hub.open_streams(b.node.id)):
                await trio.testing.wait_all_tasks_blocked(cushion=0.001)
            await alpha.request_punch("beta")
    assert got["alpha"] == got["beta"]
    assert set(got["alpha"].nodes) == {a.node.id, b.node.id}
    await alpha.aclose()
    await beta.aclose()


async def test_dns_record_routes(signal_server: RunningServer) -> None:
    srv = signal_server
    await srv.create_network("net")
    resp = await srv.admin.post("/networks/net/dns", json={"name": "www", "rtype": "A",
                                                          "value": "198.19.0.7"})
    assert resp.status_code == 201
    bad = await srv.admin.post("/networks/net/dns", json={"name": "www", "rtype": "MX",
                                                         "value": "x"})
    assert bad.status_code == 422 and bad.json()["field"] == "rtype"
    assert (await srv.admin.get("/networks/net/dns")).json()[0]["value"] == "198.19.0.7"
    assert (await srv.admin.delete("/networks/net/dns/www/A")).status_code == 204
    assert (await srv.admin.delete("/networks/net/dns/www/A")).status_code == 404


async def test_openapi_spec_is_served(signal_server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=signal_server.url) as anon:
        spec = (await anon.get("/api/v1/openapi.json")).json()
    assert spec["openapi"].startswith("3.")
    assert "/api/v1/join" in spec["paths"] and "JoinRequest" in spec["components"]["schemas"]


async def test_node_expiry_route(signal_server: RunningServer) -> None:
    srv = signal_server
    await srv.create_network("net")
    client, _ = await joined_client(srv, await srv.create_token("net"), "alpha")
    resp = await srv.admin.patch("/networks/net/nodes/alpha", json={"expires_in": 3600})
    assert resp.status_code == 200 and resp.json()["expires_at"] is not None
    bad = await srv.admin.patch("/networks/net/nodes/alpha", json={"expires_in": -5})
    assert bad.status_code == 422 and bad.json()["field"] == "expires_in"
    missing = await srv.admin.patch("/networks/net/nodes/nobody", json={"expires_in": 60})
    assert missing.status_code == 404
    await client.aclose()


async def test_use_counts_exact_under_concurrent_joins_over_http(signal_server: RunningServer) -> None:
    srv = signal_server
    await srv.create_network("net")
    token = await srv.create_token("net", uses=5)
    results: list[str] = []

    async def attempt(i: int) -> None:
        try:
            client, resp = await joined_client(srv, token, f"n{i}")
        except APIError as exc:
            results.append(f"refused {exc.status}")
            return
        results.append(resp.node.ipv4 or "")
        await client.aclose()

    async with trio.open_nursery() as nursery:
        for i in range(12):
            nursery.start_soon(attempt, i)
    joined = [r for r in results if not r.startswith("refused")]
    assert len(joined) == 5 and len(set(joined)) == 5
    assert results.count("refused 401") == 7
    keys = (await srv.admin.get("/networks/net/keys")).json()
    assert keys[0]["uses_left"] == 0


async def test_remaining_admin_routes(signal_server: RunningServer) -> None:
    srv = signal_server
    await srv.create_network("net")
    assert (await srv.admin.get("/networks/net")).json()["ipv4_cidr"] == "198.19.0.0/24"
    token = await srv.create_token("net")
    key_id = (await srv.admin.get("/networks/net/keys")).json()[0]["id"]
    client, joined = await joined_client(srv, token, "alpha")
    node = (await srv.admin.get("/networks/net/nodes/alpha")).json()
    assert node["id"] == joined.node.id and node["wg_public_key"] == joined.node.wg_public_key
    assert (await srv.admin.get("/networks/net/nodes/nobody")).status_code == 404
    assert (await srv.admin.delete(f"/networks/net/keys/{key_id}")).status_code == 204
    assert (await srv.admin.delete(f"/networks/net/keys/{key_id}")).status_code == 404
    with pytest.raises(APIError) as revoked:
        await joined_client(srv, token, "beta")
    assert revoked.value.status == 401  # a deleted key joins nobody
    assert (await srv.admin.post("/networks/nope/keys", json={})).status_code == 404
    assert (await srv.admin.post("/networks/net/nodes/nobody/approve")).status_code == 404
    await client.aclose()
