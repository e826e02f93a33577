"""Relay binds: how a node tells the relay where its side of an allocation is.

A bind is a STUN Binding request (RFC 8489) sent from WireGuard's port to the node's
relay port, so it passes the shared port's filter on the way back and the relay sees
the mapping WireGuard's own packets get from the node's NAT. It carries USERNAME
``"<allocation id>:<side>"`` and MESSAGE-INTEGRITY (HMAC-SHA1, RFC 8489 §14.5) keyed
by that side's secret from the allocation, then FINGERPRINT. The first eight bytes of
the transaction id are the sender's wall clock in milliseconds: the relay moves a
side to a new source only for a bind newer than the last it accepted (a replayed
bind cannot move it). The answer is a Binding success from the same relay port with
XOR-MAPPED-ADDRESS (the source the relay saw) and MESSAGE-INTEGRITY under the same
secret.
"""

from __future__ import annotations

import os
import struct

from msgspec import Struct

from punchd.errors import RelayBindError, StunParseError

from . import stun
from .addr import Addr

MAX_ALLOCATION_ID = 64


class BindRequest(Struct, frozen=True):
    alloc_id: str
    side: int
    transaction_id: bytes
    wall_ms: int


def bind_request(alloc_id: str, side: int, secret: bytes, wall_ms: int) -> tuple[bytes, bytes]:
    """(datagram, transaction id) of a bind for ``side`` of allocation ``alloc_id``."""
    txid = struct.pack("!Q", wall_ms) + os.urandom(4)
    msg = stun.Message(stun.Method.BINDING, stun.Class.REQUEST, txid,
                       {"USERNAME": f"{alloc_id}:{side}"})
    msg.add_message_integrity(secret)
    return bytes(msg), txid


def parse_bind_request(data: bytes) -> BindRequest:
    """The claims of a bind, not yet authenticated (see :func:`verify_bind_request`)."""
    msg = stun.parse(data)
    if msg.message_method != stun.Method.BINDING or msg.message_class != stun.Class.REQUEST:
        raise RelayBindError("not a Binding request")
    username = msg.attributes.get("USERNAME")
    if not isinstance(username, str) or "MESSAGE-INTEGRITY" not in msg.attributes:
        raise RelayBindError("a bind needs USERNAME and MESSAGE-INTEGRITY")
    alloc_id, sep, side = username.rpartition(":")
    if not sep or side not in ("0", "1") or not 0 < len(alloc_id) <= MAX_ALLOCATION_ID:
        raise RelayBindError(f"USERNAME {username!r} is not <allocation>:<side>")
    (wall_ms,) = struct.unpack_from("!Q", msg.transaction_id)
    return BindRequest(alloc_id, int(side), msg.transaction_id, wall_ms)


def verify_bind_request(data: bytes, secret: bytes) -> bool:
    try:
        return stun.parse(data).check_message_integrity(secret)
    except StunParseError:
        return False


def bind_success(transaction_id: bytes, mapped: Addr, secret: bytes) -> bytes:
    msg = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE, transaction_id,
                       {"XOR-MAPPED-ADDRESS": mapped})
    msg.add_message_integrity(secret)
    return bytes(msg)


def parse_bind_success(data: bytes, secret: bytes) -> tuple[bytes, Addr]:
    """(transaction id, the address the relay saw) of an authentic bind answer."""
    msg = stun.parse(data)
    if msg.message_method != stun.Method.BINDING or msg.message_class != stun.Class.RESPONSE:
        raise RelayBindError("not a Binding success")
    if not msg.check_message_integrity(secret):
        raise RelayBindError("MESSAGE-INTEGRITY does not match the allocation's secret")
    mapped = msg.attributes.get("XOR-MAPPED-ADDRESS")
    if not isinstance(mapped, tuple):
        raise RelayBindError("no XOR-MAPPED-ADDRESS")
    return msg.transaction_id, (str(mapped[0]), int(mapped[1]))
