"""The BPF filters: what must reach punchd and what must not (WireGuard's traffic)."""

from __future__ import annotations

import struct

import pytest

from punchd.discovery import bpf
from punchd.wire import stun

WG_PORT = 51820
STUN_REQ = stun.binding_request(b"t" * 12)
PROBE = b"PNCH\x01" + b"\x00" * 40
WG_INIT = struct.pack("<I", 1) + b"\x00" * 144
WG_DATA = struct.pack("<I", 4) + b"\x00" * 60


def udp(payload: bytes, dport: int = WG_PORT, sport: int = 3478) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def ipv4(segment: bytes, *, options: bytes = b"", frag: int = 0) -> bytes:
    ihl = 5 + len(options) // 4
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 20 + len(options) + len(segment), 1,
                         frag, 64, 17, 0, bytes([192, 0, 2, 1]), bytes([198, 51, 100, 7]))
    return header + options + segment


V4 = bpf.program_ipv4(WG_PORT)
V6 = bpf.program_ipv6(WG_PORT)


@pytest.mark.parametrize(("packet", "passes"), [
    (ipv4(udp(STUN_REQ)), True),
    (ipv4(udp(PROBE)), True),
    (ipv4(udp(STUN_REQ), options=b"\x01\x01\x01\x00"), True),  # IP options: IHL 6
    (ipv4(udp(WG_INIT)), False),
    (ipv4(udp(WG_DATA)), False),
    (ipv4(udp(STUN_REQ, dport=51821)), False),  # STUN, but for another port
    (ipv4(udp(STUN_REQ), frag=0x0010), False),  # a later fragment
    (ipv4(udp(b"PNC")), False),  # too short to carry the magic
    (ipv4(b""), False),  # truncated
])
def test_ipv4_filter(packet: bytes, passes: bool) -> None:
    assert bpf.run(V4, packet) is passes


def with_cookie(msg_type: int) -> bytes:
    """A WireGuard message whose bytes 4..8 (its receiver index) happen to be the cookie."""
    return struct.pack("<I", msg_type) + b"\x21\x12\xa4\x42" + b"\x00" * 40


# An AF_INET6 raw socket's filter sees the UDP header at offset 0, no IP header
# (checked on this kernel by tests/test_sharedsock.py, which attaches the program).
@pytest.mark.parametrize(("packet", "passes"), [
    (udp(STUN_REQ), True), (udp(PROBE), True),
    (udp(b"\x00\x01\x00\x00\x21\x12\xa4\x42"), True),  # bare header: the filter looks at the cookie only
    *[(udp(struct.pack("<I", t) + b"\x00" * 60), False) for t in (1, 2, 3, 4)],
    (udp(STUN_REQ, dport=4500), False), (udp(PROBE, dport=WG_PORT + 1), False),
    (udp(STUN_REQ[:4] + b"\x21\x12\xa4\x43" + STUN_REQ[8:]), False),  # wrong cookie
    (udp(b"PNCx" + b"\x00" * 8), False),  # wrong probe magic
    (udp(b"PNC"), False), (udp(STUN_REQ[:7]), False), (udp(b""), False),  # too short
    (b"\x00\x01", False), (b"", False),
])
def test_ipv6_filter(packet: bytes, passes: bool) -> None:
    assert bpf.run(V6, packet) is passes


def test_wireguard_messages_never_look_like_ours() -> None:
    for msg_type in (1, 2, 3, 4):
        payload = struct.pack("<I", msg_type) + b"\x21\x12\xa4\x42" * 10
        # Even a WireGuard message that happens to carry the cookie bytes at offset 4
        # fails stun.is_stun, so punchd would drop it after the filter too.
        assert not stun.is_stun(payload)


def test_programs_pass_the_kernels_structural_checks() -> None:
    bpf.validate(V4)
    bpf.validate(V6)
    with pytest.raises(ValueError, match="past the end"):
        bpf.validate([(bpf.JEQ_K, 0, 5, 1), (bpf.RET_K, 0, 0, 0)])


@pytest.mark.parametrize("packet", [udp(STUN_REQ), udp(PROBE), b"", b"\x45" + bytes(40)])
def test_the_send_sockets_filter_drops_everything(packet: bytes) -> None:
    program = bpf.program_drop_all()
    bpf.validate(program)
    assert bpf.run(program, packet) is False
