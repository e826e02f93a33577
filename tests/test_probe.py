"""Probe codec: fixed vectors, layout, every truncation, fuzz, spoofing and replay."""

from __future__ import annotations

import random
import struct

import nacl.bindings
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.public import PrivateKey

from punchd.errors import ProbeParseError
from punchd.punch.candidates import candidate
from punchd.punch.session import PunchSession
from punchd.wire import probe as w
from punchd.wire import stun

A = PrivateKey(bytes(range(1, 33)))
B = PrivateKey(bytes(range(33, 65)))
MALLORY = PrivateKey(bytes(range(65, 97)))
NONCE = bytes(range(100, 124))
TXID = bytes(range(16))

# Fixed keys, nonce, txid and timestamps (the output of this codec, pinned: a change of
# format must change these on purpose). The layout is checked independently below.
PING_HEX = (
    "504e43480107a37cbc142093c8b755dc1b10e86cb426374ad16aa853ed0bdfc0b2b86d1c7c6465666768"
    "696a6b6c6d6e6f707172737475767778797a7b2c3090eac882749b67984f97d664af50ff35aef06edda4"
    "c6844ccfc2693ed21e2d37be8244e528700b")
PONG_HEX = (
    "504e43480107a37cbc142093c8b755dc1b10e86cb426374ad16aa853ed0bdfc0b2b86d1c7c6465666768"
    "696a6b6c6d6e6f707172737475767778797a7b2b43ef844d9304c476a492c85bcbcec9fc35aef06edda4"
    "c6844ccfc2693ed21e2d37be8244e525b36bacf54f018b3936")
PING = w.Probe("ping", TXID, 1764000000.123456)
PONG = w.Probe("pong", TXID, 1764000000.5, ("198.51.100.7", 51820))


def a_to_b() -> w.ProbeCodec:
    return w.ProbeCodec(A, B.public_key)


def b_from_a() -> w.ProbeCodec:
    return w.ProbeCodec(B, A.public_key)


def test_vectors_encode_and_decode() -> None:
    assert a_to_b().seal(PING, NONCE).hex() == PING_HEX
    assert a_to_b().seal(PONG, NONCE).hex() == PONG_HEX
    assert b_from_a().open(bytes.fromhex(PING_HEX)) == PING
    assert b_from_a().open(bytes.fromhex(PONG_HEX)) == PONG


def test_layout_opens_with_plain_crypto_box() -> None:
    data = bytes.fromhex(PONG_HEX)
    assert data[:4] == b"PNCH" and data[4] == 1
    assert data[5:37] == bytes(A.public_key)
    assert data[37:61] == NONCE
    plain = nacl.bindings.crypto_box_open(data[61:], NONCE, bytes(A.public_key), bytes(B))
    kind, txid, micros, family, port = struct.unpack_from("!B16sQBH", plain)
    assert (kind, txid, micros, family, port) == (2, TXID, 1764000000500000, 4, 51820)
    assert plain[28:] == bytes([198, 51, 100, 7])


def test_wireguard_discards_probes() -> None:
    # WireGuard's message types are 1..4 in the first byte (type u8 + 3 reserved zeros).
    data = bytes.fromhex(PING_HEX)
    assert data[0] not in (1, 2, 3, 4)
    assert w.is_probe(data) and w.peek_sender(data) == bytes(A.public_key)
    assert len(data) == w.MIN_LEN


def test_ipv6_observed_address() -> None:
    pong = w.Probe("pong", TXID, 1.0, ("2001:db8::7", 443))
    assert b_from_a().open(a_to_b().seal(pong)) == pong


@pytest.mark.parametrize("hexdata", [PING_HEX, PONG_HEX])
def test_every_truncation_is_a_parse_error(hexdata: str) -> None:
    data = bytes.fromhex(hexdata)
    for n in range(len(data)):
        with pytest.raises(ProbeParseError):
            b_from_a().open(data[:n])


@pytest.mark.parametrize("hexdata", [PING_HEX, PONG_HEX])
def test_every_flipped_byte_is_a_parse_error(hexdata: str) -> None:
    data = bytes.fromhex(hexdata)
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= 0x40
        with pytest.raises(ProbeParseError):
            b_from_a().open(bytes(bad))


def test_extended_datagram_is_a_parse_error() -> None:
    with pytest.raises(ProbeParseError):
        b_from_a().open(bytes.fromhex(PING_HEX) + b"\x00")


def test_authentic_but_malformed_plaintext_is_a_parse_error() -> None:
    box = nacl.bindings.crypto_box
    header = b"PNCH\x01" + bytes(A.public_key) + NONCE
    for plain in (struct.pack("!B16sQ", 9, TXID, 0),  # unknown kind
                  struct.pack("!B16sQ", 1, TXID, 0) + b"x",  # ping with trailing bytes
                  struct.pack("!B16sQ", 2, TXID, 0),  # pong without an address
                  struct.pack("!B16sQBH", 2, TXID, 0, 5, 1) + bytes(4),  # bad family
                  struct.pack("!B16sQBH", 2, TXID, 0, 4, 1) + bytes(16)):  # wrong length
        data = header + box(plain, NONCE, bytes(B.public_key), bytes(A))
        with pytest.raises(ProbeParseError):
            b_from_a().open(data)


def test_other_versions_and_stun_are_refused() -> None:
    data = bytearray(bytes.fromhex(PING_HEX))
    data[4] = 2
    with pytest.raises(ProbeParseError, match="version"):
        b_from_a().open(bytes(data))
    binding = stun.binding_request(bytes(12))
    assert not w.is_probe(binding)
    with pytest.raises(ProbeParseError):
        b_from_a().open(binding + bytes(120))


def test_spoofed_probes_are_refused() -> None:
    # Mallory names A's key in the header but cannot seal as A.
    forged = bytearray(w.ProbeCodec(MALLORY, B.public_key).seal(PING, NONCE))
    forged[5:37] = bytes(A.public_key)
    with pytest.raises(ProbeParseError, match="authenticate"):
        b_from_a().open(bytes(forged))
    # Mallory as herself: not the peer this session talks to.
    with pytest.raises(ProbeParseError, match="unexpected key"):
        b_from_a().open(w.ProbeCodec(MALLORY, B.public_key).seal(PING))
    # A probe A sealed for somebody else does not open for B.
    with pytest.raises(ProbeParseError):
        b_from_a().open(w.ProbeCodec(A, MALLORY.public_key).seal(PING))


def test_encode_refuses_inconsistent_probes() -> None:
    with pytest.raises(ValueError):
        a_to_b().seal(w.Probe("ping", TXID, 0.0, ("192.0.2.1", 1)))
    with pytest.raises(ValueError):
        a_to_b().seal(w.Probe("pong", TXID, 0.0))
    with pytest.raises(ValueError):
        a_to_b().seal(w.Probe("ping", b"short", 0.0))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    with pytest.raises(ProbeParseError):
        b_from_a().open(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_fuzz_after_a_valid_header(tail: bytes) -> None:
    with pytest.raises(ProbeParseError):
        b_from_a().open(b"PNCH\x01" + bytes(A.public_key) + tail)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(["ping", "pong"]), st.binary(min_size=16, max_size=16),
       st.floats(min_value=0, max_value=4e9), st.integers(1, 65535),
       st.ip_addresses().map(str))
def test_fuzz_roundtrip(kind: str, txid: bytes, ts: float, port: int, ip: str) -> None:
    observed = (ip, port) if kind == "pong" else None
    msg = w.Probe("ping" if kind == "ping" else "pong", txid, ts, observed)
    got = b_from_a().open(a_to_b().seal(msg))
    assert (got.kind, got.txid, got.observed) == (msg.kind, msg.txid, msg.observed)
    assert abs(got.timestamp - ts) <= 1e-6


# -- replay ------------------------------------------------------------------------------

def ping(txid: int, ts: float) -> w.Probe:
    return w.Probe("ping", txid.to_bytes(16, "big"), ts)


def test_replay_guard_accepts_once_within_the_window() -> None:
    g = w.ReplayGuard(window=60.0, capacity=100)
    assert g.accept(ping(1, 1000.0), 1000.0)
    assert not g.accept(ping(1, 1000.0), 1001.0)  # replay
    assert not g.accept(ping(2, 900.0), 1000.0)  # too old
    assert not g.accept(ping(3, 1100.0), 1000.0)  # from the future
    assert g.accept(ping(4, 1059.0), 1000.0)


def test_replay_guard_is_bounded_and_evicted_ids_stay_refused() -> None:
    g = w.ReplayGuard(window=60.0, capacity=10)
    for i in range(50):
        assert g.accept(ping(i, 1000.0 + i * 0.01), 1001.0)
        assert len(g) <= 10
    for i in range(50):  # evicted or remembered: no replay gets through
        assert not g.accept(ping(i, 1000.0 + i * 0.01), 1001.0)
    assert g.accept(ping(99, 1001.0), 1001.0)


def test_replay_guard_forgets_ids_older_than_the_window() -> None:
    g = w.ReplayGuard(window=10.0, capacity=1000)
    for i in range(20):
        g.accept(ping(i, float(i)), float(i))
    g.accept(ping(100, 100.0), 100.0)
    assert len(g) == 1


# -- a session given spoofed or replayed probes changes nothing ---------------------------

def session(local: PrivateKey, peer: PrivateKey) -> PunchSession:
    return PunchSession(
        local_key=local, peer_key=peer.public_key,
        local_candidates=[candidate("host", ("192.0.2.1", 51820))],
        peer_candidates=[candidate("host", ("192.0.2.2", 51820))],
        peer_nat=None, now=0.0, rng=random.Random(1))


def test_session_ignores_spoofed_and_replayed_probes() -> None:
    b = session(B, A)
    src = ("192.0.2.2", 51820)
    genuine = a_to_b().seal(w.Probe("ping", TXID, 0.0))
    forged = bytearray(w.ProbeCodec(MALLORY, B.public_key).seal(w.Probe("ping", TXID, 0.0)))
    forged[5:37] = bytes(A.public_key)
    b.handle_datagram(bytes(forged), ("203.0.113.66", 1), 0.0)
    b.handle_datagram(w.ProbeCodec(MALLORY, B.public_key).seal(PING), ("203.0.113.66", 1), 0.0)
    assert (b.state, b.datagrams_to_send(), b.events()) == ("idle", [], [])
    assert b.statistics().rejected == 2

    b.handle_datagram(genuine, src, 0.0)
    assert b.state == "punching"
    sent = b.datagrams_to_send()
    assert any(b_from_a_pong(d).kind == "pong" for d, dst in sent if dst == src)
    # the same ping again, from the same or another address: no pong, no new pair
    b.handle_datagram(genuine, src, 0.01)
    b.handle_datagram(genuine, ("203.0.113.66", 9), 0.01)
    assert b.datagrams_to_send() == []
    assert b.statistics().replays == 2 and b.statistics().pairs == 1


def b_from_a_pong(data: bytes) -> w.Probe:
    return w.ProbeCodec(A, B.public_key).open(data)


def test_pongs_count_only_for_outstanding_ids_from_the_pinged_address() -> None:
    a = session(A, B)
    a.punch(0.0)
    [(data, dst)] = a.datagrams_to_send()
    sent = b_from_a().open(data)
    pong = b_from_a()
    # a pong for an id never sent, and one for ours from another address: ignored
    a.handle_datagram(pong.seal(w.Probe("pong", bytes(16), 0.0, ("192.0.2.1", 51820))),
                      dst, 0.01)
    a.handle_datagram(pong.seal(w.Probe("pong", sent.txid, 0.0, ("192.0.2.1", 51820))),
                      ("203.0.113.66", 1), 0.01)
    assert a.statistics().replays == 2 and (a.observed,) == (None,)
    good = pong.seal(w.Probe("pong", sent.txid, 0.0, ("192.0.2.1", 51820)))
    a.handle_datagram(good, dst, 0.02)
    assert a.observed == ("192.0.2.1", 51820)  # the pong doubles as STUN
    a.handle_datagram(good, dst, 0.03)  # the same pong replayed
    assert a.statistics().replays == 3
    # the genuine pong from the pinged address is a round trip: one path, found once
    assert a.state == "connected"
    assert [type(e).__name__ for e in a.events()] == ["PathFound"]
