"""meshdns: zone semantics (sans-IO), real UDP/TCP listeners on loopback, RRL, bad input."""

from __future__ import annotations

import socket
import struct

import pytest
import trio
from dnslib import EDNS0, QTYPE, RCODE, DNSRecord

from meshdns.server import MeshDNSServer, RateLimiter, Resolver
from meshdns.zone import CustomRecord, NetworkZone, NodeRecord, ZoneSet, validate_record
from punchd.errors import Invalid

ZONES = [NetworkZone(
    network="office",
    nodes=(NodeRecord("alpha", "198.19.0.1/24", "fd00::1/64"), NodeRecord("beta", "198.19.0.2/24")),
    records=(CustomRecord("www", "A", "198.19.0.80"), CustomRecord("docs", "CNAME", "www.office.mesh"),
             CustomRecord("@", "TXT", "v=mesh1"), CustomRecord("a.deep", "A", "198.19.0.81"),
             *(CustomRecord("big", "TXT", "x" * 200 + str(i)) for i in range(5))),
)]


def ask(resolver: Resolver, name: str, qtype: str = "A", *, edns: bool = False,
        max_size: int | None = 1232) -> DNSRecord:
    q = DNSRecord.question(name, qtype)
    if edns:
        q.add_ar(EDNS0(udp_len=4096))
    wire = resolver.answer(q.pack(), max_size)
    assert wire is not None
    reply = DNSRecord.parse(wire)
    assert reply.header.id == q.header.id
    return reply


@pytest.fixture
def resolver() -> Resolver:
    return Resolver(ZoneSet("mesh", ZONES))


def udp_query(port: int, name: str, qtype: str) -> DNSRecord:
    q = DNSRecord.question(name, qtype)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        for _ in range(3):  # UDP: a resolver retries, and so does this test
            s.sendto(q.pack(), ("127.0.0.1", port))
            try:
                return DNSRecord.parse(s.recv(4096))
            except TimeoutError:
                continue
    raise TimeoutError(f"no answer for {name}")


def test_node_names_answer_a_and_aaaa(resolver: Resolver) -> None:
    reply = ask(resolver, "alpha.office.mesh")
    assert reply.header.rcode == RCODE.NOERROR and reply.header.aa
    assert [str(rr.rdata) for rr in reply.rr] == ["198.19.0.1"]
    assert [str(rr.rdata) for rr in ask(resolver, "alpha.office.mesh", "AAAA").rr] == ["fd00::1"]


def test_case_is_echoed(resolver: Resolver) -> None:
    reply = ask(resolver, "AlPhA.OFFICE.mesh")
    assert str(reply.rr[0].rname) == "AlPhA.OFFICE.mesh."
    assert str(reply.q.qname) == "AlPhA.OFFICE.mesh."


def test_nxdomain_and_nodata_carry_the_soa(resolver: Resolver) -> None:
    nx = ask(resolver, "nobody.office.mesh")
    assert nx.header.rcode == RCODE.NXDOMAIN and nx.auth[0].rtype == QTYPE.SOA
    nodata = ask(resolver, "beta.office.mesh", "AAAA")
    assert nodata.header.rcode == RCODE.NOERROR and not nodata.rr
    assert nodata.auth[0].rtype == QTYPE.SOA
    ent = ask(resolver, "deep.office.mesh")  # empty non-terminal: NODATA, not NXDOMAIN
    assert ent.header.rcode == RCODE.NOERROR and not ent.rr


def test_cname_txt_soa_ns(resolver: Resolver) -> None:
    reply = ask(resolver, "docs.office.mesh")
    assert [QTYPE[rr.rtype] for rr in reply.rr] == ["CNAME", "A"]
    assert str(reply.rr[1].rdata) == "198.19.0.80"
    assert "v=mesh1" in str(ask(resolver, "office.mesh", "TXT").rr[0].rdata)
    assert ask(resolver, "office.mesh", "SOA").rr[0].rtype == QTYPE.SOA
    assert ask(resolver, "mesh", "NS").rr[0].rtype == QTYPE.NS


def test_outside_the_zone_is_refused(resolver: Resolver) -> None:
    for name in ("example.com", "mesh.example", "office.mesh.evil"):
        reply = ask(resolver, name)
        assert reply.header.rcode == RCODE.REFUSED and not reply.rr and not reply.header.aa


def test_truncation_without_edns_and_full_answer_with_it(resolver: Resolver) -> None:
    small = ask(resolver, "big.office.mesh", "TXT")
    assert small.header.tc and not small.rr
    large = ask(resolver, "big.office.mesh", "TXT", edns=True)
    assert not large.header.tc and len(large.rr) == 5
    assert any(ar.rtype == QTYPE.OPT for ar in large.ar)
    tcp = ask(resolver, "big.office.mesh", "TXT", max_size=None)
    assert len(tcp.rr) == 5


def test_malformed_queries(resolver: Resolver) -> None:
    assert resolver.answer(b"\x00\x01", 512) is None  # no header: dropped
    junk = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff\xff"
    reply = resolver.answer(junk, 512)
    assert reply is not None and reply[:2] == b"\x12\x34"
    assert struct.unpack("!H", reply[2:4])[0] & 0xF == RCODE.FORMERR
    response = DNSRecord.question("alpha.office.mesh").reply().pack()
    assert resolver.answer(response, 512) is None  # never answer an answer
    c = resolver.counters
    assert (c.formerr, c.dropped_malformed) == (1, 2)


def test_cache_is_dropped_on_zone_change(resolver: Resolver) -> None:
    assert ask(resolver, "gamma.office.mesh").header.rcode == RCODE.NXDOMAIN
    resolver.set_zones(ZoneSet("mesh", [NetworkZone("office", (NodeRecord("gamma", "198.19.0.3"),))]))
    assert str(ask(resolver, "gamma.office.mesh").rr[0].rdata) == "198.19.0.3"


def test_rate_limiter_per_prefix() -> None:
    rrl = RateLimiter(rate=10, burst=5)
    allowed = sum(rrl.allow("192.0.2.7", 100.0) for _ in range(20))
    assert allowed == 5
    assert rrl.allow("192.0.2.200", 100.0) is False  # same /24
    assert rrl.allow("198.51.100.1", 100.0) is True
    assert rrl.allow("192.0.2.7", 101.0) is True  # refilled


def test_rate_limiter_ipv6_buckets_are_56s() -> None:
    rrl = RateLimiter(rate=10, burst=2)
    assert rrl.allow("2001:db8:0:100::1", 0.0) and rrl.allow("2001:db8:0:1ff::2", 0.0)
    assert rrl.allow("2001:db8:0:1ab:ffff::3%lo", 0.0) is False  # same /56, zone id ignored
    assert rrl.allow("2001:db8:0:200::1", 0.0) is True  # the next /56


def test_validate_record() -> None:
    assert validate_record("a", "WWW", "198.19.0.1").name == "www"
    for rtype, name, value, field in [("A", "x", "fd00::1", "value"), ("MX", "x", "y", "rtype"),
                                      ("A", "bad name", "1.2.3.4", "name")]:
        with pytest.raises(Invalid) as exc:
            validate_record(rtype, name, value)
        assert exc.value.field == field


async def test_udp_and_tcp_listeners_and_zone_updates() -> None:
    server = MeshDNSServer("127.0.0.1", 0)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        port = server.bound_port
        assert port
        server.set_zones(ZONES)

        def udp(name: str, qtype: str = "A") -> DNSRecord:
            return udp_query(port, name, qtype)

        def tcp(name: str, qtype: str = "A") -> DNSRecord:
            q = DNSRecord.question(name, qtype).pack()
            with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
                s.sendall(struct.pack("!H", len(q)) + q)
                (n,) = struct.unpack("!H", s.recv(2))
                data = b""
                while len(data) < n:
                    data += s.recv(n - len(data))
                return DNSRecord.parse(data)

        reply = await trio.to_thread.run_sync(udp, "alpha.office.mesh")
        assert str(reply.rr[0].rdata) == "198.19.0.1"
        reply = await trio.to_thread.run_sync(tcp, "big.office.mesh", "TXT")
        assert len(reply.rr) == 5
        # The zone follows changes at once (the signal server pushes on every store change).
        server.set_zones([NetworkZone("office", (NodeRecord("alpha", "198.19.0.42"),))])
        reply = await trio.to_thread.run_sync(udp, "alpha.office.mesh")
        assert str(reply.rr[0].rdata) == "198.19.0.42"

        # A flood of garbage (bounded) does not stop good answers.
        def flood() -> None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                for i in range(300):
                    s.sendto(b"\xde\xad" + bytes([i % 256]) * 20, ("127.0.0.1", port))

        await trio.to_thread.run_sync(flood)
        reply = await trio.to_thread.run_sync(udp, "alpha.office.mesh")
        assert str(reply.rr[0].rdata) == "198.19.0.42"
        stats = server.statistics()
        assert stats.formerr + stats.dropped_malformed >= 250
        nursery.cancel_scope.cancel()
