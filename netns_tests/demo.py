"""The README's main job: a demo mesh in the network-namespace lab.

Builds a lab (a signal server on the "internet" with two public addresses, and
sites behind different NAT types), starts the real ``signal-server`` (with STUN,
meshdns and the relay) and a real ``punchd`` on every node, joins them with a token,
waits for WireGuard handshakes, and then prints each node's ``punchctl status``, a
DNS lookup through meshdns, a ping between every pair over the mesh, and which pairs
went direct and which through the relay. Everything shown is read from the running
processes; nothing is faked. The lab tears itself down on exit, on error and on
Ctrl-C.

    python -m netns_tests.demo [--sites none,cone,prc,sym] [--wait 15] [--keep-logs DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from netns_tests.lab import NAT_TYPES, Lab
from netns_tests.lab.mesh import Mesh

NETWORK = "demo"
MESH_CIDR = "198.19.0.0/24"


def run_demo(sites: list[str], wait: float, log_dir: Path) -> int:
    with Lab(log_dir=log_dir) as lab:
        mesh = Mesh(lab)
        print(f"== lab: server {' / '.join(lab.server.public_ips)}; sites: {', '.join(sites)}",
              flush=True)
        mesh.start_server(relay="auto")
        token = mesh.create_network(NETWORK, MESH_CIDR)
        print(f"== signal server up at {mesh.url}; network {NETWORK} {MESH_CIDR}; "
              f"join token {token[:20]}…", flush=True)
        for i, nat in enumerate(sites):
            site = lab.add_site(f"{nat}{i}", nat=nat)
            node = mesh.start_node(site.hosts[0], f"{nat}{i}")
            node.join(token)
            print(f"   {node.name:6} behind {nat:5} LAN {site.hosts[0].ip:12} "
                  f"public {site.wan_ip if nat != 'none' else site.hosts[0].ip:15} "
                  f"joined as {node.mesh_address(NETWORK)}", flush=True)

        took = mesh.wait_for_handshakes(NETWORK, timeout=wait)
        print(f"== mesh state {took:.1f} s after the last join", flush=True)
        for node in mesh.nodes:
            print(f"\n--- {node.name}: punchctl status", flush=True)
            out = node.punchctl("status", check=False)
            print((out.stdout + out.stderr).rstrip(), flush=True)

        first = mesh.nodes[0]
        name = f"{mesh.nodes[-1].name}.{NETWORK}.mesh"
        dig = first.host.run(["dig", "+short", "+time=2", "+tries=1", f"@{lab.server.ip}", name],
                             check=False)
        print(f"\n== meshdns: {first.name} asks {name}: {dig.stdout.strip() or dig.stderr.strip()}",
              flush=True)

        print("\n== pings over the mesh (3 each)", flush=True)
        failures = pairs = 0
        for a in mesh.nodes:
            for b in mesh.nodes:
                if a is b:
                    continue
                pairs += 1
                target = b.mesh_address(NETWORK)
                res = a.ping(target)
                summary = [ln for ln in res.stdout.splitlines()
                           if "packets transmitted" in ln or ln.startswith("rtt")]
                failures += res.returncode != 0
                print(f"   {a.name:6} -> {b.name:6} {target:12} "
                      f"{'ok  ' if res.returncode == 0 else 'FAIL'} {' | '.join(summary)}",
                      flush=True)
        paths: dict[str, list[str]] = {}
        for node in mesh.nodes:
            for peer in node.network_status(NETWORK)["peers"]:
                if node.name < peer["name"]:
                    paths.setdefault(peer["path"], []).append(f"{node.name}-{peer['name']}")
        print(f"\n== {pairs - failures} of {pairs} directed pairs pass pings over WireGuard; "
              + "; ".join(f"{kind}: {', '.join(sorted(p))}" for kind, p in sorted(paths.items())),
              flush=True)
        return 0 if failures == 0 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sites", default="none,cone,prc,sym",
                        help=f"comma-separated NAT types, one node each (from {', '.join(NAT_TYPES)})")
    parser.add_argument("--wait", type=float, default=15.0,
                        help="seconds to wait for WireGuard handshakes before reporting")
    parser.add_argument("--keep-logs", type=Path, default=None,
                        help="keep logs and state in a new run-* folder here "
                             "(default: a temp dir, removed)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("demo: needs root (network namespaces, nftables)", file=sys.stderr)
        return 2
    sites = [s.strip() for s in args.sites.split(",") if s.strip()]
    bad = [s for s in sites if s not in NAT_TYPES]
    if bad or len(sites) < 2:
        print(f"demo: give at least two NAT types from {', '.join(NAT_TYPES)}", file=sys.stderr)
        return 2
    if args.keep_logs is not None:
        log_dir = args.keep_logs / time.strftime("run-%Y%m%d-%H%M%S")
    else:
        log_dir = Path(tempfile.mkdtemp(prefix="punchd-demo-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    try:
        return run_demo(sites, args.wait, log_dir)
    except KeyboardInterrupt:
        print("\ndemo: interrupted; lab torn down", file=sys.stderr)
        return 130
    finally:
        if args.keep_logs is None:
            shutil.rmtree(log_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
