"""HAProxy in front of two ``signal-server`` replicas on one PostgreSQL; SIGKILL one (#19).

One throwaway PostgreSQL 15 cluster (tests/pgcluster.py), two ``signal-server serve
--database`` replicas sharing it (the second with the first's ``admin.token``), and
HAProxy (the configuration docs/deployment.md shows) in front. 50 fake nodes (no
WireGuard: punchd's :class:`ServerClient` joins and holds the SSE stream) stay on
their streams through HAProxy while new nodes join continuously; then one replica gets
SIGKILL. The issue's bar:

- every node whose stream broke is back on a stream within 2 s of the kill (its first
  event on the new stream, which the continuous joins make prompt);
- no event lost: each stream resumes by cursor, and the sequence numbers every node
  saw are exactly the network's event log after its starting cursor, no gap, no
  duplicate, no snapshot in between;
- no committed join lost: every join that got a 2xx answer is in the store afterwards.

The nodes reconnect the way punchd's daemon does (``NetworkDaemon._stream_loop``: full
jitter, its constants). Everything is on loopback in the root namespace (the test needs
no NAT); every process is ended by PID, also when the test fails. Run with ``-s`` for
one ``FAULT`` line of figures.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import trio
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from netns_tests.lab.faults import FaultServer, end, pct, report
from punchd.daemon.network import BACKOFF_MAX_S, BACKOFF_MIN_S
from punchd.errors import APIError, ServerUnreachable
from punchd.serverapi import ServerClient
from punchd.wire import api
from punchd.wire.addr import Addr, format_addr
from punchd.wire.signing import b64
from punchd.wire.token import JoinToken, decode_token
from signal_server.store import open_store
from tests.conftest import unheld_port
from tests.pgcluster import PgCluster, find_bindir

NODES = 50
BACK_S = 2.0  # the bar: back on a stream within 2 s of the kill
NET, CIDR = "ha", "10.64.0.0/16"
JOIN_EVERY_S = 0.1  # the continuous joins: ~10/s, each an event on all 50 streams
STREAMS_UP_S = 20.0  # bound on all 50 streams opening
STEADY_S = 1.0  # joins and streams running before the kill
AFTER_KILL_S = 3.0  # joins keep running this long after it
SETTLE_S = 15.0  # bound on waiting for every node to catch up with the log
READY_S = 20.0  # bound on HAProxy seeing both replicas up


def haproxy_config(listen: Addr, backends: list[Addr], stats_socket: Path) -> str:
    """The configuration of docs/deployment.md (keep the two the same).

    Health checks every 200 ms, two misses and a replica is out: a dead one is dropped
    in ~0.4 s. Until then ``retries`` + ``redispatch`` send a refused connection to the
    other replica (HAProxy retries only failed connects by default, so a POST that
    reached a replica is never sent twice); ``timeout connect`` is short because it is
    also the pause before such a retry. ``leastconn`` spreads the long-lived streams;
    ``timeout server``/``client`` stay above the 10 s SSE heartbeat.
    """
    servers = "\n".join(f"    server r{i} {format_addr(addr)} check"
                        for i, addr in enumerate(backends))
    return f"""\
global
    maxconn 4096
    stats socket {stats_socket} mode 600 level user
    log stdout format raw local0

defaults
    mode http
    log global
    option httplog
    option logasap  # SSE streams last: log at the answer, not at the end
    timeout connect 250ms
    timeout client 60s
    timeout server 60s
    timeout tunnel 1h
    timeout http-request 10s
    retries 3
    option redispatch 1

frontend signal
    bind {format_addr(listen)}
    default_backend replicas

backend replicas
    balance leastconn
    option httpchk GET /api/v1/health
    http-check expect status 200
    default-server inter 200ms fall 2 rise 2
{servers}
"""


def haproxy_stat(stats_socket: Path) -> dict[str, tuple[str, int]]:
    """Each replica's status (UP/DOWN) and current connections, from HAProxy's stats."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        sock.connect(str(stats_socket))
        sock.sendall(b"show stat\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    lines = b"".join(chunks).decode().splitlines()
    header = lines[0].lstrip("# ").split(",")
    out: dict[str, tuple[str, int]] = {}
    for line in lines[1:]:
        row = dict(zip(header, line.split(","), strict=False))
        if row.get("pxname") == "replicas" and row.get("svname", "").startswith("r"):
            out[row["svname"]] = (row["status"], int(row["scur"] or 0))
    return out


def stream_faults(seen: list[int], log: list[int], after: int, upto: int) -> list[str]:
    """What is wrong with the seqs a node saw, against the network's log in (after, upto]."""
    faults = []
    if any(b <= a for a, b in itertools.pairwise(seen)):
        faults.append("seqs not strictly increasing (a duplicate or a rewind)")
    want = [s for s in log if after < s <= upto]
    got = set(seen)
    missing = [s for s in want if s not in got]
    extra = sorted(got - set(log))
    if missing:
        faults.append(f"{len(missing)} events never seen, first {missing[:5]}")
    if extra:
        faults.append(f"seqs not in the log {extra[:5]}")
    return faults


def test_stream_faults_catches_a_gap_a_duplicate_and_an_invention() -> None:
    log = [3, 5, 6, 9]
    assert stream_faults([5, 6, 9], log, after=3, upto=9) == []
    assert stream_faults([5, 9], log, after=3, upto=9) == ["1 events never seen, first [6]"]
    assert stream_faults([5, 6, 6, 9], log, after=3, upto=9)[0].startswith("seqs not strictly")
    assert stream_faults([5, 6, 7, 9], log, after=3, upto=9) == ["seqs not in the log [7]"]


# -- the pieces ------------------------------------------------------------------------

@dataclass
class Deployment:
    db_url: str
    replicas: list[FaultServer]
    url: str  # HAProxy's
    stats_socket: Path


@contextlib.contextmanager
def open_deployment(root: Path) -> Iterator[Deployment]:
    haproxy_bin = shutil.which("haproxy")
    bindir = find_bindir()
    if haproxy_bin is None or bindir is None:
        pytest.skip("needs haproxy and PostgreSQL's binaries (scripts/setup installs both)")
    cluster = PgCluster(bindir)
    replicas: list[FaultServer] = []
    haproxy: subprocess.Popen[bytes] | None = None
    try:
        cluster.start()
        db_url = cluster.url()
        listen = unheld_port()  # HAProxy's; the replicas put it into join tokens
        public = f"http://127.0.0.1:{listen}"
        for i in range(2):
            data = root / f"replica{i}" / "data"
            data.mkdir(parents=True)
            if replicas:  # one admin token for the whole deployment
                shutil.copy(replicas[0].data_dir / "admin.token", data / "admin.token")
            replica = FaultServer(data, extra=("--database", db_url, "--public-url", public))
            replicas.append(replica)  # before start: closed even if the start fails
            replica.start()
        stats_socket = root / "haproxy.sock"
        config = root / "haproxy.cfg"
        config.write_text(haproxy_config(("127.0.0.1", listen),
                                         [("127.0.0.1", r.port) for r in replicas],
                                         stats_socket))
        with (root / "haproxy.log").open("wb") as out:
            haproxy = subprocess.Popen([haproxy_bin, "-db", "-f", str(config)],
                                       stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + READY_S
        while True:
            with contextlib.suppress(OSError, IndexError):
                status = haproxy_stat(stats_socket)
                if [s for s, _ in status.values()] == ["UP", "UP"]:
                    break
            if haproxy.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("HAProxy did not see both replicas up:\n"
                                     + (root / "haproxy.log").read_text()[-2000:])
            time.sleep(0.05)
        yield Deployment(db_url, replicas, public, stats_socket)
    finally:
        end(haproxy)
        for replica in replicas:
            replica.close()
        cluster.stop()


@dataclass
class Life:
    """One stream of a node: when it opened, its first event, when it ended."""

    opened: float
    first_event: float | None = None
    ended: float | None = None


class Moved:
    """Wakes whoever waits whenever any node's cursor moves."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def tick(self) -> None:
        self._event.set()
        self._event = trio.Event()

    async def wait(self) -> None:
        await self._event.wait()


@dataclass
class FakeNode:
    name: str
    client: ServerClient
    start: int  # the cursor it first streamed from
    cursor: int
    moved: Moved
    seen: list[int] = field(default_factory=list)
    snapshots: int = 0
    lives: list[Life] = field(default_factory=list)

    async def hold(self, rng: random.Random) -> None:
        """Stay on the stream, resuming by cursor: NetworkDaemon._stream_loop's way."""
        backoff = BACKOFF_MIN_S
        while True:
            life: Life | None = None
            try:
                async with self.client.events(since=self.cursor) as stream:
                    life = Life(opened=trio.current_time())
                    self.lives.append(life)
                    self.moved.tick()
                    backoff = BACKOFF_MIN_S
                    async for event in stream:
                        if life.first_event is None:
                            life.first_event = trio.current_time()
                        if isinstance(event, api.Snapshot):
                            self.snapshots += 1  # a resume by cursor never needs one
                        else:
                            self.seen.append(event.seq)
                        self.cursor = event.seq
                        self.moved.tick()
            except (ServerUnreachable, APIError):
                pass
            finally:
                if life is not None:
                    life.ended = trio.current_time()
            await trio.sleep(rng.uniform(0, backoff))
            backoff = min(BACKOFF_MAX_S, backoff * 2)


async def join(url: str, token: JoinToken, name: str) -> tuple[ServerClient, api.JoinResponse]:
    client = ServerClient(url, SigningKey.generate(), timeout=10)
    try:
        joined = await client.join(
            token, name=name, listen_port=51820,
            wg_public_key=b64(bytes(PrivateKey.generate().public_key)),
            probe_public_key=b64(bytes(PrivateKey.generate().public_key)))
    except BaseException:
        with trio.CancelScope(shield=True):
            await client.aclose()
        raise
    return client, joined


@dataclass
class Outcome:
    nodes: list[FakeNode]
    kill_at: float
    end_at: float  # when the test ended every stream
    committed: list[str]  # ids of the joins answered 2xx
    after_kill: int  # how many of them were answered after the kill
    refused: int  # joins that failed (transport or 5xx) around the kill


async def scenario(dep: Deployment) -> Outcome:
    token_file = dep.replicas[0].data_dir / "admin.token"
    headers = {"authorization": f"Bearer {token_file.read_text().strip()}"}
    async with httpx.AsyncClient(base_url=dep.url + "/api/v1", headers=headers,
                                 timeout=10) as admin:
        resp = await admin.post("/networks", json={"name": NET, "ipv4_cidr": CIDR})
        assert resp.status_code == 201, resp.text
        resp = await admin.post(f"/networks/{NET}/keys", json={})
        assert resp.status_code == 201, resp.text
        token = decode_token(resp.json()["token"])

    nodes: list[FakeNode] = []
    committed: list[str] = []
    refused = 0
    answered: list[float] = []  # when each continuous join was answered 2xx
    rng = random.Random(19)
    moved = Moved()
    try:
        limiter = trio.CapacityLimiter(8)

        async def first_join(i: int) -> None:
            async with limiter:
                client, joined = await join(dep.url, token, f"n{i}")
                committed.append(joined.node.id)
                snap = await client.get_state()
                nodes.append(FakeNode(f"n{i}", client, snap.seq, snap.seq, moved))

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for i in range(NODES):
                    nursery.start_soon(first_join, i)

        async def joiner(stop: trio.Event) -> None:
            nonlocal refused
            k = 0
            while not stop.is_set():
                k += 1
                try:
                    client, joined = await join(dep.url, token, f"j{k}")
                except (ServerUnreachable, APIError):
                    refused += 1  # in flight at the kill; if it committed, it is in the store
                else:
                    committed.append(joined.node.id)
                    answered.append(trio.current_time())
                    await client.aclose()
                with trio.move_on_after(JOIN_EVERY_S):
                    await stop.wait()

        with trio.fail_after(STEADY_S + AFTER_KILL_S + SETTLE_S + STREAMS_UP_S + 30):
            async with trio.open_nursery() as nursery:
                for node in nodes:
                    nursery.start_soon(node.hold, random.Random(rng.random()))
                stop = trio.Event()
                nursery.start_soon(joiner, stop)
                with trio.move_on_after(STREAMS_UP_S):
                    while not all(n.lives for n in nodes):
                        await moved.wait()
                assert all(n.lives for n in nodes), "not every node got on a stream"
                await trio.sleep(STEADY_S)
                status = await trio.to_thread.run_sync(haproxy_stat, dep.stats_socket)
                assert sorted(s for s, _ in status.values()) == ["UP", "UP"]
                os.kill(dep.replicas[0].pid, signal.SIGKILL)
                kill_at = trio.current_time()
                await trio.sleep(AFTER_KILL_S)
                stop.set()
                # Every node catches up with the last event of the log, bounded.
                last = await trio.to_thread.run_sync(last_seq_of, dep.db_url)
                with trio.move_on_after(SETTLE_S):
                    while min(n.cursor for n in nodes) < last:
                        await moved.wait()
                end_at = trio.current_time()
                nursery.cancel_scope.cancel()
        after_kill = sum(1 for t in answered if t > kill_at)
        return Outcome(nodes, kill_at, end_at, committed, after_kill, refused)
    finally:
        with trio.CancelScope(shield=True):
            for node in nodes:
                await node.client.aclose()


def last_seq_of(db_url: str) -> int:
    store = open_store(db_url)
    try:
        events = store.events_since(NET, 0, limit=100_000) or []
        return max(e.seq for e in events)
    finally:
        store.close()


def test_haproxy_two_replicas_sigkill_one(tmp_path: Path) -> None:
    with open_deployment(tmp_path) as dep:
        out = trio.run(scenario, dep)
        dep.replicas[0].proc.wait(timeout=10)  # type: ignore[union-attr]
        store = open_store(dep.db_url)
        try:
            log = [e.seq for e in store.events_since(NET, 0, limit=100_000) or []]
            stored = {n.id for n in store.list_nodes(NET)}
        finally:
            store.close()

    # Back on a stream: every node whose stream ended after the kill (and before the
    # test ended them all) has a next one; the gap is the kill to its first event there.
    gaps: list[float] = []
    reopen: list[float] = []
    lost: list[float] = []
    for node in out.nodes:
        for i, life in enumerate(node.lives):
            assert life.ended is not None
            if not out.kill_at <= life.ended < out.end_at:
                continue
            assert i + 1 < len(node.lives), f"{node.name} lost its stream and never got back"
            nxt = node.lives[i + 1]
            assert nxt.first_event is not None, f"{node.name}: no event on its new stream"
            lost.append(life.ended - out.kill_at)
            gaps.append(nxt.first_event - out.kill_at)
            reopen.append(nxt.opened - out.kill_at)
            break
    # leastconn spread the streams over both replicas: about half broke.
    assert NODES // 5 <= len(gaps) <= NODES - NODES // 5, f"{len(gaps)} streams broke"

    faults = {n.name: stream_faults(n.seen, log, n.start, log[-1])
              + ([f"{n.snapshots} snapshots"] if n.snapshots else []) for n in out.nodes}
    faults = {name: f for name, f in faults.items() if f}
    lost_joins = set(out.committed) - stored
    report("haproxy-sigkill", nodes=NODES, broken=len(gaps),
           back_max_ms=round(1000 * max(gaps)), back_p50_ms=round(1000 * pct(gaps, 50)),
           lost_max_ms=round(1000 * max(lost)), reopen_max_ms=round(1000 * max(reopen)), reopen_p50_ms=round(1000 * pct(reopen, 50)),
           joins_committed=len(out.committed), joins_after_kill=out.after_kill, joins_failed=out.refused, events=len(log),
           snapshots=sum(n.snapshots for n in out.nodes))
    assert max(gaps) <= BACK_S, f"back on a stream after {max(gaps):.2f} s"
    assert not faults, f"events lost or repeated: {faults}"
    assert not lost_joins, f"{len(lost_joins)} committed joins are not in the store"
    assert out.after_kill >= 5  # the joins really ran on, through the kill
