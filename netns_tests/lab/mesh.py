"""Run the real product in the lab: a signal server on the lab's server, punchd on hosts.

Shared by the demo, the netns tests and bench/, so each says only what it wants.

    with Lab() as lab:
        mesh = Mesh(lab)
        mesh.start_server()
        token = mesh.create_network("demo", "198.19.0.0/24")
        node = mesh.start_node(lab.add_site("a", nat="none").hosts[0], "alpha")
        node.join(token)
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .topology import Host, Lab, LabError, Proc

VENV_BIN = Path(sys.executable).parent
HTTP_PORT = 8080
METRICS = "127.0.0.1:9586"  # punchd --metrics, in each node's own namespace


def tool(name: str) -> str:
    path = VENV_BIN / name
    if not path.exists():
        raise LabError(f"{path} is missing; run ./scripts/setup (it installs the project)")
    return str(path)


def wait_for_log(proc: Proc, needle: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in proc.read_log():
            return
        if not proc.alive():
            break
        time.sleep(0.05)
    raise LabError(f"{proc.name} never said {needle!r}:\n{proc.read_log()[-2000:]}")


@dataclass
class MeshNode:
    mesh: Mesh
    name: str
    host: Host
    socket: str
    state_dir: Path
    proc: Proc
    ifname: str

    def punchctl(self, *args: str, check: bool = True, timeout: float = 30
                 ) -> subprocess.CompletedProcess[str]:
        return self.host.run([tool("punchctl"), "--socket", self.socket, *args], check=check,
                             timeout=timeout)

    def join(self, token: str) -> dict[str, Any]:
        self.punchctl("join", "--token", token, "--name", self.name, "--ifname", self.ifname)
        return self.status()

    def status(self) -> dict[str, Any]:
        out = self.punchctl("status", "--json")
        return dict(json.loads(out.stdout))

    def network_status(self, network: str) -> dict[str, Any]:
        for net in self.status()["networks"]:
            if net["name"] == network:
                return dict(net)
        raise LabError(f"{self.name} has not joined {network!r}")

    def mesh_address(self, network: str) -> str:
        return str(self.network_status(network)["address"])

    def ping(self, address: str, count: int = 3, interval: float = 0.2, deadline: float = 1.0
             ) -> subprocess.CompletedProcess[str]:
        return self.host.run(["ping", "-c", str(count), "-i", str(interval), "-W", str(deadline),
                              address], check=False, timeout=count * interval + deadline + 10)

    def metrics(self) -> str:
        """punchd's Prometheus text, scraped inside the node's namespace."""
        return self.host.run(["curl", "-sS", "--fail", "--max-time", "5",
                              f"http://{METRICS}/metrics"], timeout=10).stdout

    def restart(self) -> None:
        self.proc.stop()
        self.proc = self.mesh.spawn_punchd(self.host, self.name, self.state_dir, self.socket)


class Mesh:
    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.server_proc: Proc | None = None
        self.nodes: list[MeshNode] = []
        self.data_dir = lab.log_dir / "server-data"

    @property
    def url(self) -> str:
        return f"http://{self.lab.server.ip}:{HTTP_PORT}"

    def start_server(self, *, dns: bool = True, stun_server: str | None = None,
                     relay: str | None = None, relay_mode: str = "auto") -> Proc:
        """Our server; with ``stun_server`` it advertises that STUN server instead of its own;
        ``relay`` ("auto" for the lab's default, or HOST:LOW-HIGH) runs the relay."""
        ip1, ip2 = self.lab.server.public_ips[:2]
        argv = [tool("signal-server"), "serve", "--data-dir", str(self.data_dir),
                "--http", f"{ip1}:{HTTP_PORT}"]
        if stun_server:
            argv += ["--stun-server", stun_server]
        else:
            argv += ["--stun", f"{ip1}:3478", "--stun", f"{ip2}:3479"]
        if dns:
            argv += ["--dns", f"{ip1}:53"]
        if relay:
            pool = f"{ip1}:40000-40999" if relay == "auto" else relay
            argv += ["--relay", pool, "--relay-mode", relay_mode]
        self.server_proc = self.lab.server.spawn(argv, name="signal-server")
        wait_for_log(self.server_proc, "signal-server: ready", timeout=20)
        return self.server_proc

    def stop_server(self) -> None:
        if self.server_proc is not None:
            self.server_proc.stop()

    def admin(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.lab.server.run([tool("signal-server"), "admin", "--server", self.url,
                                    "--token-file", str(self.data_dir / "admin.token"), *args])

    def create_network(self, name: str, cidr: str, uses: int | None = None) -> str:
        """Creates the network and returns a join token for it."""
        self.admin("network", "create", name, "--cidr", cidr)
        extra = ["--uses", str(uses)] if uses else []
        return self.admin("key", "create", name, *extra).stdout.strip().splitlines()[-1]

    def spawn_punchd(self, host: Host, name: str, state_dir: Path, socket: str) -> Proc:
        # Every lab punchd answers GET /metrics on its namespace's loopback (idle: free).
        proc = host.spawn([tool("punchd"), "--state-dir", str(state_dir), "--socket", socket,
                           "--wg-backend", "userspace", "--metrics", METRICS],
                          name=f"punchd-{name}")
        deadline = time.monotonic() + 20
        while not Path(socket).exists():
            if time.monotonic() > deadline or not proc.alive():
                raise LabError(f"punchd {name} did not start:\n{proc.read_log()[-2000:]}")
            time.sleep(0.05)
        return proc

    def start_node(self, host: Host, name: str) -> MeshNode:
        state_dir = self.lab.log_dir / f"state-{name}"
        socket = str(self.lab.log_dir / f"punchd-{name}.sock")
        proc = self.spawn_punchd(host, name, state_dir, socket)
        ifname = f"{self.lab.prefix}w{len(self.nodes)}"
        node = MeshNode(self, name, host, socket, state_dir, proc, ifname)
        self.nodes.append(node)
        return node

    def wait_for_handshakes(self, network: str, timeout: float) -> float:
        """Until every node has a WireGuard handshake with every other; returns seconds taken."""
        start = time.monotonic()
        want = len(self.nodes) - 1
        while time.monotonic() - start < timeout:
            done = 0
            for node in self.nodes:
                peers = node.network_status(network)["peers"]
                done += sum(1 for p in peers if p["last_handshake_age_s"] is not None) >= want
            if done == len(self.nodes):
                break
            time.sleep(0.25)
        return time.monotonic() - start
