"""The store behind its worker threads, the event fan-out and the on-change hooks.

Every handler reaches the store through :class:`Service`: :meth:`Service.call` for a
read (or bookkeeping no one watches: a nonce, a last-seen time), :meth:`Service.write`
for a state change. ``write`` is the one place a change is announced: it wakes the
streams of the networks it names and runs every ``on_change`` hook (the DNS zone
rebuild) exactly once, so a new route cannot change the mesh without the mesh hearing
of it. Writes by other replicas on the same PostgreSQL arrive through :meth:`Service.follow`
and do the same.

State per process, and why N replicas are still correct (docs/deployment.md):

- the hub (which streams wait) and the shared reads: local by nature; the feed makes
  every replica's streams hear every write;
- ``MAX_STREAMS_PER_NODE`` is counted per replica: a node can hold that many streams
  on each replica. It bounds what one node costs one process, which is its purpose;
- the expiry sweep runs on every replica: each sweep is a write transaction, so the
  write lock runs them one after another and a node removed by one is gone for the
  next; no PeerRemoved is emitted twice (tests/test_replicas.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol, TypeVar

import trio

from punchd.errors import ServiceError, TooManyStreams
from punchd.wire import api

from .event_feed import PostgresEventFeed
from .metrics import ServerMetrics
from .relay import RelayService
from .store import Store, StreamView

T = TypeVar("T")
# An expired node's streams close within 1 s of its expiry.
EXPIRY_SWEEP_S = 0.5
# Open event streams per node. A reconnecting node's old stream may be half-dead (its
# NAT dropped the mapping and TCP has not noticed), so a new stream past the limit
# supersedes the node's oldest instead of being refused: refusing would lock out
# exactly the node that is trying to recover.
MAX_STREAMS_PER_NODE = 4


class Stream(Protocol):
    """What the hub needs of an event stream (``routes.events.EventStream``)."""

    node: api.Node
    done: bool
    superseded: bool


class EventHub:
    """Wakes every stream of a network when its event log grows; counts the streams.

    ``max_streams`` bounds the streams held at once on this server (from the open-file
    limit, :mod:`signal_server.limits`); None: unbounded.
    """

    def __init__(self, max_streams: int | None = None) -> None:
        self._changed: dict[str, trio.Event] = {}
        self.version: dict[str, int] = {}
        self._streams: dict[str, list[Stream]] = {}  # by node id, oldest first
        self.max_streams = max_streams
        self._held: set[Stream] = set()  # every stream whose response has not ended

    @property
    def streams_held(self) -> int:
        return len(self._held)

    @property
    def connected_nodes(self) -> int:
        """Nodes with at least one stream open here."""
        return len(self._streams)

    def open_stream(self, stream: Stream) -> None:
        """Counts a node's new stream; past the limit its oldest is superseded.

        Raises :class:`TooManyStreams` when the server holds ``max_streams`` already:
        a superseded stream keeps its connection until it has said so, so it still
        counts. Every stream opened must be given back with :meth:`close_stream`.
        """
        if self.max_streams is not None and len(self._held) >= self.max_streams:
            raise TooManyStreams(self.max_streams)
        self._held.add(stream)
        streams = [s for s in self._streams.get(stream.node.id, []) if not s.done]
        streams.append(stream)
        while len(streams) > MAX_STREAMS_PER_NODE:
            streams.pop(0).superseded = True
        self._streams[stream.node.id] = streams

    def close_stream(self, stream: Stream) -> None:
        """The stream's response ended (its close, or the client went away)."""
        self._held.discard(stream)
        streams = [s for s in self._streams.get(stream.node.id, []) if s is not stream]
        if streams:
            self._streams[stream.node.id] = streams
        else:
            self._streams.pop(stream.node.id, None)

    def open_streams(self, node_id: str) -> int:
        return sum(not s.done and not s.superseded for s in self._streams.get(node_id, ()))

    def changed(self, network: str) -> trio.Event:
        return self._changed.setdefault(network, trio.Event())

    def notify(self, network: str) -> None:
        self.version[network] = self.version.get(network, 0) + 1
        event = self._changed.pop(network, None)
        if event is not None:
            event.set()

    def notify_all(self) -> None:
        """Wakes every waiting stream (after a gap in what other replicas told us)."""
        for network in list(self._changed):
            self.notify(network)


class _SharedRead:
    """One store read whose result every stream that asked the same question shares."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.result: StreamView | None = None
        self.error: BaseException | None = None


# Which networks' members hear of a write: one by name, none (a change only the hooks
# care for, e.g. an access key), or the names read off the write's result, where an
# empty answer means the write changed nothing (a retried join).
Announce = str | None | Callable[[T], Iterable[str]]


class Service:
    """The store behind its worker threads (one on SQLite), plus event fan-out and zone
    push hooks."""

    def __init__(self, store: Store, *, public_url: str, dns: api.MeshDns | None = None,
                 stun: str | None = None, relay: RelayService | None = None,
                 max_streams: int | None = None) -> None:
        self.store = store
        self.public_url = public_url
        self.dns = dns
        self.stun = stun
        self.relay = relay
        self.hub = EventHub(max_streams)
        # The store's threads: one on SQLite; on PostgreSQL its pool's worth, so a herd
        # of reconnecting streams (each a nonce check, a touch and reads) does not
        # queue behind one thread while another replica is gone (#19).
        self._limiter = trio.CapacityLimiter(store.db.threads)
        self.on_change: list[Callable[[], None]] = []
        self._reads: dict[tuple[str, int | None, int], _SharedRead] = {}
        self.metrics = ServerMetrics(self)

    async def stream_view(self, network: str, cursor: int | None) -> StreamView:
        """The log after ``cursor`` and the membership; streams woken by one change share
        one query.

        A new node's arrival wakes every stream of its network at once, all at the
        same cursor: without sharing, a thousand streams would queue a thousand
        identical queries on the store's threads.
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
        """A store call that announces nothing: a read, or bookkeeping no one watches."""
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    async def write(self, announce: Announce[T], fn: Callable[..., T], *args: Any) -> T:
        """A changing store call; afterwards its networks' streams wake and the hooks run.

        ``announce`` says who hears of it (see :data:`Announce`). This is the only
        place that calls ``hub.notify`` or a hook, so each happens once per write.
        """
        result = await self.call(fn, *args)
        if callable(announce):
            networks = list(announce(result))
            if not networks:
                return result  # nothing changed
        else:
            networks = [] if announce is None else [announce]
        for network in networks:
            self.hub.notify(network)
        for hook in self.on_change:
            hook()
        return result

    async def follow(self, feed: PostgresEventFeed, *,
                     task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Other replicas' writes, heard through the database, wake this one's streams
        and hooks as a local write would (:mod:`signal_server.event_feed`)."""
        await feed.run(self._changed_elsewhere, self._maybe_missed, task_status=task_status)

    def _changed_elsewhere(self, networks: list[str]) -> None:
        for network in networks:
            self.hub.notify(network)
        for hook in self.on_change:
            hook()

    def _maybe_missed(self) -> None:
        self.hub.notify_all()
        for hook in self.on_change:
            hook()

    async def expire_nodes(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                           ) -> None:
        """Removes nodes past their expiry, like a delete by the admin; switches key
        rotation batches whose slowest node is late."""
        task_status.started()
        while True:
            await self.write(_each, self.store.remove_expired_nodes)
            await self.write(_each, self.store.commit_due_rotations)
            await trio.sleep(EXPIRY_SWEEP_S)


def _each(networks: list[str]) -> list[str]:
    return networks
