"""Every route of the API: in the OpenAPI document with the security it enforces, and
every write announced once through ``Service.write`` (streams woken, hooks run).

In process (httpx's ASGI transport, no socket), over an in-memory store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import msgspec
import pytest
from nacl.signing import SigningKey
from starlette.routing import Route

from punchd.wire import api
from punchd.wire.signing import b64, sign_request
from signal_server.app import OPERATIONS, build_app, openapi_spec
from signal_server.routes.common import Operation
from signal_server.service import Service
from signal_server.store import Store

from .test_api import key32

ADMIN = "routes-admin-token"
ALPHA = SigningKey(bytes(range(32)))  # joined, approved
NEWCOMER = SigningKey(bytes(range(64, 96)))  # not joined yet


@dataclass
class Server:
    service: Service
    client: httpx.AsyncClient
    secret: str  # an unused access key of "net"
    key_id: str
    hooks: int = 0

    async def send(self, method: str, path: str, body: object = None, *,
                   signer: SigningKey | None = None) -> httpx.Response:
        content = b"" if body is None else msgspec.json.encode(body)
        headers = {"content-type": "application/json"}
        if signer is None:
            headers["authorization"] = f"Bearer {ADMIN}"
        else:
            headers |= sign_request(signer, method, path, content)
        return await self.client.request(method, path, content=content, headers=headers)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    store = Store(":memory:")
    store.create_network(api.NetworkCreate(name="net", ipv4_cidr="198.19.0.0/24"))
    for name, key in (("alpha", ALPHA), ("beta", SigningKey(bytes(range(32, 64))))):
        _, secret = store.create_access_key("net", api.AccessKeyCreate(uses=1))
        signer = b64(bytes(key.verify_key))
        store.join(api.JoinRequest(access_key=secret, signing_key=signer, wg_public_key=key32(),
                                   probe_public_key=key32(), name=name), signer)
    store.add_dns_record("net", api.DnsRecord(name="www", rtype="A", value="198.19.0.99"))
    store.request_rotation("net", "alpha")  # so alpha may send new keys
    key, secret = store.create_access_key("net", api.AccessKeyCreate())
    service = Service(store, public_url="http://test")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=build_app(service, ADMIN)),
                                 base_url="http://test") as client:
        srv = Server(service, client, secret, key.id)

        def count() -> None:
            srv.hooks += 1

        service.on_change.append(count)
        yield srv
    store.close()


def join_body(srv: Server) -> api.JoinRequest:
    return api.JoinRequest(access_key=srv.secret, signing_key=b64(bytes(NEWCOMER.verify_key)),
                           wg_public_key=b64(bytes(32)), probe_public_key=b64(bytes(range(32))),
                           name="gamma")


# Every operation that changes state: the request, and the networks whose streams it
# must wake (none for an access key: no member sees one, but the hooks still run).
WRITES: dict[tuple[str, str], tuple[str, object, SigningKey | None, set[str]]] = {
    ("POST", "/api/v1/networks"): (
        "/api/v1/networks", {"name": "other", "ipv4_cidr": "198.18.0.0/24"}, None, {"other"}),
    ("PATCH", "/api/v1/networks/{network}"): (
        "/api/v1/networks/net", {"keepalive": 30}, None, {"net"}),
    ("DELETE", "/api/v1/networks/{network}"): ("/api/v1/networks/net", None, None, {"net"}),
    ("POST", "/api/v1/networks/{network}/keys"): (
        "/api/v1/networks/net/keys", {"uses": 2}, None, set()),
    ("DELETE", "/api/v1/networks/{network}/keys/{key}"): (
        "/api/v1/networks/net/keys/{key_id}", None, None, set()),
    ("PATCH", "/api/v1/networks/{network}/nodes/{node}"): (
        "/api/v1/networks/net/nodes/beta", {"expires_in": 3600}, None, {"net"}),
    ("DELETE", "/api/v1/networks/{network}/nodes/{node}"): (
        "/api/v1/networks/net/nodes/beta", None, None, {"net"}),
    ("POST", "/api/v1/networks/{network}/nodes/{node}/approve"): (
        "/api/v1/networks/net/nodes/beta/approve", None, None, {"net"}),
    ("POST", "/api/v1/networks/{network}/dns"): (
        "/api/v1/networks/net/dns", {"name": "db", "rtype": "A", "value": "198.19.0.98"}, None,
        {"net"}),
    ("DELETE", "/api/v1/networks/{network}/dns/{name}/{rtype}"): (
        "/api/v1/networks/net/dns/www/A", None, None, {"net"}),
    ("POST", "/api/v1/join"): ("/api/v1/join", "join", NEWCOMER, {"net"}),
    ("PATCH", "/api/v1/node"): ("/api/v1/node", {"listen_port": 51821}, ALPHA, {"net"}),
    ("DELETE", "/api/v1/node"): ("/api/v1/node", None, ALPHA, {"net"}),
    ("POST", "/api/v1/punch"): ("/api/v1/punch", {"peer": "beta"}, ALPHA, {"net"}),
    ("POST", "/api/v1/networks/{network}/rotate-keys"): (
        "/api/v1/networks/net/rotate-keys", None, None, {"net"}),
    ("POST", "/api/v1/networks/{network}/nodes/{node}/rotate-key"): (
        "/api/v1/networks/net/nodes/beta/rotate-key", None, None, {"net"}),
    ("POST", "/api/v1/node/keys"): (
        "/api/v1/node/keys", {"wg_public_key": b64(bytes(range(1, 33))),
                              "probe_public_key": b64(bytes(range(2, 34)))}, ALPHA, {"net"}),
}
# Calls that change no state of the store: a relay allocation lives in the relay (and
# this server has none, so it answers 503).
NOT_WRITES = {("POST", "/api/v1/relay")}


def test_every_changing_operation_has_a_write_case() -> None:
    changing = {(op.method, op.path) for op in OPERATIONS if op.method != "GET"}
    assert changing == set(WRITES) | NOT_WRITES


@pytest.mark.parametrize("operation", sorted(WRITES), ids=" ".join)
async def test_a_write_wakes_its_networks_and_runs_the_hooks_once(
        server: Server, operation: tuple[str, str]) -> None:
    method, _ = operation
    path, body, signer, networks = WRITES[operation]
    path = path.format(key_id=server.key_id)
    before = dict(server.service.hub.version)
    resp = await server.send(method, path, join_body(server) if body == "join" else body,
                             signer=signer)
    assert resp.is_success, resp.text
    assert server.hooks == 1
    woken = {net: n - before.get(net, 0) for net, n in server.service.hub.version.items()
             if n != before.get(net, 0)}
    assert woken == dict.fromkeys(networks, 1)


async def test_a_retried_join_changes_nothing_and_announces_nothing(server: Server) -> None:
    first = await server.send("POST", "/api/v1/join", join_body(server), signer=NEWCOMER)
    assert first.status_code == 201, first.text
    version, hooks = dict(server.service.hub.version), server.hooks
    # The same join signed afresh, as a client whose first answer was lost retries it.
    retry = await server.send("POST", "/api/v1/join", join_body(server), signer=NEWCOMER)
    assert retry.status_code == 200, retry.text
    assert (server.service.hub.version, server.hooks) == (version, hooks)


async def test_a_failed_write_announces_nothing(server: Server) -> None:
    resp = await server.send("POST", "/api/v1/punch", {"peer": "nobody"}, signer=ALPHA)
    assert resp.status_code == 404, resp.text
    assert (server.service.hub.version, server.hooks) == ({}, 0)


def test_every_route_is_documented_with_a_security_entry() -> None:
    app = build_app(Service(Store(":memory:"), public_url="http://test"), ADMIN)
    paths = openapi_spec()["paths"]
    served = [(route.path, method.lower()) for route in app.routes if isinstance(route, Route)
              for method in route.methods or () if method != "HEAD"]
    assert len(served) == len(OPERATIONS)
    for path, method in served:
        assert "security" in paths[path][method], (path, method)
    assert paths["/api/v1/events"]["get"]["responses"]["200"]["content"].keys() == \
        {"text/event-stream"}


@pytest.mark.parametrize("op", [op for op in OPERATIONS if op.security != "none"],
                         ids=lambda op: f"{op.method} {op.path}")
async def test_the_documented_security_is_enforced(server: Server, op: Operation) -> None:
    path = op.path.format(network="net", node="alpha", key=server.key_id, name="www", rtype="A")
    documented = openapi_spec()["paths"][op.path][op.method.lower()]["security"]
    scheme = "adminBearer" if op.security == "admin" else "nodeSignature"
    assert any(scheme in entry for entry in documented)
    resp = await server.client.request(op.method, path)  # neither token nor signature
    assert resp.status_code == 401, resp.text
    if op.security == "admin":  # a node's signature is no admin token
        signed = await server.send(op.method, path, signer=ALPHA)
        assert signed.status_code == 401, signed.text
    assert server.hooks == 0
