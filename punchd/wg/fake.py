"""An in-memory WireGuard backend with the same semantics as the real ones.

Tests use it to run the daemon without root, simulate handshakes and traffic
(:meth:`FakeBackend.simulate_handshake`), and make drift happen behind punchd's back
(:meth:`FakeBackend.tamper`, :meth:`FakeBackend.crash`).
"""

from __future__ import annotations

import msgspec

from punchd.errors import WireGuardError

from .base import (
    LinkConfig,
    WgDeviceState,
    WgPeer,
    WgPeerState,
    decode_key,
    normalise_cidrs,
    normalise_endpoint,
    public_key,
)


class _Device(msgspec.Struct):
    private_key: str | None = None
    listen_port: int = 0
    fwmark: int = 0
    peers: dict[str, WgPeerState] = msgspec.field(default_factory=dict)
    link: LinkConfig | None = None


class FakeBackend:
    kind = "fake"

    def __init__(self) -> None:
        self.devices: dict[str, _Device] = {}
        self.operations: list[tuple[str, str]] = []  # (op, ifname): what punchd asked for

    def _dev(self, ifname: str) -> _Device:
        try:
            return self.devices[ifname]
        except KeyError:
            raise WireGuardError(f"no interface {ifname}") from None

    async def interface_exists(self, ifname: str) -> bool:
        return ifname in self.devices

    async def ensure_interface(self, ifname: str) -> None:
        if len(ifname) > 15 or not ifname:
            raise WireGuardError(f"bad interface name {ifname!r}")
        if ifname not in self.devices:
            self.operations.append(("create", ifname))
            self.devices[ifname] = _Device()

    async def delete_interface(self, ifname: str) -> None:
        self.operations.append(("delete", ifname))
        self.devices.pop(ifname, None)

    async def get_device(self, ifname: str) -> WgDeviceState:
        dev = self._dev(ifname)
        return WgDeviceState(
            name=ifname,
            public_key=public_key(dev.private_key) if dev.private_key else None,
            listen_port=dev.listen_port, fwmark=dev.fwmark,
            peers=tuple(dev.peers[k] for k in sorted(dev.peers)),
        )

    async def set_device(self, ifname: str, *, private_key: str | None = None,
                         listen_port: int | None = None, fwmark: int | None = None) -> None:
        dev = self._dev(ifname)
        self.operations.append(("set_device", ifname))
        if private_key is not None:
            decode_key(private_key, "private key")
            dev.private_key = private_key
        if listen_port is not None:
            dev.listen_port = listen_port
        if fwmark is not None:
            dev.fwmark = fwmark

    async def set_peer(self, ifname: str, peer: WgPeer) -> None:
        dev = self._dev(ifname)
        decode_key(peer.public_key, "peer public key")
        self.operations.append(("set_peer", ifname))
        old = dev.peers.get(peer.public_key)
        endpoint = normalise_endpoint(peer.endpoint) if peer.endpoint else (old.endpoint if old else None)
        dev.peers[peer.public_key] = WgPeerState(
            public_key=peer.public_key, endpoint=endpoint,
            allowed_ips=normalise_cidrs(peer.allowed_ips),
            persistent_keepalive=peer.persistent_keepalive,
            last_handshake=old.last_handshake if old else None,
            rx_bytes=old.rx_bytes if old else 0, tx_bytes=old.tx_bytes if old else 0,
        )

    async def remove_peer(self, ifname: str, public_key: str) -> None:
        decode_key(public_key, "peer public key")
        self.operations.append(("remove_peer", ifname))
        self._dev(ifname).peers.pop(public_key, None)

    async def set_link(self, ifname: str, link: LinkConfig) -> None:
        self.operations.append(("set_link", ifname))
        self._dev(ifname).link = link

    async def aclose(self) -> None:
        pass

    # -- test hooks ---------------------------------------------------------------------

    def simulate_handshake(self, ifname: str, peer_key: str, at: float, *, rx: int = 92,
                           tx: int = 148) -> None:
        dev = self._dev(ifname)
        old = dev.peers[peer_key]
        dev.peers[peer_key] = msgspec.structs.replace(
            old, last_handshake=at, rx_bytes=old.rx_bytes + rx, tx_bytes=old.tx_bytes + tx)

    def tamper(self, ifname: str, peer_key: str, **changes: object) -> None:
        """Change a peer behind punchd's back, as ``wg set`` by hand would."""
        dev = self._dev(ifname)
        dev.peers[peer_key] = msgspec.structs.replace(dev.peers[peer_key], **changes)

    def crash(self, ifname: str) -> None:
        """The interface vanishes, as when wireguard-go dies."""
        self.devices.pop(ifname, None)
