"""The signal server's store: every rule, over SQLite or PostgreSQL.

Every public method is one transaction: it validates, changes the records, appends
the resulting events to the per-network event log, and commits before it returns,
so a ``kill -9`` after an answer loses nothing, and a refused request changes
nothing. Methods are synchronous; the server calls them through a worker thread
(see :class:`signal_server.service.Service`).

The rules live here once; the SQL dialect lives behind :class:`signal_server.db.Database`
(``db_sqlite``, ``db_postgres``), whose write transactions run one at a time across
every process sharing the database. That is what makes access-key use counts and
address choice exact under concurrent joins, on one server or on several replicas;
UNIQUE constraints (:mod:`signal_server.schema`) are the backstop.

Records are stored as msgspec JSON of the Structs in :mod:`punchd.wire.api` (the one
schema); columns exist only for what is looked up or kept unique.
"""

from __future__ import annotations

import hashlib
import ipaddress
import itertools
import secrets
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import msgspec

from meshdns.zone import validate_record
from punchd.errors import AddrError, Conflict, DuplicateRow, Invalid, NotFound, Unauthorized
from punchd.wire import api
from punchd.wire.addr import parse_addr
from punchd.wire.signing import MAX_SKEW_S

from .db import Database, decode_row, open_database
from .schema import migrate, node_columns

T = TypeVar("T")

_NETWORK = msgspec.json.Decoder(api.Network)
_ACCESS_KEY = msgspec.json.Decoder(api.AccessKey)
_NODE = msgspec.json.Decoder(api.Node)
_ANY: msgspec.json.Decoder[object] = msgspec.json.Decoder()


# Events kept per network for resuming streams; older cursors get a snapshot.
EVENT_RETENTION = 2000
# Nonces remembered per node key within the signature window. A node's burst (punch
# and relay requests for every peer at start) fits; past it the oldest is dropped and
# its timestamp becomes the key's floor, so one node can crowd out only itself.
NONCES_PER_KEY = 2048
# How stale a node's last_seen may get before a request writes it again (touch_node).
TOUCH_EVERY_S = 30.0
# A rotation batch waits this long for its slowest node's new keys; then the nodes that
# sent theirs switch, and each late one switches alone when its keys come.
ROTATION_WAIT_S = 10.0


def _hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


# Ranges a mesh cannot use: its addresses would be routed (or refused) by every
# host's own stack before WireGuard saw them.
_UNUSABLE = [(ipaddress.ip_network(cidr), why) for cidr, why in (
    ("0.0.0.0/8", "'this network' (RFC 1122 §3.2.1.3)"),
    ("127.0.0.0/8", "loopback (RFC 1122 §3.2.1.3)"),
    ("169.254.0.0/16", "link-local (RFC 3927)"),
    ("224.0.0.0/4", "multicast (RFC 5771)"),
    ("240.0.0.0/4", "reserved (RFC 1112 §4), with the broadcast address"),
    ("::/8", "reserved (RFC 4291 §2.4: unspecified, loopback, IPv4-mapped)"),
    ("fe80::/10", "link-local (RFC 4291 §2.5.6)"),
    ("fec0::/10", "site-local, deprecated (RFC 3879)"),
    ("ff00::/8", "multicast (RFC 4291 §2.7)"),
)]


def _parse_net(text: str, version: int, field: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise Invalid(f"{text!r} is not a valid CIDR: {exc}", field) from exc
    if net.version != version:
        raise Invalid(f"{text!r} is not an IPv{version} CIDR", field)
    for bad, why in _UNUSABLE:
        if bad.version == net.version and net.overlaps(bad):
            raise Invalid(f"{text!r} is in {bad}, {why}: not usable as a mesh range", field)
    if net.num_addresses < 4:
        raise Invalid(f"{text!r} is too small for a mesh", field)
    return net


def _node_address(text: str, cidr: str, version: int, field: str,
                  taken: Iterable[tuple[str, str | None]]) -> str:
    """``text`` (an IP, or IP/prefix of the range's own prefix) as a node's address
    "ip/prefix"; refused, with the reason, outside the range or taken."""
    net = ipaddress.ip_network(cidr)
    ip_text, _, prefix = text.partition("/")
    try:
        ip = ipaddress.ip_address(ip_text)
    except ValueError as exc:
        raise Invalid(f"{text!r} is not an IP address", field) from exc
    if ip.version != version:
        raise Invalid(f"{text!r} is not an IPv{version} address", field)
    if prefix and prefix != str(net.prefixlen):
        raise Invalid(f"{text!r}: the network's prefix is /{net.prefixlen}", field)
    if ip not in net:
        raise Invalid(f"{ip} is outside the network's range {cidr}", field)
    # The range's first and last addresses are its network and broadcast addresses
    # (RFC 919 §7): hosts() leaves them out, and so does the join's allocation.
    if version == 4 and net.num_addresses > 2 and ip in (net.network_address,
                                                          net.broadcast_address):
        raise Invalid(f"{ip} is the range's {'network' if ip == net.network_address else 'broadcast'}"
                      " address, not a host address", field)
    if version == 6 and ip == net.network_address:
        raise Invalid(f"{ip} is the range's subnet-router anycast address (RFC 4291 §2.6.1)",
                      field)
    for owner, other in taken:
        if other and ipaddress.ip_interface(other).ip == ip:
            raise Conflict(f"{ip} is taken by node {owner!r}", field)
    return f"{ip}/{net.prefixlen}"


def _check_candidates(candidates: Iterable[api.Candidate]) -> None:
    for i, cand in enumerate(candidates):
        try:
            parse_addr(cand.address)
        except AddrError as exc:
            raise Invalid(str(exc), f"candidates[{i}].address") from exc


def open_store(target: str | Path) -> Store:
    """A ``postgresql://`` URL opens PostgreSQL; anything else is an SQLite file."""
    return Store(open_database(target))


class Store:
    """All domain state. ``target`` is an SQLite path (``":memory:"`` for tests) or an
    open :class:`Database`; :func:`open_store` also takes a PostgreSQL URL."""

    def __init__(self, target: str | Path | Database) -> None:
        self.db: Database = open_database(target) if isinstance(target, (str, Path)) \
            else target
        self.path = self.db.name
        try:
            migrate(self.db)
            self._give_networks_ids()
        except BaseException:
            self.db.close()
            raise

    def _give_networks_ids(self) -> None:
        """Networks stored before networks had ids get one, once, so it stays put
        (``api.Network`` makes up a fresh id for a body without one on every read)."""
        with self._tx():
            for name, body in self.db.execute("SELECT name, body FROM networks").fetchall():
                raw = decode_row("networks", body, _ANY)
                if not isinstance(raw, dict) or "id" not in raw:
                    net = decode_row("networks", body, _NETWORK)
                    self.db.execute("UPDATE networks SET body = ? WHERE name = ?",
                                    (msgspec.json.encode(net), name))

    def close(self) -> None:
        self.db.close()

    # -- transaction plumbing ---------------------------------------------------------

    def _tx(self) -> AbstractContextManager[None]:
        return self.db.transaction()

    def _emit(self, network: str, event_body: api.Event) -> None:
        """Append an event; its seq is the next of the one-row counter, which only
        the one running write transaction can move (so seqs commit in order)."""
        self.db.execute("UPDATE event_counter SET seq = seq + 1 WHERE id = 1")
        (seq,) = self.db.execute("SELECT seq FROM event_counter WHERE id = 1").fetchone()
        stamped = msgspec.structs.replace(event_body, seq=seq)
        self.db.execute("INSERT INTO events (seq, network, body) VALUES (?, ?, ?)",
                        (seq, network, api.event_encoder.encode(stamped)))
        self.db.notify_event(network, seq)  # other replicas' streams, at commit
        cutoff = self.db.execute(
            "SELECT seq FROM events WHERE network = ? ORDER BY seq DESC LIMIT 1 OFFSET ?",
            (network, EVENT_RETENTION),
        ).fetchone()
        if cutoff is not None:
            self.db.execute("DELETE FROM events WHERE network = ? AND seq <= ?", (network, cutoff[0]))
            self.db.execute(
                "INSERT INTO event_trim (network, upto) VALUES (?, ?) "
                "ON CONFLICT (network) DO UPDATE SET upto = excluded.upto",
                (network, cutoff[0]),
            )

    # -- networks -----------------------------------------------------------------------

    def _networks(self) -> list[api.Network]:
        rows = self.db.execute("SELECT body FROM networks ORDER BY name").fetchall()
        return [decode_row("networks", r[0], _NETWORK) for r in rows]

    def list_networks(self) -> list[api.Network]:
        return self._networks()

    def get_network(self, name: str) -> api.Network:
        row = self.db.execute("SELECT body FROM networks WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFound(f"no network {name!r}", "network")
        return decode_row("networks", row[0], _NETWORK)

    def _check_overlap(self, name: str, cidr: str | None, field: str) -> None:
        if cidr is None:
            return
        new = ipaddress.ip_network(cidr)
        for other in self._networks():
            if other.name == name:
                continue
            for existing in (other.ipv4_cidr, other.ipv6_cidr):
                if existing and ipaddress.ip_network(existing).version == new.version \
                        and ipaddress.ip_network(existing).overlaps(new):
                    raise Conflict(f"{cidr} overlaps network {other.name!r} ({existing})", field)

    def create_network(self, req: api.NetworkCreate) -> api.Network:
        _parse_net(req.ipv4_cidr, 4, "ipv4_cidr")
        if req.ipv6_cidr is not None:
            _parse_net(req.ipv6_cidr, 6, "ipv6_cidr")
        with self._tx():
            if self.db.execute("SELECT 1 FROM networks WHERE name = ?", (req.name,)).fetchone():
                raise Conflict(f"network {req.name!r} exists already", "name")
            self._check_overlap(req.name, req.ipv4_cidr, "ipv4_cidr")
            self._check_overlap(req.name, req.ipv6_cidr, "ipv6_cidr")
            net = api.Network(**msgspec.structs.asdict(req), created_at=time.time())
            self.db.execute("INSERT INTO networks (name, body) VALUES (?, ?)",
                            (net.name, msgspec.json.encode(net)))
        return net

    def update_network(self, name: str, req: api.NetworkUpdate) -> api.Network:
        changes = {k: v for k, v in msgspec.structs.asdict(req).items() if v is not None}
        if "ipv4_cidr" in changes:
            _parse_net(changes["ipv4_cidr"], 4, "ipv4_cidr")
        if "ipv6_cidr" in changes:
            _parse_net(changes["ipv6_cidr"], 6, "ipv6_cidr")
        with self._tx():
            old = self.get_network(name)
            self._check_overlap(name, changes.get("ipv4_cidr"), "ipv4_cidr")
            self._check_overlap(name, changes.get("ipv6_cidr"), "ipv6_cidr")
            net = msgspec.structs.replace(old, **changes)
            self.db.execute("UPDATE networks SET body = ? WHERE name = ?",
                            (msgspec.json.encode(net), name))
            self._emit(name, api.NetworkChanged(seq=0, network=net))
            if net.ipv4_cidr != old.ipv4_cidr or net.ipv6_cidr != old.ipv6_cidr:
                self._renumber(net)
            if "listen_port" in changes:
                self._move_port(net)
        return net

    def _move_port(self, net: api.Network) -> None:
        """The network's port is every node's: each one not on it yet moves (its daemon
        rebinds on the PeerChanged), and peers hear of it."""
        for node in self._nodes(net.name):
            if node.listen_port != net.listen_port:
                moved = msgspec.structs.replace(node, listen_port=net.listen_port)
                self._put_node(moved)
                self._emit(net.name, api.PeerChanged(seq=0, peer=moved))

    def _renumber(self, net: api.Network) -> None:
        """A new CIDR: every node gets a new address, in join order, and peers hear of it."""
        nodes = self._nodes(net.name)
        nodes.sort(key=lambda n: n.created_at)
        v4 = list(itertools.islice(self._address_pool(net.ipv4_cidr, set()), len(nodes)))
        v6 = list(itertools.islice(self._address_pool(net.ipv6_cidr, set()), len(nodes))) \
            if net.ipv6_cidr else None
        for field, cidr, pool in (("ipv4_cidr", net.ipv4_cidr, v4),
                                  ("ipv6_cidr", net.ipv6_cidr, v6)):
            if pool is not None and len(pool) < len(nodes):
                raise Conflict(f"{cidr} has room for {len(pool)} nodes; {net.name!r} has "
                               f"{len(nodes)}", field)
        for i, node in enumerate(nodes):
            updated = msgspec.structs.replace(
                node, ipv4=v4[i], ipv6=v6[i] if v6 is not None else None
            )
            self._put_node(updated)
            self._emit(net.name, api.PeerChanged(seq=0, peer=updated))

    def delete_network(self, name: str) -> None:
        with self._tx():
            self.get_network(name)
            for table in ("networks", "access_keys", "nodes", "dns_records", "events", "event_trim"):
                column = "name" if table == "networks" else "network"
                self.db.execute(f"DELETE FROM {table} WHERE {column} = ?", (name,))

    # -- access keys --------------------------------------------------------------------

    def create_access_key(self, network: str, req: api.AccessKeyCreate) -> tuple[api.AccessKey, str]:
        """Returns the key record and its secret (shown once, stored only as a hash)."""
        secret = secrets.token_urlsafe(24)
        now = time.time()
        key = api.AccessKey(
            id=uuid.uuid4().hex[:12], network=network, uses_left=req.uses,
            expires_at=now + req.expires_in if req.expires_in else None, created_at=now,
        )
        with self._tx():
            self.get_network(network)
            self.db.execute(
                "INSERT INTO access_keys (id, network, secret_hash, body) VALUES (?, ?, ?, ?)",
                (key.id, network, _hash_secret(secret), msgspec.json.encode(key)),
            )
        return key, secret

    def list_access_keys(self, network: str) -> list[api.AccessKey]:
        self.get_network(network)
        rows = self.db.execute(
            "SELECT body FROM access_keys WHERE network = ? ORDER BY id", (network,)
        ).fetchall()
        return [decode_row("access_keys", r[0], _ACCESS_KEY) for r in rows]

    def delete_access_key(self, network: str, key_id: str) -> None:
        with self._tx():
            cur = self.db.execute(
                "DELETE FROM access_keys WHERE network = ? AND id = ?", (network, key_id)
            )
            if cur.rowcount == 0:
                raise NotFound(f"no access key {key_id!r} in {network!r}", "key")

    def _access_key(self, secret: str) -> api.AccessKey:
        row = self.db.execute(
            "SELECT body FROM access_keys WHERE secret_hash = ?", (_hash_secret(secret),)
        ).fetchone()
        if row is None:
            raise Unauthorized("unknown access key", "access_key")
        return decode_row("access_keys", row[0], _ACCESS_KEY)

    def _use_access_key(self, secret: str, now: float) -> api.AccessKey:
        key = self._access_key(secret)
        if key.expires_at is not None and key.expires_at <= now:
            raise Unauthorized("access key expired", "access_key")
        if key.uses_left is not None:
            if key.uses_left <= 0:
                raise Unauthorized("access key has no uses left", "access_key")
            key = msgspec.structs.replace(key, uses_left=key.uses_left - 1)
            self.db.execute("UPDATE access_keys SET body = ? WHERE id = ?",
                            (msgspec.json.encode(key), key.id))
        return key

    # -- replay window ------------------------------------------------------------------

    def remember_request(self, signing_key: str, nonce: str, sent: float,
                         now: float | None = None) -> None:
        """Accept a signed request's nonce once; raises Unauthorized for a replay.

        Why the store and not memory: a nonce cache in memory is empty after a
        restart, so a request captured just before it replays for the rest of the
        signature window. Why nonces and not "strictly increasing timestamps per
        key": one node sends requests from several tasks over pooled connections,
        and a request signed a millisecond later may arrive first. Only keys of
        nodes are remembered (a join's key inside the join), so signatures from keys
        nobody registered cost no space.
        """
        now = time.time() if now is None else now
        with self._tx():
            if self.db.execute("SELECT 1 FROM nodes WHERE signing_key = ?",
                               (signing_key,)).fetchone() is None:
                raise Unauthorized("unknown node key (not joined, or deleted)")
            self._remember(signing_key, nonce, sent, now)

    def _remember(self, signing_key: str, nonce: str, sent: float, now: float) -> None:
        # A timestamp older than the window fails verification anyway: forget it.
        horizon = now - MAX_SKEW_S
        self.db.execute("DELETE FROM request_nonces WHERE sent < ?", (horizon,))
        self.db.execute("DELETE FROM request_floor WHERE sent < ?", (horizon,))
        floor = self.db.execute("SELECT sent FROM request_floor WHERE signing_key = ?",
                                (signing_key,)).fetchone()
        if floor is not None and sent <= floor[0]:
            raise Unauthorized("replayed request (older than this node's replay window)")
        try:
            self.db.execute("INSERT INTO request_nonces (signing_key, nonce, sent) "
                            "VALUES (?, ?, ?)", (signing_key, nonce, sent))
        except DuplicateRow as exc:
            raise Unauthorized("replayed request (nonce seen before)") from exc
        (count,) = self.db.execute("SELECT COUNT(*) FROM request_nonces WHERE signing_key = ?",
                                   (signing_key,)).fetchone()
        if count > NONCES_PER_KEY:
            (oldest,) = self.db.execute(
                "SELECT MIN(sent) FROM request_nonces WHERE signing_key = ?", (signing_key,)
            ).fetchone()
            self.db.execute("DELETE FROM request_nonces WHERE signing_key = ? AND sent <= ?",
                            (signing_key, oldest))
            self.db.execute(
                "INSERT INTO request_floor (signing_key, sent) VALUES (?, ?) "
                "ON CONFLICT (signing_key) DO UPDATE SET sent = excluded.sent",
                (signing_key, oldest))

    # -- nodes --------------------------------------------------------------------------

    def _nodes(self, network: str) -> list[api.Node]:
        rows = self.db.execute(
            "SELECT body FROM nodes WHERE network = ? ORDER BY name", (network,)
        ).fetchall()
        return [decode_row("nodes", r[0], _NODE) for r in rows]

    def list_nodes(self, network: str) -> list[api.Node]:
        self.get_network(network)
        return self._nodes(network)

    def _put_node(self, node: api.Node) -> None:
        self.db.execute(
            "INSERT INTO nodes (id, network, name, signing_key, body, ipv4, ipv6, "
            "wg_public_key, probe_public_key, expires_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET name = excluded.name, body = excluded.body, "
            "ipv4 = excluded.ipv4, ipv6 = excluded.ipv6, "
            "wg_public_key = excluded.wg_public_key, "
            "probe_public_key = excluded.probe_public_key, expires_at = excluded.expires_at",
            (node.id, node.network, node.name, node.signing_key, msgspec.json.encode(node),
             *node_columns(node), node.expires_at),
        )

    def node_by_signing_key(self, signing_key: str) -> api.Node:
        row = self.db.execute(
            "SELECT body FROM nodes WHERE signing_key = ?", (signing_key,)
        ).fetchone()
        if row is None:
            raise Unauthorized("unknown node key (not joined, or deleted)")
        return decode_row("nodes", row[0], _NODE)

    def get_node(self, network: str, name: str) -> api.Node:
        row = self.db.execute(
            "SELECT body FROM nodes WHERE network = ? AND name = ?", (network, name)
        ).fetchone()
        if row is None:
            raise NotFound(f"no node {name!r} in network {network!r}", "node")
        return decode_row("nodes", row[0], _NODE)

    @staticmethod
    def _address_pool(cidr: str, used: set[str]) -> Iterator[str]:
        """Free host addresses in order; compares integers, formats only what it yields."""
        net = ipaddress.ip_network(cidr)
        taken = {int(ipaddress.ip_address(u)) for u in used}
        for host in net.hosts():
            if int(host) not in taken:
                yield f"{host}/{net.prefixlen}"

    def _allocate(self, cidr: str | None, used: Iterable[str | None]) -> str | None:
        if cidr is None:
            return None
        taken = {u.split("/")[0] for u in used if u}
        for addr in self._address_pool(cidr, taken):
            return addr
        raise Conflict(f"network {cidr} has no free address", "network")

    def join(self, req: api.JoinRequest, signer: str, now: float | None = None) -> api.JoinResponse:
        return self.join_or_resume(req, signer, now)[0]

    def join_or_resume(self, req: api.JoinRequest, signer: str, now: float | None = None,
                       nonce: tuple[str, float] | None = None) -> tuple[api.JoinResponse, bool]:
        """A join, or the answer to one already committed: ``(response, resumed)``.

        A client whose join timed out cannot know whether it was committed; it retries
        with the same keys. The retry is proven by the signing key (only that node has
        it), so it gets the first answer again and spends no use of the access key,
        even one used up by the first join. Different keys under a joined signing key
        are a conflict: that is a new node, not a retry.
        """
        if signer != req.signing_key:
            raise Unauthorized("request not signed by the key it registers", "signing_key")
        now = time.time() if now is None else now
        _check_candidates(req.candidates)
        with self._tx():
            row = self.db.execute(
                "SELECT body FROM nodes WHERE signing_key = ?", (req.signing_key,)
            ).fetchone()
            if row is not None:
                old = decode_row("nodes", row[0], _NODE)
                key = self._access_key(req.access_key)
                if (old.network, old.wg_public_key, old.probe_public_key) != \
                        (key.network, req.wg_public_key, req.probe_public_key):
                    raise Conflict("this node key has joined already", "signing_key")
                if nonce is not None:
                    self._remember(signer, *nonce, now)
                return api.JoinResponse(node=old, network=self.get_network(old.network)), True
            key = self._use_access_key(req.access_key, now)
            net = self.get_network(key.network)
            nodes = self._nodes(net.name)
            name = req.name or f"node-{req.signing_key.encode().hex()[:8]}"
            if any(n.name == name for n in nodes):
                raise Conflict(f"a node named {name!r} is in {net.name!r} already", "name")
            # Peers index a network's nodes by these keys: a second node with the same
            # key would take over the first one's address and probes.
            if any(n.wg_public_key == req.wg_public_key for n in nodes):
                raise Conflict("that WireGuard key is in use in this network", "wg_public_key")
            if any(n.probe_public_key == req.probe_public_key for n in nodes):
                raise Conflict("that probe key is in use in this network", "probe_public_key")
            node = api.Node(
                id=uuid.uuid4().hex[:16], network=net.name, name=name,
                signing_key=req.signing_key, wg_public_key=req.wg_public_key,
                probe_public_key=req.probe_public_key,
                # A node asking for the default port has no preference: the network's
                # port is the admin's word (``network create --listen-port``).
                listen_port=net.listen_port if req.listen_port == api.DEFAULT_LISTEN_PORT
                else req.listen_port,
                ipv4=self._allocate(net.ipv4_cidr, (n.ipv4 for n in nodes)),
                ipv6=self._allocate(net.ipv6_cidr, (n.ipv6 for n in nodes)),
                candidates=req.candidates, approved=not net.require_approval,
                last_seen=now, created_at=now,
            )
            self._put_node(node)
            self._emit(net.name, api.PeerAdded(seq=0, peer=node))
            if nonce is not None:  # the key is a node's from here on: remember its nonce
                self._remember(signer, *nonce, now)
        return api.JoinResponse(node=node, network=net), False

    def update_node(self, signer: str, req: api.NodeUpdate, now: float | None = None) -> api.Node:
        now = time.time() if now is None else now
        changes = {k: v for k, v in msgspec.structs.asdict(req).items() if v is not None}
        if req.candidates is not None:
            _check_candidates(req.candidates)
        if req.nat is not None and req.nat.public_endpoint is not None:
            try:
                parse_addr(req.nat.public_endpoint)
            except AddrError as exc:
                raise Invalid(str(exc), "nat.public_endpoint") from exc
        with self._tx():
            node = self.node_by_signing_key(signer)
            updated = msgspec.structs.replace(node, **changes, last_seen=now)
            self._put_node(updated)
            if changes:
                self._emit(node.network, api.PeerChanged(seq=0, peer=updated))
        return updated

    def admin_update_node(self, network: str, name: str, req: api.NodeAdminUpdate,
                          now: float | None = None) -> api.Node:
        """The admin's change of a node's settings: validated whole, one PeerChanged.

        An address must be a free host address of the network's range; a new name must
        be free and not a CNAME's (RFC 1034 §3.6.2: a CNAME owns its name alone)."""
        now = time.time() if now is None else now
        changes = {k: v for k, v in msgspec.structs.asdict(req).items()
                   if v is not None and k not in ("expires_in",)}
        if not changes and req.expires_in is msgspec.UNSET:
            raise Invalid("nothing to change: give at least one field")
        with self._tx():
            net = self.get_network(network)
            node = self.get_node(network, name)
            others = [n for n in self._nodes(network) if n.id != node.id]
            if req.name is not None and req.name != node.name:
                if any(n.name == req.name for n in others):
                    raise Conflict(f"a node named {req.name!r} is in {network!r} already",
                                   "name")
                if self.db.execute("SELECT 1 FROM dns_records WHERE network = ? AND name = ? "
                                   "AND rtype = 'CNAME'", (network, req.name)).fetchone():
                    raise Conflict(f"{req.name!r} has a CNAME record; a node cannot share "
                                   "its name", "name")
            if req.ipv4 is not None:
                changes["ipv4"] = _node_address(req.ipv4, net.ipv4_cidr, 4, "ipv4",
                                                [(n.name, n.ipv4) for n in others])
            if req.ipv6 is not None:
                if net.ipv6_cidr is None:
                    raise Invalid(f"network {network!r} has no IPv6 range", "ipv6")
                changes["ipv6"] = _node_address(req.ipv6, net.ipv6_cidr, 6, "ipv6",
                                                [(n.name, n.ipv6) for n in others])
            if not isinstance(req.expires_in, msgspec.UnsetType):
                changes["expires_at"] = now + req.expires_in \
                    if req.expires_in is not None else None
            updated = msgspec.structs.replace(node, **changes)
            if updated != node:
                self._put_node(updated)
                self._emit(network, api.PeerChanged(seq=0, peer=updated))
        return updated

    def touch_node(self, signer: str, now: float | None = None) -> api.Node:
        """Record that a node was seen; no event (peers do not need to hear of it).

        At most once per :data:`TOUCH_EVERY_S`: ``last_seen`` is for people reading the
        node list, and a write per request would put every stream of a failed-over
        replica (#19) in the writers' queue, one after another, before its first byte."""
        now = time.time() if now is None else now
        node = self.node_by_signing_key(signer)
        if 0 <= now - node.last_seen < TOUCH_EVERY_S:  # a clock stepped back: write
            return node
        with self._tx():
            node = msgspec.structs.replace(self.node_by_signing_key(signer), last_seen=now)
            self._put_node(node)
        return node

    def approve_node(self, network: str, name: str) -> api.Node:
        with self._tx():
            node = msgspec.structs.replace(self.get_node(network, name), approved=True)
            self._put_node(node)
            self._emit(network, api.PeerChanged(seq=0, peer=node))
        return node

    def set_node_expiry(self, network: str, name: str, req: api.NodeExpiry,
                        now: float | None = None) -> api.Node:
        now = time.time() if now is None else now
        with self._tx():
            node = self.get_node(network, name)
            expires_at = now + req.expires_in if req.expires_in is not None else None
            node = msgspec.structs.replace(node, expires_at=expires_at)
            self._put_node(node)
            self._emit(network, api.PeerChanged(seq=0, peer=node))
        return node

    def remove_expired_nodes(self, now: float | None = None) -> list[str]:
        """Deletes every node past its expiry; returns the networks that changed."""
        now = time.time() if now is None else now
        changed: set[str] = set()
        with self._tx():
            # By the expiry column's index: the sweep runs every 0.5 s on every
            # replica, so its cost must follow the expired nodes, not all nodes.
            rows = self.db.execute("SELECT body FROM nodes WHERE expires_at IS NOT NULL "
                                   "AND expires_at <= ?", (now,)).fetchall()
            for (body,) in rows:
                node = decode_row("nodes", body, _NODE)
                if node.expires_at is not None and node.expires_at <= now:
                    self.db.execute("DELETE FROM nodes WHERE id = ?", (node.id,))
                    self._emit(node.network, api.PeerRemoved(seq=0, node_id=node.id,
                                                             name=node.name))
                    changed.add(node.network)
        return sorted(changed)

    def delete_node(self, network: str, name: str) -> None:
        with self._tx():
            node = self.get_node(network, name)
            self.db.execute("DELETE FROM nodes WHERE id = ?", (node.id,))
            self._emit(network, api.PeerRemoved(seq=0, node_id=node.id, name=node.name))

    # -- key rotation -------------------------------------------------------------------
    #
    # The admin asks (request_rotation): each asked node sees itself changed on its
    # stream, makes new WireGuard and probe keys and sends the public halves, signed with
    # its signing key (submit_keys). They wait as next_* keys until every asked node of
    # the network has sent its own, or ROTATION_WAIT_S passed (commit_due_rotations);
    # then one KeysRotated event switches the whole batch. The signing key stays: it is
    # what authenticates the request, so a thief holding it could rotate just as well;
    # recovering from a stolen signing key is delete and re-join, not rotation.

    def request_rotation(self, network: str, name: str | None = None,
                         now: float | None = None) -> list[api.Node]:
        """Ask one node (``name``) or every node of ``network`` for new keys."""
        now = time.time() if now is None else now
        with self._tx():
            self.get_network(network)
            nodes = [self.get_node(network, name)] if name is not None else self._nodes(network)
            asked = []
            for node in nodes:
                node = msgspec.structs.replace(node, rotation_requested_at=now,
                                               next_wg_public_key=None,
                                               next_probe_public_key=None)
                self._put_node(node)
                self._emit(network, api.PeerChanged(seq=0, peer=node))
                asked.append(node)
        return asked

    def submit_keys(self, signer: str, req: api.KeyRotation,
                    now: float | None = None) -> api.Node:
        """A node's new public keys; commits its batch when it was the last one."""
        now = time.time() if now is None else now
        if req.wg_public_key == req.probe_public_key:
            raise Invalid("the WireGuard and probe keys must differ", "probe_public_key")
        with self._tx():
            node = self.node_by_signing_key(signer)
            if node.rotation_requested_at is None:
                raise Conflict("no key rotation was asked of this node", "wg_public_key")
            for field, new, old in (("wg_public_key", req.wg_public_key, node.wg_public_key),
                                    ("probe_public_key", req.probe_public_key,
                                     node.probe_public_key)):
                if new == old:
                    raise Invalid(f"{field} is the node's current key, not a new one", field)
            # Unique against every key a peer has or will have: a batch switches several
            # rows in one transaction, and the v2 constraints hold after each one.
            for other in self._nodes(node.network):
                if other.id == node.id:
                    continue
                taken = {other.wg_public_key, other.probe_public_key,
                         other.next_wg_public_key, other.next_probe_public_key}
                for field, new in (("wg_public_key", req.wg_public_key),
                                   ("probe_public_key", req.probe_public_key)):
                    if new in taken:
                        raise Conflict(f"that {field} is in use in this network", field)
            node = msgspec.structs.replace(node, next_wg_public_key=req.wg_public_key,
                                           next_probe_public_key=req.probe_public_key,
                                           last_seen=now)
            self._put_node(node)
            committed = self._commit_rotation(node.network, now, due=False)
        return next((n for n in committed if n.id == node.id), node)

    def commit_due_rotations(self, now: float | None = None) -> list[str]:
        """Switch batches whose wait ran out; returns the networks that changed."""
        now = time.time() if now is None else now
        # A read first: this runs every sweep, and most sweeps find no batch waiting.
        due = [net.name for net in self._networks()
               if any(n.rotation_requested_at is not None
                      and now - n.rotation_requested_at >= ROTATION_WAIT_S
                      for n in self._nodes(net.name))]
        if not due:
            return []
        with self._tx():
            return [name for name in due if self._commit_rotation(name, now, due=True)]

    def _commit_rotation(self, network: str, now: float, *, due: bool) -> list[api.Node]:
        nodes = self._nodes(network)
        ready = [n for n in nodes if n.rotation_requested_at is not None
                 and n.next_wg_public_key is not None and n.next_probe_public_key is not None]
        waiting = [n for n in nodes if n.rotation_requested_at is not None
                   and n.next_wg_public_key is None]
        if not ready:
            return []
        if waiting and not (due and any(now - n.rotation_requested_at >= ROTATION_WAIT_S
                                        for n in waiting if n.rotation_requested_at)):
            return []
        switched = []
        for node in ready:
            assert node.next_wg_public_key is not None and node.next_probe_public_key is not None
            node = msgspec.structs.replace(
                node, wg_public_key=node.next_wg_public_key,
                probe_public_key=node.next_probe_public_key, next_wg_public_key=None,
                next_probe_public_key=None, rotation_requested_at=None)
            self._put_node(node)
            switched.append(node)
        # A node awaiting approval learns nothing of its peers, so it hears of its own
        # switch alone.
        members = tuple(n for n in switched if n.approved)
        if members:
            self._emit(network, api.KeysRotated(seq=0, peers=members))
        for node in switched:
            if not node.approved:
                self._emit(network, api.KeysRotated(seq=0, peers=(node,)))
        return switched

    def punch(self, signer: str, peer_name: str, now: float | None = None) -> api.PunchRequest:
        now = time.time() if now is None else now
        with self._tx():
            node = self.node_by_signing_key(signer)
            peer = self.get_node(node.network, peer_name)
            if peer.id == node.id:
                raise Invalid("a node cannot punch to itself", "peer")
            request = api.PunchRequest(seq=0, session=secrets.token_hex(8),
                                       nodes=(node.id, peer.id), start_at=now)
            self._emit(node.network, request)
        return request

    # -- DNS records --------------------------------------------------------------------

    def add_dns_record(self, network: str, rec: api.DnsRecord) -> api.DnsRecord:
        valid = validate_record(rec.rtype, rec.name, rec.value)
        rec = api.DnsRecord(name=valid.name, rtype=valid.rtype, value=valid.value)  # type: ignore[arg-type]
        with self._tx():
            self.get_network(network)
            # A CNAME owns its name alone: no other data beside it, nor a second CNAME
            # (RFC 1034 §3.6.2, RFC 2181 §10.1); node names and the apex are data too.
            types = {t for (t,) in self.db.execute(
                "SELECT rtype FROM dns_records WHERE network = ? AND name = ?",
                (network, rec.name))}
            node = self.db.execute("SELECT 1 FROM nodes WHERE network = ? AND lower(name) = ?",
                                   (network, rec.name)).fetchone()
            if rec.rtype == "CNAME" and (types - {"CNAME"} or node):
                what = f"node {rec.name!r}" if node else "other records"
                raise Conflict(f"{rec.name!r} has {what}; a CNAME cannot share its name", "name")
            if rec.rtype == "CNAME" and "CNAME" in types:
                exists = self.db.execute(
                    "SELECT 1 FROM dns_records WHERE network = ? AND name = ? AND rtype = ? "
                    "AND value = ?", (network, rec.name, rec.rtype, rec.value)).fetchone()
                if not exists:
                    raise Conflict(f"{rec.name!r} has a CNAME already", "name")
            if rec.rtype != "CNAME" and "CNAME" in types:
                raise Conflict(f"{rec.name!r} has a CNAME; no other record can share its name",
                               "name")
            try:
                self.db.execute(
                    "INSERT INTO dns_records (network, name, rtype, value) VALUES (?, ?, ?, ?)",
                    (network, rec.name, rec.rtype, rec.value),
                )
            except DuplicateRow as exc:
                raise Conflict("that record exists already", "name") from exc
        return rec

    def list_dns_records(self, network: str) -> list[api.DnsRecord]:
        self.get_network(network)
        rows = self.db.execute(
            "SELECT name, rtype, value FROM dns_records WHERE network = ? ORDER BY name, rtype",
            (network,),
        ).fetchall()
        return [api.DnsRecord(name=n, rtype=t, value=v) for n, t, v in rows]

    def delete_dns_record(self, network: str, name: str, rtype: str) -> None:
        with self._tx():
            self.get_network(network)
            cur = self.db.execute(
                "DELETE FROM dns_records WHERE network = ? AND name = ? AND rtype = ?",
                (network, name.lower(), rtype.upper()),
            )
            if cur.rowcount == 0:
                raise NotFound(f"no {rtype} record {name!r} in {network!r}", "name")

    # -- events -------------------------------------------------------------------------

    def last_seq(self) -> int:
        """The last seq the log handed out, even if its events were deleted since
        (the counter is kept apart from the events): deleting the network that holds
        the newest events must not move the log backwards."""
        (seq,) = self.db.execute("SELECT seq FROM event_counter WHERE id = 1").fetchone()
        return int(seq)

    def events_since(self, network: str, since: int, limit: int = 1000) -> list[api.Event] | None:
        """Events after ``since``; None when the cursor cannot be resumed from: some of
        the events were trimmed from the log, or the cursor is beyond anything this log
        handed out (the database was restored from a backup). Both get a snapshot."""
        if since > self.last_seq():
            return None
        trimmed = self.db.execute(
            "SELECT upto FROM event_trim WHERE network = ?", (network,)
        ).fetchone()
        if trimmed is not None and since < trimmed[0]:
            return None
        rows = self.db.execute(
            "SELECT body FROM events WHERE network = ? AND seq > ? ORDER BY seq LIMIT ?",
            (network, since, limit),
        ).fetchall()
        return [decode_row("events", r[0], api.event_decoder) for r in rows]

    def stream_view(self, network: str, since: int | None) -> StreamView:
        """What a stream checks when it wakes, in one read so they agree: the network's
        identity (None: gone), its members (node id -> approved) and the log after
        ``since`` (None: start with a snapshot)."""
        with self.db.read():
            row = self.db.execute("SELECT body FROM networks WHERE name = ?",
                                  (network,)).fetchone()
            if row is None:
                return StreamView(network_id=None, members={}, events=None)
            members = {n.id: n.approved for n in self._nodes(network)}
            events = None if since is None else self.events_since(network, since)
            return StreamView(network_id=decode_row("networks", row[0], _NETWORK).id,
                              members=members, events=events)

    def snapshot(self, network: str) -> api.Snapshot:
        with self.db.read():  # seq and peers from one moment: no event falls between
            return api.Snapshot(seq=self.last_seq(), network=self.get_network(network),
                                peers=tuple(self._nodes(network)))


@dataclass(frozen=True)
class StreamView:
    network_id: str | None
    members: dict[str, bool]  # node id -> approved
    events: list[api.Event] | None

