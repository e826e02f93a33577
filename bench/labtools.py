"""Lab helpers the benchmarks need that ``netns_tests/lab`` does not offer (yet).

- WAN-side traffic accounting: conntrack with per-entry packet counters on a site's
  outer router, so a benchmark can tell where the tunnel's packets really go (to the
  peer's public address = direct, to the server = relayed) instead of trusting the
  contender's own report.
- wireguard-go interfaces configured with ``wg`` (the relay mesh and the static ceiling).
- ping parsing, first-reply timing and process CPU/RSS sampling.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from netns_tests.lab import SERVER_IPS, Host, Lab, LabError, Proc, Site

# A do-nothing conntrack rule: a ``none`` site's router has no NAT table, so without it
# the kernel would not track its flows and there would be nothing to count.
_TRACK_RULESET = """
table inet benchtrack {
    chain forward {
        type filter hook forward priority 10; policy accept;
        ct state established counter
    }
}
"""


def outer_router(site: Site) -> Host:
    return site.carrier or site.router


def public_ip(site: Site) -> str:
    """The address the rest of the internet sees the site's first host as."""
    return site.hosts[0].ip if site.nat == "none" else site.wan_ip


def enable_wan_accounting(site: Site) -> None:
    """Packet counters on every conntrack entry of the site's outer router.

    Must run before the traffic starts: the kernel decides on accounting when it
    creates an entry.
    """
    router = outer_router(site)
    router.sysctl("net.netfilter.nf_conntrack_acct", "1")
    if site.nat == "none":
        router.nft(_TRACK_RULESET)


@dataclass(frozen=True)
class Flow:
    """One UDP conntrack entry in its original direction: who started it, to whom, and
    how many packets went each way."""

    src: str
    dst: str
    dport: int
    packets_out: int
    packets_in: int


_FIELD = re.compile(r"(src|dst|sport|dport|packets)=(\S+)")


def udp_flows(site: Site) -> list[Flow]:
    """UDP flows on the site's outer router, from the site's side (original direction)."""
    out = outer_router(site).run(["conntrack", "-L", "-p", "udp"], check=False).stdout
    flows = []
    for line in out.splitlines():
        if not line.startswith("udp"):
            continue
        # Fields come twice: original direction, then reply direction.
        orig: dict[str, str] = {}
        reply: dict[str, str] = {}
        for key, value in _FIELD.findall(line):
            (orig if key not in orig else reply)[key] = value
        if "dst" not in orig:
            continue
        flows.append(Flow(src=orig.get("src", ""), dst=orig["dst"], dport=int(orig.get("dport", 0)),
                          packets_out=int(orig.get("packets", 0)),
                          packets_in=int(reply.get("packets", 0))))
    return flows


def packets_towards(flows: list[Flow], site: Site, peer_site: Site) -> dict[str, int]:
    """Packets that went both ways between this site and {peer, server}, per kind.

    A flow counts whichever side started it: behind a cone NAT the peer's first packet
    can open the flow (then the peer is its ``src``). Both directions must carry
    packets (the smaller count is taken), so one-way punches and unanswered
    handshakes count for nothing.
    """
    peer = public_ip(peer_site)
    totals = {"direct": 0, "relay": 0}
    for flow in flows:
        both_ways = min(flow.packets_out, flow.packets_in)
        if peer in (flow.src, flow.dst):
            totals["direct"] += both_ways
        elif flow.src in SERVER_IPS or flow.dst in SERVER_IPS:
            totals["relay"] += both_ways
    return totals


def wan_path_during(site: Site, peer_site: Site, burst: Any, min_packets: int = 10) -> str:
    """Run ``burst()`` (traffic through the tunnel) and say where the packets went.

    "direct" when both directions to the peer's public address grew by ``min_packets``,
    "relay" when that happened towards the server instead, "none" otherwise.
    """
    before = packets_towards(udp_flows(site), site, peer_site)
    burst()
    after = packets_towards(udp_flows(site), site, peer_site)
    grew = {kind: after[kind] - before[kind] for kind in before}
    if grew["direct"] >= min_packets:
        return "direct"
    if grew["relay"] >= min_packets:
        return "relay"
    return "none"


# -- ping -----------------------------------------------------------------------------

_RTT = re.compile(r"rtt min/avg/max/mdev = ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms")
_STAMP = re.compile(r"^\[(\d+\.\d+)\].*bytes from", re.MULTILINE)


def spawn_first_ping(host: Host, target: str, timeout: float, name: str) -> Proc:
    """ping every 50 ms until the first reply (or ``timeout``); ``-D`` stamps the reply."""
    return host.spawn(["ping", "-n", "-D", "-i", "0.05", "-W", "1", "-c", "1",
                       "-w", str(int(timeout)), target], name=name)


def first_reply_wall_time(proc: Proc) -> float | None:
    """Epoch time of the first reply in a ``ping -D`` log, None when none came."""
    match = _STAMP.search(proc.read_log())
    return float(match.group(1)) if match else None


def ping_rtt(host: Host, target: str, count: int = 20, interval: float = 0.05
             ) -> dict[str, float] | None:
    """min/avg/max/mdev RTT in ms and the loss fraction, None when nothing came back."""
    res = host.run(["ping", "-n", "-q", "-c", str(count), "-i", str(interval), "-W", "1", target],
                   check=False, timeout=count * interval + 15)
    match = _RTT.search(res.stdout)
    loss = re.search(r"([\d.]+)% packet loss", res.stdout)
    if not match:
        return None
    mn, avg, mx, mdev = (float(x) for x in match.groups())
    return {"min_ms": mn, "avg_ms": avg, "max_ms": mx, "mdev_ms": mdev,
            "loss": float(loss.group(1)) / 100 if loss else float("nan")}


# -- processes --------------------------------------------------------------------------

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def pids_named(host: Host, comm: str) -> list[int]:
    """Processes called ``comm`` living in the host's namespace."""
    out = host.run(["ip", "netns", "pids", host.netns], check=False).stdout
    found = []
    for pid in (int(p) for p in out.split() if p.isdigit()):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == comm:
                found.append(pid)
        except FileNotFoundError:
            continue
    return found


# -- wireguard-go -----------------------------------------------------------------------

def wg_keypair(host: Host) -> tuple[str, str]:
    private = host.run(["wg", "genkey"]).stdout.strip()
    public = host.run(["wg", "pubkey"], input=private + "\n").stdout.strip()
    return private, public


@dataclass
class WgGoInterface:
    """A wireguard-go tunnel on one host (foreground process, so the lab owns it)."""

    host: Host
    ifname: str
    proc: Proc
    private_key: str
    public_key: str

    def stop(self) -> None:
        self.proc.stop(timeout=3)

    def latest_handshake(self) -> int:
        out = self.host.run(["wg", "show", self.ifname, "latest-handshakes"], check=False).stdout
        stamps = [int(line.split()[1]) for line in out.splitlines() if len(line.split()) == 2]
        return max(stamps, default=0)


def start_wg_go(lab: Lab, host: Host, ifname: str, address: str, listen_port: int
                ) -> WgGoInterface:
    """wireguard-go ``ifname`` on ``host`` with ``address`` (CIDR), up, no peers yet."""
    if not ifname.startswith(lab.prefix):
        lab.register_wg_interface(ifname)
    proc = host.spawn(["wireguard-go", "-f", ifname], name=f"wg-{ifname}")
    deadline = time.monotonic() + 10
    sock = Path("/var/run/wireguard") / f"{ifname}.sock"
    while not sock.exists():
        if time.monotonic() > deadline or not proc.alive():
            raise LabError(f"wireguard-go {ifname} did not start:\n{proc.read_log()[-1000:]}")
        time.sleep(0.02)
    private, public = wg_keypair(host)
    keyfile = lab.log_dir / f"{ifname}.key"
    keyfile.write_text(private + "\n")
    host.run(["wg", "set", ifname, "private-key", str(keyfile), "listen-port", str(listen_port)])
    host.run(["ip", "addr", "add", address, "dev", ifname])
    host.run(["ip", "link", "set", ifname, "up"])
    return WgGoInterface(host, ifname, proc, private, public)


def add_wg_peer(iface: WgGoInterface, public_key: str, allowed_ip: str, endpoint: str) -> None:
    # persistent-keepalive 1: the tunnel starts its handshake at once, as a mesh would,
    # instead of waiting for the first ping.
    iface.host.run(["wg", "set", iface.ifname, "peer", public_key, "allowed-ips", allowed_ip,
                    "endpoint", endpoint, "persistent-keepalive", "1"])



class WanWatcher:
    """Where the tunnel's packets go right now, from conntrack counters over a window.

    ``path()`` compares the packet counters with those of at least ``window_s`` ago:
    "direct" when ``min_packets`` went both ways to the peer's public address in that
    time, "relay" when that happened towards the server instead, "none" otherwise.
    Needs steady traffic through the tunnel (the benchmarks ping at 10/s while
    watching): 1 s at 10/s is 10 packets, far above the odd punch or keepalive.
    """

    def __init__(self, site: Site, peer_site: Site, window_s: float = 1.0,
                 min_packets: int = 5) -> None:
        self.site = site
        self.peer_site = peer_site
        self.window_s = window_s
        self.min_packets = min_packets
        self._samples = [(time.monotonic(), packets_towards(udp_flows(site), site, peer_site))]

    def path(self) -> str:
        now = time.monotonic()
        counts = packets_towards(udp_flows(self.site), self.site, self.peer_site)
        self._samples.append((now, counts))
        # Compare with the newest sample at least a window old (the first one until then),
        # and forget the samples older than that one.
        old = [i for i, (t, _) in enumerate(self._samples) if now - t >= self.window_s]
        if old:
            del self._samples[:old[-1]]
        base = self._samples[0][1]
        grew = {kind: counts[kind] - base[kind] for kind in counts}
        if grew["direct"] >= self.min_packets:
            return "direct"
        if grew["relay"] >= self.min_packets:
            return "relay"
        return "none"
