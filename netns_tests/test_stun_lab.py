"""The signal server's STUN responder, seen by a client no one here wrote, through real NATs."""

from __future__ import annotations

import pytest

from netns_tests.lab import Lab
from netns_tests.lab.mesh import Mesh


@pytest.mark.parametrize("nat", ["none", "prc", "cgnat"])
def test_coturn_client_sees_the_nat_public_address(lab: Lab, nat: str) -> None:
    Mesh(lab).start_server(dns=False)
    site = lab.add_site("s", nat=nat)
    host = site.hosts[0]
    res = host.run(["timeout", "10", "turnutils_stunclient", "-p", "3478", lab.server.ip],
                   check=False, timeout=30)
    out = res.stdout + res.stderr
    public = host.ip if nat == "none" else site.wan_ip
    assert f"UDP reflexive addr: {public}:" in out, out
    ip2 = lab.server.public_ips[1]
    assert f"Other addr: : {ip2}:3479" in out, out
