"""The relay with real punchd daemons behind the lab's NATs.

Pairs that cannot be punched (symmetric on both sides; a site that lets UDP out only
to the server) connect through the relay and pass pings, with either forwarder. A
pair whose punching is delayed starts on the relay and moves to the direct path
without losing a ping at 10/s; a direct path that dies falls back to the relay
within ~2 s and goes direct again once the path is back.
"""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from netns_tests.lab import Lab, Site
from netns_tests.lab.mesh import Mesh, MeshNode

from .test_punch import NETWORK, peer_status

FALLBACK_WITHIN_S = 2.0
SLACK_S = 1.0  # status polling and a loaded machine


def start(lab: Lab, nat_a: str, nat_b: str, mode: str = "nft"
          ) -> tuple[Mesh, MeshNode, MeshNode, Site, Site]:
    mesh = Mesh(lab)
    mesh.start_server(dns=False, relay="auto", relay_mode=mode)
    token = mesh.create_network(NETWORK, "198.19.0.0/24")
    site_a, site_b = lab.add_site("a", nat=nat_a), lab.add_site("b", nat=nat_b)
    a, b = mesh.start_node(site_a.hosts[0], "a"), mesh.start_node(site_b.hosts[0], "b")
    a.join(token)
    b.join(token)
    return mesh, a, b, site_a, site_b


def wait_path(nodes: tuple[MeshNode, MeshNode], path: str, timeout: float
              ) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            states = [peer_status(n) for n in nodes]
        except ValueError:  # the peer is not in the model yet
            states = []
        if states and all(s["path"] == path for s in states):
            return states
        if time.monotonic() > deadline:
            raise AssertionError(f"not {path} within {timeout} s: {states}")
        time.sleep(0.05)


def missing_replies(ping_output: str) -> tuple[int, list[int]]:
    """(replies, sequence numbers missing between the first and the last reply)."""
    seqs = sorted({int(m) for m in re.findall(r"icmp_seq=(\d+) ttl", ping_output)})
    assert seqs, ping_output
    return len(seqs), sorted(set(range(seqs[0], seqs[-1] + 1)) - set(seqs))


@pytest.mark.parametrize(("nat_a", "nat_b", "mode"), [
    ("sym", "sym", "nft"), ("sym", "sym", "userspace"), ("block", "prc", "nft")])
def test_unpunchable_pairs_go_through_the_relay(lab: Lab, nat_a: str, nat_b: str,
                                                mode: str) -> None:
    _, a, b, _, _ = start(lab, nat_a, nat_b, mode)
    states = wait_path((a, b), "relay", 10.0)
    for state in states:
        assert state["endpoint"].startswith(lab.server.ip + ":"), state
        assert state["relay"]["endpoint"] == state["endpoint"], state
    for src, dst in ((a, b), (b, a)):
        res = src.ping(dst.mesh_address(NETWORK), count=3)
        assert res.returncode == 0, res.stdout
    if mode == "nft":  # the kernel carried it: the table exists and counted datagrams
        table = lab.server.run(["nft", "list", "table", "ip", "punchd_relay"]).stdout
        assert re.search(r"packets [1-9]", table), table


def test_delayed_punching_starts_on_the_relay_and_moves_direct_without_loss(lab: Lab) -> None:
    mesh = Mesh(lab)
    mesh.start_server(dns=False, relay="auto")
    token = mesh.create_network(NETWORK, "198.19.0.0/24")
    site_a, site_b = lab.add_site("a", nat="prc"), lab.add_site("b", nat="prc")
    lab.block_udp(site_a, site_b)  # punching cannot work yet
    a, b = mesh.start_node(site_a.hosts[0], "a"), mesh.start_node(site_b.hosts[0], "b")
    a.join(token)
    b.join(token)
    wait_path((a, b), "relay", 10.0)
    pinger = a.host.spawn(["ping", "-n", "-i", "0.1", "-c", "250", "-W", "1",
                           b.mesh_address(NETWORK)], name="ping-switch")
    time.sleep(1.0)
    lab.unblock_udp(site_a, site_b)
    states = wait_path((a, b), "direct", 20.0)  # the next direct attempt (backoff ~10 s)
    time.sleep(1.0)
    pinger.stop()
    replies, missing = missing_replies(pinger.read_log())
    assert replies >= 20 and missing == [], (missing, pinger.read_log()[-500:])
    for state, site in ((states[0], site_b), (states[1], site_a)):
        assert state["endpoint"] == f"{site.wan_ip}:51820", state


def test_a_dead_direct_path_falls_back_to_the_relay_and_recovers(lab: Lab) -> None:
    _, a, b, site_a, site_b = start(lab, "prc", "cone")
    wait_path((a, b), "direct", 10.0)
    lab.block_udp(site_a, site_b)
    cut = time.monotonic()
    wait_path((a, b), "relay", FALLBACK_WITHIN_S + SLACK_S)
    took = time.monotonic() - cut
    res = a.ping(b.mesh_address(NETWORK), count=3)
    assert res.returncode == 0, res.stdout
    lab.unblock_udp(site_a, site_b)
    wait_path((a, b), "direct", 30.0)
    assert took <= FALLBACK_WITHIN_S + SLACK_S


def test_the_in_kernel_relay_puts_ip_forwarding_back_when_the_server_stops(lab: Lab) -> None:
    def forwarding() -> str:
        return lab.server.run(["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout.strip()

    assert forwarding() == "0"  # the lab's server host is not a router
    mesh = Mesh(lab)
    server = mesh.start_server(dns=False, relay="auto", relay_mode="nft")
    assert forwarding() == "1"
    assert server.stop(timeout=10) == 0
    assert forwarding() == "0"
    tables = lab.server.run(["nft", "list", "tables"]).stdout
    assert "punchd_relay" not in tables
