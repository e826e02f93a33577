"""Userspace WireGuard: wireguard-go, configured through its UAPI socket.

The codec (:func:`encode_set`, :func:`parse_get`) is sans-IO: key=value lines, keys
in hex, each peer section opened by ``public_key``, ``replace_allowed_ips=true``
before that peer's ``allowed_ip`` lines (the cross-platform UAPI of wireguard.com).
:class:`UserspaceBackend` starts wireguard-go (which daemonises itself, so tunnels
outlive a punchd restart), talks to ``/var/run/wireguard/IF.sock`` with trio, and
configures addresses and routes through netlink (:mod:`punchd.wg.links`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import trio

from punchd.errors import BackendUnavailable, WireGuardError

from . import links
from .base import (
    LinkConfig,
    WgDeviceState,
    WgPeer,
    WgPeerState,
    decode_key,
    encode_key,
    normalise_cidrs,
    normalise_endpoint,
    public_key,
)

SOCKET_DIR = Path("/var/run/wireguard")


def _hex(key: str, what: str) -> str:
    return decode_key(key, what).hex()


def encode_set(*, private_key: str | None = None, listen_port: int | None = None,
               fwmark: int | None = None, peers: tuple[WgPeer, ...] = (),
               remove: tuple[str, ...] = ()) -> bytes:
    lines = ["set=1"]
    if private_key is not None:
        lines.append(f"private_key={_hex(private_key, 'private key')}")
    if listen_port is not None:
        lines.append(f"listen_port={listen_port}")
    if fwmark is not None:
        lines.append(f"fwmark={fwmark}")
    for peer in peers:
        lines.append(f"public_key={_hex(peer.public_key, 'peer public key')}")
        if peer.preshared_key is not None:
            lines.append(f"preshared_key={_hex(peer.preshared_key, 'preshared key')}")
        if peer.endpoint is not None:
            lines.append(f"endpoint={normalise_endpoint(peer.endpoint)}")
        lines.append(f"persistent_keepalive_interval={peer.persistent_keepalive}")
        lines.append("replace_allowed_ips=true")
        lines.extend(f"allowed_ip={cidr}" for cidr in normalise_cidrs(peer.allowed_ips))
    for key in remove:
        lines.append(f"public_key={_hex(key, 'peer public key')}")
        lines.append("remove=true")
    return ("\n".join(lines) + "\n\n").encode()


def parse_errno(reply: bytes) -> int:
    for line in reply.decode(errors="replace").splitlines():
        if line.startswith("errno="):
            try:
                return int(line[6:])
            except ValueError as exc:
                raise WireGuardError(f"malformed UAPI errno line {line!r}") from exc
    raise WireGuardError("UAPI reply without errno")


def parse_get(name: str, reply: bytes) -> WgDeviceState:
    device: dict[str, str] = {}
    peers: list[dict[str, object]] = []
    current: dict[str, object] | None = None
    for line in reply.decode(errors="replace").splitlines():
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise WireGuardError(f"malformed UAPI line {line!r}")
        if key == "public_key":
            current = {"public_key": encode_key(bytes.fromhex(value)), "allowed_ips": []}
            peers.append(current)
        elif current is None:
            device[key] = value
        elif key == "allowed_ip":
            allowed = current["allowed_ips"]
            assert isinstance(allowed, list)
            allowed.append(value)
        else:
            current[key] = value
    if device.get("errno", "0") != "0":
        raise WireGuardError(f"UAPI get failed: errno={device['errno']}")

    def peer_state(p: dict[str, object]) -> WgPeerState:
        sec = int(str(p.get("last_handshake_time_sec", "0")))
        nsec = int(str(p.get("last_handshake_time_nsec", "0")))
        endpoint = p.get("endpoint")
        allowed = p["allowed_ips"]
        assert isinstance(allowed, list)
        return WgPeerState(
            public_key=str(p["public_key"]),
            endpoint=normalise_endpoint(str(endpoint)) if endpoint else None,
            allowed_ips=normalise_cidrs(allowed),
            persistent_keepalive=int(str(p.get("persistent_keepalive_interval", "0"))),
            last_handshake=sec + nsec / 1e9 if sec else None,
            rx_bytes=int(str(p.get("rx_bytes", "0"))),
            tx_bytes=int(str(p.get("tx_bytes", "0"))),
        )

    priv = device.get("private_key")
    return WgDeviceState(
        name=name,
        public_key=public_key(encode_key(bytes.fromhex(priv))) if priv else None,
        listen_port=int(device.get("listen_port", "0")),
        fwmark=int(device.get("fwmark", "0")),
        peers=tuple(peer_state(p) for p in peers),
    )


class UserspaceBackend:
    kind = "userspace"

    def __init__(self, *, wireguard_go: str | None = None, socket_dir: Path = SOCKET_DIR) -> None:
        binary = wireguard_go or shutil.which("wireguard-go")
        if binary is None:
            raise BackendUnavailable("wireguard-go is not installed (Debian: apt install wireguard-go)")
        self.binary = binary
        self.socket_dir = socket_dir

    def _socket(self, ifname: str) -> Path:
        return self.socket_dir / f"{ifname}.sock"

    async def _uapi(self, ifname: str, request: bytes) -> bytes:
        try:
            stream = await trio.open_unix_socket(str(self._socket(ifname)))
        except OSError as exc:
            raise WireGuardError(f"{ifname}: no wireguard-go UAPI socket ({exc.strerror})") from exc
        async with stream:
            try:
                await stream.send_all(request)
                buf = b""
                with trio.fail_after(5):
                    while not buf.endswith(b"\n\n"):
                        chunk = await stream.receive_some(65536)
                        if not chunk:
                            break
                        buf += chunk
            except (OSError, trio.BrokenResourceError, trio.TooSlowError) as exc:
                raise WireGuardError(f"{ifname}: UAPI exchange failed: {exc!r}") from exc
        return buf

    async def interface_exists(self, ifname: str) -> bool:
        return self._socket(ifname).exists() and await links.link_exists(ifname)

    async def ensure_interface(self, ifname: str) -> None:
        if await self.interface_exists(ifname):
            return
        # A socket left by a dead wireguard-go would make the new one refuse to start.
        self._socket(ifname).unlink(missing_ok=True)
        if await links.link_exists(ifname):
            await links.delete_link(ifname)
        env = {k: v for k, v in os.environ.items() if k != "WG_PROCESS_FOREGROUND"}
        proc = await trio.run_process([self.binary, ifname], env=env, check=False,
                                      capture_stdout=True, capture_stderr=True)
        if proc.returncode != 0:
            raise WireGuardError(f"wireguard-go {ifname} failed: "
                                 f"{(proc.stderr or proc.stdout).decode(errors='replace').strip()}")
        # wireguard-go creates its socket after the TUN; nothing signals it, so poll.
        with trio.move_on_after(5):
            while not await self.interface_exists(ifname):  # noqa: ASYNC110
                await trio.sleep(0.02)
        if not await self.interface_exists(ifname):
            raise WireGuardError(f"wireguard-go {ifname} did not come up")

    async def delete_interface(self, ifname: str) -> None:
        # Removing the TUN link makes wireguard-go exit and remove its socket.
        if await links.link_exists(ifname):
            await links.delete_link(ifname)
        with trio.move_on_after(2):
            while self._socket(ifname).exists():  # noqa: ASYNC110 (another process's file)
                await trio.sleep(0.02)
        self._socket(ifname).unlink(missing_ok=True)

    async def get_device(self, ifname: str) -> WgDeviceState:
        return parse_get(ifname, await self._uapi(ifname, b"get=1\n\n"))

    async def _set(self, ifname: str, request: bytes) -> None:
        errno = parse_errno(await self._uapi(ifname, request))
        if errno != 0:
            raise WireGuardError(f"{ifname}: wireguard-go refused the configuration (errno {errno})")

    async def set_device(self, ifname: str, *, private_key: str | None = None,
                         listen_port: int | None = None, fwmark: int | None = None) -> None:
        await self._set(ifname, encode_set(private_key=private_key, listen_port=listen_port,
                                           fwmark=fwmark))

    async def set_peer(self, ifname: str, peer: WgPeer) -> None:
        await self._set(ifname, encode_set(peers=(peer,)))

    async def remove_peer(self, ifname: str, public_key: str) -> None:
        await self._set(ifname, encode_set(remove=(public_key,)))

    async def set_link(self, ifname: str, link: LinkConfig) -> None:
        await links.configure(ifname, link)

    async def aclose(self) -> None:
        pass
