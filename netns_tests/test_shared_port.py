"""The shared WireGuard port on real sockets, IPv4 and IPv6, in a namespace of the
test's own: STUN and probes reach punchd's raw socket, WireGuard's messages do not,
and what punchd sends from the port arrives at an ordinary UDP socket (so the UDP
checksum is right, which IPv6 insists on)."""

from __future__ import annotations

import socket
import subprocess
import uuid
from collections.abc import Iterator

import pytest
import trio
from pyroute2 import netns as namespaces

from punchd.discovery.sharedsock import SharedPortSocket
from punchd.wire import stun

PORT = 51820


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"pdsp{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def in_netns(name: str, make):  # type: ignore[no-untyped-def]
    namespaces.pushns(name)
    try:
        return make()
    finally:
        namespaces.popns()


@pytest.mark.parametrize(("family", "loopback"), [(socket.AF_INET, "127.0.0.1"),
                                                  (socket.AF_INET6, "::1")])
async def test_only_stun_and_probes_reach_punchd_and_sends_arrive(
        netns: str, family: int, loopback: str) -> None:
    shared = in_netns(netns, lambda: SharedPortSocket(PORT))
    peer = in_netns(netns, lambda: trio.socket.socket(family, socket.SOCK_DGRAM))
    try:
        assert shared.ipv6
        await peer.bind((loopback, 0))
        peer_port = peer.getsockname()[1]
        wireguard = [b"\x01\x00\x00\x00" + bytes(144), b"\x04\x00\x00\x00" + bytes(60)]
        request = stun.binding_request(bytes(12))
        for datagram in (*wireguard, b"PNCH" + bytes(40), request):
            await peer.sendto(datagram, (loopback, PORT))
        got = []
        with trio.move_on_after(0.5):
            while len(got) < 3:
                got.append(await shared.receive())
        assert [d for d, _ in got] == [b"PNCH" + bytes(40), request]
        assert {src for _, src in got} == {(loopback, peer_port)}
        # From WireGuard's port to an ordinary socket: checksum and source port right.
        await shared.send(b"PNCH from the port", (loopback, peer_port))
        with trio.fail_after(1):
            data, src = await peer.recvfrom(2048)
        assert data == b"PNCH from the port" and src[1] == PORT
    finally:
        shared.close()
        peer.close()
