"""Issue #14 (hardening), server side: each test is a request that was accepted or
crashed before, against a real server on loopback."""

from __future__ import annotations

from pathlib import Path

import httpx
import msgspec
import pytest
from nacl.signing import SigningKey

from punchd.errors import APIError, Unauthorized
from punchd.serverapi import ServerClient
from punchd.wire import api
from punchd.wire.signing import b64, sign_request
from punchd.wire.token import decode_token
from signal_server import store as store_mod
from signal_server.app import build_app
from signal_server.routes.common import error_field
from signal_server.service import Service
from signal_server.store import Store

from .conftest import RunningServer
from .test_api import joined_client, key32


async def signed_post(srv: RunningServer, key: SigningKey, path: str, body: bytes,
                      method: str = "POST") -> httpx.Response:
    async with httpx.AsyncClient(base_url=srv.url) as anon:
        headers = sign_request(key, method, path, body)
        return await anon.request(method, path, content=body,
                                  headers={**headers, "content-type": "application/json"})


def join_body(token: str, key: SigningKey, wg: str, probe: str, name: str) -> bytes:
    tok = decode_token(token)
    return msgspec.json.encode(api.JoinRequest(
        access_key=tok.key, signing_key=b64(bytes(key.verify_key)), wg_public_key=wg,
        probe_public_key=probe, name=name))


async def test_node_update_cannot_carry_a_wireguard_key(signal_server: RunningServer) -> None:
    srv = signal_server
    await srv.create_network("net")
    token = await srv.create_token("net")
    victim, joined = await joined_client(srv, token, "victim")
    attacker, _ = await joined_client(srv, token, "attacker")
    body = msgspec.json.encode({"wg_public_key": joined.node.wg_public_key})
    resp = await signed_post(srv, attacker.signing_key, "/api/v1/node", body, "PATCH")
    assert resp.status_code == 422 and resp.json()["field"] == "wg_public_key"
    nodes = (await srv.admin.get("/networks/net/nodes")).json()
    assert len({n["wg_public_key"] for n in nodes}) == 2
    await victim.aclose()
    await attacker.aclose()


@pytest.mark.parametrize("field", ["wg_public_key", "probe_public_key"])
async def test_keys_are_unique_per_network_at_join(signal_server: RunningServer,
                                                   field: str) -> None:
    srv = signal_server
    await srv.create_network("net")
    token = await srv.create_token("net")
    first, joined = await joined_client(srv, token, "first")
    wg = joined.node.wg_public_key if field == "wg_public_key" else key32()
    probe = joined.node.probe_public_key if field == "probe_public_key" else key32()
    key = SigningKey.generate()
    resp = await signed_post(srv, key, "/api/v1/join", join_body(token, key, wg, probe, "second"))
    assert resp.status_code == 409 and resp.json()["field"] == field
    await first.aclose()


async def test_join_retry_is_idempotent_and_spends_no_use(signal_server: RunningServer) -> None:
    srv = signal_server
    await srv.create_network("net")
    token = await srv.create_token("net", uses=1)
    key, wg, probe = SigningKey.generate(), key32(), key32()
    body = join_body(token, key, wg, probe, "alpha")
    first = await signed_post(srv, key, "/api/v1/join", body)
    assert first.status_code == 201, first.text
    retry = await signed_post(srv, key, "/api/v1/join", body)  # the key has no uses left
    assert retry.status_code == 200, retry.text
    assert retry.json()["node"]["id"] == first.json()["node"]["id"]
    assert retry.json()["node"]["ipv4"] == first.json()["node"]["ipv4"]
    assert (await srv.admin.get("/networks/net/keys")).json()[0]["uses_left"] == 0
    other = await signed_post(srv, key, "/api/v1/join", join_body(token, key, key32(), probe,
                                                                  "alpha"))
    assert other.status_code == 409 and other.json()["field"] == "signing_key"
    assert len((await srv.admin.get("/networks/net/nodes")).json()) == 1


async def test_join_retry_through_the_client(signal_server: RunningServer) -> None:
    srv = signal_server
    await srv.create_network("net")
    token = await srv.create_token("net", uses=1)
    client = ServerClient(srv.url, SigningKey.generate())
    wg, probe = key32(), key32()
    first = await client.join(decode_token(token), name="a", wg_public_key=wg,
                              probe_public_key=probe, listen_port=51820)
    again = await client.join(decode_token(token), name="a", wg_public_key=wg,
                              probe_public_key=probe, listen_port=51820)
    assert again.node == first.node or again.node.id == first.node.id
    await client.aclose()


async def test_oversized_bodies_get_413_before_reading(signal_server: RunningServer) -> None:
    srv = signal_server
    async with httpx.AsyncClient(base_url=srv.url) as anon:
        resp = await anon.post("/api/v1/join", content=b"x" * (65 * 1024))
        assert resp.status_code == 413 and "larger than" in resp.json()["error"]

    async def chunks() -> object:
        for _ in range(100):
            yield b"y" * 4096

    async with httpx.AsyncClient(base_url=srv.url) as anon:
        resp = await anon.post("/api/v1/join", content=chunks())  # type: ignore[arg-type]
        assert resp.status_code == 413
    resp = await srv.admin.post("/networks", content=b" " * (70 * 1024))
    assert resp.status_code == 413


async def test_candidates_are_bounded_and_validated(signal_server: RunningServer) -> None:
    srv = signal_server
    await srv.create_network("net")
    token = await srv.create_token("net")
    client, _ = await joined_client(srv, token, "alpha")
    many = tuple(api.Candidate(kind="host", address=f"198.18.0.{i}:51820") for i in range(33))
    with pytest.raises(APIError) as too_many:
        await client.update_self(api.NodeUpdate(candidates=many))
    assert too_many.value.status == 422 and too_many.value.field == "candidates"
    bad = (api.Candidate(kind="host", address="198.18.0.1:51820"),
           api.Candidate(kind="host", address="not-an-address"))
    with pytest.raises(APIError) as invalid:
        await client.update_self(api.NodeUpdate(candidates=bad))
    assert invalid.value.status == 422 and invalid.value.field == "candidates[1].address"
    snap = await client.get_state()
    assert snap.node.candidates == ()
    await client.aclose()


@pytest.mark.parametrize(("message", "field"), [
    ("Object missing required field `name`", "name"),
    ("Object missing required field `address` - at `$.candidates[0]`", "candidates[0].address"),
    ("Expected `str`, got `int` - at `$.name`", "name"),
    ("Object contains unknown field `zz`", "zz"),
    ("Expected `array` of length <= 32 - at `$.candidates`", "candidates"),
    ("Invalid value 'x' - at `$.candidates[3].kind`", "candidates[3].kind"),
    ("Expected `object`, got `int`", None),
])
def test_validation_errors_name_their_field(message: str, field: str | None) -> None:
    assert error_field(message) == field


async def test_missing_field_is_named(signal_server: RunningServer) -> None:
    resp = await signal_server.admin.post("/networks", json={"ipv4_cidr": "198.19.0.0/24"})
    assert resp.status_code == 422 and resp.json()["field"] == "name"


@pytest.mark.parametrize(("method", "path", "field"), [
    ("DELETE", "/networks/Net", "network"), ("GET", "/networks/Bad_Name/nodes", "network"),
    ("DELETE", "/networks/net/nodes/a.b", "node"), ("GET", "/networks/x%20y/keys", "network"),
    ("PATCH", "/networks/net/nodes/-x", "node"), ("POST", "/networks/net./nodes/a/approve",
                                                   "network"),
    # A decoded "/" matches no route at all: 404 before any handler.
    ("DELETE", "/networks/..%2F..%2Fprod", None), ("DELETE", "/networks/net/nodes/..%2Fx", None),
])
async def test_path_names_are_validated(signal_server: RunningServer, method: str, path: str,
                                        field: str | None) -> None:
    await signal_server.create_network("net")
    resp = await signal_server.admin.request(method, path, json={"expires_in": None})
    if field is None:
        assert resp.status_code == 404
    else:
        assert resp.status_code == 422 and resp.json()["field"] == field, resp.text
    assert len((await signal_server.admin.get("/networks")).json()) == 1


async def test_empty_admin_token_never_authenticates(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    app = build_app(Service(store, public_url="http://test"), "")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://test") as client:
        for auth in ("Bearer", "bearer", "Bearer x"):
            resp = await client.get("/api/v1/networks", headers={"authorization": auth})
            assert resp.status_code == 401, auth
    store.close()


async def test_replayed_request_refused_by_a_restarted_server(tmp_path: Path) -> None:
    """A captured signed PATCH is refused by a new Service over the same store file."""
    path = tmp_path / "signal.db"

    async def over(store: Store) -> httpx.AsyncClient:
        app = build_app(Service(store, public_url="http://test"), "admin-token")
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")

    first = Store(path)
    first.create_network(api.NetworkCreate(name="net", ipv4_cidr="198.19.0.0/24"))
    _, secret = first.create_access_key("net", api.AccessKeyCreate())
    key = SigningKey.generate()
    signer = b64(bytes(key.verify_key))
    first.join(api.JoinRequest(access_key=secret, signing_key=signer, wg_public_key=key32(),
                               probe_public_key=key32(), name="alpha"), signer)
    body = msgspec.json.encode(api.NodeUpdate(listen_port=51821))
    captured = {**sign_request(key, "PATCH", "/api/v1/node", body),
                "content-type": "application/json"}
    async with await over(first) as client:
        assert (await client.patch("/api/v1/node", content=body, headers=captured)
                ).status_code == 200
        replay = await client.patch("/api/v1/node", content=body, headers=captured)
        assert replay.status_code == 401 and "replayed" in replay.json()["error"]
    first.close()
    restarted = Store(path)
    async with await over(restarted) as client:
        replay = await client.patch("/api/v1/node", content=body, headers=captured)
        assert replay.status_code == 401 and "replayed" in replay.json()["error"]
        fresh = {**sign_request(key, "PATCH", "/api/v1/node", body),
                 "content-type": "application/json"}
        assert (await client.patch("/api/v1/node", content=body, headers=fresh)
                ).status_code == 200
    restarted.close()


def test_unknown_keys_leave_no_nonce_and_one_node_crowds_out_only_itself(
        tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    store.create_network(api.NetworkCreate(name="net", ipv4_cidr="198.19.0.0/24"))
    _, secret = store.create_access_key("net", api.AccessKeyCreate())
    keys = []
    for name in ("a", "b"):
        signer = b64(bytes(SigningKey.generate().verify_key))
        store.join(api.JoinRequest(access_key=secret, signing_key=signer,
                                   wg_public_key=key32(), probe_public_key=key32(),
                                   name=name), signer)
        keys.append(signer)
    a, b = keys
    stranger = b64(bytes(SigningKey.generate().verify_key))
    with pytest.raises(Unauthorized, match="unknown node"):
        store.remember_request(stranger, "0" * 32, 1000.0, now=1000.0)
    assert store.db.execute("SELECT COUNT(*) FROM request_nonces").fetchone()[0] == 0
    store.remember_request(b, "b" * 32, 1000.0, now=1000.0)
    for i in range(store_mod.NONCES_PER_KEY + 10):
        store.remember_request(a, f"{i:032x}", 1000.0 + i / 10_000, now=1001.0)
    with pytest.raises(Unauthorized, match="replayed"):
        store.remember_request(b, "b" * 32, 1000.0, now=1001.0)  # b's nonce is still kept
    with pytest.raises(Unauthorized, match="replayed"):
        store.remember_request(a, "f" * 32, 1000.0, now=1001.0)  # below a's floor
    store.remember_request(a, "e" * 32, 1001.0, now=1001.0)
    # Past the window everything is forgotten: the table does not grow without bound.
    store.remember_request(b, "c" * 32, 1100.0, now=1100.0)
    assert store.db.execute("SELECT COUNT(*) FROM request_nonces").fetchone()[0] == 1
    store.close()


async def test_replayed_join_after_leave_is_refused(signal_server: RunningServer) -> None:
    srv = signal_server
    await srv.create_network("net")
    token = await srv.create_token("net")
    key = SigningKey.generate()
    body = join_body(token, key, key32(), key32(), "alpha")
    captured = {**sign_request(key, "POST", "/api/v1/join", body),
                "content-type": "application/json"}
    async with httpx.AsyncClient(base_url=srv.url) as anon:
        assert (await anon.post("/api/v1/join", content=body, headers=captured)
                ).status_code == 201
        assert (await signed_post(srv, key, "/api/v1/node", b"", "DELETE")).status_code == 204
        replay = await anon.post("/api/v1/join", content=body, headers=captured)
    assert replay.status_code == 401 and "replayed" in replay.json()["error"]
    assert (await srv.admin.get("/networks/net/nodes")).json() == []


async def test_a_store_row_that_does_not_decode_is_a_500_and_the_server_serves_on(
        signal_server: RunningServer, caplog: pytest.LogCaptureFixture) -> None:
    srv = signal_server
    await srv.create_network("net")
    await srv.create_network("other", cidr="198.19.1.0/24")
    srv.server.store.db.execute("UPDATE networks SET body = ? WHERE name = 'net'", (b"null",))
    resp = await srv.admin.get("/networks/net")
    assert resp.status_code == 500 and resp.json()["error"].startswith("internal error")
    assert "networks table holds a row" in caplog.text and "Traceback" not in caplog.text
    assert (await srv.admin.get("/networks/other")).status_code == 200
