"""A site gateway running Debian's miniupnpd (2.3.1, nftables backend): UPnP IGD, NAT-PMP, PCP.

``start_miniupnpd(lab, site)`` turns a site's router into a port-mapping gateway. What
miniupnpd needs, each point found the hard way (issue #18):

* the NAT masquerades only LAN-sourced traffic (the router's own STUN test must leave
  with its own address and port);
* the router accepts input on its WAN side: miniupnpd's RFC 5780 self-test
  (``ext_perform_stun``) needs the answers from the STUN server's other address and port;
* the WAN address is TEST-NET (198.51.100.x), which miniupnpd refuses as an external
  address unless STUN shows it is reachable — so ``ext_perform_stun`` against the
  lab's RFC 5780 server (the signal server's responder, which must be running) is what
  enables port forwarding;
* the nftables table and chains named in the config exist before it starts (it only
  adds rules to them).

The mapping's DNAT rules land in ``table inet miniupnpd``'s ``prerouting_miniupnpd``
chain; :func:`dnat_rules` lists them. miniupnpd runs in the foreground (``-d``) as a lab
process, stopped by PID at teardown like every other.
"""

from __future__ import annotations

import shutil
import time

from .topology import Lab, LabError, Proc, Site

TABLE = "miniupnpd"


def ruleset(lan_cidr: str, *, randomize: bool = True) -> str:
    """The router's nftables: symmetric masquerade of the LAN, miniupnpd's table."""
    flags = " random,fully-random" if randomize else ""
    return f"""
table ip labnat {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr {lan_cidr} oifname "wan" masquerade{flags}
    }}
}}
table inet labfilter {{
    chain forward {{
        type filter hook forward priority filter; policy accept;
        iifname "wan" ct state established,related accept
        iifname "wan" ct status dnat accept
        iifname "wan" drop
    }}
}}
table inet {TABLE} {{
    chain miniupnpd {{ }}
    chain prerouting_miniupnpd {{ }}
    chain postrouting_miniupnpd {{ }}
    chain forward {{
        type filter hook forward priority filter - 5; policy accept;
        jump miniupnpd;
    }}
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        jump prerouting_miniupnpd;
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat - 5; policy accept;
        jump postrouting_miniupnpd;
    }}
}}
"""


def config(lan_cidr: str, stun_ip: str, stun_port: int) -> str:
    return f"""ext_ifname=wan
listening_ip=lan
http_port=0
enable_natpmp=yes
enable_upnp=yes
ext_perform_stun=yes
ext_stun_host={stun_ip}
ext_stun_port={stun_port}
upnp_table_name={TABLE}
upnp_nat_table_name={TABLE}
upnp_forward_chain=miniupnpd
upnp_nat_chain=prerouting_miniupnpd
upnp_nat_postrouting_chain=postrouting_miniupnpd
secure_mode=yes
system_uptime=yes
uuid=3d2c5e0a-18a1-4b5e-9c1e-5f7a2b9d0c11
allow 1024-65535 {lan_cidr} 1024-65535
deny 0-65535 0.0.0.0/0 0-65535
"""


def start_miniupnpd(lab: Lab, site: Site, *, stun_port: int = 3478,
                    timeout: float = 15.0) -> Proc:
    """Replace the site router's rules and run miniupnpd there; returns once it listens.

    The lab's STUN server (``Mesh(lab).start_server()``) must already answer on
    ``lab.server.ip:stun_port`` with its RFC 5780 second address.
    """
    if shutil.which("miniupnpd") is None:
        raise LabError("miniupnpd is missing; run ./scripts/setup (it installs it)")
    if site.carrier is not None:
        raise LabError("miniupnpd on a cgnat site: the carrier's NAT would hide it")
    lan_cidr = f"{site.hosts[0].ip.rsplit('.', 1)[0]}.0/24"
    router = site.router
    router.run(["nft", "flush", "ruleset"])
    router.nft(ruleset(lan_cidr, randomize=site.nat == "sym"))
    conf = lab.log_dir / f"{router.name}-miniupnpd.conf"
    conf.write_text(config(lan_cidr, lab.server.ip, stun_port))
    pidfile = lab.log_dir / f"{router.name}-miniupnpd.pid"
    proc = router.spawn(["miniupnpd", "-d", "-f", str(conf), "-P", str(pidfile)],
                        name="miniupnpd")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = proc.read_log()
        if "Listening for NAT-PMP/PCP traffic" in log and "Port forwarding is now enabled" in log:
            return proc
        if not proc.alive():
            raise LabError(f"miniupnpd exited {proc.popen.returncode}: {log[-2000:]}")
        time.sleep(0.1)
    raise LabError(f"miniupnpd not ready after {timeout} s: {proc.read_log()[-2000:]}")


def dnat_rules(site: Site) -> list[str]:
    """The DNAT rules miniupnpd installed (one line each)."""
    out = site.router.run(["nft", "list", "chain", "inet", TABLE, "prerouting_miniupnpd"]).stdout
    return [line.strip() for line in out.splitlines() if "dnat" in line]
