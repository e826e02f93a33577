"""punchd's CPU while WireGuard carries a full-speed iperf3: the shared port's filter
must keep WireGuard's data out of Python.

punchd reads WireGuard's UDP port through a raw socket with a classic-BPF filter that
passes only STUN and probe datagrams. If the filter leaked, every WireGuard datagram
would wake Python and punchd's CPU would follow the traffic. In the lab, two punchd
nodes behind NATs go direct; then, alternating, the benchmark measures an idle window
and a window with iperf3 (TCP, full speed over the WireGuard mesh addresses), each
``--seconds`` long: punchd's CPU per node (utime+stime from /proc, the mean of the
two nodes) as % of one core, both wireguard-go's CPU, and the throughput. Goal: punchd ≤ 1 % of a core under load.

    python -m bench cpu [--rounds 3] [--seconds 8] [--out bench/results/cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from netns_tests.lab import Lab
from netns_tests.lab.mesh import Mesh, MeshNode

NETWORK = "bench"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def wireguard_go_pids(ifnames: list[str]) -> list[int]:
    out = subprocess.run(["pgrep", "-f", "wireguard-go"], capture_output=True, text=True).stdout
    pids = []
    for pid in out.split():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if any(name in cmdline.split() for name in ifnames):
            pids.append(int(pid))
    return pids


def window(nodes: list[MeshNode], wg: list[int], seconds: float,
           load: tuple[MeshNode, str] | None) -> dict[str, Any]:
    punchd = [n.proc.pid for n in nodes]
    before_p = sum(cpu_seconds(p) for p in punchd)
    before_w = sum(cpu_seconds(p) for p in wg)
    start = time.monotonic()
    mbit = None
    if load is None:
        time.sleep(seconds)
    else:
        client, address = load
        res = client.host.run(["iperf3", "-c", address, "-t", str(seconds), "-J"], check=False,
                              timeout=seconds + 30)
        try:
            mbit = json.loads(res.stdout)["end"]["sum_received"]["bits_per_second"] / 1e6
        except (json.JSONDecodeError, KeyError):
            mbit = None
    elapsed = time.monotonic() - start
    per_node = (sum(cpu_seconds(p) for p in punchd) - before_p) / len(punchd)
    return {"punchd_pct": 100 * per_node / elapsed,
            "wireguard_go_pct": 100 * (sum(cpu_seconds(p) for p in wg) - before_w) / elapsed,
            "mbit_s": mbit, "seconds": elapsed}


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/cpu.json"))
    args = parser.parse_args()
    results: dict[str, list[dict[str, Any]]] = {"idle": [], "iperf3": []}
    with Lab() as lab:
        mesh = Mesh(lab)
        mesh.start_server(dns=False)
        token = mesh.create_network(NETWORK, "198.19.0.0/24")
        site_a, site_b = lab.add_site("a", nat="prc"), lab.add_site("b", nat="cone")
        a, b = mesh.start_node(site_a.hosts[0], "a"), mesh.start_node(site_b.hosts[0], "b")
        a.join(token)
        b.join(token)
        deadline = time.monotonic() + 20
        while not all(p["path"] == "direct" for n in (a, b)
                      for p in n.network_status(NETWORK)["peers"]):
            if time.monotonic() > deadline:
                print("bench cpu: the pair never went direct", file=sys.stderr)
                return 1
            time.sleep(0.2)
        address = b.mesh_address(NETWORK)
        server = b.host.spawn(["iperf3", "-s", "-B", address], name="iperf3-s")
        time.sleep(0.5)
        wg = wireguard_go_pids([a.ifname, b.ifname])
        for _ in range(args.rounds):
            for kind in ("idle", "iperf3"):
                result = window([a, b], wg, args.seconds, None if kind == "idle" else (a, address))
                results[kind].append(result)
                print(f"  {kind:6} punchd {result['punchd_pct']:.2f}% of a core, wireguard-go "
                      f"{result['wireguard_go_pct']:.0f}%, {result['mbit_s'] or 0:.0f} Mbit/s",
                      flush=True)
        server.stop()
    med = {kind: {k: statistics.median(r[k] or 0 for r in rs)
                  for k in ("punchd_pct", "wireguard_go_pct", "mbit_s")}
           for kind, rs in results.items()}
    summary = {"rounds": results, "median": med, "seconds": args.seconds,
               "nodes": 2, "note": "punchd_pct is per node (mean of the two); "
                                   "wireguard_go_pct sums both"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    load, idle = med["iperf3"], med["idle"]
    print(f"punchd per node under a {load['mbit_s']:.0f} Mbit/s iperf3: "
          f"{load['punchd_pct']:.2f}% of a core (idle: {idle['punchd_pct']:.2f}%); "
          f"wireguard-go {load['wireguard_go_pct']:.0f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
