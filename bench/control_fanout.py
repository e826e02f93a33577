"""Control-plane fan-out: N simulated nodes in M networks on R replicas; how fast does news reach them?

Starts real ``signal-server`` replicas on loopback, on one SQLite file (one replica)
or one throwaway PostgreSQL cluster (``tests/pgcluster.py``; replicas hear each
other's writes through LISTEN/NOTIFY). Creates M networks and joins N nodes spread
evenly over them (no WireGuard: they only join and hold their SSE stream), each node
on replica ``i % R``. Then each *change* is one more node joining one network: for
every member stream of that network the delay from the join request's start to the
``peer_added`` on that stream. Reported per change and as the median over changes:
p50/p99/max to the last stream, the server CPU the change cost (every replica's, and
PostgreSQL's, from ``/proc/PID/stat``, less the idle rate measured just before), the
join rate and every replica's RSS.

Cost per change must follow the changed network's members, not all nodes:
``--nodes 10000 --networks 100`` and ``--nodes 100 --networks 1`` change a 100-node
network alike, and the figures should be close.

The client side is one trio process with raw sockets (an SSE stream is a request and
then bytes to scan; a change reaches only one network's streams, so the client's
work per change is that network's, too). Loopback only; bounded in count and time.

    python -m bench control [--nodes 1000] [--networks 10] [--replicas 1]
        [--database sqlite|postgresql] [--changes 5] [--quick] [--out bench/results/fanout.json]

Every run is kept in the JSON under its scenario (database, nodes, networks,
replicas) and the Markdown table beside it (same name, ``.md``) is redrawn from all.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
import trio
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from punchd.wire import api
from punchd.wire.signing import b64, sign_request
from punchd.wire.token import decode_token

BIN = Path(sys.executable).parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
JOIN_CONCURRENCY = 32  # joins in flight at once, all replicas together
CONNECT_CONCURRENCY = 64  # streams being opened at once
CHANGE_WAIT_S = 30.0  # a change not heard by every member stream by then is counted lost
IDLE_WINDOW_S = 3.0  # how long the idle CPU rate is measured before the changes
SETTLE_S = 0.5  # between changes: the previous one's tail (heartbeats, NOTIFY) ends
START_TIMEOUT_S = 60
PEER_ADDED = b"event: peer_added\ndata: "


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (``proc(5)``, fields 14 and 15)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:  # gone: a PostgreSQL backend that ended
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children(ppid: int) -> list[int]:
    """PostgreSQL's backends: the postmaster's children."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rpartition(")")[2].split()[1]) == ppid:
                found.append(int(stat.parent.name))
    return found


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def raise_fd_limit(need: int) -> int:
    """Children inherit the limit: each replica holds two descriptors per stream
    (signal_server/limits.py) and this process one per stream. As root the hard
    limit may be raised too, so it is."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if os.geteuid() == 0 and hard != resource.RLIM_INFINITY and hard < need:
        with contextlib.suppress(OSError, ValueError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
            return need
    want = min(hard, max(soft, need)) if hard != resource.RLIM_INFINITY else max(soft, need)
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return want


@dataclass
class Replica:
    proc: subprocess.Popen[str]
    port: int
    data: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.contextmanager
def open_servers(database: str, replicas: int, profile: Path | None = None
                 ) -> Iterator[tuple[list[Replica], int | None]]:
    """The replicas (after their ready line) and the postmaster's PID (PostgreSQL)."""
    cluster = None
    started: list[Replica] = []
    try:
        extra: list[str] = []
        if database == "postgresql":
            from tests.pgcluster import PgCluster, find_bindir

            bindir = find_bindir()
            if bindir is None:
                raise SystemExit("PostgreSQL binaries not found (scripts/setup installs them)")
            cluster = PgCluster(bindir)
            cluster.start()
            extra = ["--database", cluster.url()]
        for i in range(replicas):
            data = Path(tempfile.mkdtemp(prefix="fanout-"))
            port = free_port()
            # cProfile writes its file when the replica exits on our SIGTERM.
            prof = ([sys.executable, "-m", "cProfile", "-o", str(profile / f"replica{i}.prof")]
                    if profile is not None else [])
            proc = subprocess.Popen([*prof, str(BIN / "signal-server"), "serve", "--data-dir",
                                     str(data), "--http", f"127.0.0.1:{port}", *extra],
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            started.append(Replica(proc, port, data))
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if "ready" not in line:
                raise SystemExit(f"signal-server did not start: {line.strip()!r}")
        yield started, (cluster.pid if cluster is not None else None)
    finally:
        for replica in started:
            replica.proc.terminate()
        for replica in started:
            try:
                replica.proc.wait(10)
            except subprocess.TimeoutExpired:
                replica.proc.kill()
                replica.proc.wait(10)
            if replica.proc.stdout:
                replica.proc.stdout.close()
            shutil.rmtree(replica.data, ignore_errors=True)
        if cluster is not None:
            cluster.stop()


@dataclass
class Node:
    name: str
    network: int
    replica: int
    key: SigningKey = field(default_factory=SigningKey.generate)


def join_body(node: Node, access_key: str) -> bytes:
    return msgspec.json.encode(api.JoinRequest(
        access_key=access_key, signing_key=b64(bytes(node.key.verify_key)),
        wg_public_key=b64(bytes(PrivateKey.generate().public_key)),
        probe_public_key=b64(bytes(PrivateKey.generate().public_key)), name=node.name))


async def join(http: httpx.AsyncClient, node: Node, access_key: str) -> None:
    body = join_body(node, access_key)
    headers = sign_request(node.key, "POST", "/api/v1/join", body)
    resp = await http.post("/api/v1/join", content=body,
                           headers={**headers, "content-type": "application/json"})
    if resp.status_code not in (200, 201):
        raise RuntimeError(f"join of {node.name} failed: {resp.status_code} {resp.text[:200]}")


class Listener:
    """Every stream's arrivals: ``heard[name]`` = the times the peer_added came in."""

    def __init__(self) -> None:
        self.heard: dict[str, list[float]] = {}
        self.waiting: dict[str, tuple[int, trio.Event]] = {}  # name -> (how many, done)
        self.heartbeats = 0
        self.streams_up = 0
        self.open_resets = 0
        self.expected_streams = 0
        self.all_up = trio.Event()

    def expect(self, name: str, streams: int) -> trio.Event:
        done = trio.Event()
        self.heard[name] = []
        self.waiting[name] = (streams, done)
        return done

    def saw(self, name: str, when: float) -> None:
        if name not in self.waiting:
            return
        times = self.heard[name]
        times.append(when)
        count, done = self.waiting[name]
        if len(times) >= count:
            done.set()


OPEN_ATTEMPTS = 3


async def open_stream(replica: Replica, node: Node, path: str, opening: trio.CapacityLimiter
                      ) -> tuple[trio.SocketStream, bytes]:
    async with opening:  # a bounded number of opens in flight: no accept-queue storm
        # Signed once our turn came: the signature's timestamp has a window.
        headers = sign_request(node.key, "GET", path, b"")
        request = (f"GET {path} HTTP/1.1\r\nhost: 127.0.0.1:{replica.port}\r\n"
                   "accept: text/event-stream\r\n"
                   + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode()
        stream = await trio.open_tcp_stream("127.0.0.1", replica.port)
        try:
            await stream.send_all(request)
            buf = b""
            while b"\r\n\r\n" not in buf:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    raise trio.BrokenResourceError("closed before its headers")
                buf += chunk
        except BaseException:
            await stream.aclose()
            raise
        return stream, buf


async def hold_stream(replica: Replica, node: Node, since: int, listener: Listener,
                      opening: trio.CapacityLimiter) -> None:
    """One node's SSE stream over a raw socket; scans the bytes for peer_added."""
    path = f"/api/v1/events?since={since}"
    for attempt in range(OPEN_ATTEMPTS):
        try:
            stream, buf = await open_stream(replica, node, path, opening)
            break
        except (OSError, trio.BrokenResourceError):
            # At 10,000 streams a replica sometimes resets a connection mid-open;
            # counted, and retried as a node would.
            listener.open_resets += 1
            if attempt == OPEN_ATTEMPTS - 1:
                raise
    async with stream:
        head, _, buf = buf.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"stream of {node.name}: {head.splitlines()[0]!r}")
        listener.streams_up += 1
        if listener.streams_up >= listener.expected_streams:
            listener.all_up.set()
        while True:
            # An SSE message is one body chunk: the chunk framing lies between messages.
            while (start := buf.find(PEER_ADDED)) >= 0 and (end := buf.find(b"\n\n", start)) > 0:
                data = msgspec.json.decode(buf[start + len(PEER_ADDED):end])
                listener.saw(data["peer"]["name"], time.perf_counter())
                buf = buf[end + 2:]
            if PEER_ADDED not in buf:
                listener.heartbeats += buf.count(b": heartbeat")
                buf = buf[-len(PEER_ADDED):]  # a message's start may be cut off
            chunk = await stream.receive_some(65536)
            if not chunk:
                raise RuntimeError(f"stream of {node.name} closed by the server")
            buf += chunk


def server_cpu(replicas: list[Replica], postmaster: int | None) -> tuple[float, float]:
    """CPU seconds so far: all replicas together, and PostgreSQL (0 for SQLite)."""
    pg = 0.0
    if postmaster is not None:
        pg = cpu_s(postmaster) + sum(cpu_s(pid) for pid in children(postmaster))
    return sum(cpu_s(r.proc.pid) for r in replicas), pg


async def run(args: argparse.Namespace, replicas: list[Replica],
              postmaster: int | None) -> dict[str, Any]:
    base = replicas[0]
    token = (base.data / "admin.token").read_text().strip()
    admin = httpx.AsyncClient(base_url=base.url + "/api/v1", timeout=60,
                              headers={"authorization": f"Bearer {token}"})
    https = [httpx.AsyncClient(base_url=r.url, timeout=60,
                               limits=httpx.Limits(max_connections=JOIN_CONCURRENCY))
             for r in replicas]
    try:
        keys: list[str] = []
        for k in range(args.networks):
            # A /20 each out of 10/8: 4,094 nodes per network, 4,096 networks.
            cidr = f"10.{k // 16}.{(k % 16) * 16}.0/20"
            resp = await admin.post("/networks", json={"name": f"n{k}", "ipv4_cidr": cidr})
            resp.raise_for_status()
            resp = await admin.post(f"/networks/n{k}/keys", json={})
            resp.raise_for_status()
            keys.append(decode_token(resp.json()["token"]).key)

        nodes = [Node(f"m{i}", i % args.networks, i % len(replicas)) for i in range(args.nodes)]
        limiter = trio.CapacityLimiter(JOIN_CONCURRENCY)

        async def joiner(node: Node) -> None:
            async with limiter:
                await join(https[node.replica], node, keys[node.network])

        t0 = time.perf_counter()
        with trio.fail_after(max(120, args.nodes * 0.2)):
            async with trio.open_nursery() as nursery:
                for node in nodes:
                    nursery.start_soon(joiner, node)
        join_s = time.perf_counter() - t0
        print(f"  {args.nodes} joins in {join_s:.1f} s", file=sys.stderr)

        path = "/api/v1/node"
        resp = await https[0].get(path, headers=sign_request(nodes[0].key, "GET", path, b""))
        resp.raise_for_status()
        since = int(resp.json()["seq"])

        listener = Listener()
        results: dict[str, Any] = {}
        async with trio.open_nursery() as nursery:
            t1 = time.perf_counter()
            opening = trio.CapacityLimiter(CONNECT_CONCURRENCY)
            listener.expected_streams = len(nodes)
            for node in nodes:
                nursery.start_soon(hold_stream, replicas[node.replica], node, since,
                                   listener, opening)
            with trio.fail_after(max(60, args.nodes * 0.05)):
                await listener.all_up.wait()
            streams_s = time.perf_counter() - t1
            print(f"  {args.nodes} streams in {streams_s:.1f} s", file=sys.stderr)

            await trio.sleep(SETTLE_S)
            idle0, idle_t0 = server_cpu(replicas, postmaster), time.perf_counter()
            await trio.sleep(IDLE_WINDOW_S)
            idle1, idle_t1 = server_cpu(replicas, postmaster), time.perf_counter()
            idle_rate = ((idle1[0] - idle0[0]) / (idle_t1 - idle_t0),
                         (idle1[1] - idle0[1]) / (idle_t1 - idle_t0))

            changes = []
            for c in range(args.changes):
                net = (c * 37) % args.networks  # different networks, spread over the range
                members = sum(1 for n in nodes if n.network == net)
                newcomer = Node(f"arrival{c}", net, c % len(replicas))
                done = listener.expect(newcomer.name, members)
                cpu0 = server_cpu(replicas, postmaster)
                start = time.perf_counter()
                await join(https[newcomer.replica], newcomer, keys[net])
                joined = time.perf_counter()
                with trio.move_on_after(CHANGE_WAIT_S):
                    await done.wait()
                last = time.perf_counter()
                cpu1 = server_cpu(replicas, postmaster)
                window = last - start
                lat = [1000 * (t - start) for t in listener.heard[newcomer.name]]
                changes.append({
                    "network": f"n{net}", "members": members, "delivered": len(lat),
                    "join_ms": 1000 * (joined - start),
                    "p50_ms": pct(lat, 50) if lat else None,
                    "p99_ms": pct(lat, 99) if lat else None,
                    "max_ms": max(lat) if lat else None,
                    "replicas_cpu_ms": 1000 * (cpu1[0] - cpu0[0] - idle_rate[0] * window),
                    "postgres_cpu_ms": 1000 * (cpu1[1] - cpu0[1] - idle_rate[1] * window),
                    "samples_ms": lat,
                })
                print(f"  change {c}: {len(lat)}/{members} p50 {changes[-1]['p50_ms']} "
                      f"max {changes[-1]['max_ms']}", file=sys.stderr)
                await trio.sleep(SETTLE_S)
            rss = [rss_mb(r.proc.pid) for r in replicas]
            nursery.cancel_scope.cancel()

        def median(key: str) -> float | None:
            values = [ch[key] for ch in changes if ch[key] is not None]
            return statistics.median(values) if values else None

        results = {
            "database": args.database, "nodes": args.nodes, "networks": args.networks,
            "replicas": len(replicas), "changes": args.changes,
            "join_rate_per_s": args.nodes / join_s, "streams_connect_s": streams_s,
            "stream_open_resets": listener.open_resets,
            "delivered": sum(ch["delivered"] for ch in changes),
            "expected": sum(ch["members"] for ch in changes),
            "fanout_ms": {"p50": median("p50_ms"), "p99": median("p99_ms"),
                          "max": median("max_ms")},
            "join_ms": median("join_ms"),
            "cpu_per_change_ms": {"replicas": median("replicas_cpu_ms"),
                                  "postgres": median("postgres_cpu_ms")},
            "idle_cpu_percent": {"replicas": 100 * idle_rate[0], "postgres": 100 * idle_rate[1]},
            "rss_mb_per_replica": rss,
            "per_change": changes,
        }
        return results
    finally:
        with trio.CancelScope(shield=True):
            await admin.aclose()
            for http in https:
                await http.aclose()


def machine() -> dict[str, Any]:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "cpus": os.cpu_count(), "cpu_model": model, "load_avg_at_start": os.getloadavg(),
            "kernel": platform.release(), "python": platform.python_version()}


def scenario(result: dict[str, Any]) -> str:
    return (f"{result['database']}-{result['nodes']}nodes-{result['networks']}nets-"
            f"{result['replicas']}replicas")


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def write_markdown(runs: dict[str, Any], out: Path) -> None:
    lines = ["# Control-plane fan-out (`python -m bench control`)", "",
             "One change = one node joining one network; latency = the join request's "
             "start to that network's every member stream's `peer_added`; medians over "
             "the changes. CPU per change: all replicas (and PostgreSQL's processes) "
             "across the change, less their idle rate.", "",
             "| database | nodes | networks | replicas | join rate /s | p50 ms | p99 ms | "
             "max ms | delivered | replicas CPU ms/change | PostgreSQL CPU ms/change | "
             "idle CPU % (replicas) | RSS MB per replica | machine |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in sorted(runs.values(), key=lambda r: (r["database"], -r["nodes"], -r["networks"])):
        f, c, m = run["fanout_ms"], run["cpu_per_change_ms"], run["machine"]
        lines.append(
            f"| {run['database']} | {run['nodes']} | {run['networks']} | {run['replicas']} | "
            f"{run['join_rate_per_s']:.0f} | {_fmt(f['p50'])} | {_fmt(f['p99'])} | "
            f"{_fmt(f['max'])} | {run['delivered']}/{run['expected']} | "
            f"{_fmt(c['replicas'], 1)} | {_fmt(c['postgres'], 1)} | "
            f"{run['idle_cpu_percent']['replicas']:.1f} | "
            f"{' / '.join(f'{r:.0f}' for r in run['rss_mb_per_replica'])} | "
            f"{m['cpus']} x {m['cpu_model']}, {m['time_utc']} |")
    out.write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--networks", type=int, default=10)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--changes", "--arrivals", type=int, default=5, dest="changes")
    parser.add_argument("--quick", action="store_true",
                        help="200 nodes in 4 networks, 3 changes (a smoke run)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/fanout.json"))
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="run every replica under cProfile, writing DIR/replicaN.prof")
    args = parser.parse_args()
    if args.quick:
        args.nodes, args.networks, args.changes = 200, 4, 3
    if args.database == "sqlite" and args.replicas != 1:
        parser.error("SQLite is served by one process: --replicas 1")
    if not (1 <= args.networks <= 4096 and args.networks <= args.nodes <= 4094 * args.networks
            and 1 <= args.replicas <= 8 and 1 <= args.changes <= 100):
        parser.error("--networks 1..4096, --nodes networks..4094*networks, --replicas 1..8, "
                     "--changes 1..100")
    raise_fd_limit(3 * args.nodes + 4096)
    with open_servers(args.database, args.replicas, args.profile) as (replicas, postmaster):
        result = trio.run(run, args, replicas, postmaster)
    result["machine"] = machine()
    runs: dict[str, Any] = {}
    if args.out.exists():
        with contextlib.suppress(ValueError, AttributeError):
            runs = dict(json.loads(args.out.read_text()).get("runs", {}))
    runs[scenario(result)] = result
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"runs": runs}, indent=1) + "\n")
    write_markdown(runs, args.out.with_suffix(".md"))
    f, c = result["fanout_ms"], result["cpu_per_change_ms"]
    print(f"{scenario(result)}: join rate {result['join_rate_per_s']:.0f}/s; fan-out to the "
          f"last stream p50 {_fmt(f['p50'])} ms, p99 {_fmt(f['p99'])} ms, max {_fmt(f['max'])} ms "
          f"({result['delivered']}/{result['expected']} delivered); CPU per change: replicas "
          f"{_fmt(c['replicas'], 1)} ms, PostgreSQL {_fmt(c['postgres'], 1)} ms; RSS per "
          f"replica {', '.join(f'{r:.0f}' for r in result['rss_mb_per_replica'])} MB")
    return 0 if result["delivered"] == result["expected"] else 1


if __name__ == "__main__":
    sys.exit(main())
