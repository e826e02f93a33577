"""meshdns answers like NSD, the reference authoritative server, for the same zones.

Both serve the zones on loopback; ``dig`` asks each the same questions (hits,
misses, no-data, mixed case, CNAME, TXT, out of zone) and the answers are compared:
status, flags that matter, answer section and authority section (SOA serials aside,
since they count changes differently).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meshdns.zone import NEGATIVE_TTL, TTL, CustomRecord, NetworkZone, NodeRecord

from .conftest import in_use, reap, start_on_free_port, unheld_dns_port

pytestmark = pytest.mark.skipif(
    shutil.which("nsd") is None or shutil.which("dig") is None,
    reason="nsd and dig are needed (Debian nsd, dnsutils; scripts/setup installs them)")

ZONES = [NetworkZone(
    network="office",
    nodes=(NodeRecord("alpha", "198.19.0.1/24", "fd00::1/64"), NodeRecord("beta", "198.19.0.2/24")),
    records=(CustomRecord("www", "A", "198.19.0.80"), CustomRecord("docs", "CNAME", "www.office.mesh"),
             CustomRecord("@", "TXT", "v=mesh1"), CustomRecord("a.deep", "A", "198.19.0.81")),
)]

QUESTIONS = [
    ("alpha.office.mesh", "A"), ("alpha.office.mesh", "AAAA"), ("AlPhA.OfFiCe.MeSh", "A"),
    ("beta.office.mesh", "AAAA"), ("nobody.office.mesh", "A"), ("docs.office.mesh", "A"),
    ("office.mesh", "TXT"), ("office.mesh", "SOA"), ("office.mesh", "NS"), ("mesh", "SOA"),
    ("deep.office.mesh", "A"), ("a.deep.office.mesh", "A"), ("www.office.mesh", "MX"),
    ("nothere.mesh", "A"), ("example.com", "A"),
]


def zone_files(directory: Path) -> list[str]:
    """The same data as NSD zone files (the same SOA/NS layout meshdns builds)."""
    soa = f"ns.mesh. hostmaster.mesh. 1 3600 600 86400 {NEGATIVE_TTL}"
    names = ["mesh"]
    (directory / "mesh.zone").write_text(
        f"$ORIGIN mesh.\n$TTL {TTL}\n@ {NEGATIVE_TTL} IN SOA {soa}\n@ IN NS ns.mesh.\n")
    for zone in ZONES:
        lines = [f"$ORIGIN {zone.network}.mesh.", f"$TTL {TTL}",
                 f"@ {NEGATIVE_TTL} IN SOA {soa}", "@ IN NS ns.mesh."]
        for node in zone.nodes:
            if node.ipv4:
                lines.append(f"{node.name} IN A {node.ipv4.split('/')[0]}")
            if node.ipv6:
                lines.append(f"{node.name} IN AAAA {node.ipv6.split('/')[0]}")
        for rec in zone.records:
            value = f'"{rec.value}"' if rec.rtype == "TXT" else rec.value
            value = value + "." if rec.rtype == "CNAME" else value
            lines.append(f"{rec.name} IN {rec.rtype} {value}")
        (directory / f"{zone.network}.mesh.zone").write_text("\n".join(lines) + "\n")
        names.append(f"{zone.network}.mesh")
    return names


def nsd_config(directory: Path, port: int, zones: list[str], *, rrl: bool = True) -> Path:
    conf = directory / "nsd.conf"
    body = [
        "server:", f"  ip-address: 127.0.0.1@{port}", f"  port: {port}", '  username: ""',
        '  chroot: ""', f'  zonesdir: "{directory}"', f'  pidfile: "{directory}/nsd.pid"',
        f'  xfrdfile: "{directory}/xfrd.state"', f'  zonelistfile: "{directory}/zone.list"',
        f'  xfrdir: "{directory}"', '  database: ""', "  server-count: 1", "  verbosity: 1",
        f'  logfile: "{directory}/nsd.log"',
        # meshdns gives minimal responses (no NS RRset in the authority section of a
        # positive answer: smaller, and less to amplify with); ask NSD for the same.
        "  minimal-responses: yes",
        # NSD's RRL (200 qps per /24 by default) would otherwise cap a benchmark run.
        *([] if rrl else ["  rrl-ratelimit: 0", "  rrl-whitelist-ratelimit: 0"]),
        "remote-control:", "  control-enable: no",
    ]
    for name in zones:
        body += ["zone:", f"  name: {name}", f"  zonefile: {name}.zone"]
    conf.write_text("\n".join(body) + "\n")
    return conf


def normalise(dig_output: str) -> tuple[str, bool, list[str], list[str]]:
    status = re.search(r"status: (\w+)", dig_output)
    flags = re.search(r"flags: ([a-z ]+);", dig_output)
    sections: dict[str, list[str]] = {"ANSWER": [], "AUTHORITY": []}
    current = None
    for line in dig_output.splitlines():
        m = re.match(r";; (\w+) SECTION:", line)
        if m:
            current = m.group(1)
            continue
        if not line.strip() or line.startswith(";"):
            current = None if not line.strip() else current
            continue
        if current in sections:
            fields = line.split()
            if fields[3] == "SOA":
                fields[6] = "SERIAL"
            sections[current].append(" ".join(fields))
    return (status.group(1) if status else "NONE", "aa" in (flags.group(1) if flags else ""),
            sorted(sections["ANSWER"]), sorted(sections["AUTHORITY"]))


def dig(port: int, name: str, qtype: str) -> str:
    return subprocess.run(["dig", "+norec", "+time=2", "+tries=2", "-p", str(port), "@127.0.0.1",
                           name, qtype], capture_output=True, text=True, timeout=30).stdout


MESHDNS_MAIN = """
import sys, trio
from meshdns import server as s
from tests.test_meshdns_vs_nsd import ZONES
rate = None if "--no-rrl" in sys.argv else s.RRL_RATE
async def main():
    srv = s.MeshDNSServer("127.0.0.1", 0, rrl_rate=rate)
    async with trio.open_nursery() as n:
        await n.start(srv.run)
        srv.set_zones(ZONES)
        print("ready", srv.bound_port, flush=True)
trio.run(main)
"""


def start_meshdns(*extra: str, pin: str | None = None) -> tuple[subprocess.Popen[str], int]:
    """meshdns serving ZONES in its own process (as the signal server runs it), on a
    port it binds itself (port 0); and that port, from its ready line."""
    prefix = ["taskset", "-c", pin] if pin else []
    proc = subprocess.Popen([*prefix, sys.executable, "-c", MESHDNS_MAIN, *extra],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    ready, _, port = proc.stdout.readline().strip().partition(" ")
    assert ready == "ready" and port.isdigit(), (ready, port)
    return proc, int(port)


NSD_START_S = 10.0  # NSD loads these zones in well under a second; a bound, not a pause
NSD_POLL_S = 0.1


def start_nsd(directory: Path, *, rrl: bool = True, pin: str | None = None,
              ) -> tuple[subprocess.Popen[str], int]:
    """NSD serving the zones of :func:`zone_files`, once it answers; and its port.

    NSD must be told a port number: one taken between our pick and its bind makes it
    exit saying so, and it starts again on another (:func:`start_on_free_port`)."""
    zones = zone_files(directory)
    prefix = ["taskset", "-c", pin] if pin else []

    def start(port: int) -> subprocess.Popen[str] | None:
        conf = nsd_config(directory, port, zones, rrl=rrl)
        check = subprocess.run(["nsd-checkconf", str(conf)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        log = directory / "nsd.log"
        log.unlink(missing_ok=True)
        nsd = subprocess.Popen([*prefix, "nsd", "-d", "-c", str(conf)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
        deadline = time.monotonic() + NSD_START_S
        # An external process's start can only be polled: bounded, and ended early when
        # NSD exits.
        while "status:" not in dig(port, "mesh", "SOA"):
            if nsd.poll() is not None:
                said = log.read_text() if log.exists() else ""
                if in_use(said):
                    return None
                raise AssertionError(f"NSD exited {nsd.returncode}: {said[-2000:]}")
            if time.monotonic() > deadline:
                reap(nsd)
                raise AssertionError(f"NSD did not answer within {NSD_START_S} s")
            time.sleep(NSD_POLL_S)
        return nsd

    return start_on_free_port(start, pick=unheld_dns_port)


def test_answers_match_nsd(tmp_path: Path) -> None:
    nsd, nsd_port = start_nsd(tmp_path)
    meshdns: subprocess.Popen[str] | None = None
    try:
        meshdns, mesh_port = start_meshdns()
        mismatches = []
        for name, qtype in QUESTIONS:
            ours = normalise(dig(mesh_port, name, qtype))
            theirs = normalise(dig(nsd_port, name, qtype))
            if ours != theirs:
                mismatches.append(f"{name} {qtype}:\n  meshdns {ours}\n  nsd     {theirs}")
        assert not mismatches, "\n".join(mismatches)
    finally:
        if meshdns is not None:
            reap(meshdns)
        reap(nsd)
