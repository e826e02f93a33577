"""Hole punching for one network: a punch session per peer, over WireGuard's own port.

Theory of operation. :mod:`punchd.punch.session` decides (sans-IO) and
:class:`~punchd.punch.driver.PunchDriver` runs one session per peer in a trio task.
This module owns those tasks for a network agent:

* it keeps one session per approved peer that has a probe key, created when the
  peer appears and dropped when it goes (closing its inbox ends its task);
* it routes every probe that arrives on the shared port to the session of the peer
  whose key is in the probe's header (:func:`punchd.wire.probe.peek_sender`); an
  unknown key, or a full inbox, drops the datagram — the session authenticates the
  rest;
* it starts an attempt whenever something that could change the outcome happens:
  the peer's candidates or NAT report change, ours do, or the server sends a
  rendezvous request. Both sides see a candidate change through the server's event
  stream at nearly the same moment, so their probes meet — the simultaneous open;
* it reports the sessions' verdicts (path found, changed, lost, failed) to the
  agent, which turns them into WireGuard endpoints.
"""

from __future__ import annotations

import base64
import binascii
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import trio
from nacl.public import PrivateKey, PublicKey

from punchd.errors import ProbeParseError, PunchdError
from punchd.punch.driver import PunchDriver
from punchd.punch.session import Pong, PunchEvent, PunchSession
from punchd.wire import api
from punchd.wire.addr import Addr
from punchd.wire.probe import peek_sender

from .policy import probe_key
from .tasks import TaskHost

log = logging.getLogger("punchd.punching")

INBOX_SIZE = 64  # probes waiting for one session; more in a burst are dropped


class ProbeSender(Protocol):
    """What sends a probe from WireGuard's port (the shared-port socket).

    Failures are ours already (the socket translates its ``OSError`` once, to
    ``NetworkDown``): callers catch :class:`~punchd.errors.PunchdError` only.
    """

    async def send(self, payload: bytes, dest: Addr, /) -> None: ...


@dataclass
class _Peer:
    node_id: str
    probe_key: bytes
    driver: PunchDriver
    inbox: trio.MemorySendChannel[tuple[bytes, Addr]]
    candidates: tuple[api.Candidate, ...]
    nat: api.NatReport


class Punching(TaskHost):
    def __init__(self, sender: ProbeSender, local_key: PrivateKey,
                 on_event: Callable[[str, PunchEvent], None], *,
                 rng: random.Random | None = None,
                 caught_up: Callable[[float], bool] | None = None) -> None:
        self._sender = sender
        self._caught_up = caught_up  # the shared port's reader: has it handed on all?
        self._local_key = local_key
        self._on_event = on_event
        self._rng = rng or random.Random()
        self._peers: dict[str, _Peer] = {}  # by node id
        self._by_key: dict[bytes, _Peer] = {}  # by probe public key
        self._local: tuple[tuple[api.Candidate, ...], api.NatReport | None] | None = None
        self._peer_list: list[api.Node] = []
        self._relays: dict[str, Addr] = {}  # by node id: our bound side of its relay
        self.unknown_sender = 0
        self.send_failures = 0
        self.inbox_full = 0

    def _stopped(self) -> None:
        for peer in self._peers.values():
            peer.inbox.close()
        self._peers.clear()
        self._by_key.clear()

    # -- what the agent tells us ---------------------------------------------------------

    def update_local(self, candidates: Iterable[api.Candidate], nat: api.NatReport | None) -> None:
        """Our own candidates/NAT report; a change re-punches every peer."""
        local = (tuple(candidates), nat)
        if local == self._local:
            return
        first = self._local is None
        self._local = local
        if first:  # the sessions the peer list asked for can start now
            self.sync_peers(self._peer_list)
            return
        for peer in self._peers.values():
            peer.driver.update_local(list(local[0]), nat)
            peer.driver.punch()

    def sync_peers(self, peers: Iterable[api.Node]) -> None:
        """Follow the network's peer list: new sessions, updated ones, gone ones."""
        self._peer_list = list(peers)
        if self._nursery is None or self._local is None:
            return  # not running, or our own candidates unknown: nothing to punch with yet
        wanted = {p.id: p for p in self._peer_list if p.approved and p.probe_public_key}
        for node_id in list(self._peers):
            peer = self._peers[node_id]
            node = wanted.get(node_id)
            if node is None or probe_key(node) != peer.probe_key:
                self._drop(node_id)
        for node_id, node in wanted.items():
            current = self._peers.get(node_id)
            if current is None:
                self._start(node)
            elif (node.candidates, node.nat) != (current.candidates, current.nat):
                current.candidates, current.nat = node.candidates, node.nat
                current.driver.update_peer(list(node.candidates), node.nat)
                if node.candidates:
                    current.driver.punch()

    def set_relay(self, node_id: str, relay: Addr | None) -> None:
        """Our bound relay address for a peer (or None): its session's relay pair."""
        if relay is None:
            self._relays.pop(node_id, None)
        else:
            self._relays[node_id] = relay
        peer = self._peers.get(node_id)
        if peer is not None:
            peer.driver.set_relay(relay)

    def note_traffic(self, node_id: str) -> None:
        """WireGuard's counters for the peer moved: its path is kept at the fast pace."""
        peer = self._peers.get(node_id)
        if peer is not None:
            peer.driver.note_traffic()

    def punch(self, node_id: str) -> bool:
        """Start an attempt with one peer now (rendezvous, or a user's request)."""
        peer = self._peers.get(node_id)
        if peer is None:
            return False
        peer.driver.punch()
        return True

    async def ping(self, node_id: str, answer_within: float = 1.0) -> list[Pong]:
        """One probe round to a peer (``punchctl ping``): the pongs that came back."""
        peer = self._peers.get(node_id)
        if peer is None:
            return []
        txids = set(peer.driver.ping())
        session = peer.driver.session
        with trio.move_on_after(answer_within):
            while True:
                answered = [p for p in session.pongs if p.txid in txids]
                if answered:
                    await trio.sleep(0.02)  # other paths' answers, if several were asked
                    return [p for p in session.pongs if p.txid in txids]
                await trio.sleep(0.005)
        return []

    def route(self, data: bytes, source: Addr) -> None:
        """A probe arrived on the shared port: to its peer's session, or dropped."""
        try:
            peer = self._by_key.get(peek_sender(data))
        except ProbeParseError:
            peer = None
        if peer is None:
            self.unknown_sender += 1
            return
        try:
            peer.inbox.send_nowait((data, source))
        except trio.WouldBlock:
            self.inbox_full += 1

    def session(self, node_id: str) -> PunchSession | None:
        peer = self._peers.get(node_id)
        return peer.driver.session if peer is not None else None

    # -- sessions ---------------------------------------------------------------------------

    def _start(self, node: api.Node) -> None:
        assert self._nursery is not None and self._local is not None
        try:
            peer_key = PublicKey(base64.b64decode(node.probe_public_key, validate=True))
        except (binascii.Error, ValueError) as exc:
            log.warning("peer %s: unusable probe key: %s", node.name, exc)
            return
        session = PunchSession(
            local_key=self._local_key, peer_key=peer_key,
            local_candidates=list(self._local[0]), peer_candidates=list(node.candidates),
            peer_nat=node.nat, local_nat=self._local[1], now=trio.current_time(),
            rng=random.Random(self._rng.getrandbits(64)),
            wall_offset=time.time() - trio.current_time())
        if node.id in self._relays:
            session.set_relay(self._relays[node.id], trio.current_time())
        if node.candidates:
            session.punch(trio.current_time())  # the driver sends these probes first
        node_id = node.id
        driver = PunchDriver(session, self._send,
                             lambda event: self._on_event(node_id, event),
                             caught_up=self._caught_up)
        inbox, receive = trio.open_memory_channel[tuple[bytes, Addr]](INBOX_SIZE)
        peer = _Peer(node_id, bytes(peer_key), driver, inbox, node.candidates, node.nat)
        self._peers[node_id] = peer
        self._by_key[peer.probe_key] = peer
        self._nursery.start_soon(self._run_driver, peer, receive)

    async def _run_driver(self, peer: _Peer,
                          receive: trio.MemoryReceiveChannel[tuple[bytes, Addr]]) -> None:
        async with receive:
            await peer.driver.run(receive)

    def _drop(self, node_id: str) -> None:
        peer = self._peers.pop(node_id)
        self._by_key.pop(peer.probe_key, None)
        peer.inbox.close()

    async def _send(self, payload: bytes, dest: Addr) -> None:
        try:
            await self._sender.send(payload, dest)
        except PunchdError as exc:
            # A family the shared port cannot send, or the link gone (NetworkDown): the
            # probe is lost like any datagram and the session's pacing retransmits.
            self.send_failures += 1
            log.debug("probe to %s:%d: %s", dest[0], dest[1], exc)
