"""WireGuard backends against real kernels: the conformance suite and real traffic."""

from __future__ import annotations

import sys
import time

import pytest

from netns_tests.lab import Lab
from punchd.wg.base import generate_private_key, public_key
from punchd.wg.netlink import kernel_has_wireguard


def conformance(lab: Lab, kind: str) -> str:
    host = lab.add_site("c", nat="none").hosts[0]
    res = host.run([sys.executable, "-m", "netns_tests.wg_conformance_main", kind,
                    f"{lab.prefix}cf"], check=False, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def test_userspace_backend_conformance(lab: Lab) -> None:
    assert "conformance: ok" in conformance(lab, "userspace")


@pytest.mark.skipif(not kernel_has_wireguard(),
                    reason="this kernel has no WireGuard; the kernel backend is covered where it has")
def test_kernel_backend_conformance(lab: Lab) -> None:
    assert "conformance: ok" in conformance(lab, "kernel")


def test_userspace_tunnel_carries_traffic_and_survives_wireguard_go_death(lab: Lab) -> None:
    script = """
import sys, trio
from punchd.wg import open_backend
from punchd.wg.base import LinkConfig, WgPeer
ifname, priv, mine, peer_key, peer_ip, endpoint = sys.argv[1:7]
async def main():
    b = open_backend("userspace")
    await b.ensure_interface(ifname)
    await b.set_device(ifname, private_key=priv, listen_port=51820)
    await b.set_link(ifname, LinkConfig(addresses=(mine,)))
    await b.set_peer(ifname, WgPeer(public_key=peer_key, endpoint=endpoint,
                                    allowed_ips=(peer_ip + "/32",), persistent_keepalive=25))
trio.run(main)
"""
    a = lab.add_site("a", nat="none").hosts[0]
    b = lab.add_site("b", nat="none").hosts[0]
    ka, kb = generate_private_key(), generate_private_key()
    a.run([sys.executable, "-c", script, f"{lab.prefix}a", ka, "198.19.0.1/24", public_key(kb),
           "198.19.0.2", f"{b.ip}:51820"])
    b.run([sys.executable, "-c", script, f"{lab.prefix}b", kb, "198.19.0.2/24", public_key(ka),
           "198.19.0.1", f"{a.ip}:51820"])
    a.run(["ping", "-c", "3", "-i", "0.2", "-W", "2", "198.19.0.2"])
    shown = a.run(["wg", "show", f"{lab.prefix}a", "endpoints"]).stdout
    assert f"{b.ip}:51820" in shown
    # Kill wireguard-go: the interface is gone, and configuring again brings it back.
    pids = a.run(["pgrep", "-f", f"wireguard-go {lab.prefix}a"]).stdout.split()
    a.run(["kill", *pids])
    deadline = time.monotonic() + 5
    while a.run(["ip", "link", "show", f"{lab.prefix}a"], check=False).returncode == 0:
        assert time.monotonic() < deadline, "wireguard-go's interface outlived the process"
        time.sleep(0.05)
    a.run([sys.executable, "-c", script, f"{lab.prefix}a", ka, "198.19.0.1/24", public_key(kb),
           "198.19.0.2", f"{b.ip}:51820"])
    a.run(["ping", "-c", "3", "-i", "0.2", "-W", "2", "198.19.0.2"])
