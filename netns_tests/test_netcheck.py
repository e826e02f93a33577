"""punchctl netcheck behind each lab NAT: what it reports is what the lab built.

The public endpoint must be the mapping WireGuard's own traffic gets on the NAT's WAN
side (read from conntrack), since discovery runs on WireGuard's port.
"""

from __future__ import annotations

import json
import time

import pytest

from netns_tests.lab import Lab
from netns_tests.lab.mesh import Mesh

EXPECTED = {
    "none": ("endpoint-independent", "endpoint-independent"),
    "cone": ("endpoint-independent", "endpoint-independent"),
    "prc": ("endpoint-independent", "address-and-port-dependent"),
    # accepts unsolicited input: the filtering tests' dropped answers must not move the
    # WireGuard port's mapping (punchd/discovery/classify.py)
    "prc-open": ("endpoint-independent", "address-and-port-dependent"),
    "sym": ("address-and-port-dependent", "address-and-port-dependent"),
    "cgnat": ("endpoint-independent", "address-and-port-dependent"),
}


@pytest.mark.parametrize("nat", list(EXPECTED))
def test_netcheck_reports_the_nat_the_lab_built(lab: Lab, nat: str) -> None:
    mesh = Mesh(lab)
    mesh.start_server(dns=False)
    token = mesh.create_network("net", "198.19.0.0/24")
    site = lab.add_site("s", nat=nat)
    node = mesh.start_node(site.hosts[0], "n")
    node.join(token)
    report = json.loads(node.punchctl("netcheck", "--json", timeout=60).stdout)
    mapping, filtering = EXPECTED[nat]
    assert (report["mapping"], report["filtering"]) == (mapping, filtering), report
    public_ip, public_port = report["public_endpoint"].rsplit(":", 1)
    assert public_ip == (site.hosts[0].ip if nat == "none" else site.wan_ip)
    if nat != "sym":
        assert report["port_preserved"] is True and public_port == "51820"
    if nat != "none":
        # The mapping of WireGuard's port toward the STUN server, as the NAT holds it.
        entries = [e for e in site.conntrack_udp()
                   if e["orig"].get("dport") == 3478 and e["orig"].get("dst") == lab.server.ip]
        assert any(e["reply"]["dport"] == int(public_port) for e in entries), entries


def test_conntrack_flush_is_noticed_and_republished(lab: Lab) -> None:
    mesh = Mesh(lab)
    mesh.start_server(dns=False)
    token = mesh.create_network("net", "198.19.0.0/24")
    site = lab.add_site("s", nat="sym")
    node = mesh.start_node(site.hosts[0], "n")
    node.join(token)
    first = json.loads(node.punchctl("netcheck", "--json", timeout=60).stdout)["public_endpoint"]
    site.flush_conntrack()
    # A symmetric NAT picks a new random port after the flush; the periodic re-STUN
    # (~25 s, jittered up to 30 s) notices it and publishes the new endpoint.
    deadline = time.monotonic() + 45
    while True:
        nodes = json.loads(mesh.admin("node", "list", "net", "--json").stdout)
        published = [c["address"] for c in nodes[0]["candidates"] if c["kind"] == "srflx"]
        if published and published[0] != first:
            break
        assert time.monotonic() < deadline, f"still {published} after the flush"
        time.sleep(1)


@pytest.mark.parametrize("nat", ["prc", "sym"])
def test_same_classification_against_coturn(lab: Lab, nat: str) -> None:
    ip1, ip2 = lab.server.public_ips[:2]
    coturn = lab.server.spawn(["turnserver", "--stun-only", "-L", ip1, "-L", ip2, "-p", "3478",
                               "--alt-listening-port", "3479", "--no-cli", "-n",
                               "--log-file", "stdout"], name="coturn")
    deadline = time.monotonic() + 15
    while "3478" not in lab.server.run(["ss", "-uln"]).stdout:
        assert coturn.alive() and time.monotonic() < deadline, coturn.read_log()[-2000:]
        time.sleep(0.1)
    mesh = Mesh(lab)
    mesh.start_server(dns=False, stun_server=f"{ip1}:3478")
    token = mesh.create_network("net", "198.19.0.0/24")
    site = lab.add_site("s", nat=nat)
    node = mesh.start_node(site.hosts[0], "n")
    node.join(token)
    report = json.loads(node.punchctl("netcheck", "--json", timeout=60).stdout)
    assert report["stun_server"] == f"{ip1}:3478"
    assert (report["mapping"], report["filtering"]) == EXPECTED[nat], report
    assert report["public_endpoint"].startswith(site.wan_ip + ":")
