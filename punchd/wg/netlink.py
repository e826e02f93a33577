"""Kernel WireGuard through netlink (pyroute2's generic-netlink WireGuard family).

Used when the kernel has the wireguard module; every blocking call runs in a worker
thread and netlink errors become :class:`~punchd.errors.WireGuardError`.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any, TypeVar

from pyroute2 import IPRoute, WireGuard
from pyroute2.netlink.exceptions import NetlinkError

from punchd.errors import BackendUnavailable

from ..wire.addr import format_addr
from . import links
from .base import (
    LinkConfig,
    WgDeviceState,
    WgPeer,
    WgPeerState,
    decode_key,
    normalise_cidrs,
    normalise_endpoint,
    parse_endpoint,
)

T = TypeVar("T")


def kernel_has_wireguard() -> bool:
    """True when a WireGuard link can be created (module built in or loadable)."""
    try:
        with IPRoute() as ipr:
            ipr.link("add", ifname="pdwgprobe0", kind="wireguard")
            ipr.link("del", index=ipr.link_lookup(ifname="pdwgprobe0")[0])
        return True
    except (NetlinkError, OSError, IndexError):
        return False


async def _wg(fn: Callable[[Any], T], what: str) -> T:
    return await links.netlink_call(fn, what, opener=WireGuard)


class KernelBackend:
    kind = "kernel"

    def __init__(self) -> None:
        if not kernel_has_wireguard():
            raise BackendUnavailable("this kernel has no WireGuard (no 'wireguard' link kind)")

    async def interface_exists(self, ifname: str) -> bool:
        return await links.link_exists(ifname)

    async def ensure_interface(self, ifname: str) -> None:
        if await links.link_exists(ifname):
            return

        await links.netlink_call(lambda ipr: ipr.link("add", ifname=ifname, kind="wireguard"),
                                 f"create {ifname}")

    async def delete_interface(self, ifname: str) -> None:
        await links.delete_link(ifname)

    async def get_device(self, ifname: str) -> WgDeviceState:
        def run(wg: Any) -> WgDeviceState:
            msgs = wg.info(ifname)
            peers: list[WgPeerState] = []
            dev_attrs: dict[str, Any] = {}
            for msg in msgs:
                dev_attrs.setdefault("pub", msg.get_attr("WGDEVICE_A_PUBLIC_KEY"))
                dev_attrs.setdefault("port", msg.get_attr("WGDEVICE_A_LISTEN_PORT"))
                dev_attrs.setdefault("fwmark", msg.get_attr("WGDEVICE_A_FWMARK"))
                for peer in msg.get_attr("WGDEVICE_A_PEERS") or []:
                    ep = peer.get_attr("WGPEER_A_ENDPOINT")
                    endpoint = format_addr((ep["addr"], ep["port"])) if ep else None
                    hs = peer.get_attr("WGPEER_A_LAST_HANDSHAKE_TIME") or {}
                    sec = int(hs.get("tv_sec", 0))
                    allowed = [f"{a['addr']}" for a in (peer.get_attr("WGPEER_A_ALLOWEDIPS") or [])]
                    peers.append(WgPeerState(
                        public_key=_b64(peer.get_attr("WGPEER_A_PUBLIC_KEY")),
                        endpoint=normalise_endpoint(endpoint) if endpoint else None,
                        allowed_ips=normalise_cidrs(allowed),
                        persistent_keepalive=int(peer.get_attr("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL") or 0),
                        last_handshake=sec + int(hs.get("tv_nsec", 0)) / 1e9 if sec else None,
                        rx_bytes=int(peer.get_attr("WGPEER_A_RX_BYTES") or 0),
                        tx_bytes=int(peer.get_attr("WGPEER_A_TX_BYTES") or 0),
                    ))
            pub = dev_attrs.get("pub")
            return WgDeviceState(name=ifname, public_key=_b64(pub) if pub else None,
                                 listen_port=int(dev_attrs.get("port") or 0),
                                 fwmark=int(dev_attrs.get("fwmark") or 0), peers=tuple(peers))

        return await _wg(run, f"get {ifname}")

    async def set_device(self, ifname: str, *, private_key: str | None = None,
                         listen_port: int | None = None, fwmark: int | None = None) -> None:
        kwargs: dict[str, Any] = {}
        if private_key is not None:
            decode_key(private_key, "private key")
            kwargs["private_key"] = private_key
        if listen_port is not None:
            kwargs["listen_port"] = listen_port
        if fwmark is not None:
            kwargs["fwmark"] = fwmark
        await _wg(lambda wg: wg.set(ifname, **kwargs), f"set {ifname}")

    async def set_peer(self, ifname: str, peer: WgPeer) -> None:
        decode_key(peer.public_key, "peer public key")
        spec: dict[str, Any] = {
            "public_key": peer.public_key,
            "allowed_ips": list(normalise_cidrs(peer.allowed_ips)),
            "persistent_keepalive": peer.persistent_keepalive,
        }
        if peer.endpoint:
            spec["endpoint_addr"], spec["endpoint_port"] = parse_endpoint(peer.endpoint)
        if peer.preshared_key:
            spec["preshared_key"] = peer.preshared_key
        await _wg(lambda wg: wg.set(ifname, peer=spec), f"set peer on {ifname}")

    async def remove_peer(self, ifname: str, public_key: str) -> None:
        decode_key(public_key, "peer public key")
        await _wg(lambda wg: wg.set(ifname, peer={"public_key": public_key, "remove": True}),
                  f"remove peer on {ifname}")

    async def set_link(self, ifname: str, link: LinkConfig) -> None:
        await links.configure(ifname, link)

    async def aclose(self) -> None:
        pass


def _b64(raw: bytes | str) -> str:
    return raw if isinstance(raw, str) else base64.b64encode(raw).decode()
