"""schemathesis against the signal server's complete OpenAPI document (issue #14).

The ASGI app runs in-process (no socket) on trio, as under hypercorn's trio worker:
schemathesis drives ASGI apps through one anyio blocking portal, which it starts on
asyncio; the app's store calls need trio (``trio.to_thread``), so the portal is
started on trio before schemathesis makes its own. Admin calls carry the admin
bearer token; node calls are signed by a node that has joined (a small ASGI wrapper
signs the exact bytes that arrive, with :func:`punchd.wire.signing.sign_request`).
Bounded examples per operation; the event stream (infinite) is left out. Checks: no
5xx and, for answers the document describes, the response schema.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from anyio.from_thread import start_blocking_portal
from hypothesis import HealthCheck, settings
from nacl.public import PrivateKey
from nacl.signing import SigningKey
from starlette.routing import Route

schemathesis = pytest.importorskip("schemathesis")
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.python import asgi as schemathesis_asgi  # noqa: E402
from schemathesis.specs.openapi.checks import response_schema_conformance  # noqa: E402

from punchd.errors import NotFound, Unauthorized  # noqa: E402
from punchd.wire import api  # noqa: E402
from punchd.wire.signing import b64, sign_request  # noqa: E402
from signal_server.app import build_app, openapi_spec  # noqa: E402
from signal_server.service import Service  # noqa: E402
from signal_server.store import Store  # noqa: E402

ADMIN_TOKEN = "schemathesis-admin-token"
NODE_KEY = SigningKey(bytes(range(32)))
PEER_KEY = SigningKey(bytes(range(32, 64)))
NODE_PATHS = {"/api/v1/join", "/api/v1/node", "/api/v1/punch", "/api/v1/relay",
              "/api/v1/events"}

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _key() -> str:
    return b64(bytes(PrivateKey.generate().public_key))


def _seed(store: Store) -> None:
    """A network with two joined nodes, alpha (whose key signs) and beta (a peer); put back
    before every case, since a generated DELETE may remove them."""
    try:
        store.get_network("net")
    except NotFound:
        store.create_network(api.NetworkCreate(name="net", ipv4_cidr="198.19.0.0/24"))
    for name, key in (("alpha", NODE_KEY), ("beta", PEER_KEY)):
        signer = b64(bytes(key.verify_key))
        try:
            store.node_by_signing_key(signer)
        except Unauthorized:  # the store's answer to an unknown key
            _, secret = store.create_access_key("net", api.AccessKeyCreate(uses=1))
            store.join(api.JoinRequest(access_key=secret, signing_key=signer,
                                       wg_public_key=_key(), probe_public_key=_key(), name=name),
                       signer)


class SigningProxy:
    """Signs every node call as alpha over the exact method, path, query and body sent."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        admin_relay = scope.get("path") == "/api/v1/relay" and scope.get("method") == "GET"
        if scope["type"] != "http" or scope["path"] not in NODE_PATHS or admin_relay:
            await self.app(scope, receive, send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        query = scope.get("query_string", b"").decode("latin-1")
        path = scope["path"] + (f"?{query}" if query else "")
        headers = [(k, v) for k, v in scope["headers"] if not k.lower().startswith(b"x-punchd-")]
        headers += [(k.encode(), v.encode())
                    for k, v in sign_request(NODE_KEY, scope["method"], path, body).items()]
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app({**scope, "headers": headers}, replay, send)


def _trio_portal() -> None:
    # schemathesis's ASGI client shares one module-level portal; make it a trio one.
    if schemathesis_asgi._PORTAL is None:
        schemathesis_asgi._PORTAL = schemathesis_asgi._STACK.enter_context(
            start_blocking_portal(backend="trio"))


_trio_portal()
SERVICE = Service(Store(":memory:"), public_url="http://testserver")
APP = build_app(SERVICE, ADMIN_TOKEN)
schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", SigningProxy(APP)).exclude(
    path="/api/v1/events")


@schema.parametrize()
@settings(max_examples=20, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_api_has_no_server_errors(case: Any) -> None:
    _seed(SERVICE.store)
    headers = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    response = case.call(headers=headers)
    if (case.path == "/api/v1/relay" and response.status_code == 503
            and "has no relay" in response.text):
        return  # documented: this in-process server runs no relay (it would need sockets)
    if (case.path.startswith("/dist/") and response.status_code == 503
            and "no wheelhouse" in response.text):
        return  # documented: nor a wheelhouse (building one takes seconds of CPU)
    case.validate_response(response, checks=[not_a_server_error, response_schema_conformance],
                           headers=headers)


def test_every_route_is_in_the_openapi_document() -> None:
    documented = {(path, method.upper()) for path, ops in openapi_spec()["paths"].items()
                  for method in ops}
    served = {(route.path, method) for route in APP.routes if isinstance(route, Route)
              for method in (route.methods or ()) if method != "HEAD"}
    assert served == documented


def test_the_proxy_signs_as_a_joined_node() -> None:
    # Without this the run above would only ever see 401s on the node routes.
    _seed(SERVICE.store)
    with schemathesis_asgi.get_client(SigningProxy(APP)) as client:
        mine = client.get("/api/v1/node")
        assert mine.status_code == 200, mine.text
        assert mine.json()["node"]["name"] == "alpha"
        punched = client.post("/api/v1/punch", json={"peer": "beta"})
        assert punched.status_code == 202, punched.text
