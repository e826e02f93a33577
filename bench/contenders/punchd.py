"""punchd itself: the real signal server (with STUN) on the lab's server host and two
real punchd daemons (wireguard-go backend) joined by token, via ``netns_tests.lab.mesh``.

The signal server is started once per lab; every run gets a network of its own so the
nodes of earlier runs (stopped) are not peers of this one. Both nodes are up (t0) when
node B's ``punchctl join`` returns: the mesh addresses come from the join lines, so no
further command runs between B's join and the first ping. Path: the ``status`` answer's
``peers[].path`` on node A, asked on punchd's control socket from the benchmark process
itself (what ``punchctl status --json`` prints, without starting a Python process every
0.2 s beside the daemons being measured).
"""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from netns_tests.lab import Lab, Site
from netns_tests.lab.mesh import Mesh, MeshNode
from punchd.daemon.control import call


@dataclass
class PunchdHandle:
    node_a: MeshNode
    node_b: MeshNode
    network: str
    mesh_ip_a: str
    mesh_ip_b: str
    start_s: float = 0.0

    @property
    def host_a(self) -> Any:
        return self.node_a.host

    @property
    def host_b(self) -> Any:
        return self.node_b.host

    def peer_status(self) -> dict[str, Any] | None:
        for peer in peer_statuses(self.node_a, self.network):
            if peer["name"] == self.node_b.name:
                return peer
        return None

    def reported_path(self) -> str:
        try:
            peer = self.peer_status()
        except Exception:
            return "none"
        return str(peer["path"]) if peer else "none"

    def stop(self) -> None:
        for node in (self.node_a, self.node_b):
            with contextlib.suppress(Exception):
                node.proc.stop(timeout=3)

    def info(self) -> dict[str, Any]:
        try:
            return {"peer_status_a": self.peer_status()}
        except Exception as exc:
            return {"peer_status_error": str(exc)}


class PunchdContender:
    NAME = "punchd"
    # punchd's goal is direct within 0.5 s; a pair not direct after 10 s stays relayed.
    DIRECT_WAIT_S = 10.0

    def __init__(self) -> None:
        self._meshes: dict[str, Mesh] = {}

    def applies(self, site_a: Site, site_b: Site) -> bool:
        return True

    def _mesh(self, lab: Lab) -> Mesh:
        mesh = self._meshes.get(lab.prefix)
        if mesh is None:
            mesh = Mesh(lab)
            mesh.start_server(dns=False, relay="auto")
            self._meshes[lab.prefix] = mesh
        return mesh

    def start(self, lab: Lab, site_a: Site, site_b: Site, run_id: int) -> PunchdHandle:
        mesh = self._mesh(lab)
        network = f"bench{run_id}"
        token = mesh.create_network(network, f"198.19.{run_id % 100}.0/24")
        # Start-up counts the nodes only (daemons started and joined), not the server.
        nodes_started = time.monotonic()
        node_a = mesh.start_node(site_a.hosts[0], f"a{run_id}")
        try:
            node_b = mesh.start_node(site_b.hosts[0], f"b{run_id}")
        except BaseException:
            node_a.proc.stop(timeout=3)
            raise
        try:
            mesh_ip_a = join(node_a, token)
            mesh_ip_b = join(node_b, token)
            handle = PunchdHandle(node_a, node_b, network, mesh_ip_a, mesh_ip_b)
            handle.start_s = time.monotonic() - nodes_started
            return handle
        except BaseException:
            for node in (node_a, node_b):
                node.proc.stop(timeout=3)
            raise


def peer_statuses(node: MeshNode, network: str) -> list[dict[str, Any]]:
    """The ``status`` answer's peers (``punchctl status --json``), asked on the control
    socket from this process: cheap enough to poll beside the daemons being timed."""
    status = trio.run(call, Path(node.socket), "status", {"network": network})
    return [dict(peer) for net in status["networks"] for peer in net["peers"]]


_JOINED = re.compile(r"^joined \S+ as \S+: ([0-9.]+)(?:/\d+)? on ", re.MULTILINE)


def join(node: MeshNode, token: str) -> str:
    """``punchctl join`` as a user runs it; returns the mesh address from its line."""
    out = node.punchctl("join", "--token", token, "--name", node.name, "--ifname", node.ifname)
    match = _JOINED.search(out.stdout)
    if match is None:
        raise RuntimeError(f"punchctl join said {out.stdout!r}")
    return match.group(1)
