"""Local address changes, from the kernel's rtnetlink multicast groups.

punchd must re-gather its candidates when an address appears or goes, or a link goes
up or down (a laptop joins another Wi-Fi, a DHCP lease changes, a VPN comes up): a
netlink socket subscribed to RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR and RTMGRP_LINK
is read with trio (no thread), pyroute2's rtnetlink marshal decodes the messages,
and a burst of changes becomes one call after ``debounce`` seconds of quiet.
Changes on excluded interfaces (the WireGuard interface punchd configures itself)
do not count.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Container

import trio
from pyroute2.netlink.rtnl import RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR, RTMGRP_LINK
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

log = logging.getLogger("punchd.addrwatch")

EVENTS = ("RTM_NEWADDR", "RTM_DELADDR", "RTM_NEWLINK", "RTM_DELLINK")
MAX_DEBOUNCE_S = 2.0  # a burst that never ends still gets its re-gather


def relevant(data: bytes, exclude: Container[str], names: dict[int, str]) -> bool:
    """Whether a datagram of rtnetlink messages changes an interface we care about."""
    for msg in MarshalRtnl().parse(data):
        if msg.get("event") not in EVENTS:
            continue
        index = int(msg.get("index") or 0)
        name = msg.get_attr("IFLA_IFNAME") or msg.get_attr("IFA_LABEL") or names.get(index)
        if name is None:
            try:
                name = socket.if_indextoname(index)
            except OSError:
                name = None  # already gone: a change worth a look
        if name is not None:
            names[index] = name
        if name is None or name not in exclude:
            return True
    return False


def _netlink_socket(netns: str | None) -> trio.socket.SocketType:
    if netns is None:
        return trio.socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    from pyroute2 import netns as namespaces

    namespaces.pushns(netns)  # a socket belongs to the namespace it was made in
    try:
        return trio.socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    finally:
        namespaces.popns()


async def watch_addresses(on_change: Callable[[], None], *, exclude: Container[str] = (),
                          debounce: float = 0.3, netns: str | None = None,
                          task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Call ``on_change`` once per burst of address or link changes, until cancelled.

    ``netns`` watches another network namespace (the lab's tests use it).
    """
    sock = _netlink_socket(netns)
    names: dict[int, str] = {}
    with sock:
        await sock.bind((0, RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_LINK))
        task_status.started()
        while True:
            data = await sock.recv(65536)
            if not relevant(data, exclude, names):
                continue
            # Quiet period: a DHCP renewal or interface bring-up is several messages.
            with trio.move_on_after(MAX_DEBOUNCE_S):
                while True:
                    with trio.move_on_after(debounce) as quiet:
                        await sock.recv(65536)
                    if quiet.cancelled_caught:
                        break
            log.info("local addresses changed: re-gathering candidates")
            on_change()
