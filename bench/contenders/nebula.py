"""Nebula (Debian's 1.6.1): a lighthouse on the lab's server host that is also a relay
(``am_relay``), two nodes with ``punchy`` (punch and respond) and ``use_relays``
through the lighthouse. Certificates from ``nebula-cert`` in the lab's log dir.

Path, from node A's own log (Nebula 1.6 has no status command without its SSH
console): a handshake with B answered from a real address, or "Host roamed to new
udp ip/port", means direct; a handshake answered through the relay (``udpAddr="<nil>"``)
means relay. The benchmark confirms it on the WAN side like every contender's.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netns_tests.lab import Host, Lab, Proc, Site
from netns_tests.lab.mesh import wait_for_log

NEBULA_PORT = 4242


def _config(*, ca: Path, cert: Path, key: Path, lighthouse_ip: str, lighthouse_public: str,
            tun: str | None, am_lighthouse: bool) -> dict[str, Any]:
    """A Nebula config as a dict (JSON is YAML, so nebula reads it as written)."""
    config: dict[str, Any] = {
        "pki": {"ca": str(ca), "cert": str(cert), "key": str(key)},
        "listen": {"host": "0.0.0.0", "port": NEBULA_PORT},
        "punchy": {"punch": True, "respond": True},
        "logging": {"level": "info", "format": "text"},
        "firewall": {"outbound": [{"port": "any", "proto": "any", "host": "any"}],
                     "inbound": [{"port": "any", "proto": "any", "host": "any"}]},
    }
    if am_lighthouse:
        config["lighthouse"] = {"am_lighthouse": True}
        config["relay"] = {"am_relay": True, "use_relays": True}
        config["tun"] = {"disabled": True}
    else:
        config["static_host_map"] = {lighthouse_ip: [f"{lighthouse_public}:{NEBULA_PORT}"]}
        config["lighthouse"] = {"am_lighthouse": False, "interval": 60, "hosts": [lighthouse_ip]}
        config["relay"] = {"relays": [lighthouse_ip], "am_relay": False, "use_relays": True}
        config["tun"] = {"dev": tun, "mtu": 1300}
    return config


_PEER_EVENT = re.compile(
    r'msg="(?:Handshake message received|Host roamed to new udp ip/port\.)".*?'
    r'certName=b\b.*?(?:newAddr="?([^" ]+)|udpAddr="?([^" ]+))')


def path_from_log(log: str) -> str:
    """Node A's view of its tunnel to B, from the last handshake or roaming line about B."""
    path = "none"
    for line in log.splitlines():
        match = _PEER_EVENT.search(line)
        if match:
            addr = match.group(1) or match.group(2)
            path = "relay" if addr == "<nil>" else "direct"
    return path


@dataclass
class NebulaHandle:
    host_a: Host
    host_b: Host
    mesh_ip_a: str
    mesh_ip_b: str
    procs: list[Proc] = field(default_factory=list)
    start_s: float = 0.0

    def reported_path(self) -> str:
        return path_from_log(self.procs[1].read_log()) if len(self.procs) > 1 else "none"

    def stop(self) -> None:
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                proc.stop(timeout=3)

    def info(self) -> dict[str, Any]:
        return {"path_source": "node A's log (handshake answered via relay or direct, roaming)"}


class NebulaContender:
    NAME = "nebula"
    # Without relays, Nebula 1.6.1 punched prc/prc here after ~4 s; with relays it
    # starts on the relay and, in 180 trials of two full runs, never left it where it
    # did not go direct at once. 25 s gives a late roam every chance to show.
    DIRECT_WAIT_S = 25.0

    def applies(self, site_a: Site, site_b: Site) -> bool:
        return True

    def start(self, lab: Lab, site_a: Site, site_b: Site, run_id: int) -> NebulaHandle:
        net = f"198.19.{100 + run_id % 50}"
        work = lab.log_dir / f"nebula-{run_id}"
        work.mkdir(parents=True, exist_ok=True)
        server = lab.server
        ca_crt, ca_key = work / "ca.crt", work / "ca.key"
        server.run(["nebula-cert", "ca", "-name", f"bench{run_id}", "-out-crt", str(ca_crt),
                    "-out-key", str(ca_key)])
        members = {"lh": f"{net}.1", "a": f"{net}.2", "b": f"{net}.3"}
        for name, ip in members.items():
            server.run(["nebula-cert", "sign", "-ca-crt", str(ca_crt), "-ca-key", str(ca_key),
                        "-name", name, "-ip", f"{ip}/24", "-out-crt", str(work / f"{name}.crt"),
                        "-out-key", str(work / f"{name}.key")])
        host_a, host_b = site_a.hosts[0], site_b.hosts[0]
        handle = NebulaHandle(host_a, host_b, members["a"], members["b"])
        try:
            for name, host in (("lh", server), ("a", host_a), ("b", host_b)):
                config = _config(ca=ca_crt, cert=work / f"{name}.crt", key=work / f"{name}.key",
                                 lighthouse_ip=members["lh"], lighthouse_public=server.ip,
                                 tun=f"{lab.prefix}n{run_id}{name}", am_lighthouse=name == "lh")
                path = work / f"{name}.yml"
                path.write_text(json.dumps(config, indent=1))
                proc = host.spawn(["nebula", "-config", str(path)], name=f"nebula-{run_id}-{name}")
                handle.procs.append(proc)
                if name == "lh":
                    wait_for_log(proc, "Nebula interface is active", timeout=10)
                    # Start-up counts the nodes only, not the lighthouse or certificates.
                    nodes_started = time.monotonic()
            for proc in handle.procs[1:]:
                wait_for_log(proc, "Nebula interface is active", timeout=10)
            handle.start_s = time.monotonic() - nodes_started
        except BaseException:
            handle.stop()
            raise
        return handle
