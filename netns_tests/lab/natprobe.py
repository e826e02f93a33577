"""Measure a NAT's mapping and filtering behaviour from inside the lab (RFC 4787 terms).

Two halves, both plain blocking sockets (a lab tool, not product code):

``serve IP1 IP2 PORT1 PORT2``
    runs on the server: binds the four (ip, port) combinations and answers every
    ``see`` datagram with the source address it saw; ``alt-port`` / ``alt-addr``
    answer from the other port / the other address instead.

``probe IP1 IP2 PORT1 PORT2``
    runs on a host behind a NAT and prints one JSON object::

        {"mappings": {"ip1:p1": "a:b", ...}, "mapping": "endpoint-independent" |
         "address-dependent" | "address-and-port-dependent", "filtering": (same words),
         "port_preserved": bool, "local_port": n}

Each test uses a fresh local port, so a filter opened by one test cannot help another.
"""

from __future__ import annotations

import argparse
import json
import secrets
import select
import socket
import sys

from punchd.wire.addr import parse_addr

TIMEOUT = 0.7


def serve(ip1: str, ip2: str, port1: int, port2: int) -> None:
    socks: dict[tuple[str, int], socket.socket] = {}
    for ip in (ip1, ip2):
        for port in (port1, port2):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((ip, port))
            socks[(ip, port)] = s
    other_ip = {ip1: ip2, ip2: ip1}
    other_port = {port1: port2, port2: port1}
    print("natprobe: serving", flush=True)
    by_fd = {s.fileno(): (local, s) for local, s in socks.items()}
    while True:
        ready, _, _ = select.select(list(by_fd), [], [])
        for fd in ready:
            (lip, lport), s = by_fd[fd]
            data, src = s.recvfrom(2048)
            words = data.decode(errors="replace").split()
            if len(words) != 2:
                continue
            verb, nonce = words
            reply = f"{nonce} {src[0]}:{src[1]}".encode()
            if verb == "see":
                s.sendto(reply, src)
            elif verb == "alt-port":
                socks[(lip, other_port[lport])].sendto(reply, src)
            elif verb == "alt-addr":
                socks[(other_ip[lip], lport)].sendto(reply, src)


def _ask(sock: socket.socket, verb: str, dest: tuple[str, int], tries: int = 3) -> str | None:
    """Send ``verb`` and return the mapped address the server saw, or None if no reply came."""
    nonce = secrets.token_hex(4)
    for _ in range(tries):
        sock.sendto(f"{verb} {nonce}".encode(), dest)
        sock.settimeout(TIMEOUT)
        try:
            while True:
                data, _ = sock.recvfrom(2048)
                got_nonce, _, seen = data.decode().partition(" ")
                if got_nonce == nonce:
                    return seen
        except TimeoutError:
            continue
    return None


def _fresh_socket() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 0))
    return s


def probe(ip1: str, ip2: str, port1: int, port2: int) -> dict[str, object]:
    # Mapping (RFC 4787 §4.1 / RFC 5780 §4.3): one local port, three destinations.
    with _fresh_socket() as s:
        local_port = s.getsockname()[1]
        m1 = _ask(s, "see", (ip1, port1))
        m2 = _ask(s, "see", (ip2, port1))
        m3 = _ask(s, "see", (ip2, port2))
    if m1 is None or m2 is None or m3 is None:
        mapping = "unreachable"
    elif m1 == m2 == m3:
        mapping = "endpoint-independent"
    elif m2 == m3:
        mapping = "address-dependent"
    else:
        mapping = "address-and-port-dependent"

    # Filtering (RFC 5780 §4.4): does a reply from another address / port come through?
    with _fresh_socket() as s:
        from_other_addr = _ask(s, "alt-addr", (ip1, port1)) is not None
    with _fresh_socket() as s:
        from_other_port = _ask(s, "alt-port", (ip1, port1)) is not None
    if from_other_addr:
        filtering = "endpoint-independent"
    elif from_other_port:
        filtering = "address-dependent"
    else:
        filtering = "address-and-port-dependent"

    return {
        "mappings": {f"{ip1}:{port1}": m1, f"{ip2}:{port1}": m2, f"{ip2}:{port2}": m3},
        "mapping": mapping,
        "filtering": filtering,
        "port_preserved": m1 is not None and parse_addr(m1)[1] == local_port,
        "local_port": local_port,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["serve", "probe"])
    parser.add_argument("ip1")
    parser.add_argument("ip2")
    parser.add_argument("port1", type=int)
    parser.add_argument("port2", type=int)
    args = parser.parse_args(argv)
    if args.mode == "serve":
        serve(args.ip1, args.ip2, args.port1, args.port2)
        return 0
    print(json.dumps(probe(args.ip1, args.ip2, args.port1, args.port2)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
