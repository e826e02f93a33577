"""A real NSD as meshdns's secondary: NOTIFY, AXFR with TSIG, and the same answers.

The signal server runs (its own process) with ``--dns``, ``--dns-notify`` pointing at
NSD and ``--dns-tsig-file``; NSD is configured as a secondary of ``mesh`` and
``office.mesh`` with the same key. A node joins through the API and records are
added; NSD must answer like meshdns within ``FOLLOW_S`` of each change (the lag is
measured and printed). The NSD configuration is the one docs/meshdns.md shows.
"""

from __future__ import annotations

import base64
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import msgspec
import pytest
import trio
from dnslib import EDNS0, QTYPE, DNSRecord
from nacl.signing import SigningKey

from punchd.wire import api
from punchd.wire.signing import b64, sign_request
from punchd.wire.token import decode_token
from signal_server.main import ADMIN_TOKEN_FILE

from .conftest import in_use, reap, start_on_free_port, start_server_process, unheld_dns_port
from .test_meshdns_vs_nsd import dig, normalise

pytestmark = pytest.mark.skipif(
    shutil.which("nsd") is None or shutil.which("dig") is None,
    reason="nsd and dig are needed (Debian nsd, dnsutils; scripts/setup installs them)")

KEY_NAME = "xfr-key"
SECRET = base64.b64encode(bytes(range(32))).decode()
FOLLOW_S = 2.0  # the bound: NSD answers the change within 2 s
POLL_S = 0.02
NSD_START_S = 10.0
ZONES = ("mesh", "office.mesh")


def key_file(directory: Path) -> Path:
    """The key in NSD's own syntax: the same file serves both servers."""
    path = directory / "xfr.key"
    path.write_text(f'key:\n  name: "{KEY_NAME}"\n  algorithm: hmac-sha256\n'
                    f'  secret: "{SECRET}"\n')
    return path


def secondary_config(directory: Path, port: int, primary_port: int) -> Path:
    conf = directory / "nsd.conf"
    body = [
        "server:", f"  ip-address: 127.0.0.1@{port}", f"  port: {port}", '  username: ""',
        '  chroot: ""', f'  zonesdir: "{directory}"', f'  pidfile: "{directory}/nsd.pid"',
        f'  xfrdfile: "{directory}/xfrd.state"', f'  zonelistfile: "{directory}/zone.list"',
        f'  xfrdir: "{directory}"', '  database: ""', "  server-count: 1", "  verbosity: 2",
        f'  logfile: "{directory}/nsd.log"', "  minimal-responses: yes",
        # A transfer is served at once rather than batched for a second (the default).
        "  xfrd-reload-timeout: 0",
        "remote-control:", "  control-enable: no",
        f'include: "{directory}/xfr.key"',
    ]
    for name in ZONES:
        body += ["zone:", f"  name: {name}", f"  zonefile: {name}.zone",
                 f"  request-xfr: 127.0.0.1@{primary_port} {KEY_NAME}",
                 f"  allow-notify: 127.0.0.1 {KEY_NAME}"]
    conf.write_text("\n".join(body) + "\n")
    return conf


def query(port: int, name: str, qtype: str) -> DNSRecord | None:
    q = DNSRecord.question(name, qtype)
    q.add_ar(EDNS0(udp_len=1232))  # the long TXT needs more than 512 bytes
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.5)
        s.sendto(q.pack(), ("127.0.0.1", port))
        try:
            return DNSRecord.parse(s.recv(4096))
        except (TimeoutError, ConnectionRefusedError):
            return None


def answers(port: int, name: str, qtype: str) -> set[str]:
    reply = query(port, name, qtype)
    if reply is None:
        return set()
    return {str(rr.rdata) for rr in reply.rr if rr.rtype == getattr(QTYPE, qtype)}


def wait_for(port: int, name: str, qtype: str, expected: set[str] | None, bound: float, *,
             since: float | None = None) -> tuple[float, set[str]]:
    """Seconds from ``since`` (default now) until the server at ``port`` answers
    ``expected`` (None: anything), and the answer; fails past ``bound``."""
    start = time.monotonic() if since is None else since
    got: set[str] = set()
    while time.monotonic() - start < bound:  # an external process: polled, bounded
        got = answers(port, name, qtype)
        if got == expected or (expected is None and got):
            return time.monotonic() - start, got
        time.sleep(POLL_S)
    raise AssertionError(f"{name} {qtype}: {got} after {bound} s, expected {expected}")


def follow(dns_port: int, nsd_port: int, name: str, qtype: str, since: float) -> float:
    """The change made at ``since`` is in meshdns (in ms) and then in NSD: NSD's lag."""
    _, ours = wait_for(dns_port, name, qtype, None, FOLLOW_S, since=since)
    lag, _ = wait_for(nsd_port, name, qtype, ours, FOLLOW_S, since=since)
    return lag


def start_secondary(directory: Path, primary_port: int) -> tuple[subprocess.Popen[str], int]:
    def start(port: int) -> subprocess.Popen[str] | None:
        conf = secondary_config(directory, port, primary_port)
        check = subprocess.run(["nsd-checkconf", str(conf)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        log = directory / "nsd.log"
        log.unlink(missing_ok=True)
        nsd = subprocess.Popen(["nsd", "-d", "-c", str(conf)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, text=True)
        deadline = time.monotonic() + NSD_START_S
        while query(port, "mesh", "SOA") is None:
            if nsd.poll() is not None:
                said = log.read_text() if log.exists() else ""
                if in_use(said):
                    return None
                raise AssertionError(f"NSD exited {nsd.returncode}: {said[-2000:]}")
            if time.monotonic() > deadline:
                reap(nsd)
                raise AssertionError(f"NSD did not answer within {NSD_START_S} s")
            time.sleep(0.05)
        return nsd

    return start_on_free_port(start, pick=unheld_dns_port)


class Admin:
    def __init__(self, url: str, data: Path) -> None:
        token = (data / ADMIN_TOKEN_FILE).read_text().strip()
        self.url = url
        self.http = httpx.Client(base_url=url + "/api/v1", timeout=10,
                                 headers={"authorization": f"Bearer {token}"})

    def post(self, path: str, body: object) -> object:
        resp = self.http.post(path, json=body)
        assert resp.status_code in (200, 201), resp.text
        return resp.json()

    def join(self, token: str, name: str) -> None:
        key = SigningKey.generate()
        body = msgspec.json.encode(api.JoinRequest(
            access_key=decode_token(token).key, signing_key=b64(bytes(key.verify_key)),
            wg_public_key=b64(SigningKey.generate().encode()),
            probe_public_key=b64(SigningKey.generate().encode()), name=name))
        headers = sign_request(key, "POST", "/api/v1/join", body)
        resp = httpx.post(self.url + "/api/v1/join", content=body, timeout=10,
                          headers={**headers, "content-type": "application/json"})
        assert resp.status_code in (200, 201), resp.text


QUESTIONS = [
    ("alpha.office.mesh", "A"), ("alpha.office.mesh", "AAAA"), ("AlPhA.OfFiCe.MeSh", "A"),
    ("beta.office.mesh", "A"), ("nobody.office.mesh", "A"), ("docs.office.mesh", "A"),
    ("office.mesh", "TXT"), ("office.mesh", "SOA"), ("office.mesh", "NS"), ("mesh", "SOA"),
    ("mesh", "NS"), ("deep.office.mesh", "A"), ("a.deep.office.mesh", "A"),
    ("www.office.mesh", "MX"), ("nothere.mesh", "A"), ("big.office.mesh", "TXT"),
]


def test_nsd_secondary_follows_meshdns(tmp_path: Path) -> None:
    data, nsd_dir = tmp_path / "server", tmp_path / "nsd"
    nsd_dir.mkdir()
    keyfile = key_file(nsd_dir)
    # NSD first, told where meshdns will listen; then the signal server, told NSD's port.
    dns_port = unheld_dns_port()
    nsd, nsd_port = start_secondary(nsd_dir, dns_port)
    server: subprocess.Popen[str] | None = None
    admin: Admin | None = None
    try:
        server, http_port = start_server_process(
            data, "--dns", f"127.0.0.1:{dns_port}", "--dns-notify", f"127.0.0.1:{nsd_port}",
            "--dns-tsig-file", str(keyfile))
        admin = Admin(f"http://127.0.0.1:{http_port}", data)
        admin.post("/networks", {"name": "office", "ipv4_cidr": "198.19.0.0/24",
                                 "ipv6_cidr": "fd00:19::/64"})
        # NSD's first transfer (its retry timer or our NOTIFY): a start-up, not a lag.
        wait_for(nsd_port, "office.mesh", "SOA", answers(dns_port, "office.mesh", "SOA"),
                 NSD_START_S)
        lags = []
        token = str(admin.post("/networks/office/keys", {})["token"])  # type: ignore[index]
        for name in ("alpha", "beta"):
            since = time.monotonic()
            admin.join(token, name)
            lags.append(follow(dns_port, nsd_port, f"{name}.office.mesh", "A", since))
        records = [("www", "A", "198.19.0.80"), ("docs", "CNAME", "www.office.mesh"),
                   ("@", "TXT", "v=mesh1"), ("a.deep", "A", "198.19.0.81"),
                   ("big", "TXT", "x" * 600)]
        for name, rtype, value in records:
            since = time.monotonic()
            admin.post("/networks/office/dns", {"name": name, "rtype": rtype, "value": value})
            owner = "office.mesh" if name == "@" else f"{name}.office.mesh"
            lags.append(follow(dns_port, nsd_port, owner, rtype, since))
        # The last change is in NSD: every question is answered alike.
        mismatches = []
        for name, qtype in QUESTIONS:
            mine, theirs = normalise(dig(dns_port, name, qtype)), normalise(dig(nsd_port, name, qtype))
            if mine != theirs:
                mismatches.append(f"{name} {qtype}:\n  meshdns {mine}\n  nsd     {theirs}")
        assert not mismatches, "\n".join(mismatches)
        soa_mine = dig(dns_port, "office.mesh", "SOA").split("SOA")[-1]
        assert soa_mine.split()[2] == dig(nsd_port, "office.mesh", "SOA").split("SOA")[-1].split()[2]
        print(f"NSD follow lag per change (s): {', '.join(f'{x:.3f}' for x in lags)}")
    finally:
        if admin is not None:
            admin.http.close()
        if server is not None:
            reap(server)
        reap(nsd)


async def test_nsd_acknowledges_signed_notifies_and_transfers_incrementally(tmp_path: Path) -> None:
    """In-process meshdns: every signed NOTIFY is answered by NSD with a signed reply we
    verify, and after the first full transfer NSD asks IXFR and gets differences."""
    from meshdns.server import MeshDNSServer
    from meshdns.tsig import load_key_file
    from meshdns.zone import NetworkZone, NodeRecord

    key = load_key_file(key_file(tmp_path))
    dns_port = unheld_dns_port()
    nsd, nsd_port = start_secondary(tmp_path, dns_port)
    try:
        srv = MeshDNSServer("127.0.0.1", dns_port, tsig_key=key, notify=[("127.0.0.1", nsd_port)])
        async with trio.open_nursery() as nursery:
            await nursery.start(srv.run)

            async def nsd_has(name: str, value: set[str]) -> None:
                for _ in range(int(NSD_START_S / POLL_S)):  # an external process: polled
                    if await trio.to_thread.run_sync(answers, nsd_port, name, "A") == value:
                        return
                    await trio.sleep(POLL_S)
                raise AssertionError(f"NSD never answered {name} with {value}")

            for n in range(1, 5):
                nodes = tuple(NodeRecord(f"n{i}", f"198.19.0.{i}") for i in range(n, n + 2))
                srv.set_zones([NetworkZone("office", nodes)])
                await nsd_has(f"n{n + 1}.office.mesh", {f"198.19.0.{n + 1}"})
            await nsd_has("n1.office.mesh", set())  # deleted by a difference
            assert srv.notifier is not None
            stats = srv.notifier.schedule.statistics()
            assert stats.sent == stats.acknowledged and stats.given_up == 0, stats
            assert srv.transfers.incremental >= 2 and srv.transfers.notauth == 0
            nursery.cancel_scope.cancel()
    finally:
        reap(nsd)
