"""TSIG (RFC 8945) with HMAC-SHA256: sign and verify DNS messages, sans-IO.

dnslib has no TSIG, so this is a small codec over message bytes. A TSIG RR is the
last RR of the additional section; its MAC covers the message as it was before the
RR was added (ARCOUNT one less, the original ID) followed by the "TSIG variables"
(§4.3.3: key name and algorithm in canonical wire form, time signed, fudge, error,
other data). A response's MAC is prefixed by the request's MAC (§4.3.1). In a
multi-message answer (AXFR, §5.3.1) every later message's MAC covers the previous
MAC, the message and the timers only — which chains the messages, so none can be
dropped or reordered unnoticed.

Everything that goes wrong raises :class:`~punchd.errors.TsigError` carrying the TSIG
error code to answer with; untrusted bytes never raise anything else.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from punchd.errors import ConfigError, TsigError

TYPE_TSIG = 250  # RFC 8945 §4.2
CLASS_ANY = 255
ALGORITHM = "hmac-sha256"  # §6: mandatory to implement
FUDGE = 300  # §10: "a fudge value of 300 seconds is RECOMMENDED"
# TSIG error codes (§4.3.1, from the RCODE registry).
NOERROR = 0
BADSIG = 16
BADKEY = 17
BADTIME = 18
RCODE_NOTAUTH = 9  # the response RCODE for every TSIG error (§5.3.2)
RCODE_FORMERR = 1
_DIGEST_SIZE = hashlib.sha256().digest_size
_MAX_LABEL = 63
_MAX_NAME = 255


def wire_name(name: str) -> bytes:
    """A name in canonical wire form (RFC 4034 §6.2: lowercase, uncompressed)."""
    out = bytearray()
    for label in name.lower().rstrip(".").split("."):
        if not label:
            continue
        raw = label.encode("ascii")
        if len(raw) > _MAX_LABEL:
            raise ValueError(f"label {label!r} is longer than 63 octets")
        out += bytes([len(raw)]) + raw
    out.append(0)
    if len(out) > _MAX_NAME:
        raise ValueError("name is longer than 255 octets")
    return bytes(out)


@dataclass(frozen=True)
class TsigKey:
    name: str  # lowercase, no trailing dot
    secret: bytes
    algorithm: str = ALGORITHM

    def __post_init__(self) -> None:
        wire_name(self.name)  # a name that cannot go on the wire is no key name

    def __repr__(self) -> str:  # never print the secret
        return f"TsigKey(name={self.name!r}, algorithm={self.algorithm!r})"


@dataclass(frozen=True)
class TsigRecord:
    key_name: str
    algorithm: str
    time_signed: int
    fudge: int
    mac: bytes
    original_id: int
    error: int
    other: bytes


_NSD_KEY = re.compile(r"""name:\s*"?([^"\s]+)"?.*?algorithm:\s*"?([^"\s]+)"?.*?"""
                      r"""secret:\s*"([^"]+)\"""", re.S)
_BIND_KEY = re.compile(r"""key\s+"?([^"\s{]+)"?\s*\{.*?algorithm\s+"?([^";\s]+)"?\s*;.*?"""
                       r"""secret\s+"([^"]+)"\s*;""", re.S)


def parse_key(text: str) -> TsigKey:
    """A key as ``name:base64secret`` (``hmac-sha256:name:secret`` as dig's ``-y`` takes
    it is accepted too), or an NSD ``key:`` clause, or a BIND ``key "name" {...};``.
    Raises ConfigError naming what is wrong, never echoing the secret."""
    text = text.strip()
    m = _NSD_KEY.search(text) or _BIND_KEY.search(text)
    if m:
        name, algorithm, secret = m.group(1), m.group(2).lower().rstrip("."), m.group(3)
    else:
        parts = text.split(":")
        if len(parts) == 3:
            algorithm, name, secret = parts[0].lower(), parts[1], parts[2]
        elif len(parts) == 2:
            algorithm, (name, secret) = ALGORITHM, parts
        else:
            raise ConfigError("TSIG key: expected name:base64secret, an NSD key: clause or "
                              "a BIND key statement")
    if algorithm != ALGORITHM:
        raise ConfigError(f"TSIG key: algorithm {algorithm!r} is not supported (only {ALGORITHM})")
    try:
        raw = base64.b64decode(secret.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError("TSIG key: the secret is not base64") from None
    if len(raw) < _DIGEST_SIZE // 2:
        # RFC 8945 §6: keys shorter than half the MAC size weaken it.
        raise ConfigError(f"TSIG key: the secret is {len(raw)} bytes; give at least "
                          f"{_DIGEST_SIZE // 2}")
    try:
        return TsigKey(name.lower().rstrip("."), raw)
    except (ValueError, UnicodeError):
        raise ConfigError(f"TSIG key: {name!r} is not a DNS name") from None


def load_key_file(path: Path) -> TsigKey:
    try:
        return parse_key(path.read_text())
    except OSError as exc:
        raise ConfigError(f"TSIG key file {str(path)!r}: {exc.strerror}") from exc
    except UnicodeDecodeError:
        raise ConfigError(f"TSIG key file {str(path)!r} is not text") from None


# --- reading messages -------------------------------------------------------------

def _skip_name(msg: bytes, pos: int) -> int:
    """The offset just past a (possibly compressed) name at ``pos``."""
    for _ in range(128):  # a name has at most 127 labels
        if pos >= len(msg):
            raise TsigError("truncated name")
        length = msg[pos]
        if length == 0:
            return pos + 1
        if length & 0xC0 == 0xC0:
            if pos + 2 > len(msg):
                raise TsigError("truncated compression pointer")
            return pos + 2
        if length & 0xC0:
            raise TsigError("bad label type")
        pos += 1 + length
    raise TsigError("name too long")


def _read_name(msg: bytes, pos: int) -> tuple[str, int]:
    """An uncompressed name (TSIG owner and algorithm names are never compressed,
    RFC 8945 §4.2) and the offset after it."""
    labels: list[str] = []
    for _ in range(128):
        if pos >= len(msg):
            raise TsigError("truncated name")
        length = msg[pos]
        pos += 1
        if length == 0:
            return ".".join(labels).lower(), pos
        if length & 0xC0:
            raise TsigError("compressed or bad label in a TSIG name")
        label = msg[pos:pos + length]
        if len(label) != length:
            raise TsigError("truncated label")
        try:
            labels.append(label.decode("ascii"))
        except UnicodeDecodeError:
            raise TsigError("non-ASCII TSIG name") from None
        pos += length
    raise TsigError("name too long")


def split(message: bytes) -> tuple[bytes, TsigRecord | None]:
    """The message as it was before signing (TSIG RR removed, ARCOUNT decremented,
    the original ID restored) and its TSIG record; ``(message, None)`` if unsigned.
    A TSIG anywhere but last in the additional section is malformed (§5.2)."""
    if len(message) < 12:
        raise TsigError("shorter than a DNS header")
    qd, an, ns, ar = struct.unpack_from("!HHHH", message, 4)
    pos = 12
    for _ in range(qd):
        pos = _skip_name(message, pos) + 4
    last_start = -1
    last_type = 0
    for i in range(an + ns + ar):
        start = pos
        pos = _skip_name(message, pos)
        if pos + 10 > len(message):
            raise TsigError("truncated RR")
        rtype, _, _, rdlen = struct.unpack_from("!HHIH", message, pos)
        pos += 10 + rdlen
        if pos > len(message):
            raise TsigError("truncated RDATA")
        if rtype == TYPE_TSIG and i != an + ns + ar - 1:
            raise TsigError("TSIG is not the last record")
        last_start, last_type = start, rtype
    if pos != len(message):
        raise TsigError("trailing bytes after the last RR")
    if ar == 0 or last_type != TYPE_TSIG:
        return message, None
    name, p = _read_name(message, last_start)
    rtype, rclass, ttl, rdlen = struct.unpack_from("!HHIH", message, p)
    if rclass != CLASS_ANY or ttl != 0:
        raise TsigError("TSIG class must be ANY and TTL 0")
    p += 10
    end = p + rdlen
    algorithm, p = _read_name(message, p)
    if p + 10 > end:
        raise TsigError("truncated TSIG RDATA")
    hi, lo, fudge, mac_size = struct.unpack_from("!HIHH", message, p)
    p += 10
    mac = message[p:p + mac_size]
    p += mac_size
    if p + 6 > end:
        raise TsigError("truncated TSIG RDATA")
    original_id, error, other_len = struct.unpack_from("!HHH", message, p)
    p += 6
    other = message[p:p + other_len]
    if p + other_len != end:
        raise TsigError("TSIG RDATA length does not match its fields")
    record = TsigRecord(name, algorithm, (hi << 32) | lo, fudge, mac, original_id, error, other)
    unsigned = (struct.pack("!H", original_id) + message[2:10] + struct.pack("!H", ar - 1)
                + message[12:last_start])
    return unsigned, record


# --- MACs ---------------------------------------------------------------------------

def _timers(time_signed: int, fudge: int) -> bytes:
    return struct.pack("!HIH", (time_signed >> 32) & 0xFFFF, time_signed & 0xFFFFFFFF, fudge)


def _variables(key: TsigKey, time_signed: int, fudge: int, error: int, other: bytes) -> bytes:
    """§4.3.3: the TSIG variables, in the order they are digested."""
    return (wire_name(key.name) + struct.pack("!HI", CLASS_ANY, 0) + wire_name(key.algorithm)
            + _timers(time_signed, fudge) + struct.pack("!HH", error, len(other)) + other)


def _prefix(mac: bytes) -> bytes:
    return struct.pack("!H", len(mac)) + mac if mac else b""


def _mac(key: TsigKey, *parts: bytes) -> bytes:
    h = hmac.new(key.secret, digestmod=hashlib.sha256)
    for part in parts:
        h.update(part)
    return h.digest()


def _append(message: bytes, key_name: str, algorithm: str, time_signed: int, fudge: int,
            mac: bytes, error: int, other: bytes) -> bytes:
    original_id = struct.unpack_from("!H", message, 0)[0]
    rdata = (wire_name(algorithm) + _timers(time_signed, fudge) + struct.pack("!H", len(mac))
             + mac + struct.pack("!HHH", original_id, error, len(other)) + other)
    rr = wire_name(key_name) + struct.pack("!HHIH", TYPE_TSIG, CLASS_ANY, 0, len(rdata)) + rdata
    ar = struct.unpack_from("!H", message, 10)[0]
    return message[:10] + struct.pack("!H", ar + 1) + message[12:] + rr


def sign(message: bytes, key: TsigKey, now: int, *, request_mac: bytes = b"",
         error: int = NOERROR, other: bytes = b"", fudge: int = FUDGE) -> tuple[bytes, bytes]:
    """A request, or the first message of a response (``request_mac`` the request's):
    the signed message and its MAC (the next message of a stream chains on it)."""
    mac = _mac(key, _prefix(request_mac), message, _variables(key, now, fudge, error, other))
    return _append(message, key.name, key.algorithm, now, fudge, mac, error, other), mac


def sign_next(message: bytes, key: TsigKey, now: int, prior_mac: bytes,
              fudge: int = FUDGE) -> tuple[bytes, bytes]:
    """A later message of a multi-message response (§5.3.1)."""
    mac = _mac(key, _prefix(prior_mac), message, _timers(now, fudge))
    return _append(message, key.name, key.algorithm, now, fudge, mac, NOERROR, b""), mac


def unsigned_error(message: bytes, record: TsigRecord, now: int, error: int) -> bytes:
    """A BADKEY/BADSIG answer: a TSIG RR naming the requester's key with an empty MAC
    (§5.3.2: that key could not be used, so nothing is signed)."""
    return _append(message, record.key_name, record.algorithm, now, record.fudge, b"",
                   error, b"")


@dataclass(frozen=True)
class Verified:
    message: bytes  # without the TSIG, as it was signed
    key: TsigKey
    mac: bytes
    record: TsigRecord


def verify(message: bytes, keys: dict[str, TsigKey], now: int, *,
           request_mac: bytes = b"", prior_mac: bytes = b"") -> Verified:
    """Verify a signed message against the keys we hold (by name). ``request_mac`` for
    a response's first message, ``prior_mac`` for a later one (§5.3.1). Raises
    TsigError with the error to answer: unsigned or unknown key BADKEY, wrong MAC
    BADSIG, clock skew beyond the fudge BADTIME (§5.2.3: checked after the MAC)."""
    unsigned, record = split(message)
    if record is None:
        raise TsigError("the message is not signed", BADKEY)
    key = keys.get(record.key_name)
    if key is None or record.algorithm.rstrip(".") != key.algorithm:
        raise TsigError(f"unknown key {record.key_name!r} / {record.algorithm!r}", BADKEY)
    if len(record.mac) != _DIGEST_SIZE:
        # Truncated MACs (§5.2.2.1) are not accepted: no peer here needs them.
        raise TsigError("MAC size is not the full HMAC-SHA256", BADSIG)
    if prior_mac:
        expected = _mac(key, _prefix(prior_mac), unsigned,
                        _timers(record.time_signed, record.fudge))
    else:
        expected = _mac(key, _prefix(request_mac), unsigned,
                        _variables(key, record.time_signed, record.fudge, record.error,
                                   record.other))
    if not hmac.compare_digest(expected, record.mac):
        raise TsigError("bad MAC", BADSIG)
    if abs(now - record.time_signed) > record.fudge:
        raise TsigError("time signed is outside the fudge", BADTIME)
    return Verified(unsigned, key, record.mac, record)
