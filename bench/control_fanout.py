"""Control-plane fan-out: N simulated nodes hold event streams; how fast does news reach them?

Starts a real ``signal-server`` on loopback, registers N nodes (no WireGuard: they
only join and hold their SSE stream), then lets new nodes arrive one at a time and
measures, for every stream, the time from the arrival's join request to the
``peer_added`` event on that stream. Reports the join rate, fan-out latency
percentiles and the server's RSS. Loopback only; bounded in count and time.

    python -m bench.control_fanout [--nodes 1000] [--arrivals 5] [--out bench/results/fanout.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import trio
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from punchd.serverapi import ServerClient
from punchd.wire import api
from punchd.wire.signing import b64
from punchd.wire.token import decode_token

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def join_one(url: str, token: str, name: str) -> ServerClient:
    client = ServerClient(url, SigningKey.generate(), timeout=60)
    key = b64(bytes(PrivateKey.generate().public_key))
    await client.join(decode_token(token), name=name, wg_public_key=key,
                      probe_public_key=b64(bytes(PrivateKey.generate().public_key)),
                      listen_port=51820)
    return client


async def run(nodes: int, arrivals: int, url: str, data: Path, server_pid: int) -> dict[str, object]:
    clients: list[ServerClient] = []
    try:
        headers = {"authorization": f"Bearer {(data / 'admin.token').read_text().strip()}"}
        async with httpx.AsyncClient(base_url=url + "/api/v1", headers=headers) as admin:
            await admin.post("/networks", json={"name": "bench", "ipv4_cidr": "198.18.0.0/15"})
            token = (await admin.post("/networks/bench/keys", json={})).json()["token"]

        t0 = time.perf_counter()
        limiter = trio.CapacityLimiter(32)

        async def joiner(i: int) -> None:
            async with limiter:
                clients.append(await join_one(url, token, f"n{i}"))

        async with trio.open_nursery() as nursery:
            for i in range(nodes):
                nursery.start_soon(joiner, i)
        join_s = time.perf_counter() - t0

        latencies: list[float] = []
        arrived: dict[str, float] = {}
        received: dict[str, int] = {}
        everyone_heard: dict[str, trio.Event] = {}
        snap = await clients[0].get_state()

        async def hold(client: ServerClient, ready: trio.Event) -> None:
            async with client.events(since=snap.seq) as stream:
                ready.set()
                async for event in stream:
                    if isinstance(event, api.PeerAdded) and event.peer.name in arrived:
                        latencies.append(time.perf_counter() - arrived[event.peer.name])
                        received[event.peer.name] = received.get(event.peer.name, 0) + 1
                        if received[event.peer.name] == nodes:
                            everyone_heard[event.peer.name].set()

        with trio.fail_after(max(120, nodes * 0.3)):
            async with trio.open_nursery() as nursery:
                for client in clients:
                    ready = trio.Event()
                    nursery.start_soon(hold, client, ready)
                    await ready.wait()
                streams_up = time.perf_counter() - t0 - join_s
                for k in range(arrivals):
                    name = f"arrival{k}"
                    everyone_heard[name] = trio.Event()
                    arrived[name] = time.perf_counter()
                    newcomer = await join_one(url, token, name)
                    await newcomer.aclose()
                    with trio.move_on_after(30):
                        await everyone_heard[name].wait()
                server_rss = rss_mb(server_pid)
                nursery.cancel_scope.cancel()
        return {
            "nodes": nodes, "arrivals": arrivals,
            "join_rate_per_s": nodes / join_s, "streams_connect_s": streams_up,
            "deliveries": len(latencies), "expected_deliveries": nodes * arrivals,
            "fanout_ms": {"p50": 1000 * pct(latencies, 50), "p90": 1000 * pct(latencies, 90),
                          "p99": 1000 * pct(latencies, 99), "max": 1000 * max(latencies),
                          "mean": 1000 * statistics.fmean(latencies)},
            "server_rss_mb": server_rss,
            "machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count(),
                        "platform": platform.platform()},
        }
    finally:
        for client in clients:
            with trio.CancelScope(shield=True):
                await client.aclose()


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--arrivals", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench/results/fanout.json"))
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 4 * args.nodes + 256))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))  # the server inherits it
    data = Path(tempfile.mkdtemp(prefix="fanout-"))
    port = free_port()
    server = subprocess.Popen([str(BIN / "signal-server"), "serve", "--data-dir", str(data),
                               "--http", f"127.0.0.1:{port}"], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and "ready" in server.stdout.readline()
        result = trio.run(run, args.nodes, args.arrivals, f"http://127.0.0.1:{port}", data,
                          server.pid)
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
        if server.stdout:
            server.stdout.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    f = result["fanout_ms"]
    assert isinstance(f, dict)
    print(f"nodes {result['nodes']}: join rate {result['join_rate_per_s']:.0f}/s; "
          f"fan-out of an arrival to all streams p50 {f['p50']:.0f} ms, p99 {f['p99']:.0f} ms, "
          f"max {f['max']:.0f} ms ({result['deliveries']}/{result['expected_deliveries']} "
          f"delivered); server RSS {result['server_rss_mb']:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
