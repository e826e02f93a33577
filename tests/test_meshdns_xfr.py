"""Zone transfers, TSIG and NOTIFY: the sans-IO cores, then the real listeners."""

from __future__ import annotations

import base64
import logging
import re
import shutil
import socket
import struct
import time
from pathlib import Path

import pytest
import trio
from dnslib import QTYPE, RCODE, RR, SOA, DNSLabel, DNSRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from meshdns import tsig
from meshdns.notify import ATTEMPTS, OPCODE_NOTIFY, NotifySchedule
from meshdns.server import MeshDNSServer, Resolver
from meshdns.xfr import HISTORY, Transfers, chunk, parse_networks, zone_rrs
from meshdns.zone import CustomRecord, NetworkZone, NodeRecord, ZoneSet
from punchd.errors import ConfigError, TsigError

SECRET = bytes(range(32))
KEY = tsig.TsigKey("xfr-key", SECRET)
OTHER = tsig.TsigKey("xfr-key", bytes(32))
NOW = 1_800_000_000

ZONES = [NetworkZone(
    network="office",
    nodes=(NodeRecord("alpha", "198.19.0.1/24", "fd00::1/64"), NodeRecord("beta", "198.19.0.2/24")),
    records=(CustomRecord("www", "A", "198.19.0.80"), CustomRecord("@", "TXT", "v=mesh1"),
             *(CustomRecord("big", "TXT", "x" * 200 + str(i)) for i in range(40))),
)]


# --- TSIG ---------------------------------------------------------------------------

def signed_query(name: str = "office.mesh", qtype: str = "AXFR", key: tsig.TsigKey = KEY,
                 now: int = NOW) -> tuple[bytes, bytes]:
    return tsig.sign(bytes(DNSRecord.question(name, qtype).pack()), key, now)


def test_sign_then_verify_round_trips() -> None:
    query, mac = signed_query()
    verified = tsig.verify(query, {KEY.name: KEY}, NOW + 10)
    assert verified.mac == mac and len(mac) == 32
    assert DNSRecord.parse(verified.message).questions[0].qtype == QTYPE.AXFR
    assert tsig.split(verified.message) == (verified.message, None)


@pytest.mark.parametrize(("key", "now", "error"), [
    (OTHER, NOW, tsig.BADSIG),  # the right name, another secret
    (tsig.TsigKey("other-key", SECRET), NOW, tsig.BADKEY),
    (KEY, NOW + tsig.FUDGE + 1, tsig.BADTIME),
])
def test_verify_refuses_with_the_tsig_error(key: tsig.TsigKey, now: int, error: int) -> None:
    query, _ = signed_query(key=key)
    with pytest.raises(TsigError) as info:
        tsig.verify(query, {KEY.name: KEY}, now)
    assert info.value.error == error


def test_every_flipped_byte_fails_verification() -> None:
    query, _ = signed_query()
    # Not the ID: the MAC covers the original ID kept in the TSIG RR, so a forwarder may
    # renumber the message (RFC 8945 §4.3.1).
    for i in range(2, len(query)):
        broken = bytearray(query)
        broken[i] ^= 0x01
        with pytest.raises(TsigError):
            tsig.verify(bytes(broken), {KEY.name: KEY}, NOW)


def test_every_truncated_prefix_is_a_tsig_error() -> None:
    query, _ = signed_query()
    for n in range(len(query)):
        with pytest.raises(TsigError):
            tsig.verify(query[:n], {KEY.name: KEY}, NOW)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_hostile_bytes_raise_only_tsig_errors(data: bytes) -> None:
    try:
        tsig.verify(data, {KEY.name: KEY}, NOW)
    except TsigError:
        pass


def test_multi_message_chain_detects_a_dropped_message() -> None:
    first, mac1 = tsig.sign(b"\x00\x01" + bytes(10), KEY, NOW, request_mac=b"r" * 32)
    second, mac2 = tsig.sign_next(b"\x00\x01" + bytes(10), KEY, NOW, mac1)
    third, _ = tsig.sign_next(b"\x00\x01" + bytes(10), KEY, NOW, mac2)
    keys = {KEY.name: KEY}
    assert tsig.verify(first, keys, NOW, request_mac=b"r" * 32).mac == mac1
    assert tsig.verify(second, keys, NOW, prior_mac=mac1).mac == mac2
    with pytest.raises(TsigError):  # the second one lost on the way
        tsig.verify(third, keys, NOW, prior_mac=mac1)


@pytest.mark.parametrize("text", [
    f"xfr-key:{base64.b64encode(SECRET).decode()}",
    f"hmac-sha256:xfr-key:{base64.b64encode(SECRET).decode()}",
    f'key:\n  name: "xfr-key"\n  algorithm: hmac-sha256\n  secret: "{base64.b64encode(SECRET).decode()}"\n',
    f'key "xfr-key." {{\n  algorithm hmac-sha256;\n  secret "{base64.b64encode(SECRET).decode()}";\n}};\n',
])
def test_key_formats(text: str) -> None:
    key = tsig.parse_key(text)
    assert key.name == "xfr-key" and key.secret == SECRET
    assert base64.b64encode(SECRET).decode() not in repr(key)


@pytest.mark.parametrize(("text", "says"), [
    ("xfr-key:not base64!", "not base64"),
    ("xfr-key:" + base64.b64encode(b"short").decode(), "at least 16"),
    ("hmac-md5:xfr-key:" + base64.b64encode(SECRET).decode(), "not supported"),
    ("just-a-name", "expected"),
])
def test_bad_keys_are_config_errors(text: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says) as info:
        tsig.parse_key(text)
    assert base64.b64encode(SECRET).decode() not in str(info.value)


def test_missing_key_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="TSIG key file"):
        tsig.load_key_file(tmp_path / "nope")


# --- AXFR / IXFR (sans-IO) ---------------------------------------------------------

def transfers(zones: list[NetworkZone] = ZONES, *, key: tsig.TsigKey | None = None,
              serial: int = 7, budget: int = 16_000) -> tuple[Transfers, list[ZoneSet]]:
    box = [ZoneSet("mesh", zones, serial=serial, nameserver="127.0.0.1")]
    resolver = Resolver(box[0])
    t = Transfers(lambda: box[0], resolver.answer, key=key, wall_clock=lambda: NOW,
                  budget=budget)
    t.record(box[0])
    return t, box


def answers(messages: list[bytes]) -> list[RR]:
    return [rr for m in messages for rr in DNSRecord.parse(m).rr]


def test_axfr_has_soa_first_and_last_and_every_record() -> None:
    t, box = transfers()
    messages = t.handle(bytes(DNSRecord.question("office.mesh", "AXFR").pack()), "127.0.0.1",
                        tcp=True)
    assert messages is not None
    rrs = answers(messages)
    assert rrs[0].rtype == rrs[-1].rtype == QTYPE.SOA and rrs[0].rdata.times[0] == 7
    assert sum(rr.rtype == QTYPE.SOA for rr in rrs) == 2
    expected = {(str(rr.rname), rr.rtype, str(rr.rdata)) for rr in zone_rrs(box[0], DNSLabel("office.mesh"))}
    assert {(str(rr.rname), rr.rtype, str(rr.rdata)) for rr in rrs} == expected
    assert {str(rr.rname) for rr in rrs} >= {"alpha.office.mesh.", "big.office.mesh."}
    # The parent zone holds its own names only.
    parent = answers(t.handle(bytes(DNSRecord.question("mesh", "AXFR").pack()), "::1",
                              tcp=True) or [])
    assert {str(rr.rname) for rr in parent} == {"mesh.", "ns.mesh."}


def test_a_large_zone_spans_messages_question_in_the_first_only() -> None:
    t, _ = transfers(budget=2000)
    messages = t.handle(bytes(DNSRecord.question("office.mesh", "AXFR").pack()), "127.0.0.1",
                        tcp=True)
    assert messages is not None and len(messages) > 3
    parsed = [DNSRecord.parse(m) for m in messages]
    assert len(parsed[0].questions) == 1 and all(not p.questions for p in parsed[1:])
    assert all(p.header.aa and p.header.rcode == RCODE.NOERROR for p in parsed)
    assert all(len(m) <= 2000 + 512 for m in messages)
    assert len(answers(messages)) == 2 + sum(len(c) for c in chunk(answers(messages)[1:-1]))


@pytest.mark.parametrize(("name", "source", "tcp", "rcode"), [
    ("office.mesh", "198.51.100.7", True, RCODE.REFUSED),  # not on the allow-list
    ("office.mesh", "127.0.0.1", False, RCODE.REFUSED),  # RFC 5936 §4.2: not over UDP
    ("www.office.mesh", "127.0.0.1", True, tsig.RCODE_NOTAUTH),  # not an apex
    ("example.com", "127.0.0.1", True, tsig.RCODE_NOTAUTH),
])
def test_axfr_refusals(name: str, source: str, tcp: bool, rcode: int) -> None:
    t, _ = transfers()
    messages = t.handle(bytes(DNSRecord.question(name, "AXFR").pack()), source, tcp=tcp)
    assert messages is not None and len(messages) == 1
    reply = DNSRecord.parse(messages[0])
    assert reply.header.rcode == rcode and not reply.rr


def test_with_a_key_unsigned_is_refused_and_a_bad_mac_is_notauth_badsig() -> None:
    t, _ = transfers(key=KEY)
    unsigned = t.handle(bytes(DNSRecord.question("office.mesh", "AXFR").pack()), "127.0.0.1",
                        tcp=True)
    assert unsigned is not None and DNSRecord.parse(unsigned[0]).header.rcode == RCODE.REFUSED
    bad, _ = signed_query(key=OTHER)
    reply = t.handle(bad, "127.0.0.1", tcp=True)
    assert reply is not None and len(reply) == 1
    unsigned_reply, record = tsig.split(reply[0])
    assert DNSRecord.parse(unsigned_reply).header.rcode == tsig.RCODE_NOTAUTH
    assert record is not None and record.error == tsig.BADSIG and record.mac == b""


def test_a_skewed_clock_gets_a_signed_badtime() -> None:
    t, _ = transfers(key=KEY)
    query, mac = signed_query(now=NOW - 3600)
    reply = t.handle(query, "127.0.0.1", tcp=True)
    assert reply is not None
    verified = tsig.verify(reply[0], {KEY.name: KEY}, NOW, request_mac=mac)
    assert verified.record.error == tsig.BADTIME
    assert verified.record.other == struct.pack("!HI", 0, NOW)


def test_a_signed_transfer_verifies_message_by_message() -> None:
    t, _ = transfers(key=KEY, budget=2000)
    query, mac = signed_query()
    messages = t.handle(query, "127.0.0.1", tcp=True)
    assert messages is not None and len(messages) > 1
    keys = {KEY.name: KEY}
    prior = tsig.verify(messages[0], keys, NOW, request_mac=mac).mac
    for m in messages[1:]:
        prior = tsig.verify(m, keys, NOW, prior_mac=prior).mac


def test_a_signed_plain_query_gets_a_signed_answer() -> None:
    t, _ = transfers(key=KEY)
    query, mac = signed_query("alpha.office.mesh", "A")
    reply = t.handle(query, "203.0.113.9", tcp=False)  # any source may ask a plain question
    assert reply is not None
    answer = DNSRecord.parse(tsig.verify(reply[0], {KEY.name: KEY}, NOW, request_mac=mac).message)
    assert [str(rr.rdata) for rr in answer.rr] == ["198.19.0.1"]


def test_plain_queries_are_not_taken() -> None:
    t, _ = transfers()
    assert t.handle(bytes(DNSRecord.question("alpha.office.mesh").pack()), "1.2.3.4", tcp=True) is None
    assert t.handle(b"\x00" * 5, "127.0.0.1", tcp=True) is None


def ixfr(name: str, serial: int) -> bytes:
    q = DNSRecord.question(name, "IXFR")
    q.add_auth(RR(name, QTYPE.SOA, rdata=SOA("ns.mesh", "hostmaster.mesh", (serial, 0, 0, 0, 0))))
    return bytes(q.pack())


def test_ixfr_sends_the_difference_and_falls_back_to_the_whole_zone() -> None:
    t, box = transfers()
    changed = [NetworkZone(network="office", nodes=(NodeRecord("alpha", "198.19.0.9/24"),),
                           records=ZONES[0].records)]
    box[0] = ZoneSet("mesh", changed, serial=8, nameserver="127.0.0.1")
    t.record(box[0])
    rrs = answers(t.handle(ixfr("office.mesh", 7), "127.0.0.1", tcp=True) or [])
    # RFC 1995 §4: new SOA, old SOA, deletions, new SOA, additions, new SOA.
    serials = [rr.rdata.times[0] for rr in rrs if rr.rtype == QTYPE.SOA]
    assert serials == [8, 7, 8, 8]
    middle = next(i for i in range(2, len(rrs)) if rrs[i].rtype == QTYPE.SOA)
    assert {str(rr.rdata) for rr in rrs[2:middle]} == {"198.19.0.1", "fd00::1", "198.19.0.2"}
    assert {str(rr.rdata) for rr in rrs[middle + 1:-1]} == {"198.19.0.9"}
    # Up to date: our SOA alone. Unknown serial: AXFR form.
    current = answers(t.handle(ixfr("office.mesh", 8), "127.0.0.1", tcp=True) or [])
    assert [rr.rtype for rr in current] == [QTYPE.SOA]
    full = answers(t.handle(ixfr("office.mesh", 3), "127.0.0.1", tcp=True) or [])
    assert full[0].rtype == full[-1].rtype == QTYPE.SOA and len(full) > 10
    over_udp = answers(t.handle(ixfr("office.mesh", 7), "127.0.0.1", tcp=False) or [])
    assert [rr.rtype for rr in over_udp] == [QTYPE.SOA]


def test_history_is_bounded() -> None:
    t, _ = transfers()
    for serial in range(8, 8 + 3 * HISTORY):
        t.record(ZoneSet("mesh", ZONES, serial=serial))
    assert all(len(v) == HISTORY for v in t.history.values())


def test_transfer_allow_parsing() -> None:
    assert [str(n) for n in parse_networks(["10.0.0.0/8", "::1", "192.0.2.7/24"])] == \
        ["10.0.0.0/8", "::1/128", "192.0.2.0/24"]
    with pytest.raises(ValueError, match="not an address"):
        parse_networks(["10.0.0.0/33"])


# --- NOTIFY (sans-IO) ---------------------------------------------------------------

SECONDARIES = [("127.0.0.1", 5301), ("::1", 5302)]


def ack(wire: bytes, key: tsig.TsigKey | None = None, mac: bytes = b"") -> bytes:
    body, _ = tsig.split(wire) if key else (wire, None)
    reply = DNSRecord.parse(body).reply()
    reply.header.opcode = OPCODE_NOTIFY
    out = bytes(reply.pack())
    return tsig.sign(out, key, NOW, request_mac=mac)[0] if key else out


def test_notify_goes_to_every_secondary_for_every_zone_until_acknowledged() -> None:
    s = NotifySchedule(SECONDARIES)
    s.changed(["mesh", "office.mesh"], 9, now=0.0)
    sent = s.due(0.0, NOW)
    assert len(sent) == 4
    for _, wire in sent:
        msg = DNSRecord.parse(wire)
        assert msg.header.opcode == OPCODE_NOTIFY and msg.header.aa and not msg.header.qr
        assert msg.questions[0].qtype == QTYPE.SOA
    assert s.due(0.5, NOW) == []  # nothing due before the first retry
    target, wire = sent[0]
    assert not s.acknowledge(ack(wire), ("192.0.2.1", target[1]), NOW)  # wrong source
    assert s.acknowledge(ack(wire), target, NOW)
    assert not s.acknowledge(ack(wire), target, NOW)  # once
    assert len(s.due(1.0, NOW)) == 3  # the others are retried


def test_notify_retries_back_off_and_give_up() -> None:
    s = NotifySchedule(SECONDARIES[:1])
    s.changed(["mesh"], 9, now=0.0)
    times = []
    now = 0.0
    for _ in range(20):
        deadline = s.next_deadline()
        if deadline is None:
            break
        now = deadline
        if s.due(now, NOW):
            times.append(now)
    assert times == [0.0, 1.0, 3.0, 7.0, 15.0][:ATTEMPTS]
    assert s.statistics().given_up == 1 and s.statistics().pending == 0


def test_a_new_serial_replaces_the_pending_notify() -> None:
    s = NotifySchedule(SECONDARIES[:1])
    s.changed(["mesh"], 9, now=0.0)
    old = s.due(0.0, NOW)[0][1]
    s.changed(["mesh"], 10, now=0.5)
    assert not s.acknowledge(ack(old), SECONDARIES[0], NOW)  # the old one's answer: ignored
    assert len(s.pending) == 1 and next(iter(s.pending.values())).serial == 10


def test_signed_notify_needs_a_signed_acknowledgement() -> None:
    s = NotifySchedule(SECONDARIES[:1], key=KEY)
    s.changed(["office.mesh"], 9, now=0.0)
    target, wire = s.due(0.0, NOW)[0]
    verified = tsig.verify(wire, {KEY.name: KEY}, NOW)
    assert not s.acknowledge(ack(wire), target, NOW)  # unsigned
    assert not s.acknowledge(ack(wire, OTHER, verified.mac), target, NOW)
    assert s.acknowledge(ack(wire, KEY, verified.mac), target, NOW)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_notify_ignores_hostile_datagrams(data: bytes) -> None:
    s = NotifySchedule(SECONDARIES[:1], key=KEY)
    s.changed(["mesh"], 9, now=0.0)
    s.due(0.0, NOW)
    assert not s.acknowledge(data, SECONDARIES[0], NOW)


# --- the server: serials, real sockets ------------------------------------------------

def test_serial_is_time_based_and_moves_only_on_change() -> None:
    clock = [float(NOW)]
    srv = MeshDNSServer("127.0.0.1", 0, wall_clock=lambda: clock[0])
    first = srv.set_zones(ZONES).serial
    assert first >= NOW
    assert srv.set_zones(list(ZONES)).serial == first  # the same zones: no change
    assert srv.set_zones([]).serial == first + 1  # faster than once a second: +1
    clock[0] += 100
    assert srv.set_zones(ZONES).serial == NOW + 100


def tcp_exchange(port: int, payload: bytes, *, want: int) -> list[bytes]:
    out: list[bytes] = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(payload)
        buf = b""
        while len(out) < want:
            chunk_ = s.recv(65536)
            if not chunk_:
                break
            buf += chunk_
            while len(buf) >= 2 and len(buf) >= 2 + struct.unpack("!H", buf[:2])[0]:
                n = struct.unpack("!H", buf[:2])[0]
                out.append(buf[2:2 + n])
                buf = buf[2 + n:]
    return out


async def test_axfr_over_real_tcp_and_refused_over_udp() -> None:
    srv = MeshDNSServer("127.0.0.1", 0)
    async with trio.open_nursery() as nursery:
        await nursery.start(srv.run)
        srv.set_zones(ZONES)
        assert srv.bound_port is not None
        port = srv.bound_port
        query = bytes(DNSRecord.question("office.mesh", "AXFR").pack())
        framed = struct.pack("!H", len(query)) + query
        # A plain query pipelined behind the transfer is answered after it.
        plain = bytes(DNSRecord.question("alpha.office.mesh").pack())
        replies = await trio.to_thread.run_sync(
            lambda: tcp_exchange(port, framed + struct.pack("!H", len(plain)) + plain, want=2))
        rrs = answers(replies[:-1])
        assert rrs[0].rtype == rrs[-1].rtype == QTYPE.SOA
        assert [str(rr.rdata) for rr in DNSRecord.parse(replies[-1]).rr] == ["198.19.0.1"]
        # A truncated transfer request then a claim of 65,535 bytes: the server lives on.
        await trio.to_thread.run_sync(
            lambda: tcp_exchange(port, framed[:-3] + b"\xff\xff", want=0))

        def udp() -> DNSRecord:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(5)
                s.sendto(query, ("127.0.0.1", port))
                return DNSRecord.parse(s.recv(4096))

        reply = await trio.to_thread.run_sync(udp)
        assert reply.header.rcode == RCODE.REFUSED and not reply.rr
        again = await trio.to_thread.run_sync(lambda: tcp_exchange(port, framed, want=1))
        assert DNSRecord.parse(again[0]).rr[0].rtype == QTYPE.SOA
        nursery.cancel_scope.cancel()


# --- the serve flags ----------------------------------------------------------------

@pytest.mark.parametrize(("flags", "says"), [
    (["--dns-notify", "nsd.example:53"], "--dns-notify: 'nsd.example:53' is not ip:port"),
    (["--dns-notify", "127.0.0.1"], "--dns-notify: '127.0.0.1' has no port"),
    (["--dns-notify", "[::1]:0"], "--dns-notify: '[::1]:0': the port must be 1..65535"),
    (["--dns-transfer-allow", "10.0.0.0/33"], "--dns-transfer-allow: '10.0.0.0/33' is not"),
    (["--dns-tsig-file", "/nonexistent/key"], "TSIG key file '/nonexistent/key'"),
])
def test_bad_secondary_flags_are_one_line_errors(tmp_path: Path, flags: list[str], says: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from signal_server.cli import main

    argv = ["serve", "--data-dir", str(tmp_path / "d"), "--http", "127.0.0.1:1",
            "--dns", "127.0.0.1:1", *flags]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err, err
    assert not (tmp_path / "d").exists()  # nothing was started


def test_secondary_flags_need_dns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from signal_server.cli import main

    assert main(["serve", "--data-dir", str(tmp_path / "d"), "--http", "127.0.0.1:1",
                 "--dns-notify", "127.0.0.1:5300"]) == 1
    assert "need --dns" in capsys.readouterr().err


def test_secondary_flags_reach_the_server(tmp_path: Path) -> None:
    from signal_server.cli import build_parser, secondaries_options

    keyfile = tmp_path / "k"
    keyfile.write_text(f"xfr-key:{base64.b64encode(SECRET).decode()}\n")
    args = build_parser().parse_args([
        "serve", "--data-dir", str(tmp_path), "--http", "127.0.0.1:1", "--dns", "127.0.0.1:1",
        "--dns-notify", "127.0.0.1:5300", "--dns-notify", "[::1]:5301",
        "--dns-transfer-allow", "192.0.2.0/24", "--dns-tsig-file", str(keyfile)])
    sec = secondaries_options(args)
    assert sec.notify == (("127.0.0.1", 5300), ("::1", 5301))
    assert [str(n) for n in sec.transfer_allow] == ["192.0.2.0/24"]
    assert sec.tsig_key == KEY


async def test_a_pipeline_of_transfers_is_bounded() -> None:
    """AXFRs asked faster than read: after the output bound, REFUSED, not more copies."""
    srv = MeshDNSServer("127.0.0.1", 0)
    async with trio.open_nursery() as nursery:
        await nursery.start(srv.run)
        srv.set_zones(ZONES)
        assert srv.bound_port is not None
        port = srv.bound_port
        query = bytes(DNSRecord.question("office.mesh", "AXFR").pack())
        count = 60  # each transfer ~10 KB: the 256 KB bound falls in the middle
        pipeline = (struct.pack("!H", len(query)) + query) * count
        replies = await trio.to_thread.run_sync(
            lambda: tcp_exchange(port, pipeline, want=count))
        rcodes = [DNSRecord.parse(r).header.rcode for r in replies]
        assert len(rcodes) == count
        assert 0 < rcodes.count(RCODE.NOERROR) < count and RCODE.REFUSED in rcodes
        nursery.cancel_scope.cancel()


def test_history_is_kept_only_once_a_secondary_exists() -> None:
    srv = MeshDNSServer("127.0.0.1", 0)  # no --dns-notify
    srv.set_zones(ZONES)
    assert srv.transfers.history == {}
    axfr = bytes(DNSRecord.question("office.mesh", "AXFR").pack())
    assert srv.transfers.handle(axfr, "127.0.0.1", tcp=True)
    srv.set_zones([])
    assert set(srv.transfers.history) == {"mesh."}


@pytest.mark.skipif(shutil.which("kdig") is None and shutil.which("dig") is None,
                    reason="kdig or dig is needed (knot-dnsutils, dnsutils)")
async def test_dig_verifies_a_signed_multi_message_axfr() -> None:
    """Interop: the TSIG chain over a transfer of many messages, checked by dig/kdig."""
    nodes = tuple(NodeRecord(f"node{i}", f"10.0.{i // 250}.{i % 250 + 1}") for i in range(600))
    srv = MeshDNSServer("127.0.0.1", 0, tsig_key=KEY)
    secret = base64.b64encode(SECRET).decode()
    async with trio.open_nursery() as nursery:
        await nursery.start(srv.run)
        srv.set_zones([NetworkZone("office", nodes)])
        for tool in [t for t in ("kdig", "dig") if shutil.which(t)]:
            done = await trio.run_process(
                [tool, "-p", str(srv.bound_port), "@127.0.0.1", "-y",
                 f"hmac-sha256:xfr-key:{secret}", "AXFR", "office.mesh"],
                capture_stdout=True, capture_stderr=True, check=False)
            out = done.stdout.decode() + done.stderr.decode()
            assert done.returncode == 0, out
            # What dig ("Couldn't verify signature") and kdig ("WARNING", ";; ERROR")
            # print when a TSIG does not check out.
            assert not re.search(r"verify|warning|;; error|failed", out, re.I), out[-500:]
            kdig = re.search(r"\((\d+) messages, (\d+) records\)", out)
            dig = re.search(r"XFR size: (\d+) records \(messages (\d+)", out)
            messages, records = (int(kdig[1]), int(kdig[2])) if kdig else \
                (int(dig[2]), int(dig[1])) if dig else (0, 0)
            assert records == 603, out[-300:]  # SOA, NS, 600 A, SOA
            assert messages > 1, "the zone should span several messages"
        nursery.cancel_scope.cancel()


async def test_the_serial_survives_a_restart(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from punchd.wire import api
    from signal_server.dns import ZonePusher
    from signal_server.service import Service
    from signal_server.store import Store

    store = Store(":memory:")
    store.create_network(api.NetworkCreate(name="office", ipv4_cidr="198.19.0.0/24"))
    service = Service(store, public_url="http://127.0.0.1:1")
    path = tmp_path / "dns.serial"
    ahead = int(time.time()) + 1_000_000  # serials that ran ahead of the clock before
    path.write_text(f"{ahead}\n")
    last = ahead
    for _ in range(2):  # two "restarts": each serves above the last one's serial
        pusher = ZonePusher(service, ("127.0.0.1", 0), domain="mesh", serial_file=path)
        async with trio.open_nursery() as nursery:
            await nursery.start(pusher.run)
            serial = pusher.dns.serial
            assert last < serial < last + 10
            nursery.cancel_scope.cancel()
        assert path.read_text() == f"{serial}\n"
        last = serial
    path.write_text("not a serial")
    with caplog.at_level(logging.WARNING, logger="meshdns"):
        pusher = ZonePusher(service, ("127.0.0.1", 0), domain="mesh", serial_file=path)
    assert "does not hold a serial" in caplog.text
    assert abs(pusher.dns.serial - time.time()) < 5  # from the clock
    store.close()


async def test_only_changed_zones_get_a_new_serial_and_a_notify() -> None:
    clock = [float(NOW)]
    srv = MeshDNSServer("127.0.0.1", 0, wall_clock=lambda: clock[0],
                        notify=[("127.0.0.1", 5399)])
    assert srv.notifier is not None
    pending = srv.notifier.schedule.pending
    office = ZONES[0]
    lab = NetworkZone(network="lab", nodes=(NodeRecord("x", "198.19.1.1/24"),))
    first = srv.set_zones([office, lab])
    assert {zone for _, zone in pending} == {"mesh", "office.mesh", "lab.mesh"}  # at start: all
    pending.clear()
    clock[0] += 60
    lab2 = NetworkZone(network="lab", nodes=(NodeRecord("y", "198.19.1.2/24"),))
    second = srv.set_zones([office, lab2])
    assert {zone for _, zone in pending} == {"lab.mesh"}
    for apex in ("mesh", "office.mesh"):
        assert second.serial_of(DNSLabel(apex)) == first.serial_of(DNSLabel(apex))
    assert second.serial_of(DNSLabel("lab.mesh")) == NOW + 60
    # IXFR of the unchanged zone from its serial: up to date, SOA alone.
    q = ixfr("office.mesh", first.serial_of(DNSLabel("office.mesh")))
    assert [rr.rtype for rr in answers(srv.transfers.handle(q, "127.0.0.1", tcp=True) or [])] \
        == [QTYPE.SOA]
