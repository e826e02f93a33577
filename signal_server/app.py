"""The HTTP API (``/api/v1``): Starlette routes over the store, run by hypercorn's trio worker.

Admin calls carry ``Authorization: Bearer <admin token>``; node calls are signed with
the node's Ed25519 key (:mod:`punchd.wire.signing`). Every body is decoded into the
Structs of :mod:`punchd.wire.api`; a bad request gets a 4xx ``{"error", "field"}`` and
changes nothing. Store calls run one at a time in a worker thread (SQLite is
blocking; one writer also keeps access-key use counts exact).
"""

from __future__ import annotations

import hmac
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
import trio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from punchd.errors import Forbidden, Invalid, NotFound, ServiceError, Unauthorized, Unavailable
from punchd.wire import api
from punchd.wire.signing import Signed, verify_request
from punchd.wire.token import encode_token

from .relay import RelayService
from .store import Store, StreamView

T = TypeVar("T")
HEARTBEAT_S = 10.0
# An expired node's streams close within 1 s of its expiry.
EXPIRY_SWEEP_S = 0.5
# Open event streams per node. A reconnecting node's old stream may be half-dead (its
# NAT dropped the mapping and TCP has not noticed), so a new stream past the limit
# supersedes the node's oldest instead of being refused: refusing would lock out
# exactly the node that is trying to recover.
MAX_STREAMS_PER_NODE = 4
SEQ_MAX = 2**63 - 1  # cursors are SQLite INTEGER seqs
_PATH_RE = re.compile(r"at `\$((?:\.[A-Za-z_]\w*|\[\d+\])*)`$")
_NAMED_RE = re.compile(r"(?:missing required|unknown) field `([^`]+)`")
# Every route's body is read whole before anything else (the signature covers it), so
# it is bounded first: the largest legitimate body (a join with every candidate) is a
# few KiB.
MAX_BODY = 64 * 1024


class EventHub:
    """Wakes every stream of a network when its event log grows."""

    def __init__(self) -> None:
        self._changed: dict[str, trio.Event] = {}
        self.version: dict[str, int] = {}
        self._streams: dict[str, list[_EventStream]] = {}  # by node id, oldest first

    def open_stream(self, stream: _EventStream) -> None:
        """Counts a node's new stream; past the limit its oldest is superseded."""
        streams = [s for s in self._streams.get(stream.node.id, []) if not s.done]
        streams.append(stream)
        while len(streams) > MAX_STREAMS_PER_NODE:
            streams.pop(0).superseded = True
        self._streams[stream.node.id] = streams

    def open_streams(self, node_id: str) -> int:
        return sum(not s.done and not s.superseded for s in self._streams.get(node_id, ()))

    def changed(self, network: str) -> trio.Event:
        return self._changed.setdefault(network, trio.Event())

    def notify(self, network: str) -> None:
        self.version[network] = self.version.get(network, 0) + 1
        event = self._changed.pop(network, None)
        if event is not None:
            event.set()


class _SharedRead:
    """One store read whose result every stream that asked the same question shares."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.result: StreamView | None = None
        self.error: BaseException | None = None


class Service:
    """The store behind one worker thread, plus event fan-out and zone push hooks."""

    def __init__(self, store: Store, *, public_url: str, dns: api.MeshDns | None = None,
                 stun: str | None = None, relay: RelayService | None = None) -> None:
        self.store = store
        self.public_url = public_url
        self.dns = dns
        self.stun = stun
        self.relay = relay
        self.hub = EventHub()
        self._limiter = trio.CapacityLimiter(1)
        self.on_change: list[Callable[[], None]] = []
        self._reads: dict[tuple[str, int | None, int], _SharedRead] = {}

    async def stream_view(self, network: str, cursor: int | None) -> StreamView:
        """The log after ``cursor`` and the membership; streams woken by one change share
        one query.

        A new node's arrival wakes every stream of its network at once, all at the
        same cursor: without sharing, a thousand streams would queue a thousand
        identical queries on the one store thread.
        """
        key = (network, cursor, self.hub.version.get(network, 0))
        read = self._reads.get(key)
        if read is None:
            read = self._reads[key] = _SharedRead()
            try:
                read.result = await self.call(self.store.stream_view, network, cursor)
            except BaseException as exc:
                read.error = exc
                raise
            finally:
                read.done.set()
                del self._reads[key]
            return read.result
        await read.done.wait()
        if read.error is not None or read.result is None:
            raise ServiceError("event log read failed") from read.error
        return read.result

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    async def expire_nodes(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                           ) -> None:
        """Removes nodes past their expiry, like a delete by the admin."""
        task_status.started()
        while True:
            for network in await self.call(self.store.remove_expired_nodes):
                self.hub.notify(network)
                for hook in self.on_change:
                    hook()
            await trio.sleep(EXPIRY_SWEEP_S)

    async def write(self, network: str | None, fn: Callable[..., T], *args: Any) -> T:
        """A changing call: afterwards wake the network's streams and the DNS."""
        result = await self.call(fn, *args)
        if network is not None:
            self.hub.notify(network)
        for hook in self.on_change:
            hook()
        return result


def _json(value: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(value), status_code=status, media_type="application/json")


def _error(status: int, reason: str, field: str | None) -> Response:
    return _json(api.ErrorBody(error=reason, field=field), status)


def error_field(message: str) -> str | None:
    """The field a msgspec ValidationError is about, e.g. ``candidates[0].address``.

    msgspec names the container in ``at `$.path``` and, for a missing or unknown
    field, the field itself in backquotes; the answer joins them.
    """
    match = _PATH_RE.search(message)
    path = match.group(1).lstrip(".") if match else ""
    named = _NAMED_RE.search(message)
    if named is not None:
        path = f"{path}.{named.group(1)}" if path else named.group(1)
    return path or None


_NAME_TYPE: Any = api.Name


def path_name(request: Request, param: str) -> str:
    """A ``{network}``/``{node}`` path segment, held to the Name rule of the bodies."""
    value: str = request.path_params[param]
    try:
        msgspec.convert(value, _NAME_TYPE)
    except msgspec.ValidationError as exc:
        raise Invalid(f"{param} {value!r} is not a valid name (lower-case DNS label)",
                      param) from exc
    return value


class BodyLimit:
    """ASGI wrapper: a body over ``limit`` gets 413 before any handler reads it.

    Content-Length is checked first; a chunked body is counted while it streams,
    so neither is ever held in memory beyond the limit.
    """

    def __init__(self, app: Any, limit: int = MAX_BODY) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await self._refuse(send, length.isdigit())
            return
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before sending its body
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._refuse(send, True)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if replayed:
                return await receive()  # then http.disconnect, for streaming routes
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, send: Any, too_large: bool) -> None:
        status, reason = (413, f"request body larger than {self.limit} bytes") if too_large \
            else (400, "malformed Content-Length")
        body = msgspec.json.encode(api.ErrorBody(error=reason))
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


async def _decode(request: Request, type_: type[T]) -> T:
    body = await request.body()
    try:
        return msgspec.json.decode(body, type=type_)
    except msgspec.ValidationError as exc:
        raise Invalid(str(exc), error_field(str(exc))) from exc
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise Invalid(f"malformed JSON: {exc}") from exc


def build_app(service: Service, admin_token: str) -> Starlette:
    store = service.store

    def require_admin(request: Request) -> None:
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        token = token.strip()
        # An empty token never matches, whatever the server was given.
        if scheme.lower() != "bearer" or not token or not admin_token \
                or not hmac.compare_digest(token.encode(), admin_token.encode()):
            raise Unauthorized("admin token required")

    async def verified(request: Request) -> Signed:
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        body = await request.body()
        return verify_request(dict(request.headers), request.method, path, body)

    async def node_signer(request: Request) -> str:
        """The signing key of a joined node, once per signed request (no replays)."""
        signed = await verified(request)
        await service.call(store.remember_request, signed.key, signed.nonce, signed.timestamp)
        return signed.key

    Handler = Callable[[Request], Awaitable[Response]]

    def guarded(handler: Handler) -> Handler:
        async def wrapper(request: Request) -> Response:
            try:
                return await handler(request)
            except ServiceError as exc:
                return _error(exc.status, exc.reason, exc.field)
        return wrapper

    # -- admin: networks ------------------------------------------------------------------

    async def networks(request: Request) -> Response:
        require_admin(request)
        if request.method == "GET":
            return _json(await service.call(store.list_networks))
        req = await _decode(request, api.NetworkCreate)
        return _json(await service.write(req.name, store.create_network, req), 201)

    async def network(request: Request) -> Response:
        require_admin(request)
        name = path_name(request, "network")
        if request.method == "GET":
            return _json(await service.call(store.get_network, name))
        if request.method == "DELETE":
            await service.write(name, store.delete_network, name)
            return Response(status_code=204)
        req = await _decode(request, api.NetworkUpdate)
        return _json(await service.write(name, store.update_network, name, req))

    async def keys(request: Request) -> Response:
        require_admin(request)
        name = path_name(request, "network")
        if request.method == "GET":
            return _json(await service.call(store.list_access_keys, name))
        req = await _decode(request, api.AccessKeyCreate)
        key, secret = await service.call(store.create_access_key, name, req)
        token = encode_token(service.public_url, name, secret)
        return _json(api.AccessKeyCreated(key=key, token=token), 201)

    async def key(request: Request) -> Response:
        require_admin(request)
        await service.call(store.delete_access_key, path_name(request, "network"),
                           request.path_params["key"])
        return Response(status_code=204)

    async def nodes(request: Request) -> Response:
        require_admin(request)
        return _json(await service.call(store.list_nodes, path_name(request, "network")))

    async def node_admin(request: Request) -> Response:
        require_admin(request)
        net, name = path_name(request, "network"), path_name(request, "node")
        if request.method == "GET":
            return _json(await service.call(store.get_node, net, name))
        if request.method == "PATCH":
            req = await _decode(request, api.NodeExpiry)
            return _json(await service.write(net, store.set_node_expiry, net, name, req))
        await service.write(net, store.delete_node, net, name)
        return Response(status_code=204)

    async def node_approve(request: Request) -> Response:
        require_admin(request)
        net, name = path_name(request, "network"), path_name(request, "node")
        return _json(await service.write(net, store.approve_node, net, name))

    async def dns_records(request: Request) -> Response:
        require_admin(request)
        net = path_name(request, "network")
        if request.method == "GET":
            return _json(await service.call(store.list_dns_records, net))
        rec = await _decode(request, api.DnsRecord)
        return _json(await service.write(net, store.add_dns_record, net, rec), 201)

    async def dns_record(request: Request) -> Response:
        require_admin(request)
        p = request.path_params
        path_name(request, "network")
        await service.write(p["network"], store.delete_dns_record, p["network"], p["name"],
                            p["rtype"])
        return Response(status_code=204)

    # -- nodes (signed) -------------------------------------------------------------------

    async def join(request: Request) -> Response:
        # The key is unknown until the join commits: its nonce is remembered inside it.
        signed = await verified(request)
        req = await _decode(request, api.JoinRequest)
        joined, resumed = await service.call(store.join_or_resume, req, signed.key, None,
                                             (signed.nonce, signed.timestamp))
        resp = msgspec.structs.replace(joined, dns=service.dns, stun=service.stun)
        if resumed:  # a retry of a committed join: nothing changed, same answer
            return _json(resp, 200)
        service.hub.notify(resp.network.name)
        for hook in service.on_change:
            hook()
        return _json(resp, 201)

    async def me(request: Request) -> Response:
        signer = await node_signer(request)
        if request.method == "GET":
            node = await service.call(store.touch_node, signer)
            snap = await service.call(store.snapshot, node.network)
            # A node awaiting approval learns nothing of its peers.
            peers = tuple(p for p in snap.peers if p.id != node.id) if node.approved else ()
            return _json(api.NetworkSnapshot(seq=snap.seq, network=snap.network, node=node,
                                             peers=peers, dns=service.dns, stun=service.stun))
        if request.method == "DELETE":
            node = await service.call(store.node_by_signing_key, signer)
            await service.write(node.network, store.delete_node, node.network, node.name)
            return Response(status_code=204)
        req = await _decode(request, api.NodeUpdate)
        updated = await service.call(store.update_node, signer, req)
        service.hub.notify(updated.network)
        return _json(updated)

    async def punch(request: Request) -> Response:
        signer = await node_signer(request)
        req = await _decode(request, api.PunchCreate)
        node = await service.call(store.node_by_signing_key, signer)
        if not node.approved:
            raise Forbidden("this node awaits the admin's approval")
        punch_req = await service.call(store.punch, signer, req.peer)
        service.hub.notify(node.network)
        return _json(punch_req, 202)

    async def relay(request: Request) -> Response:
        if request.method == "GET":  # admin: what the relay is doing
            require_admin(request)
            if service.relay is None:
                raise Unavailable("this server has no relay")
            return _json(service.relay.status())
        signer = await node_signer(request)
        req = await _decode(request, api.RelayCreate)
        node = await service.call(store.node_by_signing_key, signer)
        if not node.approved:
            raise Forbidden("this node awaits the admin's approval")
        peer = await service.call(store.get_node, node.network, req.peer)
        if peer.id == node.id:
            raise Invalid("a node cannot relay to itself", "peer")
        if service.relay is None:
            raise Unavailable("this server has no relay (signal-server serve --relay "
                              "HOST:LOW-HIGH)")
        return _json(await service.relay.allocate(node.network, node.id, peer.id))

    async def events(request: Request) -> Response:
        signer = await node_signer(request)
        node = await service.call(store.touch_node, signer)
        since_text = request.query_params.get("since")
        since = None
        if since_text is not None:
            if not (since_text.isascii() and since_text.isdigit() and len(since_text) <= 19
                    and int(since_text) <= SEQ_MAX):
                raise Invalid(f"since must be a sequence number from 0 to {SEQ_MAX}", "since")
            since = int(since_text)
        network = await service.call(store.get_network, node.network)
        stream = _EventStream(service, node, network.id, since)
        service.hub.open_stream(stream)
        return StreamingResponse(stream,
                                 media_type="text/event-stream",
                                 headers={"cache-control": "no-store"})

    async def openapi(request: Request) -> Response:
        return _json(openapi_spec())

    async def health(request: Request) -> Response:
        return _json({"ok": True, "time": time.time()})

    routes = [
        Route("/api/v1/health", guarded(health)),
        Route("/api/v1/openapi.json", guarded(openapi)),
        Route("/api/v1/networks", guarded(networks), methods=["GET", "POST"]),
        Route("/api/v1/networks/{network}", guarded(network), methods=["GET", "PATCH", "DELETE"]),
        Route("/api/v1/networks/{network}/keys", guarded(keys), methods=["GET", "POST"]),
        Route("/api/v1/networks/{network}/keys/{key}", guarded(key), methods=["DELETE"]),
        Route("/api/v1/networks/{network}/nodes", guarded(nodes), methods=["GET"]),
        Route("/api/v1/networks/{network}/nodes/{node}", guarded(node_admin),
              methods=["GET", "PATCH", "DELETE"]),
        Route("/api/v1/networks/{network}/nodes/{node}/approve", guarded(node_approve),
              methods=["POST"]),
        Route("/api/v1/networks/{network}/dns", guarded(dns_records), methods=["GET", "POST"]),
        Route("/api/v1/networks/{network}/dns/{name}/{rtype}", guarded(dns_record),
              methods=["DELETE"]),
        Route("/api/v1/join", guarded(join), methods=["POST"]),
        Route("/api/v1/node", guarded(me), methods=["GET", "PATCH", "DELETE"]),
        Route("/api/v1/punch", guarded(punch), methods=["POST"]),
        Route("/api/v1/relay", guarded(relay), methods=["GET", "POST"]),
        Route("/api/v1/events", guarded(events), methods=["GET"]),
    ]
    return Starlette(routes=routes, middleware=[Middleware(BodyLimit)])


def _sse(event: api.Event) -> bytes:
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (
        event.seq, type(event).__struct_config__.tag.encode(),  # type: ignore[union-attr]
        api.event_encoder.encode(event),
    )


class _EventStream:
    """The SSE body: snapshot when fresh or too far behind, then the log, then live events.

    Bound to the node's identity and its network's (not the name): whenever it wakes it
    checks both against the store, and when the node was removed, expired or its
    network deleted (or re-created under the same name) it sends ``StreamClosed`` and
    ends. Every one of those changes wakes the network's streams, so they close within
    a store round trip. A node awaiting approval sees the network and itself only; its
    approval brings a fresh snapshot with the peers.

    A plain async iterator rather than an async generator: Starlette abandons the
    body iterator when a client disconnects, and an abandoned generator would be
    left to the garbage collector mid-``await``.
    """

    def __init__(self, service: Service, node: api.Node, network_id: str,
                 since: int | None) -> None:
        self.service = service
        self.node = node
        self.network_id = network_id
        self.cursor = since
        self.approved = node.approved
        self.pending: list[api.Event] = []
        self.done = False
        self.superseded = False

    def __aiter__(self) -> _EventStream:
        return self

    def _close(self, reason: str, *, removed: bool = True) -> bytes:
        self.done = True
        return _sse(api.StreamClosed(seq=self.cursor or 0, reason=reason, removed=removed))

    def _visible(self, event: api.Event) -> bool:
        """What a node awaiting approval may see: the network and itself."""
        if self.approved:
            return True
        if isinstance(event, api.PeerAdded | api.PeerChanged):
            return event.peer.id == self.node.id
        if isinstance(event, api.PeerRemoved):
            return event.node_id == self.node.id
        return not isinstance(event, api.PunchRequest)

    def _gone(self, view: StreamView) -> str | None:
        if view.network_id is None:
            return f"network {self.node.network!r} was deleted"
        if view.network_id != self.network_id:
            return f"network {self.node.network!r} was deleted (a new one has its name)"
        if self.node.id not in view.members:
            return "this node was removed from the network"
        return None

    async def __anext__(self) -> bytes:
        store, network = self.service.store, self.node.network
        while True:
            if self.done:
                raise StopAsyncIteration
            if self.superseded:
                return self._close("a newer stream of this node took this one's place",
                                   removed=False)
            if self.pending:
                event = self.pending.pop(0)
                self.cursor = event.seq
                if not self._visible(event):
                    continue
                if isinstance(event, api.PeerRemoved) and event.node_id == self.node.id:
                    self.done = True  # this node was deleted: its stream ends here
                return _sse(event)
            changed = self.service.hub.changed(network)
            view = await self.service.stream_view(network, self.cursor)
            gone = self._gone(view)
            if gone is not None:
                return self._close(gone)
            if view.members[self.node.id] and not self.approved:
                self.approved = True
                view = StreamView(view.network_id, view.members, events=None)  # now the peers
            if view.events is None:
                try:
                    snap = await self.service.call(store.snapshot, network)
                except NotFound:
                    return self._close(f"network {network!r} was deleted")
                if not self.approved:
                    snap = msgspec.structs.replace(
                        snap, peers=tuple(p for p in snap.peers if p.id == self.node.id))
                self.cursor = snap.seq
                return _sse(snap)
            if view.events:
                self.pending = list(view.events)
                continue
            with trio.move_on_after(HEARTBEAT_S):
                await changed.wait()
            if not changed.is_set() and not self.superseded:
                return b": heartbeat\n\n"


# One row per (path, method) of build_app's routes: summary, request Struct, response
# type, success status, security ("admin", "node" or None). openapi_spec() is generated
# from it; tests/test_schemathesis.py checks it lists every route the app serves.
_OPERATIONS: list[tuple[str, str, str, Any, Any, int, str | None]] = [
    ("/api/v1/health", "get", "liveness and server time", None, dict[str, Any], 200, None),
    ("/api/v1/openapi.json", "get", "this document", None, dict[str, Any], 200, None),
    ("/api/v1/networks", "get", "list networks", None, list[api.Network], 200, "admin"),
    ("/api/v1/networks", "post", "create a network", api.NetworkCreate, api.Network, 201,
     "admin"),
    ("/api/v1/networks/{network}", "get", "one network", None, api.Network, 200, "admin"),
    ("/api/v1/networks/{network}", "patch", "update, renumber", api.NetworkUpdate, api.Network,
     200, "admin"),
    ("/api/v1/networks/{network}", "delete", "delete a network and its nodes", None, None, 204,
     "admin"),
    ("/api/v1/networks/{network}/keys", "get", "list access keys (no secrets)", None,
     list[api.AccessKey], 200, "admin"),
    ("/api/v1/networks/{network}/keys", "post", "create an access key and its join token",
     api.AccessKeyCreate, api.AccessKeyCreated, 201, "admin"),
    ("/api/v1/networks/{network}/keys/{key}", "delete", "revoke an access key", None, None, 204,
     "admin"),
    ("/api/v1/networks/{network}/nodes", "get", "list nodes", None, list[api.Node], 200,
     "admin"),
    ("/api/v1/networks/{network}/nodes/{node}", "get", "one node", None, api.Node, 200, "admin"),
    ("/api/v1/networks/{network}/nodes/{node}", "patch", "set or clear the node's expiry",
     api.NodeExpiry, api.Node, 200, "admin"),
    ("/api/v1/networks/{network}/nodes/{node}", "delete", "remove a node", None, None, 204,
     "admin"),
    ("/api/v1/networks/{network}/nodes/{node}/approve", "post", "approve a waiting node", None,
     api.Node, 200, "admin"),
    ("/api/v1/networks/{network}/dns", "get", "list custom DNS records", None,
     list[api.DnsRecord], 200, "admin"),
    ("/api/v1/networks/{network}/dns", "post", "add a custom DNS record", api.DnsRecord,
     api.DnsRecord, 201, "admin"),
    ("/api/v1/networks/{network}/dns/{name}/{rtype}", "delete", "delete a custom DNS record",
     None, None, 204, "admin"),
    ("/api/v1/join", "post", "join with an access key (signed by the new node key)",
     api.JoinRequest, api.JoinResponse, 201, "node"),
    ("/api/v1/node", "get", "this node's view of its network", None, api.NetworkSnapshot, 200,
     "node"),
    ("/api/v1/node", "patch", "update candidates / NAT report / key", api.NodeUpdate, api.Node,
     200, "node"),
    ("/api/v1/node", "delete", "leave", None, None, 204, "node"),
    ("/api/v1/punch", "post", "rendezvous with a peer", api.PunchCreate, api.PunchRequest, 202,
     "node"),
    ("/api/v1/relay", "get", "what the relay is doing", None, dict[str, Any], 200, "admin"),
    ("/api/v1/relay", "post", "this node's side of the relay allocation with a peer",
     api.RelayCreate, api.RelayAllocation, 200, "node"),
    ("/api/v1/events", "get", "server-sent events: the network's changes", None, api.Event, 200,
     "node"),
]
# The four headers of punchd.wire.signing, all required together on a node call.
_NODE_HEADERS = {"nodeKey": "x-punchd-node", "nodeTimestamp": "x-punchd-timestamp",
                 "nodeNonce": "x-punchd-nonce", "nodeSignature": "x-punchd-signature"}


def openapi_spec() -> dict[str, Any]:
    """OpenAPI 3.1 generated from ``_OPERATIONS`` and the Structs (the one schema)."""
    types: list[Any] = [api.ErrorBody]
    for _, _, _, req, resp, _, _ in _OPERATIONS:
        types += [t for t in (req, resp) if t is not None]
    schema_list, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}")
    schema_of = dict(zip(map(repr, types), schema_list, strict=True))

    def content(type_: Any, media: str = "application/json") -> dict[str, Any]:
        return {"content": {media: {"schema": schema_of[repr(type_)]}}}

    err = {"description": "refused: the reason, and the field when one is at fault",
           **content(api.ErrorBody)}
    security: dict[str | None, list[dict[str, list[str]]]] = {
        "admin": [{"adminBearer": []}], "node": [{key: [] for key in _NODE_HEADERS}], None: []}
    paths: dict[str, Any] = {}
    for path, method, summary, req, resp, status, auth in _OPERATIONS:
        params: list[dict[str, Any]] = [
            {"name": p, "in": "path", "required": True,
             "schema": ({"enum": ["A", "AAAA", "CNAME", "TXT"]} if p == "rtype"
                        else {"type": "string", "minLength": 1})}
            for p in re.findall(r"\{(\w+)\}", path)]
        if path == "/api/v1/events":
            params.append({"name": "since", "in": "query", "required": False,
                           "schema": {"type": "integer"}})
        ok: dict[str, Any] = {"description": summary}
        if resp is not None:
            ok |= content(resp, "text/event-stream" if path == "/api/v1/events"
                          else "application/json")
        op: dict[str, Any] = {"summary": summary, "operationId": f"{method}{path}",
                              "security": security[auth],
                              "responses": {str(status): ok, "4XX": err}}
        if path == "/api/v1/relay":  # 503 when the server runs no relay
            op["responses"]["5XX"] = err
        if params:
            op["parameters"] = params
        if req is not None:
            op["requestBody"] = {"required": True, **content(req)}
        paths.setdefault(path, {})[method] = op
    schemes: dict[str, Any] = {
        "adminBearer": {"type": "http", "scheme": "bearer",
                        "description": "the server's admin token"},
        **{name: {"type": "apiKey", "in": "header", "name": header,
                  "description": "Ed25519 request signature (punchd.wire.signing)"}
           for name, header in _NODE_HEADERS.items()},
    }
    return {"openapi": "3.1.0", "info": {"title": "punchd signal server", "version": "1"},
            "paths": paths, "components": {"schemas": components, "securitySchemes": schemes}}
