"""Send and receive STUN and probes on WireGuard's UDP port, without owning its socket.

Sending: a raw UDP socket (``SOCK_RAW``, ``IPPROTO_UDP``) with a hand-built UDP header
whose source port is WireGuard's; the kernel builds the IP header, so the NAT sees the
very 5-tuple WireGuard uses. IPv4's UDP checksum may be zero (RFC 768); IPv6 needs
one, which the kernel fills in (``IPV6_CHECKSUM`` at offset 6).

Receiving: a raw UDP socket of the same kind, with the classic-BPF filter of
:mod:`punchd.discovery.bpf` attached, so only STUN and probe datagrams to the
WireGuard port are copied to punchd; WireGuard still receives them too and drops
them (their first byte is not a WireGuard message type). The send sockets get a
filter that drops everything: a raw socket receives whether or not it is read.

Both families: an IPv4 pair and, where the host has IPv6, an IPv6 pair; one
``receive_batch()`` yields what either has. An IPv4 raw socket delivers the IP
header, an IPv6 one only the UDP header and payload (the source comes with
``recvfrom``).

Reading in batches. A node with hundreds of peers gets hundreds of probes a second on
this one port. One ``await recvfrom`` per datagram costs a scheduler pass each (and,
with two families, a nursery of two tasks each): the reader fell behind, the
socket's buffer filled and the kernel dropped probes, which the sessions then took
for lost paths (issue #22). So one wake drains every datagram waiting, up to
``RECEIVE_BATCH``, with plain non-blocking ``recvfrom`` calls; both families are
waited on at once through one epoll descriptor (no task per family).
``drained_at`` is when the reader last found both sockets empty: what arrived
before it has been handed on (see :meth:`caught_up`).
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import select
import socket
import struct
from collections import deque
from collections.abc import Callable

import trio

from punchd.errors import NetworkDown, SharedPortError
from punchd.wire import stun

from ..wire.addr import Addr
from . import bpf

IPV6_CHECKSUM = 7
# Datagrams handed on per wake: enough to empty a busy socket in a few passes, few
# enough that the sessions they wake run before the next batch.
RECEIVE_BATCH = 64
_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK)


class SharedPortSocket:
    """STUN/probe I/O on ``port``; ``receive()`` yields (payload, source) for our packets."""

    def __init__(self, port: int) -> None:
        self.port = port
        try:
            self._send4 = trio.socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
            bpf.attach(self._send4, bpf.program_drop_all())  # type: ignore[arg-type]
            self._recv4 = _nonblocking(socket.socket(socket.AF_INET, socket.SOCK_RAW,
                                                     socket.IPPROTO_UDP))
            bpf.attach(self._recv4, bpf.program_ipv4(port))
        except OSError as exc:
            raise SharedPortError(f"raw sockets for port {port}: {exc.strerror} "
                                  "(punchd needs CAP_NET_RAW)") from exc
        self._send6: trio.socket.SocketType | None = None
        self._recv6: socket.socket | None = None
        try:
            self._send6 = trio.socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_UDP)
            # IPv6 forbids a zero UDP checksum: the kernel computes it at offset 6.
            self._send6.setsockopt(socket.IPPROTO_IPV6, IPV6_CHECKSUM, 6)
            bpf.attach(self._send6, bpf.program_drop_all())  # type: ignore[arg-type]
            self._recv6 = _nonblocking(socket.socket(socket.AF_INET6, socket.SOCK_RAW,
                                                     socket.IPPROTO_UDP))
            bpf.attach(self._recv6, bpf.program_ipv6(port))
        except OSError:  # no IPv6 on this host: IPv4 alone
            for sock in (self._send6, self._recv6):
                if sock is not None:
                    sock.close()
            self._send6 = self._recv6 = None
        # Both families readable through one descriptor: one wait, no task per family.
        self._poll: select.epoll | None = None
        if self._recv6 is not None:
            self._poll = select.epoll()
            self._poll.register(self._recv4.fileno(), select.EPOLLIN)
            self._poll.register(self._recv6.fileno(), select.EPOLLIN)
        self._early: deque[tuple[bytes, Addr]] = deque()  # for receive(), one at a time
        self.dropped = 0
        self.batches = 0
        self.drained_at = float("-inf")
        self._waiting = False  # blocked on empty sockets: nothing is behind

    @property
    def ipv6(self) -> bool:
        return self._send6 is not None

    def close(self) -> None:
        for sock in (self._send4, self._recv4, self._send6, self._recv6):
            if sock is not None:
                sock.close()
        if self._poll is not None:
            self._poll.close()

    async def send(self, payload: bytes, dest: Addr) -> None:
        """Send from WireGuard's port; a host without a route or address right now (a
        laptop losing its link) raises NetworkDown, never a bare OSError."""
        header = struct.pack("!HHHH", self.port, dest[1], 8 + len(payload), 0)
        try:
            version = _ip_version(dest[0])
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
        if not self._early:
            self._early.extend(await self.receive_batch())
        else:
            await trio.lowlevel.checkpoint()
        return self._early.popleft()

    async def receive_batch(self, limit: int = RECEIVE_BATCH) -> list[tuple[bytes, Addr]]:
        """Every STUN or probe datagram waiting (at least one, at most ``limit``)."""
        while True:
            self._waiting = False
            batch = self._drain(limit)
            if batch:
                self.batches += 1
                await trio.lowlevel.checkpoint()
                return batch
            self._waiting = True
            try:
                await trio.lowlevel.wait_readable(
                    self._poll if self._poll is not None else self._recv4)
            finally:
                self._waiting = False

    def caught_up(self, since: float) -> bool:
        """Whether everything that arrived before ``since`` has been handed on: the
        reader waits on empty sockets, or found them empty after ``since``."""
        return self._waiting or self.drained_at >= since

    def _drain(self, limit: int) -> list[tuple[bytes, Addr]]:
        batch: list[tuple[bytes, Addr]] = []
        empty = self._drain_one(self._recv4, self._parse4, batch, limit)
        if self._recv6 is not None:
            empty = self._drain_one(self._recv6, self._parse6, batch, limit) and empty
        if empty:
            self.drained_at = trio.current_time()
        return batch

    def _drain_one(self, sock: socket.socket,
                   parse: Callable[[bytes, tuple[object, ...]], tuple[bytes, Addr] | None],
                   batch: list[tuple[bytes, Addr]], limit: int) -> bool:
        """Read into ``batch`` until ``sock`` is empty (True) or the batch is full."""
        while len(batch) < limit:
            try:
                data, source = sock.recvfrom(65535)
            except OSError as exc:
                if exc.errno in _AGAIN:
                    return True
                if batch:  # hand on what was read; the error comes back next call
                    return False
                raise NetworkDown(f"receive on the shared port: {exc.strerror or exc}") from exc
            got = parse(data, source)
            if got is not None:
                batch.append(got)
        return False

    def _parse4(self, packet: bytes, _source: tuple[object, ...]) -> tuple[bytes, Addr] | None:
        ihl = 4 * (packet[0] & 0x0F) if packet else 0
        if len(packet) < ihl + 8:
            self.dropped += 1
            return None
        src_ip = socket.inet_ntoa(packet[12:16])
        src_port, dst_port = struct.unpack_from("!HH", packet, ihl)
        payload = packet[ihl + 8:]
        if not self._ours(dst_port, payload):
            return None
        return payload, (src_ip, src_port)

    def _parse6(self, datagram: bytes, source: tuple[object, ...]) -> tuple[bytes, Addr] | None:
        if len(datagram) < 8:
            self.dropped += 1
            return None
        src_port, dst_port = struct.unpack_from("!HH", datagram)
        payload = datagram[8:]
        if not self._ours(dst_port, payload):
            return None
        return payload, (str(ipaddress.ip_address(str(source[0]).split("%")[0])), src_port)

    def _ours(self, dst_port: int, payload: bytes) -> bool:
        if dst_port != self.port or not (stun.is_stun(payload) or payload[:4] == b"PNCH"):
            self.dropped += 1  # the filter should have stopped it; count, never trust
            return False
        return True


@functools.lru_cache(maxsize=8192)
def _ip_version(text: str) -> int:
    """4 or 6; parsed once per destination, not once per probe sent."""
    return ipaddress.ip_address(text).version


def _nonblocking(sock: socket.socket) -> socket.socket:
    sock.setblocking(False)
    return sock
