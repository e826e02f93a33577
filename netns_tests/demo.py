"""The README's main job: a demo mesh in the network-namespace lab.

Builds a lab (a signal server on the "internet" with two public addresses, and
sites behind different NAT types), starts the real ``signal-server`` and a real
``punchd`` on every node, joins them with a token, waits for the mesh to form, and
then prints each node's ``punchctl status`` and a ping between every pair over the
mesh. Everything shown is read from the running processes; nothing is faked. The
lab tears itself down on exit, on error and on Ctrl-C.

    python -m netns_tests.demo [--sites none,cone,prc,sym] [--wait 20] [--keep-logs DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from netns_tests.lab import NAT_TYPES, Host, Lab, Proc

VENV_BIN = Path(sys.executable).parent
NETWORK = "demo"
MESH_CIDR = "198.19.0.0/24"
HTTP_PORT = 8080


def tool(name: str) -> str:
    path = VENV_BIN / name
    if not path.exists():
        sys.exit(f"demo: {path} is missing; run ./scripts/demo (it installs the project)")
    return str(path)


@dataclass
class Node:
    name: str
    nat: str
    host: Host
    socket: str
    proc: Proc

    def punchctl(self, *args: str, check: bool = True, timeout: float = 30):
        return self.host.run([tool("punchctl"), "--socket", self.socket, *args],
                             check=check, timeout=timeout)


def wait_for_line(proc: Proc, needle: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in Path(proc.log_path).read_text(errors="replace"):
            return
        if not proc.alive():
            break
        time.sleep(0.05)
    log = Path(proc.log_path).read_text(errors="replace")
    raise SystemExit(f"demo: {proc.log_path} never said {needle!r}:\n{log[-2000:]}")


def wait_for_path(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: {path} did not appear within {timeout:.0f} s")
        time.sleep(0.05)


def status(node: Node) -> dict:
    out = node.punchctl("status", "--json", check=False)
    if out.returncode != 0:
        return {"error": (out.stderr or out.stdout).strip()}
    return json.loads(out.stdout)


def peers_of(st: dict) -> list[dict]:
    return [p for net in st.get("networks", []) for p in net.get("peers", [])]


def mesh_address(st: dict) -> str | None:
    for net in st.get("networks", []):
        if net.get("name") == NETWORK and net.get("address"):
            return str(net["address"]).split("/")[0]
    return None


def run_demo(sites: list[str], wait: float, log_dir: Path) -> int:
    with Lab(log_dir=log_dir) as lab:
        server = lab.server
        ip1, ip2 = server.public_ips
        data_dir = log_dir / "server-data"
        data_dir.mkdir(parents=True, exist_ok=True)
        print(f"== lab: server {ip1}/{ip2}; sites: {', '.join(sites)}", flush=True)
        srv = server.spawn(
            [tool("signal-server"), "serve", "--data-dir", str(data_dir),
             "--http", f"{ip1}:{HTTP_PORT}", "--stun", f"{ip1}:3478", "--stun", f"{ip2}:3479"],
            name="signal-server",
        )
        wait_for_line(srv, "ready", timeout=20)
        url = f"http://{ip1}:{HTTP_PORT}"
        admin = [tool("signal-server"), "admin", "--server", url,
                 "--token-file", str(data_dir / "admin.token")]
        server.run([*admin, "network", "create", NETWORK, "--cidr", MESH_CIDR])
        token = server.run([*admin, "key", "create", NETWORK, "--uses", str(len(sites))]
                           ).stdout.strip().splitlines()[-1]
        print(f"== network {NETWORK} {MESH_CIDR}; join token {token[:24]}…", flush=True)

        nodes: list[Node] = []
        started = time.monotonic()
        for i, nat in enumerate(sites):
            name = f"{nat}{i}"
            site = lab.add_site(name, nat=nat, hosts=1)
            host = site.hosts[0]
            state = log_dir / f"state-{name}"
            sock = str(log_dir / f"punchd-{name}.sock")
            proc = host.spawn([tool("punchd"), "--state-dir", str(state), "--socket", sock,
                               "--wg-backend", "userspace"], name="punchd")
            nodes.append(Node(name=f"node-{name}", nat=nat, host=host, socket=sock, proc=proc))
        for i, node in enumerate(nodes):
            wait_for_path(Path(node.socket), timeout=20)
            ifname = f"{lab.prefix}wg{i}"
            node.punchctl("join", "--token", token, "--name", node.name, "--ifname", ifname)
            print(f"   {node.name:10} behind {node.nat:5} ({node.host.ip}) joined", flush=True)

        # Wait until every node sees every other with a completed WireGuard handshake.
        deadline = time.monotonic() + wait
        want = len(nodes) - 1
        while time.monotonic() < deadline:
            ready = [sum(1 for p in peers_of(status(n)) if p.get("last_handshake_age_s") is not None)
                     for n in nodes]
            if all(r >= want for r in ready):
                break
            time.sleep(0.5)
        print(f"== mesh state after {time.monotonic() - started:.1f} s", flush=True)
        for node in nodes:
            print(f"\n--- {node.name} (behind {node.nat}): punchctl status", flush=True)
            out = node.punchctl("status", check=False)
            print((out.stdout + out.stderr).rstrip(), flush=True)

        print("\n== pings over the mesh (3 each)", flush=True)
        addresses = {n.name: mesh_address(status(n)) for n in nodes}
        failures = 0
        for a in nodes:
            for b in nodes:
                if a is b:
                    continue
                target = addresses.get(b.name)
                if not target:
                    print(f"   {a.name:10} -> {b.name:10} no mesh address", flush=True)
                    failures += 1
                    continue
                res = a.host.run(["ping", "-c", "3", "-i", "0.2", "-W", "1", target],
                                 check=False, timeout=15)
                summary = [ln for ln in res.stdout.splitlines() if "packets transmitted" in ln
                           or ln.startswith("rtt")]
                ok = res.returncode == 0
                failures += not ok
                print(f"   {a.name:10} -> {b.name:10} {target:15} {'ok ' if ok else 'FAIL'} "
                      f"{' | '.join(summary)}", flush=True)
        print(f"\n== {len(nodes) * (len(nodes) - 1) - failures} of "
              f"{len(nodes) * (len(nodes) - 1)} directed pairs pass pings; logs in {log_dir}",
              flush=True)
        return 0 if failures == 0 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", default="none,cone,prc,sym",
                        help=f"comma-separated NAT types, one node each (from {', '.join(NAT_TYPES)})")
    parser.add_argument("--wait", type=float, default=20.0,
                        help="seconds to wait for the mesh to form before reporting")
    parser.add_argument("--keep-logs", type=Path, default=None,
                        help="keep logs and state in a new run-* folder here "
                             "(default: a temp dir, removed)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("demo: needs root (network namespaces, nftables)", file=sys.stderr)
        return 2
    sites = [s.strip() for s in args.sites.split(",") if s.strip()]
    bad = [s for s in sites if s not in NAT_TYPES]
    if bad:
        print(f"demo: unknown NAT type(s) {bad}; choose from {NAT_TYPES}", file=sys.stderr)
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
