"""nftables rulesets for the lab's NAT types.

Each function returns a ruleset for ``nft -f -`` inside a router namespace whose
upstream interface is ``wan`` and whose LAN interface is ``lan``.

The NAT routers drop unsolicited input on their WAN side, as most home routers do; the
``-open`` kinds accept it, as many Linux-based routers do (issue #18 part 3). There an
early inbound packet to the router itself is recorded by conntrack first, and when the
host's own outbound packet to that peer follows, Linux moves its mapping to another
port to keep the conntrack tuples unique: the NAT is endpoint-independent for every
peer but that one, and punching aims at a port that is not the mapping.

| type  | mapping (RFC 4787)                 | filtering                        |
|-------|------------------------------------|----------------------------------|
| none  | no NAT (routed)                    | none                             |
| cone  | endpoint-independent, port kept    | endpoint-independent (1:1 inbound to the first LAN host) |
| prc   | endpoint-independent, port kept    | address-and-port-dependent       |
| sym   | per destination, random port       | address-and-port-dependent       |
| block | as prc                             | as prc; UDP only to the server   |
| prc-open | as prc                          | as prc; the router accepts WAN input to itself |
"""

from __future__ import annotations

from collections.abc import Sequence

NAT_TYPES = ("none", "cone", "prc", "sym", "block", "cgnat", "prc-open")

_DROP_UNSOLICITED = """
table inet labfilter {
    chain input {
        type filter hook input priority filter; policy accept;
        iifname "wan" ct state established,related accept
        iifname "wan" icmp type echo-request accept
        iifname "wan" drop
    }
    chain forward {
        type filter hook forward priority filter; policy accept;
        iifname "wan" ct state established,related accept
        iifname "wan" ct status dnat accept
        iifname "wan" drop
    }
}
"""


_ACCEPT_INPUT = _DROP_UNSOLICITED.replace(
    '        iifname "wan" icmp type echo-request accept\n        iifname "wan" drop\n', "")


def masquerade_ruleset(*, randomize: bool = False, accept_input: bool = False) -> str:
    """Linux's plain masquerade (EIM, port preserved, APDF) or the symmetric variant;
    ``accept_input``: the router itself takes unsolicited WAN input (forwarding stays
    filtered)."""
    flags = " random,fully-random" if randomize else ""
    return (
        "table ip labnat {\n"
        "    chain postrouting {\n"
        "        type nat hook postrouting priority srcnat; policy accept;\n"
        f'        oifname "wan" masquerade{flags}\n'
        "    }\n"
        "}\n" + (_ACCEPT_INPUT if accept_input else _DROP_UNSOLICITED)
    )


def cone_ruleset(wan_ip: str, lan_host: str) -> str:
    """Full cone: masquerade keeps the port; every inbound UDP port goes to the LAN host.

    Forwarding all inbound UDP to one host is what "endpoint-independent filtering"
    means for a site with one host: anyone may send to the mapped port.
    """
    return (
        "table ip labnat {\n"
        "    chain prerouting {\n"
        "        type nat hook prerouting priority dstnat; policy accept;\n"
        f'        iifname "wan" ip daddr {wan_ip} udp dport 1024-65535 dnat to {lan_host}\n'
        "    }\n"
        "    chain postrouting {\n"
        "        type nat hook postrouting priority srcnat; policy accept;\n"
        '        oifname "wan" masquerade\n'
        "    }\n"
        "}\n" + _DROP_UNSOLICITED
    )


def block_ruleset(allowed_udp: Sequence[str]) -> str:
    """prc, and UDP leaves the site only toward the given (server) addresses."""
    allowed = ", ".join(allowed_udp)
    return masquerade_ruleset() + (
        "table inet labblock {\n"
        "    chain forward {\n"
        "        type filter hook forward priority filter - 1; policy accept;\n"
        f'        iifname "lan" meta nfproto ipv4 meta l4proto udp ip daddr != {{ {allowed} }} drop\n'
        "    }\n"
        "}\n"
    )


def block_between_ruleset(table: str, peer_ips: Sequence[str]) -> str:
    """Drop UDP to and from the given addresses (a path between two sites dies)."""
    peers = ", ".join(peer_ips)
    return (
        f"table inet {table} {{\n"
        "    chain forward {\n"
        "        type filter hook forward priority filter - 2; policy accept;\n"
        f"        meta l4proto udp ip daddr {{ {peers} }} drop\n"
        f"        meta l4proto udp ip saddr {{ {peers} }} drop\n"
        "    }\n"
        "    chain output {\n"
        "        type filter hook output priority filter - 2; policy accept;\n"
        f"        meta l4proto udp ip daddr {{ {peers} }} drop\n"
        "    }\n"
        "    chain input {\n"
        "        type filter hook input priority filter - 2; policy accept;\n"
        f"        meta l4proto udp ip saddr {{ {peers} }} drop\n"
        "    }\n"
        "}\n"
    )
