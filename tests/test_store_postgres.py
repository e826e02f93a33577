"""What only PostgreSQL has: several store instances (replicas) on one database.

The conformance suite (tests/test_store.py) runs every store rule on PostgreSQL too;
these tests add what SQLite cannot show: concurrent writers from two pools, start-up
races, connection failures, and the server process on a PostgreSQL URL.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from nacl.signing import SigningKey

from punchd.errors import ConfigError, Unauthorized
from punchd.wire import api
from punchd.wire.signing import b64
from signal_server import schema
from signal_server.db_postgres import redact
from signal_server.store import Store, open_store

from .conftest import BIN, reap, start_server_process, unheld_port
from .pgcluster import PgCluster, pg_cluster  # noqa: F401  (the session fixture)
from .test_store import key32

JOINS = 200
USES = 150


@pytest.fixture
def url(pg_cluster: PgCluster) -> Iterator[str]:  # noqa: F811
    with pg_cluster.fresh_schema() as fresh:
        yield fresh


def join_request(secret: str) -> tuple[api.JoinRequest, str]:
    signer = b64(bytes(SigningKey.generate().verify_key))
    return api.JoinRequest(access_key=secret, signing_key=signer, wg_public_key=key32(),
                           probe_public_key=key32()), signer


def test_concurrent_joins_on_two_replicas_never_share_an_address_or_overspend(url: str) -> None:
    replicas = [open_store(url), open_store(url)]  # two pools, as two servers would have
    try:
        replicas[0].create_network(api.NetworkCreate(name="net", ipv4_cidr="198.19.0.0/23",
                                                     ipv6_cidr="fd00:1::/64"))
        _, secret = replicas[1].create_access_key("net", api.AccessKeyCreate(uses=USES))
        requests = [join_request(secret) for _ in range(JOINS)]
        start = threading.Barrier(2 * 12)
        admitted: list[api.Node] = []
        refused: list[str] = []
        lock = threading.Lock()

        def one(store: Store, req: api.JoinRequest, signer: str) -> None:
            try:
                node = store.join(req, signer).node
            except Unauthorized as exc:
                with lock:
                    refused.append(exc.reason)
                return
            with lock:
                admitted.append(node)

        def worker(store: Store, share: list[tuple[api.JoinRequest, str]]) -> None:
            start.wait(timeout=30)  # every thread starts joining at the same moment
            for req, signer in share:
                one(store, req, signer)

        with ThreadPoolExecutor(max_workers=24) as pool:
            futures = [pool.submit(worker, replicas[i % 2], requests[i::24]) for i in range(24)]
            for f in futures:
                f.result(timeout=120)

        assert len(admitted) == USES and len(refused) == JOINS - USES
        assert set(refused) == {"access key has no uses left"}
        assert len({n.ipv4 for n in admitted}) == USES
        assert len({n.ipv6 for n in admitted}) == USES
        stored = replicas[1].list_nodes("net")
        assert sorted(n.id for n in stored) == sorted(n.id for n in admitted)
        assert len({n.ipv4 for n in stored}) == USES
        # The lowest free addresses, as one server would have handed them out.
        assert {n.ipv4 for n in stored} == {f"198.19.0.{i}/23" for i in range(1, USES + 1)}
        assert replicas[0].list_access_keys("net")[0].uses_left == 0
        events = replicas[0].events_since("net", 0, limit=10 * JOINS) or []
        added = [e for e in events if isinstance(e, api.PeerAdded)]
        assert len(added) == USES
        assert [e.seq for e in events] == sorted({e.seq for e in events})  # in order, no gap
    finally:
        for store in replicas:
            store.close()


def test_replicas_starting_at_once_migrate_once(url: str) -> None:
    stores: list[Store] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def opener() -> None:
        start.wait(timeout=30)
        try:
            store = open_store(url)
        except BaseException as exc:
            errors.append(exc)
            return
        stores.append(store)

    threads = [threading.Thread(target=opener) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    try:
        assert errors == [] and len(stores) == 4
        versions = stores[0].db.execute("SELECT version FROM schema_version ORDER BY version")
        assert [v for (v,) in versions] == [m.version for m in schema.MIGRATIONS]
    finally:
        for store in stores:
            store.close()


def test_an_unreachable_database_is_one_line_without_the_password(tmp_path: Path) -> None:
    url = f"postgresql://punchd:hunter2@/signal?host={tmp_path}"  # no server there
    with pytest.raises(ConfigError) as failed:
        open_store(url)
    message = str(failed.value)
    assert message.startswith("cannot open the store postgresql://punchd:***@/signal")
    assert "hunter2" not in message and "\n" not in message
    assert redact("postgresql://u@h/db") == "postgresql://u@h/db"


def test_a_database_url_that_is_not_one_is_one_line() -> None:
    with pytest.raises(ConfigError, match="cannot open the store"):
        open_store("postgresql://[::1/")


def test_serve_on_a_database_url_keeps_state_across_servers(url: str, tmp_path: Path) -> None:
    """Two servers in turn (one killed with -9) on one database see the same state."""
    data = tmp_path / "data"
    proc, port = start_server_process(data, "--database", url)
    try:
        token = (data / "admin.token").read_text().strip()
        with httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1", timeout=10,
                          headers={"authorization": f"Bearer {token}"}) as admin:
            resp = admin.post("/networks", json={"name": "office", "ipv4_cidr": "198.19.0.0/24"})
            assert resp.status_code == 201, resp.text
        proc.kill()
        proc.wait(timeout=10)
    finally:
        reap(proc)
    assert not (data / "signal.db").exists()  # nothing went to SQLite
    proc, port = start_server_process(data, "--database", url)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1", timeout=10,
                          headers={"authorization": f"Bearer {token}"}) as admin:
            assert [n["name"] for n in admin.get("/networks").json()] == ["office"]
    finally:
        reap(proc)


def test_serve_on_an_unreachable_database_is_one_line(tmp_path: Path) -> None:
    res = subprocess.run([str(BIN / "signal-server"), "serve", "--data-dir", str(tmp_path / "d"),
                          "--http", f"127.0.0.1:{unheld_port()}", "--database",
                          f"postgresql://x:secret@/db?host={tmp_path}"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot open the store" in lines[0], res.stderr
    assert "secret" not in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://u:pw@h:5/db", "postgresql://u:***@h:5/db"),
    ("postgres://u:p:w@[::1/db", "postgres://u:***@[::1/db"),
    ("postgresql://u@h/db?sslmode=require&password=x&a=b",
     "postgresql://u@h/db?sslmode=require&password=***&a=b"),
    ("postgresql:///db?host=/run/x", "postgresql:///db?host=/run/x"),
])
def test_redact(url: str, shown: str) -> None:
    assert redact(url) == shown
