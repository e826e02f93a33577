"""punchd's paths in the lab: how fast they come, what they carry.

For each NAT pair, N repetitions of a fresh lab (real signal server with STUN and the
in-kernel relay, two real punchd nodes joined by token), timed from the moment the
second node's ``punchctl join`` returned:

* time to the first ping answered over WireGuard (a ping every 20 ms, each waiting
  at most 100 ms);
* time until both nodes' status (``punchctl status``'s answer, asked on the control
  socket) says the pair is direct (for pairs that can be), or
  through the relay (for those that cannot);
* punchd's resident memory afterwards.

Then the data plane, interleaved direct, relay, direct, relay …: iperf3 TCP over
WireGuard (wireguard-go) for a few seconds on a direct pair (prc/prc) and a relayed
pair (sym/sym), and the ratio relayed ÷ direct. Medians over repetitions.

    python -m bench paths [--reps 3] [--iperf-seconds 4] [--out bench/results/paths.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from netns_tests.lab import Lab
from netns_tests.lab.mesh import Mesh, MeshNode

from .contenders.punchd import join, peer_statuses

NETWORK = "bench"
PAIRS = [("prc", "prc", "direct"), ("cone", "sym", "direct"), ("cone", "prc", "direct"),
         ("none", "sym", "direct"), ("sym", "sym", "relay")]
LIMIT_S = 15.0


def start_pair(lab: Lab, nat_a: str, nat_b: str) -> tuple[MeshNode, MeshNode, str, float]:
    """Both nodes joined; B's mesh address (from its join line) and the time B's join
    returned: asking B's status afterwards would add a punchctl run to every timing."""
    mesh = Mesh(lab)
    mesh.start_server(dns=False, relay="auto")
    token = mesh.create_network(NETWORK, "198.19.0.0/24")
    site_a, site_b = lab.add_site("a", nat=nat_a), lab.add_site("b", nat=nat_b)
    a, b = mesh.start_node(site_a.hosts[0], "a"), mesh.start_node(site_b.hosts[0], "b")
    join(a, token)
    address_b = join(b, token)
    return a, b, address_b, time.monotonic()


def first_ping(a: MeshNode, address: str, started: float) -> float | None:
    while time.monotonic() - started < LIMIT_S:
        res = a.host.run(["ping", "-n", "-c", "1", "-W", "0.1", address], check=False)
        if res.returncode == 0:
            return time.monotonic() - started
        time.sleep(0.02)
    return None


def path_of(node: MeshNode) -> str:
    peers = peer_statuses(node, NETWORK)
    return str(peers[0]["path"]) if peers else "none"


def time_to_path(a: MeshNode, b: MeshNode, want: str, started: float) -> float | None:
    """Until both nodes' status says ``want`` (asked on their control sockets)."""
    while time.monotonic() - started < LIMIT_S:
        if all(path_of(node) == want for node in (a, b)):
            return time.monotonic() - started
        time.sleep(0.01)
    return None


def rss_mb(node: MeshNode) -> float:
    status = Path(f"/proc/{node.proc.pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def timing_round(nat_a: str, nat_b: str, want: str) -> dict[str, Any]:
    with Lab() as lab:
        a, b, address, started = start_pair(lab, nat_a, nat_b)
        with ThreadPoolExecutor(1) as pool:  # the ping and the status polls run together
            pinging = pool.submit(first_ping, a, address, started)
            path = time_to_path(a, b, want, started)
            ping = pinging.result()
        return {"pair": f"{nat_a}/{nat_b}", "want": want, "first_ping_s": ping,
                "to_path_s": path, "final_path": path_of(a), "rss_mb": max(rss_mb(a), rss_mb(b))}


def iperf_round(nat_a: str, nat_b: str, want: str, seconds: float) -> dict[str, Any]:
    with Lab() as lab:
        a, b, address, started = start_pair(lab, nat_a, nat_b)
        if time_to_path(a, b, want, started) is None:
            return {"pair": f"{nat_a}/{nat_b}", "path": path_of(a), "mbit_s": None}
        server = b.host.spawn(["iperf3", "-s", "-1", "-B", address], name="iperf3-s")
        time.sleep(0.5)
        res = a.host.run(["iperf3", "-c", address, "-t", str(seconds), "-J"], check=False,
                         timeout=seconds + 30)
        server.stop()
        try:
            bps = json.loads(res.stdout)["end"]["sum_received"]["bits_per_second"]
        except (json.JSONDecodeError, KeyError):
            bps = None
        rtt = a.host.run(["ping", "-n", "-c", "10", "-i", "0.05", address], check=False).stdout
        avg = rtt.rsplit("=", 1)[-1].split("/")[1] if "min/avg" in rtt else None
        return {"pair": f"{nat_a}/{nat_b}", "path": path_of(a),
                "mbit_s": None if bps is None else bps / 1e6,
                "ping_avg_ms": float(avg) if avg else None}


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--iperf-seconds", type=float, default=4.0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/paths.json"))
    args = parser.parse_args()
    timings: list[dict[str, Any]] = []
    for rep in range(args.reps):
        for nat_a, nat_b, want in PAIRS:
            result = timing_round(nat_a, nat_b, want)
            timings.append(result)
            print(f"  rep {rep + 1} {result['pair']:9} first ping {result['first_ping_s']}, "
                  f"{want} after {result['to_path_s']}, final {result['final_path']}, "
                  f"RSS {result['rss_mb']:.0f} MB", flush=True)
    throughput: dict[str, list[dict[str, Any]]] = {"direct": [], "relay": []}
    for _ in range(args.reps):
        for kind, (nat_a, nat_b) in (("direct", ("prc", "prc")), ("relay", ("sym", "sym"))):
            result = iperf_round(nat_a, nat_b, kind, args.iperf_seconds)
            throughput[kind].append(result)
            print(f"  iperf3 {kind:6} {result}", flush=True)
    summary: dict[str, Any] = {"pairs": {}, "raw": timings, "throughput": throughput}
    for nat_a, nat_b, want in PAIRS:
        rows = [t for t in timings if t["pair"] == f"{nat_a}/{nat_b}"]
        summary["pairs"][f"{nat_a}/{nat_b}"] = {
            "want": want, "first_ping_s": median([r["first_ping_s"] for r in rows]),
            "to_path_s": median([r["to_path_s"] for r in rows]),
            "final_paths": sorted({r["final_path"] for r in rows}),
            "rss_mb": median([r["rss_mb"] for r in rows])}
    direct = median([r["mbit_s"] for r in throughput["direct"]])
    relayed = median([r["mbit_s"] for r in throughput["relay"]])
    summary["iperf3_mbit_s"] = {"direct": direct, "relay": relayed,
                                "relay_over_direct": relayed / direct if direct and relayed
                                else None}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print("\npair       want    first ping   to path    final      RSS")
    for pair, row in summary["pairs"].items():
        def fmt(v: float | None) -> str:
            return "   -   " if v is None else f"{v:6.2f} s"
        print(f"{pair:10} {row['want']:6}  {fmt(row['first_ping_s'])}   "
              f"{fmt(row['to_path_s'])}  {','.join(row['final_paths']):9}  "
              f"{row['rss_mb']:.0f} MB")
    t = summary["iperf3_mbit_s"]
    if t["relay_over_direct"] is not None:
        print(f"iperf3 over WireGuard: direct {t['direct']:.0f} Mbit/s, relay {t['relay']:.0f} "
              f"Mbit/s, relay / direct = {t['relay_over_direct']:.2f}")
    return 0


if __name__ == "__main__":
    if subprocess.run(["id", "-u"], capture_output=True, text=True).stdout.strip() != "0":
        print("bench paths: the lab needs root", file=sys.stderr)
        sys.exit(2)
    sys.exit(main())
