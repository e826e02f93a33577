"""The data-plane ceiling: wireguard-go, static endpoints, both hosts publicly routed.

Only meaningful when both sites are ``nat="none"``; elsewhere it does not apply (a
static endpoint cannot reach a host behind a NAT that nobody punched).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from netns_tests.lab import Host, Lab, Site

from ..labtools import WgGoInterface, add_wg_peer, start_wg_go

WG_PORT = 51820


@dataclass
class WgStaticHandle:
    host_a: Host
    host_b: Host
    mesh_ip_a: str
    mesh_ip_b: str
    ifaces: list[WgGoInterface] = field(default_factory=list)

    def reported_path(self) -> str:
        # wg's own status: a handshake on both ends means the (only, direct) path works.
        return "direct" if all(i.latest_handshake() for i in self.ifaces) else "none"

    def stop(self) -> None:
        for iface in self.ifaces:
            iface.stop()

    def info(self) -> dict[str, Any]:
        return {}


class WgStaticContender:
    NAME = "wg-static"
    DIRECT_WAIT_S = 10.0

    def applies(self, site_a: Site, site_b: Site) -> bool:
        return site_a.nat == "none" and site_b.nat == "none"

    def start(self, lab: Lab, site_a: Site, site_b: Site, run_id: int) -> WgStaticHandle:
        host_a, host_b = site_a.hosts[0], site_b.hosts[0]
        net = f"198.19.{200 + run_id % 50}"
        handle = WgStaticHandle(host_a, host_b, f"{net}.1", f"{net}.2")
        try:
            a = start_wg_go(lab, host_a, f"{lab.prefix}s{run_id}a", f"{net}.1/24", WG_PORT)
            handle.ifaces.append(a)
            b = start_wg_go(lab, host_b, f"{lab.prefix}s{run_id}b", f"{net}.2/24", WG_PORT)
            handle.ifaces.append(b)
            add_wg_peer(a, b.public_key, f"{net}.2/32", f"{host_b.ip}:{WG_PORT}")
            add_wg_peer(b, a.public_key, f"{net}.1/32", f"{host_a.ip}:{WG_PORT}")
        except BaseException:
            handle.stop()
            raise
        return handle
