"""Send and receive STUN and probes on WireGuard's UDP port, without owning its socket.

Sending: a raw UDP socket (``SOCK_RAW``, ``IPPROTO_UDP``) with a hand-built UDP header
whose source port is WireGuard's; the kernel builds the IP header, so the NAT sees the
very 5-tuple WireGuard uses. IPv4's UDP checksum may be zero (RFC 768); IPv6 needs
one, which the kernel fills in (``IPV6_CHECKSUM`` at offset 6).

Receiving: a raw UDP socket of the same kind, with the classic-BPF filter of
:mod:`punchd.discovery.bpf` attached, so only STUN and probe datagrams to the
WireGuard port are copied to punchd; WireGuard still receives them too and drops
them (their first byte is not a WireGuard message type).
"""

from __future__ import annotations

import ipaddress
import socket
import struct

import trio

from punchd.errors import PunchdError
from punchd.wire import stun

from . import bpf

Addr = tuple[str, int]
IPV6_CHECKSUM = 7


class SharedPortError(PunchdError):
    """The raw sockets for the WireGuard port could not be opened (needs CAP_NET_RAW)."""


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
        self.dropped = 0

    def close(self) -> None:
        self._send4.close()
        self._recv4.close()

    async def send(self, payload: bytes, dest: Addr) -> None:
        if ipaddress.ip_address(dest[0]).version != 4:
            raise SharedPortError("IPv6 destinations are not supported yet")
        header = struct.pack("!HHHH", self.port, dest[1], 8 + len(payload), 0)
        await self._send4.sendto(header + payload, (dest[0], 0))

    async def receive(self) -> tuple[bytes, Addr]:
        """The next STUN or probe datagram sent to the WireGuard port, and its source."""
        while True:
            packet, _ = await self._recv4.recvfrom(65535)
            ihl = 4 * (packet[0] & 0x0F) if packet else 0
            if len(packet) < ihl + 8:
                self.dropped += 1
                continue
            src_ip = socket.inet_ntoa(packet[12:16])
            src_port, dst_port = struct.unpack_from("!HH", packet, ihl)
            payload = packet[ihl + 8:]
            if dst_port != self.port or not (stun.is_stun(payload) or payload[:4] == b"PNCH"):
                self.dropped += 1  # the filter should have stopped it; count, never trust
                continue
            return payload, (src_ip, src_port)
