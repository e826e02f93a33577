"""Addresses, MTU, state and routes of an interface, through pyroute2 netlink.

Shared by the kernel and userspace backends (wireguard-go's TUN is an ordinary
netdev). pyroute2 is blocking, so every call runs in a worker thread.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from typing import Any, TypeVar

import trio
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from punchd.errors import WireGuardError

from .base import LinkConfig

T = TypeVar("T")


async def netlink_call(fn: Callable[[Any], T], what: str, *, opener: Callable[[], Any] = IPRoute
                       ) -> T:
    """Run ``fn`` on a fresh pyroute2 socket (IPRoute, or e.g. WireGuard) in a worker
    thread — pyroute2 blocks — and turn netlink errors into WireGuardError."""
    def run() -> T:
        with opener() as sock:
            return fn(sock)

    try:
        return await trio.to_thread.run_sync(run)
    except (NetlinkError, OSError) as exc:
        raise WireGuardError(f"{what}: {exc}") from exc


def _index(ipr: Any, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise WireGuardError(f"no interface {ifname}")
    return int(found[0])


async def link_exists(ifname: str) -> bool:
    # if_nametoindex is one ioctl; a pyroute2 IPRoute per check (reconciliation asks
    # every few seconds) costs a thread and an event loop, most of an idle punchd's CPU.
    await trio.lowlevel.checkpoint()
    try:
        socket.if_nametoindex(ifname)
    except OSError:
        return False
    return True


async def delete_link(ifname: str) -> None:
    def run(ipr: Any) -> None:
        found = ipr.link_lookup(ifname=ifname)
        if found:
            ipr.link("del", index=found[0])

    await netlink_call(run, f"delete {ifname}")


async def configure(ifname: str, link: LinkConfig) -> None:
    """Make the interface's addresses and routes exactly ``link``'s, set MTU, bring it up."""

    def run(ipr: Any) -> None:
        idx = _index(ipr, ifname)
        want = {ipaddress.ip_interface(a) for a in link.addresses}
        have = set()
        for msg in ipr.get_addr(index=idx):
            addr = msg.get_attr("IFA_ADDRESS")
            if addr and not addr.startswith("fe80"):
                have.add(ipaddress.ip_interface(f"{addr}/{msg['prefixlen']}"))
        for iface in have - want:
            ipr.addr("del", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen)
        for iface in want - have:
            ipr.addr("add", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen)
        ipr.link("set", index=idx, mtu=link.mtu, state="up")
        want_routes = {ipaddress.ip_network(r, strict=False) for r in link.routes}
        have_routes = set()
        for family in (2, 10):
            for msg in ipr.get_routes(family=family, oif=idx, table=254):
                dst = msg.get_attr("RTA_DST")
                if dst and msg.get("proto") == 4:  # RTPROT_STATIC: ours, not the kernel's
                    have_routes.add(ipaddress.ip_network(f"{dst}/{msg['dst_len']}"))
        for net in have_routes - want_routes:
            ipr.route("del", dst=str(net), oif=idx)
        for net in want_routes - have_routes:
            ipr.route("add", dst=str(net), oif=idx, proto=4)

    await netlink_call(run, f"configure {ifname}")
