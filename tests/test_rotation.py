"""Key rotation on the server: the store's rules, and the routes over a real server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import pytest
import trio
import trio.testing
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from punchd.errors import APIError, Conflict, Invalid, NotFound, Unauthorized
from punchd.wire import api
from punchd.wire.signing import b64, sign_request
from signal_server.app import build_app
from signal_server.service import Service
from signal_server.store import ROTATION_WAIT_S, Store

from .conftest import RunningServer
from .test_api import joined_client


def key32() -> str:
    return b64(bytes(PrivateKey.generate().public_key))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "s.db")
    yield s
    s.close()


def joined(store: Store, secret: str, name: str) -> tuple[str, api.Node]:
    signer = b64(bytes(SigningKey.generate().verify_key))
    req = api.JoinRequest(access_key=secret, signing_key=signer, wg_public_key=key32(),
                          probe_public_key=key32(), name=name)
    return signer, store.join(req, signer).node


def mesh(store: Store, *names: str) -> dict[str, tuple[str, api.Node]]:
    store.create_network(api.NetworkCreate(name="net", ipv4_cidr="198.19.0.0/24"))
    _, secret = store.create_access_key("net", api.AccessKeyCreate())
    return {name: joined(store, secret, name) for name in names}


def new_keys() -> api.KeyRotation:
    return api.KeyRotation(wg_public_key=key32(), probe_public_key=key32())


def events_after(store: Store, seq: int) -> list[api.Event]:
    events = store.events_since("net", seq)
    assert events is not None
    return events


def test_a_network_batch_switches_in_one_event_when_the_last_keys_arrive(store: Store) -> None:
    nodes = mesh(store, "alpha", "beta", "gamma")
    asked = store.request_rotation("net", now=100.0)
    assert {n.name for n in asked} == set(nodes)
    assert all(n.rotation_requested_at == 100.0 for n in store.list_nodes("net"))
    seq = store.last_seq()
    sent = {}
    for i, (name, (signer, _)) in enumerate(nodes.items()):
        sent[name] = new_keys()
        node = store.submit_keys(signer, sent[name], now=101.0)
        if i < 2:  # not the last: the node's keys wait, nobody has switched yet
            assert node.next_wg_public_key == sent[name].wg_public_key
            assert node.wg_public_key == nodes[name][1].wg_public_key
            assert events_after(store, seq) == []
    rotated = events_after(store, seq)
    assert len(rotated) == 1 and isinstance(rotated[0], api.KeysRotated)
    by_name = {p.name: p for p in rotated[0].peers}
    for name, keys in sent.items():
        assert (by_name[name].wg_public_key, by_name[name].probe_public_key) == \
            (keys.wg_public_key, keys.probe_public_key)
        assert by_name[name].rotation_requested_at is None
        assert by_name[name].next_wg_public_key is None
    assert {n.wg_public_key for n in store.list_nodes("net")} == \
        {k.wg_public_key for k in sent.values()}


def test_one_node_rotates_alone(store: Store) -> None:
    nodes = mesh(store, "alpha", "beta")
    store.request_rotation("net", "beta", now=100.0)
    seq = store.last_seq()
    keys = new_keys()
    node = store.submit_keys(nodes["beta"][0], keys, now=100.5)
    assert node.wg_public_key == keys.wg_public_key and node.rotation_requested_at is None
    (event,) = events_after(store, seq)
    assert isinstance(event, api.KeysRotated) and [p.name for p in event.peers] == ["beta"]
    assert store.get_node("net", "alpha").wg_public_key == nodes["alpha"][1].wg_public_key


def test_a_late_node_does_not_hold_the_batch_past_the_wait(store: Store) -> None:
    nodes = mesh(store, "alpha", "beta")
    store.request_rotation("net", now=100.0)
    store.submit_keys(nodes["alpha"][0], new_keys(), now=101.0)
    assert store.commit_due_rotations(now=100.0 + ROTATION_WAIT_S - 1) == []
    seq = store.last_seq()
    assert store.commit_due_rotations(now=100.0 + ROTATION_WAIT_S) == ["net"]
    (event,) = events_after(store, seq)
    assert isinstance(event, api.KeysRotated) and [p.name for p in event.peers] == ["alpha"]
    # beta is still asked; its keys, when they come, switch it alone at once.
    assert store.get_node("net", "beta").rotation_requested_at == 100.0
    late = store.submit_keys(nodes["beta"][0], new_keys(), now=200.0)
    assert late.rotation_requested_at is None
    assert store.commit_due_rotations(now=300.0) == []


def test_bad_submissions_change_nothing(store: Store) -> None:
    nodes = mesh(store, "alpha", "beta")
    alpha_signer, alpha = nodes["alpha"]
    with pytest.raises(Conflict, match="no key rotation was asked"):
        store.submit_keys(alpha_signer, new_keys())
    store.request_rotation("net")
    beta = nodes["beta"][1]
    for keys, error, match in (
        (api.KeyRotation(wg_public_key=alpha.wg_public_key, probe_public_key=key32()),
         Invalid, "current key"),
        (api.KeyRotation(wg_public_key=key32(), probe_public_key=alpha.probe_public_key),
         Invalid, "current key"),
        (api.KeyRotation(wg_public_key=beta.wg_public_key, probe_public_key=key32()),
         Conflict, "in use"),
        (api.KeyRotation(wg_public_key=key32(), probe_public_key=beta.wg_public_key),
         Conflict, "in use"),
    ):
        with pytest.raises(error, match=match):
            store.submit_keys(alpha_signer, keys)
    same = key32()
    with pytest.raises(Invalid, match="must differ"):
        store.submit_keys(alpha_signer, api.KeyRotation(wg_public_key=same, probe_public_key=same))
    # Another node's pending key is taken too: both could switch in one batch.
    pending = new_keys()
    store.submit_keys(nodes["beta"][0], pending)
    with pytest.raises(Conflict, match="in use"):
        store.submit_keys(alpha_signer, api.KeyRotation(wg_public_key=pending.wg_public_key,
                                                        probe_public_key=key32()))
    assert store.get_node("net", "alpha").next_wg_public_key is None
    with pytest.raises(Unauthorized):
        store.submit_keys(b64(bytes(SigningKey.generate().verify_key)), new_keys())
    with pytest.raises(NotFound):
        store.request_rotation("net", "nobody")
    with pytest.raises(NotFound):
        store.request_rotation("nonet")


def test_a_node_awaiting_approval_hears_of_its_switch_alone(store: Store) -> None:
    store.create_network(api.NetworkCreate(name="net", ipv4_cidr="198.19.0.0/24",
                                           require_approval=True))
    _, secret = store.create_access_key("net", api.AccessKeyCreate())
    a_signer, _ = joined(store, secret, "alpha")
    store.approve_node("net", "alpha")
    w_signer, _ = joined(store, secret, "waiting")
    store.request_rotation("net")
    seq = store.last_seq()
    store.submit_keys(a_signer, new_keys())
    store.submit_keys(w_signer, new_keys())
    events = events_after(store, seq)
    assert [[p.name for p in e.peers] for e in events if isinstance(e, api.KeysRotated)] == \
        [["alpha"], ["waiting"]]


# -- over HTTP -------------------------------------------------------------------------


async def test_rotation_routes_and_the_stream(signal_server: RunningServer) -> None:
    srv = signal_server
    await srv.create_network("net")
    token = await srv.create_token("net")
    alpha, a = await joined_client(srv, token, "alpha")
    beta, _ = await joined_client(srv, token, "beta")
    snap = await alpha.get_state()
    assert (await srv.admin.post("/networks/net/nodes/nobody/rotate-key")).status_code == 404
    resp = await srv.admin.post("/networks/net/rotate-keys")
    assert resp.status_code == 202 and {n["name"] for n in resp.json()} == {"alpha", "beta"}
    a_keys, b_keys = new_keys(), new_keys()
    assert (await alpha.submit_keys(a_keys.wg_public_key, a_keys.probe_public_key)
            ).next_wg_public_key == a_keys.wg_public_key
    done = await beta.submit_keys(b_keys.wg_public_key, b_keys.probe_public_key)
    assert done.wg_public_key == b_keys.wg_public_key
    with trio.fail_after(10):
        async with alpha.events(since=snap.seq) as stream:
            async for event in stream:
                if isinstance(event, api.KeysRotated):
                    break
    assert {p.id: p.wg_public_key for p in event.peers}[a.node.id] == a_keys.wg_public_key
    # Without a request, a node cannot change its keys (a member could otherwise claim
    # a key and have its peers' traffic follow).
    with pytest.raises(APIError) as refused:
        await alpha.submit_keys(key32(), key32())
    assert refused.value.status == 409
    await alpha.aclose()
    await beta.aclose()


async def test_submissions_need_the_node_signature_and_a_valid_key(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    store.create_network(api.NetworkCreate(name="net", ipv4_cidr="198.19.0.0/24"))
    _, secret = store.create_access_key("net", api.AccessKeyCreate())
    key = SigningKey.generate()
    signer = b64(bytes(key.verify_key))
    store.join(api.JoinRequest(access_key=secret, signing_key=signer, wg_public_key=key32(),
                               probe_public_key=key32(), name="alpha"), signer)
    store.request_rotation("net", "alpha")
    app = build_app(Service(store, public_url="http://test"), "admin-token")
    path = "/api/v1/node/keys"

    def signed(body: bytes, by: SigningKey = key) -> dict[str, str]:
        return {**sign_request(by, "POST", path, body), "content-type": "application/json"}

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://test") as client:
        body = msgspec.json.encode(new_keys())
        unsigned = await client.post(path, content=body,
                                     headers={"content-type": "application/json"})
        assert unsigned.status_code == 401
        stranger = await client.post(path, content=body, headers=signed(body, SigningKey.generate()))
        assert stranger.status_code == 401
        bad = b'{"wg_public_key": "not-a-key", "probe_public_key": "%s"}' % key32().encode()
        refused = await client.post(path, content=bad, headers=signed(bad))
        assert refused.status_code == 422 and refused.json()["field"] == "wg_public_key"
        assert store.get_node("net", "alpha").next_wg_public_key is None
        captured = signed(body)
        assert (await client.post(path, content=body, headers=captured)).status_code == 200
        # The same signed request again: refused, and the node's keys stay what it sent.
        store.request_rotation("net", "alpha")
        replay = await client.post(path, content=body, headers=captured)
        assert replay.status_code == 401 and "replayed" in replay.json()["error"]
        assert store.get_node("net", "alpha").next_wg_public_key is None
    store.close()


def test_the_agent_model_takes_a_whole_batch_at_once() -> None:
    from punchd.daemon.model import NetworkModel

    def node(name: str) -> api.Node:
        return api.Node(id=name, network="net", name=name, signing_key=key32(),
                        wg_public_key=key32(), probe_public_key=key32(), listen_port=51820)

    me, peer = node("alpha"), node("beta")
    model = NetworkModel(node=me, peers={"beta": peer}, seq=1)
    me2 = msgspec.structs.replace(me, wg_public_key=key32())
    peer2 = msgspec.structs.replace(peer, wg_public_key=key32())
    model.apply(api.KeysRotated(seq=2, peers=(me2, peer2)))
    assert model.node == me2 and model.peers == {"beta": peer2} and model.seq == 2


def test_next_keys_wait_beside_the_current_ones_and_promote_one_by_one(tmp_path: Path) -> None:
    from punchd.daemon.state import StateDir
    from punchd.errors import ConfigError

    state = StateDir(tmp_path)
    state.ensure()
    old = state.create_keys("net")
    wg, probe = state.create_next_keys("net")
    assert state.load_keys("net") == old  # nothing switched yet
    state.promote_next_key("net", "wireguard")
    keys = state.load_keys("net")
    assert keys.wireguard == wg and bytes(keys.probe) == bytes(old.probe)
    state.promote_next_key("net", "probe")
    assert bytes(state.load_keys("net").probe) == bytes(probe)
    with pytest.raises(ConfigError, match="cannot switch"):
        state.promote_next_key("net", "probe")  # nothing left to promote
    with pytest.raises(ConfigError, match="no such key"):
        state.promote_next_key("net", "../node")
