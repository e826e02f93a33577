"""The fault suite (issue #14): real ``signal-server`` and ``punchd --wg-backend fake``
processes, hurt on purpose.

Each fault asserts the issue's bar: nothing committed is lost, no ghost node, and every
node is back on its event stream within 2 s of the restarted server's ready line.
Run with ``-s`` to see one ``FAULT ...`` line of figures per test (docs/reliability.md
records them). Everything is on loopback; every process is ended by PID.
"""

from __future__ import annotations

import random
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel
from dnslib import DNSRecord
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from netns_tests.lab.faults import (
    FaultNode,
    FaultServer,
    backup,
    dump,
    figures,
    integrity,
    peer_counts,
    report,
    times_back_on_stream,
    wait_until,
)
from punchd.errors import APIError, ControlError, ServerUnreachable
from punchd.serverapi import ServerClient
from punchd.wire import api
from punchd.wire.signing import b64
from punchd.wire.token import decode_token

BACK_S = 2.0  # the bar: on a stream within 2 s of the server being ready
NET, CIDR = "f", "198.19.0.0/22"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[FaultServer]:
    srv = FaultServer(tmp_path / "server")
    try:
        srv.start()
        yield srv
    finally:
        srv.close()


@pytest.fixture
def make_node(tmp_path: Path) -> Iterator[Any]:
    started: list[FaultNode] = []

    def make(name: str, **kw: Any) -> FaultNode:
        node = FaultNode(tmp_path, name, **kw)
        started.append(node)
        return node.start()

    try:
        yield make
    finally:
        for node in started:
            node.close()


def streaming_nodes(server: FaultServer, make_node: Any, count: int, prefix: str = "n"
                    ) -> tuple[str, list[FaultNode]]:
    """``count`` nodes joined to NET, each on its stream and seeing all the others; and the
    network's join token."""
    token = server.create_network(NET, CIDR)
    nodes = [make_node(f"{prefix}{i}") for i in range(count)]
    for node in nodes:
        node.join(token)
    wait_until("every node on a stream", lambda: all(n.connected(NET) for n in nodes), 10)
    wait_until("every node sees every other",
               lambda: set(peer_counts(nodes, NET).values()) == {count - 1}, 10)
    return token, nodes


def assert_back(fault: str, back: dict[str, float | None], **extra: object) -> None:
    report(fault, nodes=len(back), **figures(back), **extra)
    late = {name: t for name, t in back.items() if t is None or t > BACK_S}
    assert not late, f"{fault}: not back on a stream within {BACK_S} s of ready: {late}"


# -- 1. kill -9 during a join storm ----------------------------------------------------------

STORM_JOINS, STORM_CLIENTS = 60, 10
KILL_AFTER = (15, 30, 45)  # answered joins before each kill -9


class StormClient:
    """One joining node: it keeps its keys and retries a join whose answer it lost."""

    def __init__(self, i: int) -> None:
        self.name = f"s{i}"
        self.signing = SigningKey.generate()
        self.wg = b64(bytes(PrivateKey.generate().public_key))
        self.answer: api.JoinResponse | None = None
        self.error: str | None = None
        self.attempts = 0

    @property
    def signing_key(self) -> str:
        return b64(bytes(self.signing.verify_key))

    async def join(self, url: str, token: str, deadline: float) -> None:
        client = ServerClient(url, self.signing, timeout=5)
        try:
            while trio.current_time() < deadline:
                self.attempts += 1
                try:
                    self.answer = await client.join(
                        decode_token(token), name=self.name, wg_public_key=self.wg,
                        probe_public_key=self.wg, listen_port=51820)
                    return
                except ServerUnreachable:
                    await trio.sleep(random.uniform(0.02, 0.1))  # the server is restarting
                except APIError as exc:  # a final answer: a client cannot do better
                    self.error = f"{exc.status} {exc}"
                    return
            self.error = "no answer before the deadline"
        finally:
            await client.aclose()


def test_kill_9_during_join_storm(server: FaultServer) -> None:
    token = server.create_network(NET, CIDR)
    clients = [StormClient(i) for i in range(STORM_JOINS)]
    kills: list[int] = []  # per kill, joins committed but not answered at that moment
    db = sqlite3.connect(f"file:{server.db}?mode=ro", uri=True, timeout=10)

    def committed() -> int:
        return int(db.execute("SELECT COUNT(*) FROM nodes").fetchone()[0])

    async def storm() -> None:
        deadline = trio.current_time() + 40
        limiter = trio.CapacityLimiter(STORM_CLIENTS)

        async def one(c: StormClient) -> None:
            async with limiter:
                await c.join(server.url, token, deadline)

        async def killer() -> None:
            for after in KILL_AFTER:
                # Polled, not an Event: the count is read against the store's below.
                while sum(c.answer is not None for c in clients) < after:  # noqa: ASYNC110
                    await trio.sleep(0.005)
                # Kill in the window that matters: a join is committed (the store has more
                # nodes than clients have answers) but its answer is not out yet.
                give_up = trio.current_time() + 5
                while committed() <= sum(c.answer is not None for c in clients) \
                        and trio.current_time() < give_up:
                    await trio.lowlevel.checkpoint()
                kills.append(committed() - sum(c.answer is not None for c in clients))
                await trio.to_thread.run_sync(server.kill9)
                await trio.to_thread.run_sync(server.start)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(killer)
            for c in clients:
                nursery.start_soon(one, c)

    try:
        trio.run(storm)
    finally:
        db.close()
    listed = {n["signing_key"]: n for n in server.nodes(NET)}
    held = {c.signing_key: c for c in clients}
    answered = [c for c in clients if c.answer is not None]
    lost = [c.name for c in answered if c.signing_key not in listed]
    ghosts = [n["name"] for key, n in listed.items()
              if key not in held or held[key].answer is None]
    wrong = [c.name for c in answered if c.answer and c.signing_key in listed
             and (listed[c.signing_key]["id"], listed[c.signing_key]["ipv4"])
             != (c.answer.node.id, c.answer.node.ipv4)]
    addresses = [n["ipv4"] for n in listed.values()]
    check = integrity(server.db)
    report("kill-9-join-storm", joins=STORM_JOINS, kills=len(kills),
           committed_unanswered_at_kills="/".join(map(str, kills)),
           retries=sum(c.attempts - 1 for c in clients), answered=len(answered),
           lost=len(lost), ghosts=len(ghosts), refused=sum(c.error is not None for c in clients),
           duplicate_addresses=len(addresses) - len(set(addresses)), integrity=check)
    assert not lost, f"answered 2xx but not in node list: {lost}"
    assert not ghosts, (f"nodes no client holds an answer for (ghosts): {ghosts}; client "
                        f"errors: {dump({c.name: c.error for c in clients if c.error})}")
    assert not wrong, f"listed with another id/address than answered: {wrong}"
    assert len(addresses) == len(set(addresses)), f"duplicate addresses: {sorted(addresses)}"
    assert len(answered) == STORM_JOINS, \
        f"joins never answered 2xx: {dump({c.name: c.error for c in clients if c.error})}"
    assert check == "ok"


# -- 2. restart with nodes streaming ---------------------------------------------------------

@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_restart_with_nodes_streaming(server: FaultServer, make_node: Any, how: str) -> None:
    _, nodes = streaming_nodes(server, make_node, 6)
    before = {n["name"]: (n["id"], n["ipv4"]) for n in server.nodes(NET)}
    if how == "sigterm":
        took = server.stop()
    else:
        server.kill9()
        took = 0.0
    wait_until("every node noticed the server went away",
               lambda: not any(n.connected(NET) for n in nodes), 10)
    ready = server.start()
    back = times_back_on_stream(nodes, NET, ready)
    after = {n["name"]: (n["id"], n["ipv4"]) for n in server.nodes(NET)}
    assert_back(f"restart-{how}", back, restarts=1, stop_s=f"{took:.2f}",
                lost=len(set(before) - set(after)), ghosts=len(set(after) - set(before)))
    assert after == before
    assert all(n.alive() for n in nodes)
    assert set(peer_counts(nodes, NET).values()) == {len(nodes) - 1}
    assert integrity(server.db) == "ok"


# -- 3. SIGSTOP / SIGCONT ---------------------------------------------------------------------

STOP_S = 5.0


def test_sigstop_sigcont(server: FaultServer, make_node: Any) -> None:
    token, nodes = streaming_nodes(server, make_node, 4)
    newcomer = make_node("newcomer")
    outcome: dict[str, Any] = {}

    def join_while_stopped() -> None:
        try:
            outcome["answer"] = newcomer.join(token)
        except ControlError as exc:
            outcome["error"] = str(exc)

    joiner = threading.Thread(target=join_while_stopped)
    server.signal(signal.SIGSTOP)
    try:
        time.sleep(STOP_S / 2)
        joiner.start()  # a join that meets a frozen server: it must land once it thaws
        time.sleep(STOP_S / 2)
    finally:
        server.signal(signal.SIGCONT)
    resumed = time.monotonic()
    back = times_back_on_stream(nodes, NET, resumed)
    joiner.join(40)
    everyone = [*nodes, newcomer]
    heard = None
    if "answer" in outcome:
        try:
            heard = wait_until("every node hears of the newcomer", lambda: set(
                peer_counts(everyone, NET).values()) == {len(nodes)}, 10)
        except AssertionError:
            heard = None
    listed = {n["name"] for n in server.nodes(NET)}
    assert_back("sigstop-5s", back, stops=1, stopped_s=STOP_S,
                join_during_stop=outcome.get("error", "answered"),
                newcomer_heard_s=f"{heard:.2f}" if heard is not None else "never",
                lost=len({n.name for n in everyone} - listed) if "answer" in outcome
                else len({n.name for n in nodes} - listed))
    assert "answer" in outcome, f"the join sent while the server was stopped: {outcome}"
    assert listed == {n.name for n in everyone}
    assert heard is not None, f"peers seen after SIGCONT: {peer_counts(everyone, NET)}"
    assert all(n.alive() for n in everyone)
    assert integrity(server.db) == "ok"


# -- 6. slowloris against meshdns TCP --------------------------------------------------------

IDLE_CONNS, QUERY_BAR_S = 200, 1.0


def tcp_query(port: int, qname: str, timeout: float) -> DNSRecord:
    q = DNSRecord.question(qname, "A")
    wire = q.pack()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(struct.pack("!H", len(wire)) + wire)  # RFC 1035 §4.2.2 length prefix
        buf = b""
        while len(buf) < 2 or len(buf) < 2 + struct.unpack("!H", buf[:2])[0]:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("meshdns closed the connection without an answer")
            buf += chunk
    answer = DNSRecord.parse(buf[2:])
    assert answer.header.id == q.header.id
    return answer


def test_slowloris_against_meshdns_tcp(tmp_path: Path) -> None:
    srv = FaultServer(tmp_path / "server", dns=True)
    idle: list[socket.socket] = []
    stop = threading.Event()
    sender: threading.Thread | None = None
    try:
        srv.start()
        assert srv.dns_port is not None
        port = srv.dns_port
        token = srv.create_network(NET, CIDR)

        async def join() -> api.JoinResponse:
            client = ServerClient(srv.url, SigningKey.generate())
            try:
                key = b64(bytes(PrivateKey.generate().public_key))
                return await client.join(decode_token(token), name="web", wg_public_key=key,
                                         probe_public_key=key, listen_port=51820)
            finally:
                await client.aclose()

        address = str(trio.run(join).node.ipv4).split("/")[0]
        qname = f"web.{NET}.mesh"
        wait_until("meshdns serves the node", lambda: any(
            str(rr.rdata) == address for rr in tcp_query(port, qname, 5).rr), 10)
        for _ in range(IDLE_CONNS):
            sock = socket.socket()
            sock.settimeout(0.1)  # a refused or unqueued connect costs 0.1 s, bounded
            try:
                sock.connect(("127.0.0.1", port))
            except OSError:
                sock.close()
                continue
            idle.append(sock)

        def slow_sender() -> None:  # a query's length prefix and body, one byte a second
            wire = DNSRecord.question(qname, "A").pack()
            data = struct.pack("!H", len(wire)) + wire
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            except OSError:
                return  # not even accepted: the queries below show what that costs
            with sock:
                for byte in data:
                    if stop.wait(1.0):
                        return
                    try:
                        sock.sendall(bytes([byte]))
                    except OSError:
                        return

        sender = threading.Thread(target=slow_sender)
        sender.start()
        took: list[float] = []
        failures: list[str] = []
        for _ in range(3):
            time.sleep(0.5)
            t0 = time.monotonic()
            try:
                answer = tcp_query(port, qname, QUERY_BAR_S)
                took.append(time.monotonic() - t0)
                if not any(str(rr.rdata) == address for rr in answer.rr):
                    failures.append(f"wrong answer {answer.rr}")
            except OSError as exc:
                failures.append(f"{type(exc).__name__} after {time.monotonic() - t0:.2f} s")
        report("slowloris-meshdns-tcp", idle_connections=len(idle), slow_senders=1,
               queries=3, answered=len(took),
               max_s=f"{max(took):.3f}" if took else "-", failures=len(failures))
        assert len(idle) == IDLE_CONNS, f"only {len(idle)} idle connections were accepted"
        assert not failures, f"TCP queries under slowloris: {failures}"
        assert max(took) < QUERY_BAR_S
        assert srv.proc is not None and srv.proc.poll() is None
    finally:
        stop.set()
        if sender is not None:
            sender.join(10)
        for sock in idle:
            sock.close()
        srv.close()


# -- 5. read-only state dir ------------------------------------------------------------------

def test_read_only_state_dir(server: FaultServer, make_node: Any, tmp_path: Path) -> None:
    state = tmp_path / "ro-state"
    state.mkdir()
    stop_node: Any = None
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(state)], check=True)
    try:
        token = server.create_network(NET, CIDR)
        other = server.create_network("g", "198.19.8.0/24")
        node = make_node("ro", state_dir=state)
        stop_node = node.close
        node.join(token)
        wait_until("on a stream", lambda: node.connected(NET), 10)
        subprocess.run(["mount", "-o", "remount,ro", str(state)], check=True)
        error = None
        try:
            node.call("join", timeout=30, token=other, name="ro")
        except ControlError as exc:
            error = str(exc)
        alive = node.alive()
        report("read-only-state-dir", joins_refused=int(error is not None), daemon_alive=alive,
               error=repr(error))
        assert error is not None and "\n" not in error and "Traceback" not in error, error
        assert "no answer" not in error and "without an answer" not in error, error
        assert alive, f"punchd died of a read-only state dir:\n{node.read_log()}"
        assert node.connected(NET) and "g" not in node.networks()
        assert server.nodes("g") == []  # the refused join changed nothing on the server
    finally:
        if stop_node is not None:
            stop_node()  # before the unmount: punchd holds files there
        subprocess.run(["umount", "-l", str(state)], check=False)


# -- 4. restore from a backup ----------------------------------------------------------------

def test_restore_from_backup(server: FaultServer, make_node: Any, tmp_path: Path) -> None:
    """The right outcome: nodes the restored server knows get a snapshot (their cursor is
    beyond its log, so silence would leave them on a stale view forever) and hear what
    happens next; nodes it does not know see 401 and say so in their status."""
    token, early = streaming_nodes(server, make_node, 3, prefix="e")
    copy = tmp_path / "backup.db"
    backup(server.db, copy)
    late = [make_node(f"l{i}") for i in range(2)]
    for node in late:
        node.join(token)
    everyone = [*early, *late]
    wait_until("all five see each other",
               lambda: set(peer_counts(everyone, NET).values()) == {4}, 10)
    server.stop()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{server.db}{suffix}").unlink(missing_ok=True)
    shutil.copy(copy, server.db)
    ready = server.start()
    back = times_back_on_stream(early, NET, ready)
    newcomer = make_node("after")
    newcomer.join(token)

    def view() -> dict[str, int]:
        return peer_counts(early, NET)

    def unknown(node: FaultNode) -> bool:
        st = node.status(NET)
        said = str(st["last_error"])
        return not st["server_connected"] and ("401" in said or "unknown node key" in said)

    try:
        snap_s: float | None = wait_until("early nodes see the restored membership",
                                          lambda: set(view().values()) == {3}, 5)
    except AssertionError:
        snap_s = None
    try:
        said_s: float | None = wait_until("late nodes say the server does not know them",
                                          lambda: all(unknown(n) for n in late), 5)
    except AssertionError:
        said_s = None
    listed = {n["name"] for n in server.nodes(NET)}
    assert_back("restore-backup", back, restores=1, backed_up_nodes=3, joined_after_backup=2,
                lost_from_backup=len({n.name for n in early} - listed),
                early_view_ok_s=f"{snap_s:.2f}" if snap_s is not None else f"never {view()}",
                late_told_401_s=f"{said_s:.2f}" if said_s is not None else "never")
    assert listed == {n.name for n in early} | {"after"}
    assert snap_s is not None, f"early nodes' peer counts (want 3 each): {view()}"
    assert said_s is not None, dump({n.name: n.status(NET)["last_error"] for n in late})
    assert integrity(server.db) == "ok"
