"""The WireGuard backend interface: desired and observed state, and the operations.

Three backends implement :class:`WireGuardBackend` and pass one conformance suite
(``tests/wg_conformance.py``): ``kernel`` (pyroute2 netlink), ``userspace``
(wireguard-go through its UAPI socket) and ``fake`` (in memory, for tests).
Keys are WireGuard's standard base64 everywhere.
"""

from __future__ import annotations

import base64
import binascii
import functools
import ipaddress
from typing import Protocol

import msgspec
from nacl.public import PrivateKey

from punchd.errors import AddrError, WireGuardError
from punchd.wire.addr import Addr, format_addr, parse_addr


class WgPeer(msgspec.Struct, frozen=True):
    """A peer as punchd wants it."""

    public_key: str
    endpoint: str | None = None  # "ip:port" / "[v6]:port"; None leaves it as WireGuard has it
    allowed_ips: tuple[str, ...] = ()
    persistent_keepalive: int = 0
    preshared_key: str | None = None


class WgPeerState(msgspec.Struct, frozen=True):
    """A peer as WireGuard reports it."""

    public_key: str
    endpoint: str | None
    allowed_ips: tuple[str, ...]
    persistent_keepalive: int
    last_handshake: float | None  # unix time; None: never
    rx_bytes: int
    tx_bytes: int


class WgDeviceState(msgspec.Struct, frozen=True):
    name: str
    public_key: str | None
    listen_port: int
    fwmark: int
    peers: tuple[WgPeerState, ...]


class LinkConfig(msgspec.Struct, frozen=True):
    addresses: tuple[str, ...]  # "198.19.0.5/24"
    mtu: int = 1420
    routes: tuple[str, ...] = ()


class WireGuardBackend(Protocol):
    kind: str

    async def ensure_interface(self, ifname: str) -> None: ...
    async def delete_interface(self, ifname: str) -> None: ...
    async def interface_exists(self, ifname: str) -> bool: ...
    async def get_device(self, ifname: str) -> WgDeviceState: ...
    async def set_device(self, ifname: str, *, private_key: str | None = None,
                         listen_port: int | None = None, fwmark: int | None = None) -> None: ...
    async def set_peer(self, ifname: str, peer: WgPeer) -> None: ...
    async def remove_peer(self, ifname: str, public_key: str) -> None: ...
    async def set_link(self, ifname: str, link: LinkConfig) -> None: ...
    async def aclose(self) -> None: ...


def decode_key(key: str, what: str = "key") -> bytes:
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise WireGuardError(f"{what} is not base64: {key!r}") from exc
    if len(raw) != 32:
        raise WireGuardError(f"{what} must be 32 bytes, got {len(raw)}")
    return raw


def encode_key(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def generate_private_key() -> str:
    return encode_key(bytes(PrivateKey.generate()))


def public_key(private_key: str) -> str:
    """X25519 public key; pynacl clamps the scalar exactly as WireGuard does."""
    return encode_key(bytes(PrivateKey(decode_key(private_key, "private key")).public_key))


def normalise_cidrs(cidrs: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Sorted, deduplicated, canonical CIDRs; WireGuardError for a bad one."""
    return _normalise_cidrs(tuple(cidrs))


# Every reconcile pass compares every peer's allowed IPs: parsed once per distinct
# list, not once per peer per pass (issue #22: ipaddress parsing was most of a pass).
@functools.lru_cache(maxsize=8192)
def _normalise_cidrs(cidrs: tuple[str, ...]) -> tuple[str, ...]:
    try:
        nets = sorted({ipaddress.ip_network(c, strict=False) for c in cidrs},
                      key=lambda n: (n.version, n))
    except ValueError as exc:
        raise WireGuardError(f"bad allowed IP: {exc}") from exc
    return tuple(str(n) for n in nets)


def parse_endpoint(endpoint: str) -> Addr:
    """A peer endpoint as ``(ip, port)``; WireGuardError when it is not ``ip:port``."""
    try:
        return parse_addr(endpoint)
    except AddrError as exc:
        raise WireGuardError(f"bad endpoint: {exc}") from exc


def normalise_endpoint(endpoint: str) -> str:
    return format_addr(parse_endpoint(endpoint))
