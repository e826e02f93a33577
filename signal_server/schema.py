"""The store's schema, as numbered migrations for each dialect, applied at start.

``schema_version`` holds one row per applied migration. A database from before
migrations existed (its tables, no ``schema_version``) gets version 1 run over it:
version 1 is that schema with ``IF NOT EXISTS`` everywhere, so a current file is left
as it is, and a file from an older release gains the tables it lacks (what every start
did before). A database newer than this code is refused rather than misread.

Dialect notes (PostgreSQL against SQLite): bodies are BYTEA, not JSONB, because they
are msgspec JSON bytes the store decodes itself and never queries inside; JSONB would
re-encode them. Text columns are ``COLLATE "C"`` so ``ORDER BY name`` sorts bytewise as
SQLite does, whatever locale the database was created with. Event seqs come from the
one-row ``event_counter`` on both (see :mod:`signal_server.db_postgres` for why not an
identity column); SQLite's file keeps its AUTOINCREMENT key, which is harmless.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from punchd.errors import ConfigError, DuplicateRow
from punchd.wire import api

from .db import Database, Dialect, decode_row

Step = str | Callable[[Database], None]

_V1_SQLITE = """
CREATE TABLE IF NOT EXISTS networks (name TEXT PRIMARY KEY, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS access_keys (
    id TEXT PRIMARY KEY, network TEXT NOT NULL, secret_hash TEXT NOT NULL UNIQUE,
    body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (
    id TEXT PRIMARY KEY, network TEXT NOT NULL, name TEXT NOT NULL,
    signing_key TEXT NOT NULL UNIQUE, body BLOB NOT NULL, UNIQUE (network, name));
CREATE TABLE IF NOT EXISTS dns_records (
    network TEXT NOT NULL, name TEXT NOT NULL, rtype TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (network, name, rtype, value));
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, network TEXT NOT NULL, body BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS events_by_network ON events (network, seq);
CREATE TABLE IF NOT EXISTS event_trim (network TEXT PRIMARY KEY, upto INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS request_nonces (
    signing_key TEXT NOT NULL, nonce TEXT NOT NULL, sent REAL NOT NULL,
    PRIMARY KEY (signing_key, nonce));
CREATE INDEX IF NOT EXISTS request_nonces_by_sent ON request_nonces (sent);
CREATE INDEX IF NOT EXISTS request_nonces_by_key ON request_nonces (signing_key, sent);
CREATE TABLE IF NOT EXISTS request_floor (signing_key TEXT PRIMARY KEY, sent REAL NOT NULL);
"""

# The same tables and constraints; seq has no generator of its own (version 2 adds the
# counter, and the two always run together on a new PostgreSQL database).
_V1_POSTGRES = """
CREATE TABLE IF NOT EXISTS networks (name TEXT COLLATE "C" PRIMARY KEY, body BYTEA NOT NULL);
CREATE TABLE IF NOT EXISTS access_keys (
    id TEXT COLLATE "C" PRIMARY KEY, network TEXT COLLATE "C" NOT NULL,
    secret_hash TEXT COLLATE "C" NOT NULL UNIQUE, body BYTEA NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (
    id TEXT COLLATE "C" PRIMARY KEY, network TEXT COLLATE "C" NOT NULL,
    name TEXT COLLATE "C" NOT NULL, signing_key TEXT COLLATE "C" NOT NULL UNIQUE,
    body BYTEA NOT NULL, UNIQUE (network, name));
CREATE TABLE IF NOT EXISTS dns_records (
    network TEXT COLLATE "C" NOT NULL, name TEXT COLLATE "C" NOT NULL,
    rtype TEXT COLLATE "C" NOT NULL, value TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (network, name, rtype, value));
CREATE TABLE IF NOT EXISTS events (
    seq BIGINT PRIMARY KEY, network TEXT COLLATE "C" NOT NULL, body BYTEA NOT NULL);
CREATE INDEX IF NOT EXISTS events_by_network ON events (network, seq);
CREATE TABLE IF NOT EXISTS event_trim (network TEXT COLLATE "C" PRIMARY KEY, upto BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS request_nonces (
    signing_key TEXT COLLATE "C" NOT NULL, nonce TEXT COLLATE "C" NOT NULL,
    sent DOUBLE PRECISION NOT NULL, PRIMARY KEY (signing_key, nonce));
CREATE INDEX IF NOT EXISTS request_nonces_by_sent ON request_nonces (sent);
CREATE INDEX IF NOT EXISTS request_nonces_by_key ON request_nonces (signing_key, sent);
CREATE TABLE IF NOT EXISTS request_floor (
    signing_key TEXT COLLATE "C" PRIMARY KEY, sent DOUBLE PRECISION NOT NULL);
"""

# Version 2: what the rules rely on becomes a constraint, so two replicas can never
# store one address (or one WireGuard or probe key) twice in a network, even if a rule
# were bypassed; and the log's last seq moves out of sqlite_sequence.
_V2_COLUMNS = """
ALTER TABLE nodes ADD COLUMN ipv4 TEXT{c};
ALTER TABLE nodes ADD COLUMN ipv6 TEXT{c};
ALTER TABLE nodes ADD COLUMN wg_public_key TEXT{c};
ALTER TABLE nodes ADD COLUMN probe_public_key TEXT{c};
"""
_V2_CONSTRAINTS = """
CREATE UNIQUE INDEX nodes_ipv4 ON nodes (network, ipv4);
CREATE UNIQUE INDEX nodes_ipv6 ON nodes (network, ipv6);
CREATE UNIQUE INDEX nodes_wg_public_key ON nodes (network, wg_public_key);
CREATE UNIQUE INDEX nodes_probe_public_key ON nodes (network, probe_public_key);
CREATE TABLE event_counter (id INTEGER PRIMARY KEY CHECK (id = 1), seq BIGINT NOT NULL);
"""
# The counter starts at the last seq ever handed out: AUTOINCREMENT kept it in
# sqlite_sequence even when the newest events were deleted with their network.
_V2_COUNTER_SQLITE = """
INSERT INTO event_counter (id, seq) SELECT 1, COALESCE(MAX(s), 0) FROM (
    SELECT MAX(seq) AS s FROM events UNION ALL
    SELECT seq FROM sqlite_sequence WHERE name = 'events');
"""
_V2_COUNTER_POSTGRES = "INSERT INTO event_counter (id, seq) SELECT 1, COALESCE(MAX(seq), 0) FROM events;"

# Version 3: relay allocations shared by the replicas on one PostgreSQL (issue #19). A
# replica heartbeats its ``replicas`` row; an allocation row names its owning replica
# and is live while that replica is (signal_server/relay/registry.py). One row per
# node pair (node_a < node_b) in a network: the key is what keeps two replicas from
# both making one. SQLite gets the tables too (one schema, one conformance suite),
# though one server per file never needs them.
_V3 = """
CREATE TABLE replicas (id TEXT{c} PRIMARY KEY, heartbeat {real} NOT NULL);
CREATE TABLE relay_allocations (
    network TEXT{c} NOT NULL, node_a TEXT{c} NOT NULL, node_b TEXT{c} NOT NULL,
    id TEXT{c} NOT NULL UNIQUE, owner TEXT{c} NOT NULL, created {real} NOT NULL,
    refreshed {real} NOT NULL, body {blob} NOT NULL, PRIMARY KEY (network, node_a, node_b));
CREATE INDEX relay_allocations_by_owner ON relay_allocations (owner);
"""

_NODE = msgspec.json.Decoder(api.Node)


def node_columns(node: api.Node) -> tuple[str | None, str | None, str, str]:
    """The columns of ``nodes`` that copy fields of its body, for the constraints."""
    return node.ipv4, node.ipv6, node.wg_public_key, node.probe_public_key


def _fill_node_columns(db: Database) -> None:
    for node_id, body in db.execute("SELECT id, body FROM nodes").fetchall():
        node = decode_row("nodes", body, _NODE)
        db.execute("UPDATE nodes SET ipv4 = ?, ipv6 = ?, wg_public_key = ?, "
                   "probe_public_key = ? WHERE id = ?", (*node_columns(node), node_id))


# Version 3: the expiry sweep (every 0.5 s on every replica) finds expired nodes by an
# index instead of decoding every node's body; at 10,000 nodes the full scan cost a
# replica ~0.2 s of its one store thread each sweep, and fan-out waited behind it.
_V4_COLUMN = "ALTER TABLE nodes ADD COLUMN expires_at {real}"
_V4_INDEX = "CREATE INDEX nodes_by_expiry ON nodes (expires_at) WHERE expires_at IS NOT NULL"


def _fill_node_expiry(db: Database) -> None:
    for node_id, body in db.execute("SELECT id, body FROM nodes").fetchall():
        node = decode_row("nodes", body, _NODE)
        if node.expires_at is not None:
            db.execute("UPDATE nodes SET expires_at = ? WHERE id = ?", (node.expires_at, node_id))


@dataclass(frozen=True)
class Migration:
    version: int
    steps: dict[Dialect, tuple[Step, ...]]


MIGRATIONS = (
    Migration(1, {"sqlite": (_V1_SQLITE,), "postgresql": (_V1_POSTGRES,)}),
    Migration(2, {
        "sqlite": (_V2_COLUMNS.format(c=""), _fill_node_columns, _V2_CONSTRAINTS,
                   _V2_COUNTER_SQLITE),
        "postgresql": (_V2_COLUMNS.format(c=' COLLATE "C"'), _fill_node_columns,
                       _V2_CONSTRAINTS, _V2_COUNTER_POSTGRES),
    }),
    Migration(3, {
        "sqlite": (_V3.format(c="", real="REAL", blob="BLOB"),),
        "postgresql": (_V3.format(c=' COLLATE "C"', real="DOUBLE PRECISION", blob="BYTEA"),),
    }),
    Migration(4, {
        "sqlite": (_V4_COLUMN.format(real="REAL"), _fill_node_expiry, _V4_INDEX),
        "postgresql": (_V4_COLUMN.format(real="DOUBLE PRECISION"), _fill_node_expiry,
                       _V4_INDEX),
    }),
)
LATEST = MIGRATIONS[-1].version

_VERSION_TABLE = {
    "sqlite": "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)",
    "postgresql": "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, "
                  "applied_at DOUBLE PRECISION NOT NULL)",
}


def schema_version(db: Database) -> int:
    if not db.table_exists("schema_version"):
        return 0
    (version,) = db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()
    return int(version)


def migrate(db: Database) -> int:
    """Applies every migration the database lacks, in one transaction (a failed one
    changes nothing); returns the version found. Two replicas starting at once take
    turns: the transaction is a write transaction."""
    version = 0
    try:
        with db.transaction():
            found = schema_version(db)
            if found > LATEST:
                raise ConfigError(f"the store {db.name} has schema version {found}, newer "
                                  f"than this signal-server knows ({LATEST}): upgrade it")
            if not db.table_exists("schema_version"):
                db.execute(_VERSION_TABLE[db.dialect])
            for migration in MIGRATIONS[found:]:
                version = migration.version
                for step in migration.steps[db.dialect]:
                    if callable(step):
                        step(db)
                        continue
                    for statement in step.split(";"):
                        if statement.strip():
                            db.execute(statement)
                db.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                           (version, time.time()))
    except DuplicateRow as exc:
        raise ConfigError(f"the store {db.name} cannot take schema version {version}: its "
                          f"nodes table breaks a rule it now enforces ({exc})") from exc
    except db.error as exc:
        raise ConfigError(f"the store {db.name} cannot take schema version {version}: "
                          f"{' '.join(str(exc).split())}") from exc
    return found
