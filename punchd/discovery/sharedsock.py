"""Send and receive STUN and probes on WireGuard's UDP port, without owning its socket.

Sending: a raw UDP socket (``SOCK_RAW``, ``IPPROTO_UDP``) with a hand-built UDP header
whose source port is WireGuard's; the kernel builds the IP header, so the NAT sees the
very 5-tuple WireGuard uses. IPv4's UDP checksum may be zero (RFC 768); IPv6 needs
one, which the kernel fills in (``IPV6_CHECKSUM`` at offset 6).

Receiving: a raw UDP socket of the same kind, with the classic-BPF filter of
:mod:`punchd.discovery.bpf` attached, so only STUN and probe datagrams to the
WireGuard port are copied to punchd; WireGuard still receives them too and drops
them (their first byte is not a WireGuard message type).

Both families: an IPv4 pair and, where the host has IPv6, an IPv6 pair; one
``receive()`` yields whichever has a datagram. An IPv4 raw socket delivers the IP
header, an IPv6 one only the UDP header and payload (the source comes with
``recvfrom``).
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections import deque
from collections.abc import Awaitable, Callable

import trio

from punchd.errors import NetworkDown, SharedPortError
from punchd.wire import stun

from ..wire.addr import Addr
from . import bpf

IPV6_CHECKSUM = 7


class SharedPortSocket:
    """STUN/probe I/O on ``port``; ``receive()`` yields (payload, source) for our packets."""

    def __init__(self, port: int) -> None:
        self.port = port
        try:
            self._send4 = trio.socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
            self._recv4 = trio.socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
            bpf.attach(self._recv4, bpf.program_ipv4(port))  # type: ignore[arg-type]
        except OSError as exc:
            raise SharedPortError(f"raw sockets for port {port}: {exc.strerror} "
                                  "(punchd needs CAP_NET_RAW)") from exc
        self._send6: trio.socket.SocketType | None = None
        self._recv6: trio.socket.SocketType | None = None
        try:
            self._send6 = trio.socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_UDP)
            # IPv6 forbids a zero UDP checksum: the kernel computes it at offset 6.
            self._send6.setsockopt(socket.IPPROTO_IPV6, IPV6_CHECKSUM, 6)
            self._recv6 = trio.socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_UDP)
            bpf.attach(self._recv6, bpf.program_ipv6(port))  # type: ignore[arg-type]
        except OSError:  # no IPv6 on this host: IPv4 alone
            for sock in (self._send6, self._recv6):
                if sock is not None:
                    sock.close()
            self._send6 = self._recv6 = None
        self._early: deque[tuple[bytes, Addr]] = deque()  # both families answered at once
        self.dropped = 0

    @property
    def ipv6(self) -> bool:
        return self._send6 is not None

    def close(self) -> None:
        for sock in (self._send4, self._recv4, self._send6, self._recv6):
            if sock is not None:
                sock.close()

    async def send(self, payload: bytes, dest: Addr) -> None:
        """Send from WireGuard's port; a host without a route or address right now (a
        laptop losing its link) raises NetworkDown, never a bare OSError."""
        header = struct.pack("!HHHH", self.port, dest[1], 8 + len(payload), 0)
        try:
            version = ipaddress.ip_address(dest[0]).version
        except ValueError as exc:
            raise SharedPortError(f"not an IP address: {dest[0]!r}") from exc
        if version == 6 and self._send6 is None:
            raise SharedPortError(f"no IPv6 on this host for {dest[0]}")
        sock = self._send4 if version == 4 else self._send6
        assert sock is not None
        try:
            await sock.sendto(header + payload, (dest[0], 0))
        except OSError as exc:
            raise NetworkDown(f"send to {dest[0]}:{dest[1]}: {exc.strerror or exc}") from exc

    async def receive(self) -> tuple[bytes, Addr]:
        """The next STUN or probe datagram sent to the WireGuard port, and its source."""
        if self._early:
            await trio.lowlevel.checkpoint()
            return self._early.popleft()
        if self._recv6 is None:
            return await self._receive4()
        async with trio.open_nursery() as nursery:
            # Whichever family has a datagram first. If both read one before the
            # cancellation lands, the second is kept for the next call.
            result: list[tuple[bytes, Addr]] = []

            async def one(receive: Callable[[], Awaitable[tuple[bytes, Addr]]]) -> None:
                result.append(await receive())
                nursery.cancel_scope.cancel()

            nursery.start_soon(one, self._receive4)
            nursery.start_soon(one, self._receive6)
        self._early.extend(result[1:])
        return result[0]

    async def _receive4(self) -> tuple[bytes, Addr]:
        while True:
            packet, _ = await _recvfrom(self._recv4)
            ihl = 4 * (packet[0] & 0x0F) if packet else 0
            if len(packet) < ihl + 8:
                self.dropped += 1
                continue
            src_ip = socket.inet_ntoa(packet[12:16])
            src_port, dst_port = struct.unpack_from("!HH", packet, ihl)
            payload = packet[ihl + 8:]
            if not self._ours(dst_port, payload):
                continue
            return payload, (src_ip, src_port)

    async def _receive6(self) -> tuple[bytes, Addr]:
        assert self._recv6 is not None
        while True:
            datagram, source = await _recvfrom(self._recv6)
            if len(datagram) < 8:
                self.dropped += 1
                continue
            src_port, dst_port = struct.unpack_from("!HH", datagram)
            payload = datagram[8:]
            if not self._ours(dst_port, payload):
                continue
            return payload, (str(ipaddress.ip_address(str(source[0]).split("%")[0])), src_port)

    def _ours(self, dst_port: int, payload: bytes) -> bool:
        if dst_port != self.port or not (stun.is_stun(payload) or payload[:4] == b"PNCH"):
            self.dropped += 1  # the filter should have stopped it; count, never trust
            return False
        return True


async def _recvfrom(sock: trio.socket.SocketType) -> tuple[bytes, Addr]:
    try:
        data, source = await sock.recvfrom(65535)
    except OSError as exc:
        raise NetworkDown(f"receive on the shared port: {exc.strerror or exc}") from exc
    return data, (str(source[0]), int(source[1]))
