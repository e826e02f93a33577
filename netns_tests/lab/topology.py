"""Lab topologies in network namespaces: an internet, a server, sites behind NATs.

Topology (every box a network namespace, every line a veth pair)::

                        ┌──────────── inet (router) ─────────────┐
      server ───────────┤ 203.0.113.1/24        198.51.100.8N+1/29├──── site N router (wan .8N+2)
  203.0.113.10, .11     └────────────────────────────────────────┘        │ lan 198.18.N.1/24
                                                                       hosts 198.18.N.10, .11 …

A ``cgnat`` site puts a carrier router between the inet and the home router:
carrier WAN on 198.51.100.8N+2, carrier LAN 100.64.N.1/24, home router WAN
100.64.N.2, home LAN 198.18.N.0/24; both layers masquerade.

The inet router knows a route to a site's LAN only for ``none`` sites, whose hosts
therefore have public addresses. 198.19.0.0/16 is left for mesh overlays.

All names start with the lab's prefix (``pl`` + 4 hex digits by default) so two
runs never collide; WireGuard interfaces created inside the lab must use the same
prefix, so teardown can remove wireguard-go's sockets in /var/run/wireguard.
Teardown kills every process living in the lab's namespaces, deletes the
namespaces and those sockets; it runs on ``__exit__``, at exit and on SIGTERM.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import os
import secrets
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from pyroute2 import IPRoute, NetNS, netns

from . import nat as natrules

SERVER_IPS = ("203.0.113.10", "203.0.113.11")
INET_SERVER_SIDE = "203.0.113.1"
WG_SOCKET_DIR = Path("/var/run/wireguard")


class LabError(RuntimeError):
    """The lab could not be built or driven (names the step and the tool's message).
    Test equipment, not the product: outside punchd's error tree on purpose."""


@dataclass
class Proc:
    """A process the lab started inside a namespace; logs go to ``log_path``."""

    popen: subprocess.Popen[bytes]
    log_path: Path
    name: str

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def read_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        if self.alive():
            self._signal_group(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.popen.returncode

    def kill(self) -> None:
        if self.alive():
            self._signal_group(signal.SIGKILL)
            self.popen.wait(5)

    def _signal_group(self, sig: signal.Signals) -> None:
        """The process runs in its own session (group id = its pid): signal the group."""
        try:
            os.killpg(self.popen.pid, sig)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(sig)


@dataclass
class Host:
    """One network namespace: a server, a router or a LAN host."""

    lab: Lab
    name: str
    netns: str
    ip: str
    extra_ips: tuple[str, ...] = ()

    @property
    def public_ips(self) -> tuple[str, ...]:
        return (self.ip, *self.extra_ips)

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 30.0,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        cmd = ["ip", "netns", "exec", self.netns, *argv]
        try:
            res = subprocess.run(
                cmd, capture_output=True, text=True, timeout=timeout, input=input,
                env=None if env is None else {**os.environ, **env},
            )
        except subprocess.TimeoutExpired as exc:
            raise LabError(f"{self.name}: {' '.join(argv)} timed out after {timeout} s") from exc
        if check and res.returncode != 0:
            raise LabError(
                f"{self.name}: {' '.join(argv)} exited {res.returncode}: "
                f"{(res.stderr or res.stdout).strip()}"
            )
        return res

    def spawn(self, argv: Sequence[str], *, name: str, env: Mapping[str, str] | None = None) -> Proc:
        log_path = self.lab.log_dir / f"{self.name}-{name}.log"
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, *argv],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=None if env is None else {**os.environ, **env},
                start_new_session=True,
            )
        proc = Proc(popen=popen, log_path=log_path, name=f"{self.name}/{name}")
        self.lab.procs.append(proc)
        return proc

    def nft(self, ruleset: str) -> None:
        self.run(["nft", "-f", "-"], input=ruleset)

    def sysctl(self, key: str, value: str) -> None:
        self.run(["sysctl", "-q", "-w", f"{key}={value}"])


@dataclass
class Site:
    """A NAT router (or two, for cgnat) with a LAN of hosts."""

    name: str
    nat: str
    router: Host
    hosts: list[Host]
    wan_ip: str
    carrier: Host | None = None

    @property
    def nat_routers(self) -> list[Host]:
        return [r for r in (self.router, self.carrier) if r is not None]

    def flush_conntrack(self) -> None:
        for router in self.nat_routers:
            router.run(["conntrack", "-F"], check=False)

    def conntrack_udp(self) -> list[dict[str, Any]]:
        """The UDP conntrack entries on the outermost router, parsed."""
        router = self.carrier or self.router
        out = router.run(["conntrack", "-L", "-p", "udp"], check=False).stdout
        return [parse_conntrack_line(line) for line in out.splitlines() if line.startswith("udp")]


def parse_conntrack_line(line: str) -> dict[str, Any]:
    """``udp 17 29 src=a dst=b sport=1 dport=2 [UNREPLIED] src=.. ..`` -> orig/reply dicts."""
    orig: dict[str, Any] = {}
    reply: dict[str, Any] = {}
    current = orig
    for token in line.split():
        if "=" not in token:
            continue
        key, value = token.split("=", 1)
        if key in current and current is orig:
            current = reply
        if key in ("src", "dst", "sport", "dport"):
            current[key] = int(value) if key.endswith("port") else value
    return {"orig": orig, "reply": reply, "unreplied": "[UNREPLIED]" in line}


class Lab:
    """A lab: the inet router, a server with two public addresses, and sites.

    ``prefix``: the per-run name prefix (1 to 6 letters or digits; ``"pl"`` + 4 random
    hex digits when None). ``log_dir``: where spawned processes log (a temp dir when None).
    """

    server: Host
    inet: Host
    inet_ns: str

    def __init__(self, prefix: str | None = None, log_dir: Path | str | None = None) -> None:
        self.prefix = "pl" + secrets.token_hex(2) if prefix is None else prefix
        if not (self.prefix.isascii() and self.prefix.isalnum() and 1 <= len(self.prefix) <= 6):
            raise LabError(f"lab prefix {self.prefix!r}: 1 to 6 letters or digits (names are <= 15 chars)")
        self.log_dir = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-logs-")) if log_dir is None else Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.procs: list[Proc] = []
        self.sites: dict[str, Site] = {}
        self._namespaces: list[str] = []
        self._site_count = 0
        self._torn_down = False
        self._blocks: dict[tuple[str, str], tuple[str, list[Host]]] = {}
        self._cut_count = 0
        self._old_sigterm: Any = None
        self._owner_pid = os.getpid()
        self._wg_interfaces: set[str] = set()

    def __repr__(self) -> str:
        return f"Lab(prefix={self.prefix!r}, sites={list(self.sites)})"

    # -- life cycle -------------------------------------------------------------

    def __enter__(self) -> Lab:
        atexit.register(self.teardown)
        if self._old_sigterm is None:
            with contextlib.suppress(ValueError):  # not in the main thread
                self._old_sigterm = signal.signal(signal.SIGTERM, self._on_sigterm)
        try:
            self._build_core()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.teardown()

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        # Forked helpers (pyroute2's NetNS runs one per namespace) inherit this handler
        # and are ended with SIGTERM: they must just exit, only the lab's owner tears down.
        if os.getpid() != self._owner_pid:
            os._exit(0)
        raise KeyboardInterrupt("SIGTERM")

    def teardown(self) -> None:
        """Kill everything in the lab's namespaces, delete them and their WireGuard sockets."""
        if self._torn_down:
            return
        self._torn_down = True
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                proc.stop(timeout=3)
        for ns in self._namespaces:
            self._kill_namespace_pids(ns)
        for ns in reversed(self._namespaces):
            with contextlib.suppress(Exception):
                netns.remove(ns)
        if WG_SOCKET_DIR.is_dir():
            socks = set(WG_SOCKET_DIR.glob(f"{self.prefix}*.sock"))
            socks |= {WG_SOCKET_DIR / f"{name}.sock" for name in self._wg_interfaces}
            for sock in socks:
                with contextlib.suppress(OSError):
                    sock.unlink()
        if self._old_sigterm is not None:
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGTERM, self._old_sigterm)
        with contextlib.suppress(Exception):
            atexit.unregister(self.teardown)

    def register_wg_interface(self, name: str) -> None:
        """Teardown removes ``/var/run/wireguard/<name>.sock`` (names with the lab prefix need not register)."""
        self._wg_interfaces.add(name)

    @staticmethod
    def _kill_namespace_pids(ns: str) -> None:
        """Processes inside our namespace are ours (started by the lab or its children)."""
        for _ in range(20):
            res = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
            pids = [int(p) for p in res.stdout.split() if p.isdigit()]
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)

    # -- building ---------------------------------------------------------------

    def _ns_name(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def _new_ns(self, name: str, *, forwarding: bool) -> str:
        ns = self._ns_name(name)
        try:
            netns.create(ns)
        except Exception as exc:
            raise LabError(f"creating namespace {ns}: {exc}") from exc
        self._namespaces.append(ns)
        with NetNS(ns) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        for key, value in (
            ("net.ipv4.ip_forward", "1" if forwarding else "0"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
            ("net.ipv6.conf.all.disable_ipv6", "0"),
        ):
            subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", f"{key}={value}"],
                           capture_output=True)
        return ns

    def _link(self, ns_a: str, if_a: str, addrs_a: Sequence[str],
              ns_b: str, if_b: str, addrs_b: Sequence[str]) -> None:
        """A veth pair between two namespaces with addresses ("ip/len") on each end."""
        tmp_a = f"{self.prefix}{secrets.token_hex(3)}"
        tmp_b = f"{self.prefix}{secrets.token_hex(3)}"
        try:
            with IPRoute() as ipr:
                ipr.link("add", ifname=tmp_a, kind="veth", peer={"ifname": tmp_b, "net_ns_fd": ns_b})
                ipr.link("set", index=ipr.link_lookup(ifname=tmp_a)[0], net_ns_fd=ns_a)
            for ns, tmp, ifname, addrs in ((ns_a, tmp_a, if_a, addrs_a), (ns_b, tmp_b, if_b, addrs_b)):
                with NetNS(ns) as ipr:
                    idx = ipr.link_lookup(ifname=tmp)[0]
                    ipr.link("set", index=idx, ifname=ifname)
                    for cidr in addrs:
                        ip, plen = cidr.split("/")
                        ipr.addr("add", index=idx, address=ip, prefixlen=int(plen))
                    ipr.link("set", index=idx, state="up")
        except LabError:
            raise
        except Exception as exc:
            raise LabError(f"linking {ns_a}/{if_a} <-> {ns_b}/{if_b}: {exc}") from exc

    def _route(self, ns: str, dst: str, gateway: str) -> None:
        try:
            with NetNS(ns) as ipr:
                ipr.route("add", dst=dst, gateway=gateway)
        except Exception as exc:
            raise LabError(f"route {dst} via {gateway} in {ns}: {exc}") from exc

    def _build_core(self) -> None:
        self.inet_ns = self._new_ns("inet", forwarding=True)
        server_ns = self._new_ns("server", forwarding=False)
        self._link(self.inet_ns, "srv", [f"{INET_SERVER_SIDE}/24"],
                   server_ns, "eth0", [f"{ip}/24" for ip in SERVER_IPS])
        self._route(server_ns, "0.0.0.0/0", INET_SERVER_SIDE)
        self.server = Host(self, "server", server_ns, SERVER_IPS[0], SERVER_IPS[1:])
        self.inet = Host(self, "inet", self.inet_ns, INET_SERVER_SIDE)

    def add_site(self, name: str, *, nat: str, hosts: int = 1) -> Site:
        """A site called ``name`` behind a NAT of type ``nat`` with ``hosts`` LAN hosts."""
        if nat not in natrules.NAT_TYPES:
            raise LabError(f"unknown NAT type {nat!r}; choose from {natrules.NAT_TYPES}")
        if name in self.sites:
            raise LabError(f"site {name!r} exists already")
        if not 1 <= hosts <= 8:
            raise LabError("a site has 1 to 8 hosts")
        n = self._site_count
        self._site_count += 1
        if n >= 30:
            raise LabError("the lab addresses at most 30 sites")
        wan_net = ipaddress.ip_network(f"198.51.100.{8 * n}/29")
        inet_side, wan_ip = str(wan_net[1]), str(wan_net[2])
        lan_gw = f"198.18.{n}.1"
        host_ips = [f"198.18.{n}.{10 + i}" for i in range(hosts)]

        carrier: Host | None = None
        router_ns = self._new_ns(f"{name}-r", forwarding=True)
        router = Host(self, f"{name}-r", router_ns, wan_ip)
        if nat == "cgnat":
            carrier_ns = self._new_ns(f"{name}-c", forwarding=True)
            carrier = Host(self, f"{name}-c", carrier_ns, wan_ip)
            self._link(self.inet_ns, f"s{n}", [f"{inet_side}/29"], carrier_ns, "wan", [f"{wan_ip}/29"])
            self._route(carrier_ns, "0.0.0.0/0", inet_side)
            home_wan = f"100.64.{n}.2"
            self._link(carrier_ns, "lan", [f"100.64.{n}.1/24"], router_ns, "wan", [f"{home_wan}/24"])
            self._route(router_ns, "0.0.0.0/0", f"100.64.{n}.1")
            router.ip = home_wan
        else:
            self._link(self.inet_ns, f"s{n}", [f"{inet_side}/29"], router_ns, "wan", [f"{wan_ip}/29"])
            self._route(router_ns, "0.0.0.0/0", inet_side)

        lan_hosts: list[Host] = []
        # One bridge on the router joins the LAN hosts, so hosts of one site share a LAN.
        with NetNS(router_ns) as ipr:
            ipr.link("add", ifname="lan", kind="bridge")
            idx = ipr.link_lookup(ifname="lan")[0]
            ipr.addr("add", index=idx, address=lan_gw, prefixlen=24)
            ipr.link("set", index=idx, state="up")
        for i, ip in enumerate(host_ips):
            host_name = f"{name}{i}" if hosts > 1 else name
            host_ns = self._new_ns(host_name, forwarding=False)
            self._link(router_ns, f"h{i}", [], host_ns, "eth0", [f"{ip}/24"])
            with NetNS(router_ns) as ipr:
                ipr.link("set", index=ipr.link_lookup(ifname=f"h{i}")[0],
                         master=ipr.link_lookup(ifname="lan")[0])
            self._route(host_ns, "0.0.0.0/0", lan_gw)
            lan_hosts.append(Host(self, host_name, host_ns, ip))

        if nat == "none":
            self._route(self.inet_ns, f"198.18.{n}.0/24", wan_ip)
        elif nat == "cone":
            router.nft(natrules.cone_ruleset(wan_ip, host_ips[0]))
        elif nat in ("prc", "cgnat"):
            router.nft(natrules.masquerade_ruleset())
        elif nat == "sym":
            router.nft(natrules.masquerade_ruleset(randomize=True))
        elif nat == "prc-open":
            router.nft(natrules.masquerade_ruleset(accept_input=True))
        elif nat == "block":
            router.nft(natrules.block_ruleset(SERVER_IPS))
        if carrier is not None:
            carrier.nft(natrules.masquerade_ruleset())

        site = Site(name=name, nat=nat, router=router, hosts=lan_hosts, wan_ip=wan_ip, carrier=carrier)
        self.sites[name] = site
        return site

    # -- faults -------------------------------------------------------------------

    def block_udp(self, a: Site, b: Site) -> None:
        """Drop UDP between two sites' public addresses (on both sites' outer routers)."""
        key = (a.name, b.name)
        if key in self._blocks:
            return
        self._cut_count += 1
        table = f"labcut{self._cut_count}"
        routers = []
        for here, there in ((a, b), (b, a)):
            outer = here.carrier or here.router
            peers = [there.wan_ip] if there.nat != "none" else [h.ip for h in there.hosts]
            outer.nft(natrules.block_between_ruleset(table, peers))
            routers.append(outer)
        self._blocks[key] = (table, routers)

    def unblock_udp(self, a: Site, b: Site) -> None:
        table, routers = self._blocks.pop((a.name, b.name), ("", []))
        for outer in routers:
            outer.run(["nft", "delete", "table", "inet", table])
