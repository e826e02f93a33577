"""The netns NAT lab: real namespaces, veths and nftables NATs, usable from pytest and scripts.

    from netns_tests.lab import Lab
    with Lab() as lab:
        site = lab.add_site("a", nat="prc")
        site.hosts[0].run(["ping", "-c1", lab.server.ip])

See ``topology.py`` for the addressing plan and ``nat.py`` for the NAT types.
"""

from .nat import NAT_TYPES
from .topology import SERVER_IPS, Host, Lab, LabError, Proc, Site, parse_conntrack_line

__all__ = ["NAT_TYPES", "SERVER_IPS", "Host", "Lab", "LabError", "Proc", "Site", "parse_conntrack_line"]
