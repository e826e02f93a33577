"""STUN (RFC 8489) codec: aioice's sans-IO message codec behind our own errors and checks.

Why aioice (``tests/test_stun_codec.py`` holds the evidence): its ``aioice.stun`` is a pure
codec (no I/O in the message functions), table-driven (``ATTRIBUTES``), has every
attribute we need (XOR-MAPPED-ADDRESS, MAPPED-ADDRESS, OTHER-ADDRESS, RESPONSE-ORIGIN,
CHANGE-REQUEST, SOFTWARE, FINGERPRINT, MESSAGE-INTEGRITY, ERROR-CODE) and decodes the
RFC 5769 vectors correctly, MESSAGE-INTEGRITY and FINGERPRINT included. The PyPI
package ``stun`` is not usable (wrong XOR-MAPPED-ADDRESS decoding, no padding, no
integrity/fingerprint, an import-name clash with pystun3).

What aioice leaves to its caller, and this module adds:

* the header checks: top two type bits zero, the magic cookie (RFC 8489 §5), a
  length that is a multiple of four and matches the datagram, and attributes that
  stay inside the message (aioice slices past the end silently);
* FINGERPRINT must be the last attribute (RFC 8489 §14.7; aioice accepts more after);
* every failure — aioice's ``ValueError``, ``struct.error``, ``UnicodeDecodeError``,
  unknown methods — becomes :class:`~punchd.errors.StunParseError`;
* a cheap :func:`is_stun` for demultiplexing a shared port;
* the list of unknown comprehension-required attributes (RFC 8489 §6.3.1: a server
  answers 420 naming them), which aioice drops silently, and RFC 5780's RESPONSE-PORT,
  which aioice does not know (coturn's client sends it with its filtering tests);
* RFC 3489 ("classic") requests, which carry no magic cookie, for the responder only
  (``parse(..., classic=True)``; RFC 8489 §12 asks servers to answer them), and the
  classic answer layout (MAPPED-ADDRESS, SOURCE-ADDRESS, CHANGED-ADDRESS).
"""

from __future__ import annotations

import struct
from typing import Any

from aioice import stun as _stun

from punchd.errors import StunParseError

MAGIC_COOKIE = 0x2112A442
_COOKIE_BYTES = MAGIC_COOKIE.to_bytes(4, "big")
HEADER_LENGTH = 20
FINGERPRINT_TYPE = 0x8028
UNKNOWN_ATTRIBUTES_TYPE = 0x000A  # RFC 8489 §14.9 (not in aioice's table)
RESPONSE_PORT_TYPE = 0x0027  # RFC 5780 §7.5 (not in aioice's table; read by response_port)
Message = _stun.Message
Method = _stun.Method
Class = _stun.Class

# RFC 5780 §7.2 CHANGE-REQUEST flags.
CHANGE_IP = 0x04
CHANGE_PORT = 0x02

# Attribute types this codec understands; anything else below 0x8000 is
# comprehension-required and unknown (RFC 8489 §14).
KNOWN_TYPES = frozenset(_stun.ATTRIBUTES_BY_TYPE) | {RESPONSE_PORT_TYPE}

_LIBRARY_ERRORS = (ValueError, struct.error, IndexError, KeyError, TypeError)


def is_stun(datagram: bytes) -> bool:
    """Cheap demultiplexing test (RFC 8489 §5, RFC 7983): top bits 0, magic cookie, length."""
    return (
        len(datagram) >= HEADER_LENGTH
        and datagram[0] < 4
        and datagram[4:8] == _COOKIE_BYTES
        and int.from_bytes(datagram[2:4], "big") + HEADER_LENGTH == len(datagram)
    )


def is_classic(datagram: bytes) -> bool:
    """True for a message without the magic cookie: an RFC 3489 client's (RFC 8489 §12)."""
    return datagram[4:8] != _COOKIE_BYTES


def _walk(datagram: bytes, *, classic: bool) -> list[tuple[int, int, int]]:
    """Check the header and the attribute framing; return (type, value offset, length)."""
    if len(datagram) < HEADER_LENGTH:
        raise StunParseError(f"{len(datagram)} bytes is shorter than a STUN header")
    msg_type, length = struct.unpack_from("!HH", datagram)
    if msg_type & 0xC000:
        raise StunParseError("top two bits of the message type are not zero")
    if not classic and datagram[4:8] != _COOKIE_BYTES:
        raise StunParseError(f"bad magic cookie {datagram[4:8].hex()}")
    if length % 4 or HEADER_LENGTH + length != len(datagram):
        raise StunParseError(f"length field {length} does not match {len(datagram)} bytes")
    attrs: list[tuple[int, int, int]] = []
    pos = HEADER_LENGTH
    while pos < len(datagram):
        if attrs and attrs[-1][0] == FINGERPRINT_TYPE:
            raise StunParseError("an attribute follows FINGERPRINT")
        if pos + 4 > len(datagram):
            raise StunParseError("truncated attribute header")
        attr_type, attr_len = struct.unpack_from("!HH", datagram, pos)
        attrs.append((attr_type, pos + 4, attr_len))
        pos += 4 + attr_len + (-attr_len % 4)
        if pos > len(datagram):
            raise StunParseError(f"attribute {attr_type:#06x} runs past the end of the message")
    return attrs


def parse(datagram: bytes, *, integrity_key: bytes | None = None,
          classic: bool = False) -> Message:
    """Parse a STUN message; any defect raises StunParseError.

    FINGERPRINT, when present, is verified; MESSAGE-INTEGRITY is verified when
    ``integrity_key`` is given. ``classic=True`` also accepts RFC 3489 messages (no
    magic cookie); their first four transaction-id bytes are then ``datagram[4:8]``.
    """
    for attr_type, offset, length in _walk(datagram, classic=classic):
        if attr_type == RESPONSE_PORT_TYPE and (
                length != 4 or not int.from_bytes(datagram[offset:offset + 2], "big")):
            raise StunParseError("RESPONSE-PORT is not a 4-byte attribute with a port")
    try:
        msg = _stun.parse_message(datagram)
    except _LIBRARY_ERRORS as exc:
        raise StunParseError(f"malformed STUN message: {exc}") from exc
    if integrity_key is not None and not msg.check_message_integrity(integrity_key):
        raise StunParseError("MESSAGE-INTEGRITY does not match")
    return msg


def unknown_comprehension_required(datagram: bytes) -> tuple[int, ...]:
    """Attribute types in 0x0000-0x7FFF that this codec does not know (RFC 8489 §14).

    The datagram must already have passed :func:`parse`.
    """
    types = (t for t, _, _ in _walk(datagram, classic=True))
    return tuple(dict.fromkeys(t for t in types if t < 0x8000 and t not in KNOWN_TYPES))


def response_port(datagram: bytes) -> int | None:
    """RFC 5780 §7.5 RESPONSE-PORT: the port the client wants the answer sent to.

    The datagram must already have passed :func:`parse` (which checks the attribute).
    """
    for attr_type, offset, _ in _walk(datagram, classic=True):
        if attr_type == RESPONSE_PORT_TYPE:
            return int.from_bytes(datagram[offset:offset + 2], "big")
    return None


def binding_request(transaction_id: bytes, *, change: int = 0, software: str | None = None,
                    fingerprint: bool = True) -> bytes:
    """A Binding request; ``change`` carries RFC 5780 CHANGE-REQUEST flags."""
    attrs: dict[str, Any] = {}
    if change:
        attrs["CHANGE-REQUEST"] = change
    if software:
        attrs["SOFTWARE"] = software
    msg = Message(Method.BINDING, Class.REQUEST, transaction_id, attrs)
    if fingerprint:
        msg.add_fingerprint()
    return bytes(msg)


def binding_success(transaction_id: bytes, mapped: tuple[str, int], *,
                    response_origin: tuple[str, int] | None = None,
                    other_address: tuple[str, int] | None = None,
                    classic_cookie: bytes | None = None) -> bytes:
    """A Binding success response.

    RFC 8489 clients get XOR-MAPPED-ADDRESS, RESPONSE-ORIGIN and OTHER-ADDRESS (RFC 5780
    §7) and FINGERPRINT. With ``classic_cookie`` (the request's bytes 4..8, RFC 8489 §12)
    the answer is RFC 3489's: the cookie echoed, MAPPED-ADDRESS, SOURCE-ADDRESS and
    CHANGED-ADDRESS, and no FINGERPRINT (classic clients do not know it).
    """
    attrs: dict[str, Any]
    if classic_cookie is not None:
        attrs = {"MAPPED-ADDRESS": mapped}
        if response_origin is not None:
            attrs["SOURCE-ADDRESS"] = response_origin
        if other_address is not None:
            attrs["CHANGED-ADDRESS"] = other_address
        data = bytes(Message(Method.BINDING, Class.RESPONSE, transaction_id, attrs))
        return data[:4] + classic_cookie + data[8:]
    attrs = {"XOR-MAPPED-ADDRESS": mapped}
    if response_origin is not None:
        attrs["RESPONSE-ORIGIN"] = response_origin
    if other_address is not None:
        attrs["OTHER-ADDRESS"] = other_address
    msg = Message(Method.BINDING, Class.RESPONSE, transaction_id, attrs)
    msg.add_fingerprint()
    return bytes(msg)


def binding_error(transaction_id: bytes, code: int, reason: str, *,
                  unknown: tuple[int, ...] = (), classic_cookie: bytes | None = None) -> bytes:
    """A Binding error response; ``unknown`` fills UNKNOWN-ATTRIBUTES (RFC 8489 §14.9)."""
    body = bytes(Message(Method.BINDING, Class.ERROR, transaction_id,
                         {"ERROR-CODE": (code, reason)}))
    if unknown:
        value = b"".join(struct.pack("!H", t) for t in unknown)
        body += struct.pack("!HH", UNKNOWN_ATTRIBUTES_TYPE, len(value)) + value \
            + bytes(-len(value) % 4)
    if classic_cookie is not None:
        body = body[:4] + classic_cookie + body[8:]
        return _stun.set_body_length(body, len(body) - HEADER_LENGTH)
    body = _stun.set_body_length(body, len(body) - HEADER_LENGTH)
    fingerprint = _stun.message_fingerprint(body)
    body += struct.pack("!HHI", FINGERPRINT_TYPE, 4, fingerprint)
    return _stun.set_body_length(body, len(body) - HEADER_LENGTH)
