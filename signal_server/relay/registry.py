"""Relay allocations shared by the replicas on one database (issue #19).

Theory of operation
-------------------
Each replica keeps its allocations' sockets and table in memory (:mod:`.service`);
this module records in the store *which* replica holds the allocation of each node
pair, so that both nodes of a pair meet on one relay even when their requests reach
different replicas, and so that an allocation whose replica died is made again on a
survivor at the next request.

- ``replicas``: one row per running replica, its id (the event feed's origin,
  :func:`signal_server.event_feed.new_origin`) and a heartbeat time, rewritten every
  :data:`HEARTBEAT_S` (a single-row upsert, outside the writers' lock). A replica is
  alive while its heartbeat is younger than :data:`DEAD_AFTER_S`; one that stops
  cleanly deletes its row and its allocations, so it is dead at once.
- ``relay_allocations``: one row per (network, node pair), naming the owner and
  holding what each side needs to bind (:class:`StoredAllocation`). A row is *live*
  while its owner is alive.

``POST /relay`` on any replica: a live row owned by another replica is answered as it
is (that replica serves the ports). Otherwise this replica makes (or finds) the
allocation in its own table and :meth:`RelayRegistry.claim` records it, in a write
transaction: writers run one at a time across replicas (:mod:`signal_server.db`), so
of two replicas racing for a pair the second finds the first's live row and answers
that instead, dropping its own. The primary key on the pair is the backstop.

The calls here block (they are database round trips): call them from a thread.
Times are passed in, so tests decide who is dead without sleeping.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from punchd.wire import api

from ..db import Database, decode_row

HEARTBEAT_S = 0.3
# Three missed heartbeats: a busy store thread or a slow commit is not a death, and a
# dead owner is still noticed well inside the 2 s the nodes have to move (issue #19).
DEAD_AFTER_S = 1.0
# A replica killed without a clean stop leaves its row and its allocations' rows; each
# start is a new id, so they would pile up. The sweeps of the living remove them once
# they are this old (long past anyone's use: the nodes moved within seconds).
PRUNE_AFTER_S = 600.0


class StoredSide(msgspec.Struct, frozen=True):
    node: str  # node id
    relay: str  # "ip:port": the relay port this side sends to
    secret: str  # hex: the side's MESSAGE-INTEGRITY key


class StoredAllocation(msgspec.Struct, frozen=True):
    id: str
    network: str
    owner: str  # the replica that holds its sockets
    sides: tuple[StoredSide, StoredSide]
    created: float
    refreshed: float

    def side_of(self, node_id: str) -> int:
        return 0 if self.sides[0].node == node_id else 1

    def answer(self, node_id: str, *, now: float, idle_timeout: float, refresh_s: float
               ) -> api.RelayAllocation:
        """``node_id``'s side of it, as the API answers."""
        side = self.side_of(node_id)
        mine, other = self.sides[side], self.sides[1 - side]
        return api.RelayAllocation(id=self.id, peer=other.node, relay=mine.relay, side=side,
                                   secret=mine.secret, expires_at=now + idle_timeout,
                                   refresh_s=refresh_s)


_ENCODE = msgspec.json.Encoder()
_DECODE = msgspec.json.Decoder(StoredAllocation)


def _pair(node_id: str, peer_id: str) -> tuple[str, str]:
    a, b = sorted((node_id, peer_id))
    return a, b


class RelayRegistry:
    """One replica's view of the shared table; ``replica`` is its id."""

    def __init__(self, db: Database, replica: str) -> None:
        self.db = db
        self.replica = replica

    # -- liveness --------------------------------------------------------------------------

    def heartbeat(self, now: float) -> None:
        self.db.execute("INSERT INTO replicas (id, heartbeat) VALUES (?, ?) "
                        "ON CONFLICT (id) DO UPDATE SET heartbeat = excluded.heartbeat",
                        (self.replica, now))

    def leave(self) -> None:
        """A clean stop: our allocations and our row go, so survivors take over at once."""
        with self.db.transaction():
            self.db.execute("DELETE FROM relay_allocations WHERE owner = ?", (self.replica,))
            self.db.execute("DELETE FROM replicas WHERE id = ?", (self.replica,))

    def alive(self, replica: str, now: float) -> bool:
        row = self.db.execute("SELECT heartbeat FROM replicas WHERE id = ?", (replica,)
                              ).fetchone()
        return row is not None and now - float(row[0]) < DEAD_AFTER_S

    # -- allocations -----------------------------------------------------------------------

    def lookup(self, network: str, node_id: str, peer_id: str, now: float
               ) -> StoredAllocation | None:
        """The pair's allocation if its owner is alive."""
        row = self.db.execute(
            "SELECT a.body FROM relay_allocations a JOIN replicas r ON r.id = a.owner "
            "WHERE a.network = ? AND a.node_a = ? AND a.node_b = ? AND r.heartbeat > ?",
            (network, *_pair(node_id, peer_id), now - DEAD_AFTER_S)).fetchone()
        return None if row is None else decode_row("relay_allocations", row[0], _DECODE)

    def claim(self, candidate: StoredAllocation, now: float) -> StoredAllocation:
        """Records ``candidate`` (ours) as its pair's allocation, unless another live
        replica's is there already: then that one, which the caller answers instead.

        A row of ours is replaced: our table is the truth about our allocations (it
        hands back the pair's existing one), so a different id means the old one is
        gone. A dead owner's row is replaced too: that is the take-over.
        """
        assert candidate.owner == self.replica
        sides = candidate.sides
        with self.db.transaction():
            found = self.lookup(candidate.network, sides[0].node, sides[1].node, now)
            if found is not None and found.owner != self.replica:
                return found
            stored = msgspec.structs.replace(candidate, refreshed=now)
            self.db.execute(
                "INSERT INTO relay_allocations (network, node_a, node_b, id, owner, created, "
                "refreshed, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (network, node_a, node_b) DO UPDATE SET id = excluded.id, "
                "owner = excluded.owner, created = excluded.created, "
                "refreshed = excluded.refreshed, body = excluded.body",
                (stored.network, *_pair(sides[0].node, sides[1].node), stored.id,
                 stored.owner, stored.created, stored.refreshed, _ENCODE.encode(stored)))
            return stored

    def retain(self, ids: Iterable[str], now: float) -> int:
        """Our rows: those not in ``ids`` (expired here) go, the rest are marked
        refreshed. Returns how many went."""
        keep = sorted(set(ids))
        with self.db.transaction():
            gone = 0
            for (alloc_id,) in self.db.execute(
                    "SELECT id FROM relay_allocations WHERE owner = ?", (self.replica,)
            ).fetchall():
                if alloc_id not in keep:
                    self.db.execute("DELETE FROM relay_allocations WHERE id = ?", (alloc_id,))
                    gone += 1
            self.db.execute("UPDATE relay_allocations SET refreshed = ? WHERE owner = ?",
                            (now, self.replica))
        return gone

    def prune(self, now: float) -> int:
        """Removes replicas silent for :data:`PRUNE_AFTER_S` and the allocations of
        owners with no live row; returns how many allocations went."""
        with self.db.transaction():
            self.db.execute("DELETE FROM replicas WHERE heartbeat < ?", (now - PRUNE_AFTER_S,))
            return self.db.execute(
                "DELETE FROM relay_allocations WHERE owner NOT IN (SELECT id FROM replicas) "
                "AND refreshed < ?", (now - PRUNE_AFTER_S,)).rowcount

    def owned(self) -> list[StoredAllocation]:
        """Our rows, for the admin view and tests."""
        return [decode_row("relay_allocations", body, _DECODE) for (body,) in self.db.execute(
            "SELECT body FROM relay_allocations WHERE owner = ? ORDER BY id",
            (self.replica,)).fetchall()]
