"""meshdns hardening (issue #14): records as the wire allows, a store holding a bad
record still serves, concurrent TCP with deadlines, bounded caches, header flags,
a resolvable NS target, and CNAME exclusivity in the store."""

from __future__ import annotations

import logging
import resource
import socket
import struct
from collections.abc import Iterator

import pytest
import trio
from dnslib import EDNS0, QTYPE, RCODE, DNSRecord

from meshdns import server as dns_server
from meshdns import zone as dns_zone
from meshdns.server import MeshDNSServer, Resolver
from meshdns.zone import CustomRecord, NetworkZone, NodeRecord, ZoneSet, validate_record
from punchd.errors import Conflict, Invalid
from punchd.wire import api
from signal_server.dns import ZonePusher, build_zones
from signal_server.service import Service
from signal_server.store import Store

from .test_meshdns import udp_query

DKIM = "v=DKIM1; k=rsa; p=" + "A" * 280  # ~300 bytes, like a 2048-bit key


def ask(resolver: Resolver, name: str, qtype: str = "A", *, max_size: int | None = 1232,
        flags: dict[str, int] | None = None) -> DNSRecord:
    q = DNSRecord.question(name, qtype)
    for flag, value in (flags or {}).items():
        setattr(q.header, flag, value)
    wire = resolver.answer(q.pack(), max_size)
    assert wire is not None
    return DNSRecord.parse(wire)


# -- validate_record: exactly what the wire allows --------------------------------------

@pytest.mark.parametrize(("rtype", "name", "value", "stored"), [
    ("TXT", "@", DKIM, DKIM),
    ("TXT", "_dmarc", "v=DMARC1; p=none", "v=DMARC1; p=none"),
    ("TXT", "x", "é" * 500, "é" * 500),  # 1000 bytes of UTF-8
    ("A", "_sip._tcp", "198.19.0.5", "198.19.0.5"),
    ("AAAA", "v6", "FD00:0:0::1", "fd00::1"),
    ("CNAME", "alias", "_Service.Example.COM.", "_service.example.com"),
])
def test_valid_records(rtype: str, name: str, value: str, stored: str) -> None:
    rec = validate_record(rtype, name, value)
    assert (rec.name, rec.value) == (name, stored)


@pytest.mark.parametrize(("rtype", "name", "value", "field"), [
    ("AAAA", "x", "fe80::1%eth0", "value"),  # scope id
    ("AAAA", "x", "::ffff:198.19.0.1", "value"),  # IPv4-mapped
    ("A", "x", "198.19.0.01", "value"),
    ("TXT", "x", "y" * 1025, "value"),
    ("TXT", "x", "\ud800", "value"),  # not encodable as UTF-8
    ("CNAME", "@", "www.example.com", "name"),  # apex has SOA and NS
    ("CNAME", "x", "a" * 64 + ".example.com", "value"),
    ("CNAME", "x", ".".join(["abcdefghi"] * 26), "value"),  # 259 characters
    ("CNAME", "x", "bad host", "value"),
    ("A", "a" * 64, "198.19.0.1", "name"),
    ("A", "-x", "198.19.0.1", "name"),
    ("A", "a..b", "198.19.0.1", "name"),
    ("A", ".".join(["abcdefghi"] * 26), "198.19.0.1", "name"),
])
def test_invalid_records(rtype: str, name: str, value: str, field: str) -> None:
    with pytest.raises(Invalid) as exc:
        validate_record(rtype, name, value)
    assert exc.value.field == field


def test_long_txt_is_split_into_255_byte_strings_on_the_wire() -> None:
    value = validate_record("TXT", "@", "é" * 400).value  # 800 bytes
    resolver = Resolver(ZoneSet("mesh", [NetworkZone("office", records=(
        CustomRecord("@", "TXT", DKIM), CustomRecord("u", "TXT", value)))]))
    reply = ask(resolver, "office.mesh", "TXT")
    strings = reply.rr[0].rdata.data
    assert [len(s) for s in strings] == [255, len(DKIM) - 255]
    assert b"".join(strings).decode() == DKIM
    tcp = ask(resolver, "u.office.mesh", "TXT", max_size=None)
    assert b"".join(tcp.rr[0].rdata.data).decode() == value  # a split inside a character


# -- the zone builder skips what it cannot encode ----------------------------------------

BAD_RECORDS = (
    CustomRecord("scoped", "AAAA", "fe80::1%eth0"),
    CustomRecord("mapped", "AAAA", "::ffff:1.2.3.4"),  # dnslib's parser cannot read it
    CustomRecord("x" * 70, "A", "198.19.0.9"),
    CustomRecord("big", "TXT", "z" * 70000),
    CustomRecord("bad", "A", "999.1.1.1"),
    CustomRecord("nope", "MX", "mail.example.com"),
    CustomRecord("www", "CNAME", "elsewhere.example.com"),  # beside www's A
)


def test_zone_builder_skips_and_logs_each_bad_record(caplog: pytest.LogCaptureFixture) -> None:
    good = (CustomRecord("www", "A", "198.19.0.80"), CustomRecord("@", "TXT", "ok"))
    with caplog.at_level(logging.WARNING, logger="meshdns"):
        zones = ZoneSet("mesh", [NetworkZone("office", (NodeRecord("alpha", "198.19.0.1/24"),),
                                             good + BAD_RECORDS)])
    assert len(zones.skipped) == len(BAD_RECORDS) == len(caplog.records)
    for rec, line in zip(BAD_RECORDS, caplog.messages, strict=True):
        assert "'office'" in line and rec.rtype in line and rec.name[:10] in line
        assert "\n" not in line
    resolver = Resolver(zones)
    assert str(ask(resolver, "www.office.mesh").rr[0].rdata) == "198.19.0.80"
    assert [QTYPE[rr.rtype] for rr in ask(resolver, "www.office.mesh").rr] == ["A"]
    assert str(ask(resolver, "alpha.office.mesh").rr[0].rdata) == "198.19.0.1"
    assert ask(resolver, "scoped.office.mesh", "AAAA").header.rcode == RCODE.NXDOMAIN


async def test_a_store_holding_bad_records_still_serves_dns(
        caplog: pytest.LogCaptureFixture) -> None:
    store = Store(":memory:")
    store.create_network(api.NetworkCreate(name="office", ipv4_cidr="198.19.0.0/24"))
    store.add_dns_record("office", api.DnsRecord(name="www", rtype="A", value="198.19.0.80"))
    # What an older version accepted with 201, written the way it wrote them.
    for name, rtype, value in [("scoped", "AAAA", "fe80::1%eth0"), ("dkim", "TXT", "k" * 2000),
                               ("has space", "A", "198.19.0.7"), ("www", "CNAME", "x.example"),
                               ("@", "CNAME", "x.example")]:
        store.db.execute("INSERT INTO dns_records VALUES ('office', ?, ?, ?)", (name, rtype, value))
    service = Service(store, public_url="http://127.0.0.1:1",
                      dns=api.MeshDns(address="127.0.0.1:0", domain="mesh"))
    pusher = ZonePusher(service, ("127.0.0.1", 0), domain="mesh")
    with caplog.at_level(logging.WARNING, logger="meshdns"):
        async with trio.open_nursery() as nursery:
            await nursery.start(pusher.run)
            port = pusher.dns.bound_port
            assert port
            reply = await trio.to_thread.run_sync(udp_query, port, "www.office.mesh", "A")
            assert [str(rr.rdata) for rr in reply.rr] == ["198.19.0.80"]
            reply = await trio.to_thread.run_sync(udp_query, port, "office.mesh", "SOA")
            assert reply.header.rcode == RCODE.NOERROR and reply.rr
            nursery.cancel_scope.cancel()
    assert len([m for m in caplog.messages if "skipped" in m]) == 5
    # The CNAME beside www's A is each valid alone: the zone builder drops the pair's CNAME.
    assert [r.rtype for r in build_zones(store)[0].records] == ["A", "CNAME"]
    store.close()


# -- TCP: concurrent, with an idle timeout, a per-message deadline and a cap -------------



def frame(name: str, qtype: str = "A") -> tuple[int, bytes]:
    q = DNSRecord.question(name, qtype)
    wire = q.pack()
    return q.header.id, struct.pack("!H", len(wire)) + wire


def read_answer(s: socket.socket) -> DNSRecord:
    head = recv_exact(s, 2)
    return DNSRecord.parse(recv_exact(s, struct.unpack("!H", head)[0]))


def recv_exact(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def closed_by_server(s: socket.socket) -> bool:
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


@pytest.fixture
def many_files() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip("needs 1200 open files")
    if soft != resource.RLIM_INFINITY and soft < 1200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1200, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


ZONES = [NetworkZone("office", (NodeRecord("alpha", "198.19.0.1/24"),),
                     (CustomRecord("www", "A", "198.19.0.80"),))]


async def test_tcp_answers_past_500_idle_connections_and_a_slowloris(many_files: None) -> None:
    clock = FakeClock()
    server = MeshDNSServer("127.0.0.1", 0, clock=clock)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        server.set_zones(ZONES)
        port = server.bound_port
        assert port
        idle: list[socket.socket] = []
        try:
            def scenario() -> None:
                for _ in range(500):
                    idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
                slow = socket.create_connection(("127.0.0.1", port), timeout=5)
                idle.append(slow)
                _, query = frame("alpha.office.mesh")
                slow.sendall(query[:1])  # the first byte of a message, and no more yet
                qid, query = frame("www.office.mesh")
                with socket.create_connection(("127.0.0.1", port), timeout=1) as fresh:
                    fresh.sendall(query)
                    reply = read_answer(fresh)  # 1 s timeout: a stalled server fails here
                assert reply.header.id == qid and str(reply.rr[0].rdata) == "198.19.0.80"
                # One byte a "second": the connection stays active, the message deadline
                # (2 s from its first byte) still cuts it off; the idle ones (10 s) stay.
                for byte in query[1:4]:
                    clock.now += 1.0
                    try:
                        slow.sendall(bytes([byte]))
                    except (ConnectionResetError, BrokenPipeError):
                        break  # past the deadline the server may cut it before our byte
                slow.settimeout(5)
                assert closed_by_server(slow)
                assert server.statistics().tcp_timeouts == 1
                clock.now += 10.0  # now the idle ones time out too
                assert all(closed_by_server(s) for s in idle[:500])

            await trio.to_thread.run_sync(scenario)
        finally:
            for s in idle:
                s.close()
        assert server.statistics().tcp_timeouts == 501
        nursery.cancel_scope.cancel()


async def test_tcp_pipelined_queries_and_the_connection_cap() -> None:
    server = MeshDNSServer("127.0.0.1", 0, tcp_max_connections=4)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        server.set_zones(ZONES)
        port = server.bound_port
        assert port

        def scenario() -> None:
            with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
                frames = [frame(n) for n in ("alpha.office.mesh", "www.office.mesh", "no.office.mesh")]
                s.sendall(b"".join(f for _, f in frames))  # three queries in one segment
                replies = [read_answer(s) for _ in frames]
                assert [r.header.id for r in replies] == [qid for qid, _ in frames]
                assert replies[2].header.rcode == RCODE.NXDOMAIN
            held = [socket.create_connection(("127.0.0.1", port), timeout=3) for _ in range(4)]
            try:
                held[0].sendall(frame("alpha.office.mesh")[1])
                read_answer(held[0])  # held[0] is the most recently active now
                with socket.create_connection(("127.0.0.1", port), timeout=3) as extra:
                    extra.sendall(frame("www.office.mesh")[1])
                    assert str(read_answer(extra).rr[0].rdata) == "198.19.0.80"
                assert closed_by_server(held[1])  # the longest idle made room
                assert server.statistics().tcp_evicted == 1
            finally:
                for s in held:
                    s.close()

        await trio.to_thread.run_sync(scenario)
        nursery.cancel_scope.cancel()


def test_tcp_session_framing_and_deadlines() -> None:
    _, one = frame("alpha.office.mesh")
    _, two = frame("www.office.mesh")
    session = dns_server.TcpSession(0.0, idle_timeout=10.0, message_timeout=2.0)
    stream = one + two
    got: list[bytes] = []
    for i, byte in enumerate(stream):  # one byte at a time: every prefix is handled
        got += session.receive(bytes([byte]), i * 0.001)
    assert got == [one[2:], two[2:]] and not session.mid_message
    assert session.receive(one + two + one[:5], 1.0) == [one[2:], two[2:]]
    assert session.mid_message and not session.expired(2.9) and session.expired(3.0)
    idle = dns_server.TcpSession(0.0, idle_timeout=10.0, message_timeout=2.0)
    assert not idle.expired(9.9) and idle.expired(10.0)
    idle.activity(5.0)  # an answer went out
    assert not idle.expired(14.9)


# -- bounded caches ------------------------------------------------------------------------

def test_50k_unique_names_leave_the_cache_at_its_bound() -> None:
    resolver = Resolver(ZoneSet("mesh", ZONES))
    for i in range(50_000):
        q = DNSRecord.question(f"n{i}.office.mesh")
        assert resolver.answer(q.pack(), dns_server.MAX_UDP_EDNS) is not None
    assert 0 < len(resolver.gen.cache) <= dns_server.CACHE_MAX
    assert 0 < len(resolver.gen.udp_cache) <= dns_server.CACHE_MAX
    padded = DNSRecord.question("alpha.office.mesh")
    padded.add_ar(EDNS0(opts=[]))
    wire = padded.pack()
    wire = wire[:-2] + struct.pack("!H", 600) + bytes(600)  # a 600-byte padded query
    before = len(resolver.gen.cache)
    assert resolver.answer(wire, None) is not None
    assert len(resolver.gen.cache) == before  # answered, not cached


# -- header flags ----------------------------------------------------------------------------

def test_ad_is_cleared_rd_and_cd_echoed_tc_never_copied() -> None:
    resolver = Resolver(ZoneSet("mesh", ZONES))
    for flags in ({"ad": 1, "rd": 1, "cd": 1}, {"ad": 1, "rd": 0, "cd": 0}, {"tc": 1, "rd": 1}):
        reply = ask(resolver, "alpha.office.mesh", flags=flags)
        h = reply.header
        assert (h.ad, h.ra, h.tc, h.aa) == (0, 0, 0, 1)
        assert (h.rd, h.cd) == (flags.get("rd", 0), flags.get("cd", 0))
        assert str(reply.rr[0].rdata) == "198.19.0.1"


# -- the NS target resolves -----------------------------------------------------------------

def test_ns_target_resolves_with_glue() -> None:
    resolver = Resolver(ZoneSet("mesh", ZONES, nameserver="127.0.0.1"))
    ns = ask(resolver, "office.mesh", "NS")
    target = str(ns.rr[0].rdata)
    assert target == "ns.mesh."
    assert [str(ar.rdata) for ar in ns.ar if ar.rtype == QTYPE.A] == ["127.0.0.1"]
    reply = ask(resolver, target)
    assert reply.header.rcode == RCODE.NOERROR and str(reply.rr[0].rdata) == "127.0.0.1"
    v6 = Resolver(ZoneSet("mesh", ZONES, nameserver="fd00::53"))
    assert str(ask(v6, "ns.mesh", "AAAA").rr[0].rdata) == "fd00::53"
    assert ask(v6, "ns.mesh", "A").header.rcode == RCODE.NOERROR  # NODATA, not NXDOMAIN
    named = Resolver(ZoneSet("mesh", ZONES, nameserver="dns.example.net"))
    assert str(ask(named, "mesh", "NS").rr[0].rdata) == "dns.example.net."
    assert str(ask(named, "office.mesh", "SOA").rr[0].rdata.mname) == "dns.example.net."


def test_server_and_pusher_serve_their_own_address_for_ns() -> None:
    assert MeshDNSServer("127.0.0.1", 0).resolver.zones.names[dns_zone.DNSLabel("ns.mesh")]
    assert MeshDNSServer("0.0.0.0", 0).nameserver is None
    service = Service(Store(":memory:"), public_url="http://[fd00::1]:1",
                      dns=api.MeshDns(address="[fd00::1]:53", domain="mesh"))
    pusher = ZonePusher(service, ("::", 0), domain="mesh")
    assert pusher.dns.nameserver == "fd00::1"
    service.store.close()


# -- CNAME exclusivity in the store ------------------------------------------------------------

@pytest.fixture
def store() -> Iterator[Store]:
    s = Store(":memory:")
    s.create_network(api.NetworkCreate(name="net", ipv4_cidr="198.19.0.0/24"))
    s.db.execute("INSERT INTO nodes (id, network, name, signing_key, body) "
                 "VALUES ('n1', 'net', 'alpha', 'k1', '{}')")
    yield s
    s.close()


def add(store: Store, name: str, rtype: str, value: str) -> api.DnsRecord:
    return store.add_dns_record("net", api.DnsRecord(name=name, rtype=rtype,  # type: ignore[arg-type]
                                                     value=value))


@pytest.mark.parametrize(("first", "second"), [
    (("www", "A", "198.19.0.1"), ("www", "CNAME", "x.example.com")),
    (("www", "TXT", "hello"), ("WWW", "CNAME", "x.example.com")),
    (("www", "CNAME", "x.example.com"), ("www", "A", "198.19.0.1")),
    (("www", "CNAME", "x.example.com"), ("www", "CNAME", "y.example.com")),
    (("www", "CNAME", "x.example.com"), ("www", "CNAME", "x.example.com")),
    (None, ("alpha", "CNAME", "x.example.com")),  # a node's name
])
def test_cname_beside_other_data_is_refused(store: Store, first: tuple[str, str, str] | None,
                                            second: tuple[str, str, str]) -> None:
    if first is not None:
        add(store, *first)
    before = store.list_dns_records("net")
    with pytest.raises(Conflict) as exc:
        add(store, *second)
    assert exc.value.field == "name"
    assert store.list_dns_records("net") == before


def test_underscore_names_and_cnames_below_data_are_fine(store: Store) -> None:
    add(store, "_dmarc", "TXT", "v=DMARC1; p=none")
    add(store, "_sip._tcp", "TXT", "x")
    add(store, "docs", "CNAME", "www.net.mesh")
    add(store, "alpha", "TXT", "a node's name can carry more data, just not a CNAME")
    add(store, "ssh.alpha", "CNAME", "alpha.net.mesh")
    assert len(store.list_dns_records("net")) == 5
