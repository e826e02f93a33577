"""A plain relay mesh: wireguard-go on both nodes, every packet through a userspace
UDP relay on the server host (``bench.udp_relay``), whatever the NATs are.

This is the shape of a mesh that never punches: always connected, never direct.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netns_tests.lab import Host, Lab, Proc, Site
from netns_tests.lab.mesh import wait_for_log

from ..labtools import WgGoInterface, add_wg_peer, start_wg_go

WG_PORT = 51820
RELAY_PORT_A = 45000
RELAY_PORT_B = 45001
RELAY_SCRIPT = Path(__file__).resolve().parents[1] / "udp_relay.py"


@dataclass
class RelayMeshHandle:
    host_a: Host
    host_b: Host
    mesh_ip_a: str
    mesh_ip_b: str
    relay: Proc | None = None
    ifaces: list[WgGoInterface] = field(default_factory=list)

    def reported_path(self) -> str:
        # Its own status: wg shows a handshake on both ends, and the only path is the relay.
        return "relay" if self.ifaces and all(i.latest_handshake() for i in self.ifaces) else "none"

    def stop(self) -> None:
        for iface in self.ifaces:
            iface.stop()
        if self.relay is not None:
            self.relay.stop(timeout=3)

    def info(self) -> dict[str, Any]:
        return {}


class RelayMeshContender:
    NAME = "relay-mesh"
    CAN_GO_DIRECT = False
    DIRECT_WAIT_S = 0.0

    def applies(self, site_a: Site, site_b: Site) -> bool:
        return True

    def start(self, lab: Lab, site_a: Site, site_b: Site, run_id: int) -> RelayMeshHandle:
        host_a, host_b = site_a.hosts[0], site_b.hosts[0]
        net = f"198.19.{150 + run_id % 50}"
        handle = RelayMeshHandle(host_a, host_b, f"{net}.1", f"{net}.2")
        server_ip = lab.server.ip
        try:
            handle.relay = lab.server.spawn(
                [sys.executable, str(RELAY_SCRIPT), server_ip, str(RELAY_PORT_A),
                 str(RELAY_PORT_B)], name=f"udp-relay-{run_id}")
            wait_for_log(handle.relay, "udp_relay: ready", timeout=10)
            a = start_wg_go(lab, host_a, f"{lab.prefix}r{run_id}a", f"{net}.1/24", WG_PORT)
            handle.ifaces.append(a)
            b = start_wg_go(lab, host_b, f"{lab.prefix}r{run_id}b", f"{net}.2/24", WG_PORT)
            handle.ifaces.append(b)
            add_wg_peer(a, b.public_key, f"{net}.2/32", f"{server_ip}:{RELAY_PORT_A}")
            add_wg_peer(b, a.public_key, f"{net}.1/32", f"{server_ip}:{RELAY_PORT_B}")
        except BaseException:
            handle.stop()
            raise
        return handle
