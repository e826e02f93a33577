"""Relay allocations for one network, from this node's side.

Theory of operation. For every peer, punchd asks the server for its side of the
pair's relay allocation (``POST /api/v1/relay``; both nodes ask, the server hands each
its own port and secret of one allocation) and *binds* it: a STUN Binding request
with MESSAGE-INTEGRITY (:mod:`punchd.wire.relay`), sent from WireGuard's port through
the shared socket, so the relay learns the very mapping WireGuard's packets will get
from this node's NAT — behind a symmetric NAT that is not the STUN endpoint. The
answer arrives on the shared port and is routed here by transaction id
(:meth:`Relaying.handle_stun`). Once bound, the relay address goes to the peer's punch
session as its relay pair: the session proves it with probes (which needs the peer
bound too) before WireGuard is pointed at it.

Binds repeat every ``refresh_s`` (they keep the NAT mapping and the allocation alive)
and at once when :meth:`Relaying.wake_binds` says our address may have changed.

Failover. With replicas, the relay a pair is on can die with its replica, and the
server then makes the pair a new allocation on a survivor at the next request
(signal_server/relay/registry.py; the replicated server hands out ``refresh_s`` 1 s).
So a refresh of a bound side that gets no answer after ``FAILOVER_TRIES`` tries (0.2 +
0.4 s) asks the server again at once: a new allocation id replaces the old pair (its
relay address goes to the session as the new relay pair), the same id means the relay
is only slow or lossy, and binding goes on. From the owner's death to a bound new side:
at most one refresh (1 s) + 0.6 s + the request, inside issue #19's 2 s. A side that
misses ``LOST_AFTER_MISSES`` binds in a row (about 5 s) loses its relay pair until a
bind is answered again. A side never bound retries the full ``BIND_TRIES`` schedule
before asking again. A server without a relay (503) or at its per-node limit (429) is
asked again only after ``NO_RELAY_RETRY_S``.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import trio

from punchd.errors import AddrError, APIError, PunchdError, ServerUnreachable
from punchd.serverapi import ServerClient
from punchd.wire import api, relay, stun
from punchd.wire.addr import Addr, parse_addr

from .punching import ProbeSender
from .tasks import TaskHost, Wakeup

log = logging.getLogger("punchd.relay")

BIND_RTO_S = 0.2  # first retransmit of a bind; doubles
BIND_TRIES = 5  # 0.2 + 0.4 + 0.8 + 1.6 + 3.2: ~6 s before a bind counts as unanswered
FAILOVER_TRIES = 2  # 0.2 + 0.4: a bound side's refresh unanswered for 0.6 s asks again
LOST_AFTER_MISSES = 8
NO_RELAY_RETRY_S = 60.0
BACKOFF_MIN_S = 1.0
BACKOFF_MAX_S = 30.0


@dataclass
class _Pending:
    relay: Addr
    secret: bytes
    answered: trio.Event = field(default_factory=trio.Event)
    mapped: Addr | None = None


@dataclass
class RelayState:
    """What ``punchctl status`` shows of one peer's relay side."""

    relay: Addr | None = None  # our side's address, once bound
    mapped: Addr | None = None  # our WireGuard port as the relay sees it
    error: str | None = None


class Relaying(TaskHost):
    def __init__(self, client: ServerClient, sender: ProbeSender,
                 on_bound: Callable[[str, Addr | None], None]) -> None:
        self._client = client
        self._sender = sender
        self._on_bound = on_bound
        self._pending: dict[bytes, _Pending] = {}  # by STUN transaction id
        self._tasks: dict[str, trio.CancelScope] = {}  # by peer node id
        self._rebind = Wakeup()
        self._rng = random.Random()
        self.states: dict[str, RelayState] = {}

    def _stopped(self) -> None:
        self._tasks.clear()

    def sync_peers(self, peers: Iterable[api.Node]) -> None:
        """One relay link per peer; links of peers gone are cancelled."""
        if self._nursery is None:
            return
        wanted = {p.id: p.name for p in peers}
        for node_id in set(self._tasks) - set(wanted):
            self._tasks.pop(node_id).cancel()
            self.states.pop(node_id, None)
        for node_id, name in wanted.items():
            if node_id not in self._tasks:
                scope = trio.CancelScope()
                self._tasks[node_id] = scope
                self.states[node_id] = RelayState()
                self._nursery.start_soon(self._link, node_id, name, scope)

    def wake_binds(self) -> None:
        """Our address may have changed: re-bind every allocation now."""
        self._rebind.wake()

    def handle_stun(self, data: bytes, source: Addr) -> bool:
        """A STUN datagram on the shared port: True if it answered one of our binds."""
        pending = self._pending.get(data[8:20]) if stun.is_stun(data) else None
        if pending is None or pending.relay != source:
            return False
        try:
            _, pending.mapped = relay.parse_bind_success(data, pending.secret)
        except PunchdError as exc:
            log.debug("bind answer from %s rejected: %s", source, exc)
            return True  # ours by id and address, but forged or broken: drop it
        pending.answered.set()
        return True

    # -- one peer -------------------------------------------------------------------------

    async def _link(self, node_id: str, name: str, scope: trio.CancelScope) -> None:
        state = self.states[node_id]
        backoff = BACKOFF_MIN_S
        bound_id: str | None = None  # the allocation our relay pair is on
        misses = 0  # binds unanswered in a row
        with scope:
            try:
                while True:
                    if misses >= LOST_AFTER_MISSES:
                        self._unbind(node_id, state)
                    try:
                        allocation = await self._client.relay(name)
                    except APIError as exc:
                        state.error = str(exc)
                        misses += 1
                        wait = NO_RELAY_RETRY_S if exc.status in (404, 429, 503) else backoff
                        await trio.sleep(wait * self._rng.uniform(0.8, 1.2))
                        backoff = min(BACKOFF_MAX_S, backoff * 2)
                        continue
                    except ServerUnreachable as exc:
                        state.error = str(exc)
                        misses += 1
                        await trio.sleep(backoff * self._rng.uniform(0.5, 1.0))
                        backoff = min(BACKOFF_MAX_S, backoff * 2)
                        continue
                    backoff = BACKOFF_MIN_S
                    if allocation.id != bound_id:  # moved (its replica died): a new pair
                        self._unbind(node_id, state)
                        bound_id = allocation.id
                    try:
                        misses = await self._keep_bound(node_id, allocation, state, misses)
                    except AddrError as exc:
                        state.error = f"unusable relay address {allocation.relay!r}: {exc}"
                        self._unbind(node_id, state)
                        await trio.sleep(NO_RELAY_RETRY_S)
            finally:
                self._unbind(node_id, state)

    def _unbind(self, node_id: str, state: RelayState) -> None:
        if state.relay is not None:
            state.relay = None
            self._on_bound(node_id, None)

    async def _keep_bound(self, node_id: str, allocation: api.RelayAllocation,
                          state: RelayState, misses: int) -> int:
        """Bind and refresh until a bind goes unanswered; the misses in a row then."""
        relay_addr = parse_addr(allocation.relay)
        secret = bytes.fromhex(allocation.secret)
        while True:
            # A bound side asks the server again soon: its relay may have died with
            # its replica (see the theory of operation).
            tries = BIND_TRIES if state.relay is None else FAILOVER_TRIES
            mapped = await self._bind(allocation, relay_addr, secret, tries)
            if mapped is None:
                state.error = f"relay {allocation.relay} does not answer binds"
                return misses + 1
            misses = 0
            state.mapped, state.error = mapped, None
            if state.relay is None:
                state.relay = relay_addr
                log.info("relay %s bound for peer %s (seen as %s:%d)", allocation.relay,
                         node_id, *mapped)
                self._on_bound(node_id, relay_addr)
            with trio.move_on_after(allocation.refresh_s * self._rng.uniform(0.8, 1.0)):
                await self._rebind.round().wait()

    async def _bind(self, allocation: api.RelayAllocation, relay_addr: Addr,
                    secret: bytes, tries: int = BIND_TRIES) -> Addr | None:
        """One bind transaction with retransmits; the mapped address, or None."""
        rto = BIND_RTO_S
        for _ in range(tries):
            data, txid = relay.bind_request(allocation.id, allocation.side, secret,
                                            int(time.time() * 1000))
            pending = self._pending[txid] = _Pending(relay_addr, secret)
            try:
                try:
                    await self._sender.send(data, relay_addr)
                except PunchdError as exc:  # NetworkDown: lost like any datagram
                    log.debug("bind to %s: %s", allocation.relay, exc)
                with trio.move_on_after(rto):
                    await pending.answered.wait()
            finally:
                del self._pending[txid]
            if pending.mapped is not None:
                return pending.mapped
            rto *= 2
        return None
