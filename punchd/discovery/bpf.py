"""Classic BPF programs that let punchd's raw socket see only its own packets.

punchd shares WireGuard's UDP port: it receives on a raw socket, which would get a
copy of every UDP packet on the host — WireGuard's data too. The filter, run in the
kernel, passes only datagrams to the WireGuard port whose payload carries the STUN
magic cookie at offset 4 or the probe magic at offset 0, so WireGuard's traffic never
reaches Python. (NetBird's sharedsock does the same in Go.)

An IPv4 raw socket delivers the IP header, whose length varies (IHL), so the program
loads the header length into X (``ldxb 4*([0]&0xf)``) and drops fragments; an IPv6
raw socket delivers the payload only, so the UDP header is at offset 0.

:func:`run` is a tiny interpreter for the instructions used here, so the programs are
tested without root; the netns tests attach them to a real socket.
"""

from __future__ import annotations

import ctypes
import socket
import struct

from ..wire.stun import MAGIC_COOKIE

PROBE_MAGIC = int.from_bytes(b"PNCH", "big")
SO_ATTACH_FILTER = 26

# Classic BPF opcodes (linux/filter.h).
LD_W_ABS, LD_H_ABS, LD_B_ABS = 0x20, 0x28, 0x30
LD_W_IND, LD_H_IND = 0x40, 0x48
LDX_B_MSH = 0xB1
JEQ_K, JSET_K = 0x15, 0x45
RET_K = 0x06
ACCEPT, DROP = 0x40000, 0

Insn = tuple[int, int, int, int]  # code, jt, jf, k


def program_ipv4(port: int) -> list[Insn]:
    return [
        (LD_H_ABS, 0, 0, 6),            # 0 flags + fragment offset
        (JSET_K, 7, 0, 0x1FFF),         # 1 a later fragment: no UDP header here -> drop
        (LDX_B_MSH, 0, 0, 0),           # 2 X = IP header length
        (LD_H_IND, 0, 0, 2),            # 3 UDP destination port
        (JEQ_K, 0, 4, port),            # 4 not the WireGuard port -> drop
        (LD_W_IND, 0, 0, 12),           # 5 payload[4:8]
        (JEQ_K, 3, 0, MAGIC_COOKIE),     # 6 STUN -> accept
        (LD_W_IND, 0, 0, 8),            # 7 payload[0:4]
        (JEQ_K, 1, 0, PROBE_MAGIC),     # 8 probe -> accept
        (RET_K, 0, 0, DROP),            # 9
        (RET_K, 0, 0, ACCEPT),          # 10
    ]


def program_drop_all() -> list[Insn]:
    """For the raw *send* sockets: they would otherwise get a copy of every UDP datagram
    on the host, never read, so their full queue cost the kernel work per datagram."""
    return [(RET_K, 0, 0, DROP)]


def program_ipv6(port: int) -> list[Insn]:
    return [
        (LD_H_ABS, 0, 0, 2),            # 0 UDP destination port
        (JEQ_K, 0, 4, port),            # 1
        (LD_W_ABS, 0, 0, 12),           # 2 payload[4:8]
        (JEQ_K, 3, 0, MAGIC_COOKIE),     # 3
        (LD_W_ABS, 0, 0, 8),            # 4 payload[0:4]
        (JEQ_K, 1, 0, PROBE_MAGIC),     # 5
        (RET_K, 0, 0, DROP),            # 6
        (RET_K, 0, 0, ACCEPT),          # 7
    ]


def validate(program: list[Insn]) -> None:
    """The kernel's checks that matter here: every jump lands inside, the last is RET."""
    if not program or program[-1][0] != RET_K:
        raise ValueError("a classic BPF program must end with RET")
    for pc, (code, jt, jf, _) in enumerate(program):
        if code in (JEQ_K, JSET_K) and max(jt, jf) + pc + 1 >= len(program):
            raise ValueError(f"instruction {pc} jumps past the end")


def run(program: list[Insn], packet: bytes) -> bool:
    """Interpret ``program`` on ``packet`` as the kernel would (out of bounds = drop)."""
    validate(program)
    a = x = pc = 0
    while 0 <= pc < len(program):
        code, jt, jf, k = program[pc]
        try:
            if code == LD_W_ABS:
                a = struct.unpack_from("!I", packet, k)[0]
            elif code == LD_H_ABS:
                a = struct.unpack_from("!H", packet, k)[0]
            elif code == LD_B_ABS:
                a = packet[k]
            elif code == LD_W_IND:
                a = struct.unpack_from("!I", packet, x + k)[0]
            elif code == LD_H_IND:
                a = struct.unpack_from("!H", packet, x + k)[0]
            elif code == LDX_B_MSH:
                x = 4 * (packet[k] & 0x0F)
            elif code == JEQ_K:
                pc += jt if a == k else jf
            elif code == JSET_K:
                pc += jt if a & k else jf
            elif code == RET_K:
                return k != 0
            else:
                raise ValueError(f"opcode {code:#x} not supported")
        except (struct.error, IndexError):
            return False
        pc += 1
    return False


def attach(sock: socket.socket, program: list[Insn]) -> None:
    """SO_ATTACH_FILTER: struct sock_fprog { u16 len; struct sock_filter *filter; }."""
    blob = b"".join(struct.pack("HBBI", code, jt, jf, k) for code, jt, jf, k in program)
    buf = ctypes.create_string_buffer(blob)
    fprog = struct.pack("HL", len(program), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
