"""Runs the WireGuard conformance suite inside a namespace: ``python -m ... BACKEND IFNAME``.

The backends act on the calling process's network namespace, so the netns tests
run this module in a lab host rather than touching the machine's own namespace.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import trio

from punchd.wg import open_backend
from tests.wg_conformance import ObservedLink, run_conformance


async def ip_json(*args: str) -> Any:
    done = await trio.run_process(["ip", "-j", *args], capture_stdout=True)
    return json.loads(done.stdout or b"[]")


async def read_link(ifname: str) -> ObservedLink:
    """The link as the kernel has it, read by ``ip`` rather than by the code under test."""
    [link] = await ip_json("link", "show", "dev", ifname)
    [addrs] = await ip_json("addr", "show", "dev", ifname)
    routes = await ip_json("route", "show", "dev", ifname, "proto", "static")
    return ObservedLink(
        frozenset(f"{a['local']}/{a['prefixlen']}" for a in addrs["addr_info"]
                  if not a["local"].startswith("fe80")),
        int(link["mtu"]), "UP" in link["flags"], frozenset(r["dst"] for r in routes))


def main() -> int:
    kind, ifname = sys.argv[1], sys.argv[2]
    backend = open_backend(kind)  # type: ignore[arg-type]
    trio.run(run_conformance, backend, ifname, read_link)
    print("conformance: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
