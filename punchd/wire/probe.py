"""Punch probes: authenticated ping/pong datagrams sent from WireGuard's UDP port.

Layout (all integers big-endian)::

    0   4   magic b"PNCH"   WireGuard discards it: its message types are 1-4 in byte 0,
                            and the discovery BPF filter passes datagrams starting so
    4   1   version (1)
    5  32   sender's X25519 probe public key (routes the datagram to a peer's session)
   37  24   nonce (random, NaCl box)
   61   *   NaCl box (XSalsa20-Poly1305, 16-byte tag) of the plaintext below

    plaintext:
    0   1   kind: 1 ping, 2 pong
    1  16   transaction id (random)
   17   8   sender's wall-clock timestamp, microseconds since the epoch
   25   *   pong only: the address the responder saw the ping come from
            (family 4|6, port u16, 4|16 address bytes) - so a pong doubles as STUN

The box is keyed by the two nodes' probe keys (separate from their WireGuard keys).
A probe whose header names another key, or whose box does not open, is rejected, so
a spoofed probe changes nothing. Replays are the session's business: a pong is
accepted only for an outstanding transaction id, and a ping only through
:class:`ReplayGuard` (a timestamp window plus a bounded cache of seen ids).

:func:`decode` raises only :class:`punchd.errors.ProbeParseError`.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import struct
from collections import OrderedDict
from typing import Literal

import nacl.exceptions
from msgspec import Struct
from nacl.public import Box, PrivateKey, PublicKey

from punchd.errors import ProbeParseError

from .addr import Addr

MAGIC = b"PNCH"
VERSION = 1
KEY_LEN = 32
NONCE_LEN = Box.NONCE_SIZE  # 24
TXID_LEN = 16
TAG_LEN = 16  # Poly1305
HEADER_LEN = len(MAGIC) + 1 + KEY_LEN + NONCE_LEN  # 61
MIN_LEN = HEADER_LEN + TAG_LEN + 1 + TXID_LEN + 8  # 102

_KINDS: dict[str, int] = {"ping": 1, "pong": 2}
_KIND_NAMES = {v: k for k, v in _KINDS.items()}
_BODY = struct.Struct("!B16sQ")
_ADDR = struct.Struct("!BH")

ProbeKind = Literal["ping", "pong"]


class Probe(Struct, frozen=True):
    """One decoded probe. ``observed`` is set on pongs only."""

    kind: ProbeKind
    txid: bytes
    timestamp: float  # sender's wall clock, seconds
    observed: Addr | None = None


def is_probe(data: bytes) -> bool:
    """Cheap test used to sort datagrams on the shared port (no authentication)."""
    return data[:4] == MAGIC


def peek_sender(data: bytes) -> bytes:
    """The sender's probe public key from the header, to pick the peer's session."""
    if len(data) < MIN_LEN or data[:4] != MAGIC:
        raise ProbeParseError("not a probe (magic or length)")
    if data[4] != VERSION:
        raise ProbeParseError(f"unsupported probe version {data[4]}")
    return bytes(data[5:5 + KEY_LEN])


def _encode_addr(addr: Addr) -> bytes:
    version, packed = _ip_bytes(addr[0])
    return _ADDR.pack(version, addr[1]) + packed


# Every pong carries the address it answers: parsed once per peer address, not once
# per pong (issue #22: ipaddress was a tenth of punchd's CPU at 300 peers).
@functools.lru_cache(maxsize=8192)
def _ip_bytes(text: str) -> tuple[int, bytes]:
    ip = ipaddress.ip_address(text)
    return ip.version, ip.packed


def _decode_addr(data: bytes) -> Addr:
    if len(data) < _ADDR.size:
        raise ProbeParseError("truncated observed address")
    family, port = _ADDR.unpack_from(data)
    raw = data[_ADDR.size:]
    want = {4: 4, 6: 16}.get(family)
    if want is None:
        raise ProbeParseError(f"bad address family {family}")
    if len(raw) != want:
        raise ProbeParseError("bad observed address length")
    return (str(ipaddress.ip_address(raw)), port)


def encode(probe: Probe, box: Box, sender: PublicKey, nonce: bytes | None = None) -> bytes:
    """Seal ``probe`` for the peer; ``box`` is ``Box(our_private, peer_public)``."""
    if len(probe.txid) != TXID_LEN:
        raise ValueError("txid must be 16 bytes")
    if (probe.kind == "pong") != (probe.observed is not None):
        raise ValueError("a pong, and only a pong, carries the observed address")
    plain = _BODY.pack(_KINDS[probe.kind], probe.txid, round(probe.timestamp * 1_000_000))
    if probe.observed is not None:
        plain += _encode_addr(probe.observed)
    nonce = os.urandom(NONCE_LEN) if nonce is None else nonce
    sealed = box.encrypt(plain, nonce).ciphertext
    return MAGIC + bytes([VERSION]) + bytes(sender) + nonce + sealed


def decode(data: bytes, box: Box, expected_sender: PublicKey) -> Probe:
    """Open a probe from ``expected_sender``; anything else raises ProbeParseError."""
    sender = peek_sender(data)
    if sender != bytes(expected_sender):
        raise ProbeParseError("probe from an unexpected key")
    nonce = bytes(data[HEADER_LEN - NONCE_LEN:HEADER_LEN])
    try:
        plain = box.decrypt(bytes(data[HEADER_LEN:]), nonce)
    except nacl.exceptions.CryptoError as exc:
        raise ProbeParseError("probe does not authenticate") from exc
    kind_code, txid, micros = _BODY.unpack_from(plain)  # length guaranteed by MIN_LEN
    kind = _KIND_NAMES.get(kind_code)
    if kind is None:
        raise ProbeParseError(f"unknown probe kind {kind_code}")
    rest = plain[_BODY.size:]
    if kind == "ping":
        if rest:
            raise ProbeParseError("trailing bytes after a ping")
        return Probe("ping", txid, micros / 1_000_000)
    return Probe("pong", txid, micros / 1_000_000, _decode_addr(rest))


class ProbeCodec:
    """Encode/decode between one local probe key and one peer (caches the box key)."""

    def __init__(self, local: PrivateKey, peer: PublicKey) -> None:
        self.local_public = local.public_key
        self.peer = peer
        self._box = Box(local, peer)

    def seal(self, probe: Probe, nonce: bytes | None = None) -> bytes:
        return encode(probe, self._box, self.local_public, nonce)

    def open(self, data: bytes) -> Probe:
        return decode(data, self._box, self.peer)


class ReplayGuard:
    """Accept each ping once: its timestamp must be within ``window`` seconds of ours,
    and its transaction id must not be in a bounded cache of ids seen.

    When the cache is full the oldest id is dropped and its timestamp becomes a floor:
    pings not newer than the floor are refused, so an evicted id cannot be replayed.
    """

    def __init__(self, window: float = 60.0, capacity: int = 4096) -> None:
        self.window = window
        self.capacity = capacity
        self._seen: OrderedDict[bytes, float] = OrderedDict()
        self._floor = float("-inf")

    def __len__(self) -> int:
        return len(self._seen)

    def accept(self, probe: Probe, wall_now: float) -> bool:
        if abs(probe.timestamp - wall_now) > self.window or probe.timestamp <= self._floor:
            return False
        if probe.txid in self._seen:
            return False
        # Ids older than the window are refused by the timestamp check: forget them.
        while self._seen:
            txid, ts = next(iter(self._seen.items()))
            if ts >= wall_now - self.window and len(self._seen) < self.capacity:
                break
            del self._seen[txid]
            self._floor = max(self._floor, ts)
        self._seen[probe.txid] = probe.timestamp
        return True
