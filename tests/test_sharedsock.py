"""The shared port's reader drains in batches (issue #22), without raw sockets."""

from __future__ import annotations

import errno
import socket
import struct
from collections import deque

import pytest
import trio
import trio.testing

from punchd.discovery.sharedsock import RECEIVE_BATCH, SharedPortSocket
from punchd.errors import NetworkDown

PORT = 51820


def ipv4_udp(src: tuple[str, int], dst_port: int, payload: bytes) -> bytes:
    ip = bytes([0x45]) + bytes(11) + socket.inet_aton(src[0]) + socket.inet_aton("127.0.0.1")
    return ip + struct.pack("!HHHH", src[1], dst_port, 8 + len(payload), 0) + payload


class QueuedRaw:
    """A non-blocking raw socket with datagrams waiting in its queue."""

    def __init__(self, packets: list[bytes], error: int | None = None) -> None:
        self.queue = deque(packets)
        self.error = error
        self.reads = 0

    def recvfrom(self, size: int) -> tuple[bytes, tuple[str, int]]:
        self.reads += 1
        if self.queue:
            return self.queue.popleft(), ("127.0.0.1", 0)
        raise OSError(self.error or errno.EAGAIN, "queue empty")

    def fileno(self) -> int:
        return -1

    def close(self) -> None:
        pass


def reader(raw: QueuedRaw) -> SharedPortSocket:
    sock = SharedPortSocket.__new__(SharedPortSocket)  # no raw sockets in fast tests
    sock.port, sock._recv4, sock._recv6, sock._poll = PORT, raw, None, None  # type: ignore[assignment]
    sock._early, sock.dropped, sock.batches = deque(), 0, 0
    sock.drained_at, sock._waiting = float("-inf"), False
    return sock


async def test_one_wake_hands_on_every_waiting_datagram_up_to_the_batch(
        autojump_clock: trio.testing.MockClock) -> None:
    n = RECEIVE_BATCH + 10
    raw = QueuedRaw([ipv4_udp(("127.0.0.1", 1000 + i), PORT, b"PNCH%d" % i) for i in range(n)]
                    + [ipv4_udp(("127.0.0.1", 9), PORT + 1, b"PNCH")])  # not our port
    sock = reader(raw)
    first = await sock.receive_batch()
    assert len(first) == RECEIVE_BATCH and first[0] == (b"PNCH0", ("127.0.0.1", 1000))
    assert not sock.caught_up(trio.current_time())  # more waits: not drained yet
    second = await sock.receive_batch()
    assert [src[1] for _, src in second] == list(range(1000 + RECEIVE_BATCH, 1000 + n))
    assert sock.dropped == 1 and sock.batches == 2
    assert sock.caught_up(trio.current_time())  # found empty just now
    assert raw.reads == n + 2  # plain reads: no await per datagram


async def test_a_receive_error_after_some_datagrams_hands_them_on_first(
        autojump_clock: trio.testing.MockClock) -> None:
    raw = QueuedRaw([ipv4_udp(("127.0.0.1", 7), PORT, b"PNCH")], error=errno.ENOBUFS)
    sock = reader(raw)
    assert len(await sock.receive_batch()) == 1
    with pytest.raises(NetworkDown, match="receive on the shared port"):
        await sock.receive_batch()
