"""This host's usable addresses (for host candidates), read through netlink."""

from __future__ import annotations

import ipaddress
from collections.abc import Collection

import trio
from pyroute2 import IPRoute

# Interfaces whose addresses are never a way to reach this node from a peer.
SKIP_PREFIXES = ("lo", "docker", "br-", "veth", "virbr", "cni", "flannel", "tailscale", "wg")


def _read(exclude: Collection[str]) -> list[str]:
    out: list[str] = []
    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for msg in ipr.get_addr():
            ifname = names.get(msg["index"], "")
            if ifname in exclude or ifname.startswith(SKIP_PREFIXES):
                continue
            addr = msg.get_attr("IFA_ADDRESS")
            if not addr:
                continue
            ip = ipaddress.ip_address(addr)
            if ip.is_loopback or ip.is_link_local or ip.is_multicast:
                continue
            out.append(f"{ip}/{msg['prefixlen']}")
    return out


async def local_addresses(exclude: Collection[str] = ()) -> list[str]:
    return await trio.to_thread.run_sync(_read, exclude)
