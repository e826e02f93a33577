"""The one conformance suite every WireGuard backend passes (fake, userspace, kernel).

``run_conformance(backend, ifname, read_link)`` drives a backend through the
interface's contract and asserts what it reports; each backend's test module calls
it. The interface has no read of the link (addresses, MTU, up, routes), so the caller
passes one that looks where the backend writes: the fake's memory, or ``ip -j`` for
the real backends (``netns_tests/wg_conformance_main.py``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import NamedTuple

import pytest

from punchd.errors import WireGuardError
from punchd.wg.base import LinkConfig, WgPeer, WireGuardBackend, generate_private_key, public_key


class ObservedLink(NamedTuple):
    """The link as the system has it after ``set_link``."""

    addresses: frozenset[str]  # "198.19.0.5/24"; IPv6 link-local left out
    mtu: int
    up: bool
    routes: frozenset[str]  # the static routes through the link: "198.19.1.0/24"


ReadLink = Callable[[str], Awaitable[ObservedLink]]


async def run_conformance(backend: WireGuardBackend, ifname: str, read_link: ReadLink) -> None:
    assert not await backend.interface_exists(ifname)
    with pytest.raises(WireGuardError):
        await backend.get_device(ifname)

    await backend.ensure_interface(ifname)
    await backend.ensure_interface(ifname)  # idempotent
    assert await backend.interface_exists(ifname)

    priv = generate_private_key()
    await backend.set_device(ifname, private_key=priv, listen_port=51999)
    dev = await backend.get_device(ifname)
    assert dev.public_key == public_key(priv)
    assert dev.listen_port == 51999
    assert dev.peers == ()

    a, b = public_key(generate_private_key()), public_key(generate_private_key())
    await backend.set_peer(ifname, WgPeer(public_key=a, endpoint="192.0.2.1:51820",
                                          allowed_ips=("198.19.0.2/32",), persistent_keepalive=25))
    await backend.set_peer(ifname, WgPeer(public_key=b, allowed_ips=("198.19.0.3/32",
                                                                      "fd00::3/128")))
    peers = {p.public_key: p for p in (await backend.get_device(ifname)).peers}
    assert peers[a].endpoint == "192.0.2.1:51820"
    assert peers[a].allowed_ips == ("198.19.0.2/32",)
    assert peers[a].persistent_keepalive == 25
    assert peers[a].last_handshake is None
    assert peers[b].endpoint is None
    assert peers[b].allowed_ips == ("198.19.0.3/32", "fd00::3/128")

    # Update one peer: allowed IPs replaced, endpoint None leaves it, the other peer untouched.
    await backend.set_peer(ifname, WgPeer(public_key=a, allowed_ips=("198.19.0.9/32",)))
    peers = {p.public_key: p for p in (await backend.get_device(ifname)).peers}
    assert peers[a].allowed_ips == ("198.19.0.9/32",)
    assert peers[a].endpoint == "192.0.2.1:51820"
    assert peers[a].persistent_keepalive == 0
    assert peers[b].allowed_ips == ("198.19.0.3/32", "fd00::3/128")

    await backend.set_peer(ifname, WgPeer(public_key=a, endpoint="[2001:db8::1]:4500",
                                          allowed_ips=("198.19.0.9/32",)))
    peers = {p.public_key: p for p in (await backend.get_device(ifname)).peers}
    assert peers[a].endpoint == "[2001:db8::1]:4500"

    await backend.remove_peer(ifname, a)
    assert [p.public_key for p in (await backend.get_device(ifname)).peers] == [b]

    with pytest.raises(WireGuardError):
        await backend.set_peer(ifname, WgPeer(public_key="not-a-key"))
    with pytest.raises(WireGuardError):
        await backend.set_peer(ifname, WgPeer(public_key=a, allowed_ips=("300.1.1.1/32",)))

    await backend.set_link(ifname, LinkConfig(addresses=("198.19.0.1/24",), mtu=1400,
                                              routes=("198.19.1.0/24",)))
    assert await read_link(ifname) == ObservedLink(
        frozenset({"198.19.0.1/24"}), 1400, True, frozenset({"198.19.1.0/24"}))
    # The link becomes exactly the new config: the old address and route go.
    second = LinkConfig(addresses=("198.19.0.5/24", "198.19.2.5/24"), mtu=1380)
    await backend.set_link(ifname, second)
    expected = ObservedLink(frozenset({"198.19.0.5/24", "198.19.2.5/24"}), 1380, True,
                            frozenset())
    assert await read_link(ifname) == expected
    await backend.set_link(ifname, second)  # idempotent
    assert await read_link(ifname) == expected

    await backend.delete_interface(ifname)
    assert not await backend.interface_exists(ifname)
    await backend.delete_interface(ifname)  # idempotent
