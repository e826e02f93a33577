"""Port mapping against Debian's miniupnpd as a symmetric site's gateway (issue #18 part 1).

The client runs in the LAN host (``netns_tests/portmap_main.py``), maps WireGuard's port
with one protocol (or races all three, as the daemon will), and the test checks from the
WAN side: a datagram to the mapped
external port arrives at the host's port, miniupnpd installed a DNAT rule for it, and
after the context manager closes the rule is gone and a datagram no longer arrives.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from netns_tests.lab import Lab
from netns_tests.lab.mesh import Mesh, wait_for_log
from netns_tests.lab.miniupnpd import dnat_rules, start_miniupnpd
from netns_tests.lab.topology import Proc

REPO = Path(__file__).resolve().parent.parent
WG_PORT = 51820

SEND = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.sendto(sys.argv[3].encode(), (sys.argv[1], int(sys.argv[2])))
"""
RECEIVE_ONCE = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.settimeout(float(sys.argv[2]))
try:
    print(s.recvfrom(2048)[0].decode())
except TimeoutError:
    print("nothing")
"""


def _lines(proc: Proc) -> list[dict[str, Any]]:
    out = []
    for line in proc.read_log().splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def _wait_line(proc: Proc, key: str, timeout: float = 20.0) -> dict[str, Any]:
    wait_for_log(proc, f'"{key}"', timeout)
    return next(line for line in _lines(proc) if key in line)


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["nat-pmp", "upnp", "pcp", "pcp,nat-pmp,upnp"])
def test_mapped_port_carries_wan_traffic_and_is_gone_after_close(lab: Lab, protocol: str) -> None:
    Mesh(lab).start_server(dns=False)  # the RFC 5780 STUN server miniupnpd's self-test uses
    site = lab.add_site("m", nat="sym")
    start_miniupnpd(lab, site)
    host = site.hosts[0]
    env = {"PYTHONPATH": str(REPO)}
    client = host.spawn([sys.executable, "-m", "netns_tests.portmap_main", str(WG_PORT),
                         protocol], name=f"portmap-{protocol}", env=env)
    mapped = _wait_line(client, "external")
    assert mapped["protocol"] in protocol.split(","), mapped
    assert mapped["elapsed"] < 0.5, mapped  # one LAN round trip or two, no retransmits
    ext_ip, ext_port = mapped["external"].rsplit(":", 1)
    assert ext_ip == site.wan_ip, mapped
    assert mapped["protocol"] in mapped["statistics"]["answered"], mapped
    # Probing first and mapping with one protocol: exactly one rule, even though
    # miniupnpd speaks all three.
    rules = dnat_rules(site)
    assert len(rules) == 1 and f"dport {ext_port}" in rules[0] and host.ip in rules[0], rules

    # From the WAN side (the server's namespace) to the mapped endpoint.
    lab.server.run([sys.executable, "-c", SEND, ext_ip, ext_port, "through the mapping"])
    received = _wait_line(client, "received")
    assert received == {"received": "through the mapping", "source": lab.server.ip}
    _wait_line(client, "closed")
    deadline = time.monotonic() + 5
    while any(f"dport {ext_port}" in rule for rule in dnat_rules(site)):
        assert time.monotonic() < deadline, dnat_rules(site)
        time.sleep(0.1)

    listener = host.spawn([sys.executable, "-c", RECEIVE_ONCE, str(WG_PORT), "1.5"],
                          name="after-close")
    time.sleep(0.3)
    lab.server.run([sys.executable, "-c", SEND, ext_ip, ext_port, "after close"])
    listener.popen.wait(10)
    assert listener.read_log().strip() == "nothing"


MAPPED_PAIRS = [("sym", "sym"), ("sym", "prc")]  # the relay's pairs without port mapping


@pytest.mark.slow
@pytest.mark.parametrize(("nat_a", "nat_b"), MAPPED_PAIRS)
def test_a_mapped_port_turns_a_relayed_pair_direct_and_is_deleted_on_leave(
        lab: Lab, nat_a: str, nat_b: str) -> None:
    mesh = Mesh(lab)
    mesh.start_server(dns=False)
    token = mesh.create_network("net", "198.19.0.0/24")
    site_a = lab.add_site("a", nat=nat_a)
    start_miniupnpd(lab, site_a)
    site_b = lab.add_site("b", nat=nat_b)
    a = mesh.start_node(site_a.hosts[0], "a")
    b = mesh.start_node(site_b.hosts[0], "b")
    a.join(token)
    b.join(token)
    deadline = time.monotonic() + 10.0
    while True:
        (peer_a,) = a.network_status("net")["peers"]
        (peer_b,) = b.network_status("net")["peers"]
        direct = [p["path"] == "direct" and (p.get("punch") or {}).get("state") == "connected"
                  for p in (peer_a, peer_b)]
        if all(direct):
            break
        assert time.monotonic() < deadline, (peer_a, peer_b, a.proc.read_log()[-3000:])
        time.sleep(0.1)
    # b reaches a at the port a's gateway mapped: the site's WAN address, the rule's port.
    (rule,) = dnat_rules(site_a)
    assert peer_b["endpoint"].split(":")[0] == site_a.wan_ip, peer_b
    assert f"dport {peer_b['endpoint'].split(':')[1]}" in rule, (rule, peer_b)
    res = a.ping(b.mesh_address("net"), count=3)
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads(a.punchctl("netcheck", "--json").stdout)
    assert report["port_mapping"] in ("pcp", "nat-pmp", "upnp"), report
    assert report["mapped_endpoint"] == peer_b["endpoint"], report
    assert "Port mapping:    " + report["mapped_endpoint"] in a.punchctl("netcheck").stdout

    a.punchctl("leave", "net")
    deadline = time.monotonic() + 5.0
    while dnat_rules(site_a):
        assert time.monotonic() < deadline, dnat_rules(site_a)
        time.sleep(0.1)
