"""A plain userspace UDP relay for the relay-mesh contender: two ports, two peers.

    python -m bench.udp_relay IP PORT_A PORT_B

Whatever arrives on PORT_A is sent from PORT_B to the last address that spoke to
PORT_B, and vice versa. Each side is learned from its packets (and re-learned when
its NAT mapping changes), the way a TURN-less relay for WireGuard works. Until the
other side has spoken, packets are dropped: a WireGuard handshake sent then is lost
and retried by WireGuard 5 s later, which is part of what the benchmark measures.
"""

from __future__ import annotations

import selectors
import socket
import sys


def relay(ip: str, port_a: int, port_b: int) -> None:
    socks = []
    for port in (port_a, port_b):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((ip, port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        socks.append(sock)
    peers: list[tuple[str, int] | None] = [None, None]
    selector = selectors.DefaultSelector()
    for index, sock in enumerate(socks):
        selector.register(sock, selectors.EVENT_READ, index)
    print(f"udp_relay: ready on {ip}:{port_a} <-> {ip}:{port_b}", flush=True)
    while True:
        for key, _ in selector.select():
            side = key.data
            sock = socks[side]
            # Drain the socket: one select per packet would halve the rate.
            while True:
                try:
                    data, addr = sock.recvfrom(65535, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
                if peers[side] != addr:
                    peers[side] = addr
                    print(f"udp_relay: side {'AB'[side]} is {addr[0]}:{addr[1]}", flush=True)
                other = peers[1 - side]
                if other is not None:
                    try:
                        socks[1 - side].sendto(data, other)
                    except OSError:
                        pass  # a full buffer drops the packet, as a router would


def main() -> int:
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    relay(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
