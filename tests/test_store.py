"""The store's conformance suite: every test that takes ``store`` runs against an SQLite
file, an in-memory SQLite and a real PostgreSQL (tests/pgcluster.py; skipped, saying
why, where PostgreSQL is not installed)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from punchd.errors import ConfigError, Conflict, DuplicateRow, Invalid, NotFound, Unauthorized
from punchd.wire import api
from punchd.wire.signing import b64
from signal_server import schema
from signal_server import store as store_mod
from signal_server.store import Store, open_store

from .pgcluster import PgCluster, pg_cluster  # noqa: F401  (the session fixture)

BACKENDS = ["file", "memory", "postgresql"]


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "postgresql":
        cluster: PgCluster = request.getfixturevalue("pg_cluster")
        with cluster.fresh_schema() as url:
            s = open_store(url)
            yield s
            s.close()
        return
    s = Store(tmp_path / "s.db" if request.param == "file" else ":memory:")
    yield s
    s.close()


def key32() -> str:
    return b64(bytes(PrivateKey.generate().public_key))


def join(store: Store, secret: str, name: str | None = None) -> api.JoinResponse:
    signer = b64(bytes(SigningKey.generate().verify_key))
    req = api.JoinRequest(access_key=secret, signing_key=signer, wg_public_key=key32(),
                          probe_public_key=key32(), name=name)
    return store.join(req, signer)


def network(store: Store, name: str = "net", cidr: str = "198.19.0.0/24", **kw: object) -> api.Network:
    return store.create_network(api.NetworkCreate(name=name, ipv4_cidr=cidr, **kw))  # type: ignore[arg-type]


def test_networks_crud_and_overlap(store: Store) -> None:
    network(store)
    with pytest.raises(Conflict, match="exists"):
        network(store)
    with pytest.raises(Conflict, match="overlaps"):
        network(store, "other", "198.19.0.128/25")
    with pytest.raises(Invalid) as bad:
        network(store, "bad", "198.19.1.5/24")
    assert bad.value.field == "ipv4_cidr"
    network(store, "other", "198.19.1.0/24", ipv6_cidr="fd00:1::/64")
    assert [n.name for n in store.list_networks()] == ["net", "other"]
    store.delete_network("other")
    with pytest.raises(NotFound):
        store.get_network("other")


def test_join_allocates_unique_addresses_and_frees_them(store: Store) -> None:
    network(store, ipv6_cidr="fd00:1::/64")
    _, secret = store.create_access_key("net", api.AccessKeyCreate())
    a, b = join(store, secret, "a"), join(store, secret, "b")
    assert (a.node.ipv4, b.node.ipv4) == ("198.19.0.1/24", "198.19.0.2/24")
    assert b.node.ipv6 == "fd00:1::2/64"
    store.delete_node("net", "a")
    c = join(store, secret, "c")
    assert c.node.ipv4 == "198.19.0.1/24"  # freed address reused, never duplicated


def test_access_key_uses_and_expiry(store: Store) -> None:
    network(store)
    _, secret = store.create_access_key("net", api.AccessKeyCreate(uses=1))
    join(store, secret)
    with pytest.raises(Unauthorized, match="no uses left"):
        join(store, secret)
    _, expired = store.create_access_key("net", api.AccessKeyCreate(expires_in=1))
    signer = b64(bytes(SigningKey.generate().verify_key))
    req = api.JoinRequest(access_key=expired, signing_key=signer, wg_public_key=key32(),
                          probe_public_key=key32())
    import time
    with pytest.raises(Unauthorized, match="expired"):
        store.join(req, signer, now=time.time() + 5)
    with pytest.raises(Unauthorized, match="unknown access key"):
        join(store, "not-a-key")


def test_refused_join_changes_nothing(store: Store) -> None:
    network(store)
    _, secret = store.create_access_key("net", api.AccessKeyCreate(uses=2))
    join(store, secret, "dup")
    seq = store.last_seq()
    with pytest.raises(Conflict):
        join(store, secret, "dup")
    assert store.list_access_keys("net")[0].uses_left == 1  # the refused join used nothing
    assert store.last_seq() == seq


def test_use_count_exact_under_concurrent_joins(tmp_path: Path) -> None:
    store = Store(tmp_path / "c.db")
    network(store)
    _, secret = store.create_access_key("net", api.AccessKeyCreate(uses=5))
    ok: list[str] = []
    refused: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        try:
            res = join(store, secret)
            with lock:
                ok.append(res.node.ipv4 or "")
        except Unauthorized:
            with lock:
                refused.append("x")

    # The server serialises store calls through one worker thread; emulate that here.
    serial = threading.Lock()

    def serialised() -> None:
        with serial:
            worker()

    threads = [threading.Thread(target=serialised) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ok) == 5 and len(refused) == 7
    assert len(set(ok)) == 5
    store.close()


def test_renumbering_moves_every_node_and_emits_events(store: Store) -> None:
    network(store)
    _, secret = store.create_access_key("net", api.AccessKeyCreate())
    join(store, secret, "a")
    join(store, secret, "b")
    seq = store.last_seq()
    store.update_network("net", api.NetworkUpdate(ipv4_cidr="198.19.8.0/24"))
    assert {n.ipv4 for n in store.list_nodes("net")} == {"198.19.8.1/24", "198.19.8.2/24"}
    events = store.events_since("net", seq) or []
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["NetworkChanged", "PeerChanged", "PeerChanged"]


def test_events_resume_and_snapshot_when_trimmed(store: Store) -> None:
    network(store)
    _, secret = store.create_access_key("net", api.AccessKeyCreate())
    node = join(store, secret, "a").node
    first = store.last_seq()
    for _ in range(3):
        store.update_node(node.signing_key, api.NodeUpdate(listen_port=51821))
    events = store.events_since("net", first)
    assert events is not None and [e.seq for e in events] == sorted(e.seq for e in events)
    assert len(events) == 3
    retention = store_mod.EVENT_RETENTION
    for _ in range(retention + 5):
        store.update_node(node.signing_key, api.NodeUpdate(listen_port=51822))
    assert store.events_since("net", first) is None  # too far behind: snapshot instead
    assert store.events_since("net", store.last_seq() - 3) is not None


def test_dns_records(store: Store) -> None:
    network(store)
    store.add_dns_record("net", api.DnsRecord(name="WWW", rtype="A", value="198.19.0.9"))
    with pytest.raises(Conflict):
        store.add_dns_record("net", api.DnsRecord(name="www", rtype="A", value="198.19.0.9"))
    with pytest.raises(Invalid):
        store.add_dns_record("net", api.DnsRecord(name="x", rtype="AAAA", value="198.19.0.9"))
    assert [r.name for r in store.list_dns_records("net")] == ["www"]
    store.delete_dns_record("net", "www", "a")
    with pytest.raises(NotFound):
        store.delete_dns_record("net", "www", "A")


def test_punch_request_names_both_nodes(store: Store) -> None:
    network(store)
    _, secret = store.create_access_key("net", api.AccessKeyCreate())
    a = join(store, secret, "a").node
    b = join(store, secret, "b").node
    req = store.punch(a.signing_key, "b")
    assert req.nodes == (a.id, b.id)
    with pytest.raises(Invalid):
        store.punch(a.signing_key, "a")


def test_expired_nodes_are_removed_with_an_event(store: Store) -> None:
    network(store)
    _, secret = store.create_access_key("net", api.AccessKeyCreate())
    keep = join(store, secret, "keep").node
    temp = join(store, secret, "temp").node
    store.set_node_expiry("net", "temp", api.NodeExpiry(expires_in=60), now=1000.0)
    assert store.remove_expired_nodes(now=1059.0) == []
    seq = store.last_seq()
    assert store.remove_expired_nodes(now=1060.0) == ["net"]
    assert [n.name for n in store.list_nodes("net")] == ["keep"]
    (event,) = store.events_since("net", seq) or []
    assert isinstance(event, api.PeerRemoved) and event.node_id == temp.id
    store.set_node_expiry("net", "keep", api.NodeExpiry(expires_in=None))
    assert store.get_node("net", "keep").expires_at is None and keep.expires_at is None


def test_the_expiry_sweep_reads_only_expiring_nodes(store: Store) -> None:
    """Issue #19: the sweep runs every 0.5 s on every replica; it must not decode every
    node's body (at 10,000 nodes that held the store thread ~0.2 s per sweep)."""
    network(store)
    _, secret = store.create_access_key("net", api.AccessKeyCreate())
    still = join(store, secret, "still").node
    join(store, secret, "temp")
    store.set_node_expiry("net", "temp", api.NodeExpiry(expires_in=60), now=1000.0)
    # A body the sweep cannot decode: reading it at all would raise.
    store.db.execute("UPDATE nodes SET body = ? WHERE id = ?", (b"{}", still.id))
    assert store.remove_expired_nodes(now=1060.0) == ["net"]
    (left,) = store.db.execute("SELECT id FROM nodes").fetchall()
    assert left[0] == still.id


@pytest.mark.parametrize(("field", "cidr"), [
    ("ipv4_cidr", "127.0.0.0/24"), ("ipv4_cidr", "224.0.0.0/24"), ("ipv4_cidr", "169.254.0.0/24"),
    ("ipv4_cidr", "0.0.0.0/24"), ("ipv4_cidr", "240.0.0.0/24"), ("ipv4_cidr", "0.0.0.0/0"),
    ("ipv6_cidr", "ff02::/64"), ("ipv6_cidr", "fe80::/64"), ("ipv6_cidr", "::/64"),
    ("ipv6_cidr", "::ffff:0:0/120"),
])
def test_unusable_mesh_ranges_are_refused(store: Store, field: str, cidr: str) -> None:
    kw = {"ipv6_cidr": cidr} if field == "ipv6_cidr" else {"cidr": cidr}
    with pytest.raises(Invalid) as refused:
        network(store, **kw)
    assert refused.value.field == field
    assert store.list_networks() == []
    network(store)
    with pytest.raises(Invalid) as update:
        store.update_network("net", api.NetworkUpdate(**{field: cidr}))  # type: ignore[arg-type]
    assert update.value.field == field


def test_renumber_into_too_small_a_range_is_refused(store: Store) -> None:
    network(store)
    _, secret = store.create_access_key("net", api.AccessKeyCreate())
    for i in range(3):
        join(store, secret, f"n{i}")
    with pytest.raises(Conflict) as small:
        store.update_network("net", api.NetworkUpdate(ipv4_cidr="198.19.1.0/30"))
    assert small.value.field == "ipv4_cidr" and "room for 2" in small.value.reason
    assert store.get_network("net").ipv4_cidr == "198.19.0.0/24"  # nothing changed
    assert sorted(n.ipv4 or "" for n in store.list_nodes("net"))[0] == "198.19.0.1/24"


# -- what both backends promise beyond the API: migrations, constraints, hostile rows ---------

@pytest.fixture(params=["file", "postgresql"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Where a store lives, for tests that open it more than once."""
    if request.param == "postgresql":
        cluster: PgCluster = request.getfixturevalue("pg_cluster")
        with cluster.fresh_schema() as url:
            yield url
        return
    yield str(tmp_path / "s.db")


def test_reopening_keeps_everything_and_the_log_never_moves_back(target: str) -> None:
    store = open_store(target)
    network(store)
    _, secret = store.create_access_key("net", api.AccessKeyCreate())
    join(store, secret, "a")
    network(store, "gone", "198.19.5.0/24")
    store.update_network("gone", api.NetworkUpdate(require_approval=True))
    seq = store.last_seq()
    store.delete_network("gone")  # takes the newest event with it
    assert store.last_seq() == seq
    store.close()
    store = open_store(target)
    assert schema.schema_version(store.db) == schema.LATEST
    assert store.last_seq() == seq and [n.name for n in store.list_nodes("net")] == ["a"]
    join(store, secret, "b")
    assert store.last_seq() == seq + 1
    store.close()


def test_a_newer_schema_is_refused(target: str) -> None:
    store = open_store(target)
    store.db.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                     (schema.LATEST + 1, 0.0))
    store.close()
    with pytest.raises(ConfigError, match=f"schema version {schema.LATEST + 1}, newer"):
        open_store(target)


def test_a_network_row_that_does_not_decode_fails_the_start_naming_it(target: str) -> None:
    store = open_store(target)
    network(store)
    store.db.execute("UPDATE networks SET body = ?", (b"\x00garbage",))
    store.close()
    with pytest.raises(ConfigError, match="networks table holds a row that does not decode"):
        open_store(target)


def test_rows_that_do_not_decode_name_their_table(store: Store) -> None:
    network(store)
    _, secret = store.create_access_key("net", api.AccessKeyCreate())
    join(store, secret, "a")
    first = store.last_seq()
    store.update_network("net", api.NetworkUpdate(require_approval=True))
    for table, bad, call in [
        ("events", b"[1, 2]", lambda: store.events_since("net", first - 1)),
        ("nodes", b"\xff\xfe", lambda: store.list_nodes("net")),
        ("access_keys", b'{"id": 5}', lambda: store.list_access_keys("net")),
        ("networks", b"null", lambda: store.get_network("net")),
    ]:
        store.db.execute(f"UPDATE {table} SET body = ?", (bad,))
        with pytest.raises(ConfigError, match=f"the store's {table} table holds a row"):
            call()


def test_unique_constraints_back_the_rules(store: Store) -> None:
    """Were a rule ever bypassed (a race, a bug), the database still refuses a second
    owner of an address or key in one network."""
    network(store, ipv6_cidr="fd00:1::/64")
    network(store, "other", "198.19.1.0/24")
    _, secret = store.create_access_key("net", api.AccessKeyCreate())
    a = join(store, secret, "a").node
    insert = ("INSERT INTO nodes (id, network, name, signing_key, body, ipv4, ipv6, "
              "wg_public_key, probe_public_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
    for i, (ipv4, ipv6, wg, probe) in enumerate([
        (a.ipv4, None, key32(), key32()),
        (None, a.ipv6, key32(), key32()),
        (None, None, a.wg_public_key, key32()),
        (None, None, key32(), a.probe_public_key),
    ]):
        with pytest.raises(DuplicateRow):
            store.db.execute(insert, (f"x{i}", "net", f"x{i}", f"k{i}", b"{}", ipv4, ipv6,
                                      wg, probe))
    # Another network may use the same address and keys.
    store.db.execute(insert, ("y", "other", "y", "ky", b"{}", a.ipv4, None, a.wg_public_key,
                              a.probe_public_key))


def _downgrade_to_pre_migration(path: Path) -> None:
    """Make a file what releases before migrations left: version 1's tables only."""
    db = sqlite3.connect(path)
    db.executescript("""
        DROP INDEX nodes_by_expiry; ALTER TABLE nodes DROP COLUMN expires_at;
        DROP INDEX nodes_ipv4; DROP INDEX nodes_ipv6; DROP INDEX nodes_wg_public_key;
        DROP INDEX nodes_probe_public_key; DROP TABLE event_counter; DROP TABLE schema_version;
        DROP TABLE replicas; DROP TABLE relay_allocations;
        ALTER TABLE nodes DROP COLUMN ipv4; ALTER TABLE nodes DROP COLUMN ipv6;
        ALTER TABLE nodes DROP COLUMN wg_public_key; ALTER TABLE nodes DROP COLUMN probe_public_key;
    """)
    db.close()


def _tables(path: Path) -> list[tuple[str, str]]:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT name, sql FROM sqlite_master ORDER BY name").fetchall()
    finally:
        db.close()


def test_a_pre_migration_sqlite_file_opens_and_is_marked(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    fresh = tmp_path / "v1.db"
    db = sqlite3.connect(fresh)
    db.executescript(schema._V1_SQLITE)
    db.close()
    store = Store(path)
    network(store, ipv6_cidr="fd00:1::/64")
    _, secret = store.create_access_key("net", api.AccessKeyCreate(uses=5))
    a, b = join(store, secret, "a").node, join(store, secret, "b").node
    store.set_node_expiry("net", "b", api.NodeExpiry(expires_in=60), now=1000.0)
    network(store, "gone", "198.19.5.0/24")
    store.update_network("gone", api.NetworkUpdate(require_approval=True))
    seq = store.last_seq()
    store.delete_network("gone")
    store.close()
    _downgrade_to_pre_migration(path)
    assert _tables(path) == _tables(fresh)  # exactly the old shape

    store = Store(path)
    assert schema.schema_version(store.db) == schema.LATEST
    assert [n.id for n in store.list_nodes("net")] == [a.id, b.id]
    assert store.last_seq() == seq  # from sqlite_sequence: the deleted events count
    assert store.db.execute("SELECT expires_at FROM nodes WHERE id = ?",
                            (b.id,)).fetchone() == (1060.0,)  # version 4 filled it
    assert store.list_access_keys("net")[0].uses_left == 3
    assert store.db.execute("SELECT ipv4, wg_public_key FROM nodes WHERE id = ?",
                            (b.id,)).fetchone() == (b.ipv4, b.wg_public_key)
    assert join(store, secret, "c").node.ipv4 == "198.19.0.3/24"
    store.close()


def test_a_pre_migration_file_breaking_a_new_constraint_is_refused_untouched(
        tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    store = Store(path)
    network(store)
    _, secret = store.create_access_key("net", api.AccessKeyCreate())
    a, b = join(store, secret, "a").node, join(store, secret, "b").node
    store.close()
    _downgrade_to_pre_migration(path)
    db = sqlite3.connect(path)
    clash = msgspec.structs.replace(b, ipv4=a.ipv4)
    db.execute("UPDATE nodes SET body = ? WHERE id = ?", (msgspec.json.encode(clash), b.id))
    db.commit()
    db.close()
    before = _tables(path)
    with pytest.raises(ConfigError, match="cannot take schema version 2: its nodes table"):
        Store(path)
    assert _tables(path) == before  # the failed migration changed nothing


def test_touch_writes_last_seen_at_most_every_touch_interval(store: Store) -> None:
    network(store)
    _, secret = store.create_access_key("net", api.AccessKeyCreate())
    signer = b64(bytes(SigningKey.generate().verify_key))
    req = api.JoinRequest(access_key=secret, signing_key=signer, wg_public_key=key32(),
                          probe_public_key=key32(), name="a")
    joined = store.join(req, signer, now=1000.0).node
    assert joined.last_seen == 1000.0
    soon = 1000.0 + store_mod.TOUCH_EVERY_S - 1
    assert store.touch_node(signer, now=soon).last_seen == 1000.0  # fresh enough: no write
    later = 1000.0 + store_mod.TOUCH_EVERY_S
    assert store.touch_node(signer, now=later).last_seen == later
    assert store.get_node("net", "a").last_seen == later
    assert store.touch_node(signer, now=500.0).last_seen == 500.0  # the clock stepped back
    with pytest.raises(Unauthorized):
        store.touch_node(b64(bytes(SigningKey.generate().verify_key)), now=later)
