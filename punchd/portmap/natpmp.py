"""NAT-PMP (RFC 6886) codec: pure functions over bytes, one error.

The client half of the protocol, and just enough of the server half for a test
responder. Layouts (all fields in network byte order, RFC 6886 §3):

* external address request (§3.2): ``version 0 | opcode 0`` — 2 bytes;
* external address response (§3.2): ``0 | 128 | result u16 | epoch u32 | address 4`` — 12;
* mapping request (§3.3): ``0 | opcode 1 (UDP) or 2 (TCP) | reserved u16 | internal
  port u16 | suggested external port u16 | requested lifetime u32`` — 12;
* mapping response (§3.3): ``0 | 128+opcode | result u16 | epoch u32 | internal port u16
  | mapped external port u16 | lifetime u32`` — 16.

A mapping request with lifetime 0 (and suggested external port 0) deletes the mapping
(§3.4). An error answer may be cut short after the epoch: the "Unsupported Version"
answer is only 8 bytes (§3.5, and its opcode is 128 by erratum 3618 but 0 in the
original text, which some gateways still send). A PCP server answers a NAT-PMP request
with a PCP-format UNSUPP_VERSION (RFC 6887 §9): version 2 in the first byte, which
:func:`is_pcp_answer` tells apart before anyone parses it as NAT-PMP.

Every defect — short datagram, wrong version, a request opcode where an answer belongs,
a success that is too short — raises :class:`~punchd.errors.PortmapParseError`.
"""

from __future__ import annotations

import enum
import ipaddress
import struct

import msgspec

from punchd.errors import PortmapParseError

from . import code_name

PORT = 5351  # RFC 6886 §3: the gateway listens on UDP 5351
VERSION = 0
RESPONSE_BIT = 0x80  # §3: an answer's opcode is 128 + the request's

OP_EXTERNAL_ADDRESS = 0
OP_MAP_UDP = 1
OP_MAP_TCP = 2

ERROR_LENGTH = 8  # version, opcode, result code, epoch: the part every answer has
EXTERNAL_ADDRESS_RESPONSE_LENGTH = 12
MAP_RESPONSE_LENGTH = 16


class Result(enum.IntEnum):
    """RFC 6886 §3.5 result codes."""

    SUCCESS = 0
    UNSUPPORTED_VERSION = 1
    NOT_AUTHORIZED = 2  # e.g. the gateway supports mapping but the user turned it off
    NETWORK_FAILURE = 3  # e.g. the gateway has no DHCP lease on its WAN yet
    OUT_OF_RESOURCES = 4
    UNSUPPORTED_OPCODE = 5


class ExternalAddressResponse(msgspec.Struct, frozen=True):
    result: int
    epoch: int  # seconds since the gateway's mapping table started (§3.6)
    address: str | None  # None unless result is SUCCESS (§3.2: undefined otherwise)


class MapResponse(msgspec.Struct, frozen=True):
    opcode: int  # the request's: OP_MAP_UDP or OP_MAP_TCP
    result: int
    epoch: int
    internal_port: int
    external_port: int  # 0 unless SUCCESS
    lifetime: int  # seconds granted; 0 unless SUCCESS (or after a delete)


Response = ExternalAddressResponse | MapResponse


def result_name(code: int) -> str:
    return code_name(Result, code)


def is_pcp_answer(datagram: bytes) -> bool:
    """A PCP-format answer arriving on the NAT-PMP socket (RFC 6887 §9 shares port 5351)."""
    return len(datagram) >= 2 and datagram[0] == 2 and datagram[1] & RESPONSE_BIT != 0


# -- requests -----------------------------------------------------------------------


def external_address_request() -> bytes:
    """RFC 6886 §3.2."""
    return bytes((VERSION, OP_EXTERNAL_ADDRESS))


def map_request(internal_port: int, external_port: int, lifetime: int, *,
                opcode: int = OP_MAP_UDP) -> bytes:
    """RFC 6886 §3.3; ``lifetime`` 0 with ``external_port`` 0 deletes (§3.4)."""
    if opcode not in (OP_MAP_UDP, OP_MAP_TCP):
        raise ValueError(f"NAT-PMP mapping opcode {opcode}: 1 (UDP) or 2 (TCP)")
    if not 1 <= internal_port <= 0xFFFF or not 0 <= external_port <= 0xFFFF:
        raise ValueError("ports are 16-bit and the internal port is not 0")
    if not 0 <= lifetime <= 0xFFFFFFFF:
        raise ValueError("the lifetime is an unsigned 32-bit number of seconds")
    return struct.pack("!BBHHHI", VERSION, opcode, 0, internal_port, external_port, lifetime)


def delete_request(internal_port: int, *, opcode: int = OP_MAP_UDP) -> bytes:
    """RFC 6886 §3.4: lifetime 0 and suggested external port 0 remove one mapping."""
    return map_request(internal_port, 0, 0, opcode=opcode)


# -- answers ------------------------------------------------------------------------


def parse_response(datagram: bytes) -> Response:
    """Parse a gateway's answer; any defect raises PortmapParseError."""
    if len(datagram) < ERROR_LENGTH:
        raise PortmapParseError(f"{len(datagram)} bytes is shorter than a NAT-PMP answer")
    version, opcode, result, epoch = struct.unpack_from("!BBHI", datagram)
    if version != VERSION:
        raise PortmapParseError(f"NAT-PMP version {version}, expected 0")
    if opcode == 0 and result == Result.UNSUPPORTED_VERSION:
        opcode = RESPONSE_BIT  # §3.5 as first published, before erratum 3618
    if not opcode & RESPONSE_BIT:
        raise PortmapParseError(f"opcode {opcode} is a request, not an answer")
    request_op = opcode & ~RESPONSE_BIT
    if request_op == OP_EXTERNAL_ADDRESS:
        if result != Result.SUCCESS:
            return ExternalAddressResponse(result=result, epoch=epoch, address=None)
        if len(datagram) < EXTERNAL_ADDRESS_RESPONSE_LENGTH:
            raise PortmapParseError(f"external address answer of {len(datagram)} bytes, "
                                    f"expected {EXTERNAL_ADDRESS_RESPONSE_LENGTH}")
        address = str(ipaddress.IPv4Address(datagram[8:12]))
        return ExternalAddressResponse(result=result, epoch=epoch, address=address)
    if request_op in (OP_MAP_UDP, OP_MAP_TCP):
        if len(datagram) < MAP_RESPONSE_LENGTH:
            if result == Result.SUCCESS:
                raise PortmapParseError(f"mapping answer of {len(datagram)} bytes, "
                                        f"expected {MAP_RESPONSE_LENGTH}")
            return MapResponse(opcode=request_op, result=result, epoch=epoch,
                               internal_port=0, external_port=0, lifetime=0)
        internal, external, lifetime = struct.unpack_from("!HHI", datagram, 8)
        if result != Result.SUCCESS:
            external = lifetime = 0  # §3.3: undefined on error; never trust them
        elif external == 0 and lifetime != 0:
            raise PortmapParseError("successful mapping answer with external port 0")
        return MapResponse(opcode=request_op, result=result, epoch=epoch,
                           internal_port=internal, external_port=external, lifetime=lifetime)
    raise PortmapParseError(f"unknown NAT-PMP answer opcode {opcode}")


# -- the server half (the test responder) -----------------------------------------


def parse_request(datagram: bytes) -> tuple[int, int, int, int]:
    """(opcode, internal port, suggested external port, lifetime); (0, 0, 0, 0) for §3.2.

    A request of a version other than 0 raises (a server answers it with
    UNSUPPORTED_VERSION, :func:`encode_error`).
    """
    if len(datagram) < 2:
        raise PortmapParseError(f"{len(datagram)} bytes is shorter than a NAT-PMP request")
    version, opcode = datagram[0], datagram[1]
    if version != VERSION:
        raise PortmapParseError(f"NAT-PMP version {version}, expected 0")
    if opcode == OP_EXTERNAL_ADDRESS:
        return (opcode, 0, 0, 0)
    if opcode not in (OP_MAP_UDP, OP_MAP_TCP):
        raise PortmapParseError(f"unknown NAT-PMP request opcode {opcode}")
    if len(datagram) < 12:
        raise PortmapParseError(f"mapping request of {len(datagram)} bytes, expected 12")
    _, internal, external, lifetime = struct.unpack_from("!HHHI", datagram, 2)
    return (opcode, internal, external, lifetime)


def encode_external_address(epoch: int, address: str) -> bytes:
    return struct.pack("!BBHI", VERSION, RESPONSE_BIT | OP_EXTERNAL_ADDRESS, 0, epoch) \
        + ipaddress.IPv4Address(address).packed


def encode_map(opcode: int, epoch: int, internal_port: int, external_port: int,
               lifetime: int, *, result: int = Result.SUCCESS) -> bytes:
    return struct.pack("!BBHIHHI", VERSION, RESPONSE_BIT | opcode, result, epoch,
                       internal_port, external_port, lifetime)


def encode_error(opcode: int, result: int, epoch: int) -> bytes:
    """The 8-byte error answer of §3.5 (erratum 3618: the opcode has its top bit set)."""
    return struct.pack("!BBHI", VERSION, RESPONSE_BIT | (opcode & 0x7F), result, epoch)
