"""The netns NAT lab: real namespaces, veths and nftables NATs, usable from pytest and scripts.

    from netns_tests.lab import Lab
    with Lab() as lab:
        site = lab.add_site("a", nat="prc")
        site.hosts[0].run(["ping", "-c1", lab.server.ip])

See ``topology.py`` for the addressing plan and ``nat.py`` for the NAT types.

A test tool, all adapters (ip, nft and processes, blocking): ``topology.py`` (the
namespaces and links), ``nat.py`` (the nftables NATs), ``mesh.py`` (the real product
on lab hosts), ``natprobe.py`` (measures a NAT's behaviour) and ``faults.py`` (the
processes of the fault suite, on loopback).
"""

from .nat import NAT_TYPES
from .topology import SERVER_IPS, Host, Lab, LabError, Proc, Site, parse_conntrack_line

__all__ = ["NAT_TYPES", "SERVER_IPS", "Host", "Lab", "LabError", "Proc", "Site", "parse_conntrack_line"]
