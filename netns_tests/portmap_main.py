"""Run inside a lab host: map a UDP port, report it, receive one datagram, close.

``python -m netns_tests.portmap_main PORT PROTOCOLS`` (comma-separated) prints one JSON
line when mapped (``{"external": "ip:port", "protocol": ..., "elapsed": seconds,
"statistics": ...}``), then waits (at most
20 s) for a datagram on PORT and prints ``{"received": ..., "source": ...}``, then
leaves the context manager (deleting the mapping) and prints ``{"closed": true}``.
"""

from __future__ import annotations

import json
import socket
import sys

import msgspec
import trio

from punchd.portmap.client import open_port_mapping
from punchd.portmap.schedule import PROTOCOLS, Protocol


async def main(port: int, protocols: tuple[Protocol, ...]) -> None:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.bind(("0.0.0.0", port))
    start = trio.current_time()
    async with open_port_mapping(port, protocols=protocols, lifetime=120) as mapping:
        assert mapping.external is not None
        print(json.dumps({"external": f"{mapping.external[0]}:{mapping.external[1]}",
                          "protocol": mapping.protocol,
                          "elapsed": round(trio.current_time() - start, 4),
                          "statistics": msgspec.to_builtins(mapping.statistics())}), flush=True)
        with trio.move_on_after(20):
            data, source = await sock.recvfrom(2048)
            print(json.dumps({"received": data.decode(), "source": source[0]}), flush=True)
    print(json.dumps({"closed": True}), flush=True)


if __name__ == "__main__":
    names = tuple(p for p in sys.argv[2].split(",") if p in PROTOCOLS)
    trio.run(main, int(sys.argv[1]), names)  # type: ignore[arg-type]
