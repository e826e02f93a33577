"""The node's event stream (``GET /api/v1/events``): server-sent events of its network."""

from __future__ import annotations

import msgspec
import trio
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from punchd.errors import Invalid, NotFound
from punchd.wire import api

from ..service import Service
from ..store import StreamView
from .common import Call, Operation

HEARTBEAT_S = 10.0
SEQ_MAX = 2**63 - 1  # cursors are SQLite INTEGER seqs
EVENTS = "/api/v1/events"


async def events(call: Call) -> Response:
    service = call.service
    node = await service.call(service.store.touch_node, call.signer)
    since_text = call.request.query_params.get("since")
    since = None
    if since_text is not None:
        if not (since_text.isascii() and since_text.isdigit() and len(since_text) <= 19
                and int(since_text) <= SEQ_MAX):
            raise Invalid(f"since must be a sequence number from 0 to {SEQ_MAX}", "since")
        since = int(since_text)
    network = await service.call(service.store.get_network, node.network)
    stream = EventStream(service, node, network.id, since)
    service.hub.open_stream(stream)  # TooManyStreams (503) when the server is full
    return HeldStreamResponse(stream)


class HeldStreamResponse(StreamingResponse):
    """The SSE response; gives the stream's place back to the hub however it ends.

    A client that goes away cancels the response (Starlette stops iterating the body
    and never tells the iterator), so the ``finally`` here is the one place that
    sees every end: a close sent by the server, a disconnect, a server shutdown.
    """

    def __init__(self, stream: EventStream) -> None:
        super().__init__(stream, media_type="text/event-stream",
                         headers={"cache-control": "no-store"})
        self.stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.stream.service.hub.close_stream(self.stream)


def _sse(event: api.Event) -> bytes:
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (
        event.seq, type(event).__struct_config__.tag.encode(),  # type: ignore[union-attr]
        api.event_encoder.encode(event),
    )


class EventStream:
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
        # The hub's version of the network when a read last found nothing new; every
        # change to what this stream checks (its node, its network, the log) is
        # announced through the hub, so while the version stands a re-read would say
        # the same. None: not read yet.
        self.caught_up: int | None = None

    def __aiter__(self) -> EventStream:
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
        if isinstance(event, api.KeysRotated):  # the store sends such a node its own alone
            return all(p.id == self.node.id for p in event.peers)
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
            hub = self.service.hub
            changed = hub.changed(network)
            version = hub.version.get(network, 0)
            if version == self.caught_up:
                # Nothing announced since a read that found the log drained: a
                # heartbeat's wake-up has nothing to re-read. Without this, every
                # stream read the store once per heartbeat, so the server's idle
                # cost grew with all streams held, not with the changes.
                with trio.move_on_after(HEARTBEAT_S):
                    await changed.wait()
                if not changed.is_set() and not self.superseded:
                    return b": heartbeat\n\n"
                continue
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
            # Read to the end of the log as of ``version`` (taken before the read, so
            # a change during it bumps the version and is read next time round).
            self.caught_up = version


OPERATIONS = [
    Operation("GET", EVENTS, "server-sent events: the network's changes", "node", events,
              response=api.Event, media="text/event-stream",
              query=({"name": "since", "in": "query", "required": False,
                      "schema": {"type": "integer"}},)),
]
