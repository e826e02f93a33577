"""STUN (RFC 8489) codec: aioice's sans-IO message codec behind our own errors and checks.

Why aioice: its ``aioice.stun`` is a pure codec (no I/O in the message functions),
table-driven (``ATTRIBUTES``), and decodes the RFC 5769 vectors correctly, including
MESSAGE-INTEGRITY and FINGERPRINT. The PyPI package ``stun`` is not usable (wrong
XOR-MAPPED-ADDRESS decoding, no padding, no integrity/fingerprint, and an import
name clash with pystun3). This module adds what a server and client need on top:
the magic-cookie and header checks, a cheap :func:`is_stun` for demultiplexing, and
translation of every parse failure into :class:`~punchd.errors.StunParseError`.
"""

from __future__ import annotations

import struct
from typing import Any

from aioice import stun as _stun

from punchd.errors import StunParseError

MAGIC_COOKIE = 0x2112A442
HEADER_LENGTH = 20
Message = _stun.Message
Method = _stun.Method
Class = _stun.Class

# RFC 5780 §7.2 CHANGE-REQUEST flags.
CHANGE_IP = 0x04
CHANGE_PORT = 0x02


def is_stun(datagram: bytes) -> bool:
    """Cheap demultiplexing test (RFC 8489 §5, RFC 7983): top bits 0 and the magic cookie."""
    return (
        len(datagram) >= HEADER_LENGTH
        and datagram[0] < 4
        and datagram[4:8] == b"\x21\x12\xa4\x42"
        and int.from_bytes(datagram[2:4], "big") + HEADER_LENGTH == len(datagram)
    )


def parse(datagram: bytes, *, integrity_key: bytes | None = None) -> Message:
    """Parse a STUN message; any defect raises StunParseError.

    FINGERPRINT, when present, is verified (aioice does); MESSAGE-INTEGRITY is
    verified when ``integrity_key`` is given.
    """
    if len(datagram) < HEADER_LENGTH:
        raise StunParseError(f"{len(datagram)} bytes is shorter than a STUN header")
    msg_type, length, cookie = struct.unpack("!HHI", datagram[:8])
    if msg_type & 0xC000:
        raise StunParseError("top two bits of the message type are not zero")
    if cookie != MAGIC_COOKIE:
        raise StunParseError(f"bad magic cookie {cookie:#x}")
    if length % 4 or HEADER_LENGTH + length != len(datagram):
        raise StunParseError(f"length field {length} does not match {len(datagram)} bytes")
    pos = HEADER_LENGTH
    while pos < len(datagram):
        if pos + 4 > len(datagram):
            raise StunParseError("truncated attribute header")
        attr_len = struct.unpack("!H", datagram[pos + 2 : pos + 4])[0]
        pos += 4 + attr_len + (-attr_len % 4)
        if pos > len(datagram):
            raise StunParseError("attribute runs past the end of the message")
    try:
        msg = _stun.parse_message(datagram)
    except (ValueError, struct.error, IndexError, KeyError, TypeError) as exc:
        raise StunParseError(f"malformed STUN message: {exc}") from exc
    if integrity_key is not None and not msg.check_message_integrity(integrity_key):
        raise StunParseError("MESSAGE-INTEGRITY does not match")
    return msg


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
                    other_address: tuple[str, int] | None = None) -> bytes:
    attrs: dict[str, Any] = {"XOR-MAPPED-ADDRESS": mapped}
    if response_origin is not None:
        attrs["RESPONSE-ORIGIN"] = response_origin
    if other_address is not None:
        attrs["OTHER-ADDRESS"] = other_address
    msg = Message(Method.BINDING, Class.RESPONSE, transaction_id, attrs)
    msg.add_fingerprint()
    return bytes(msg)


def binding_error(transaction_id: bytes, code: int, reason: str) -> bytes:
    msg = Message(Method.BINDING, Class.ERROR, transaction_id, {"ERROR-CODE": (code, reason)})
    msg.add_fingerprint()
    return bytes(msg)
