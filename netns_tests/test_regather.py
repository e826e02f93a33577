"""A local address change is noticed through netlink and published at once, not at the
next periodic re-gather (~25 s)."""

from __future__ import annotations

import json
import time

from netns_tests.lab import Lab
from netns_tests.lab.mesh import Mesh


def published(mesh: Mesh, node: str) -> set[str]:
    nodes = json.loads(mesh.admin("node", "list", "net", "--json").stdout)
    return {c["address"] for n in nodes if n["name"] == node for c in n["candidates"]}


def test_a_new_address_is_published_within_seconds(lab: Lab) -> None:
    mesh = Mesh(lab)
    mesh.start_server(dns=False)
    token = mesh.create_network("net", "198.19.0.0/24")
    site = lab.add_site("s", nat="none")
    host = site.hosts[0]
    node = mesh.start_node(host, "n")
    node.join(token)
    deadline = time.monotonic() + 10
    while f"{host.ip}:51820" not in published(mesh, "n"):
        assert time.monotonic() < deadline, published(mesh, "n")
        time.sleep(0.2)
    time.sleep(1.0)  # past the first gathering: what follows is the netlink path
    host.run(["ip", "addr", "add", "192.0.2.77/24", "dev", "eth0"])
    added = time.monotonic()
    while "192.0.2.77:51820" not in published(mesh, "n"):
        assert time.monotonic() - added < 5.0, published(mesh, "n")
        time.sleep(0.1)
    host.run(["ip", "addr", "del", "192.0.2.77/24", "dev", "eth0"])
    removed = time.monotonic()
    while "192.0.2.77:51820" in published(mesh, "n"):
        assert time.monotonic() - removed < 5.0, published(mesh, "n")
        time.sleep(0.1)
