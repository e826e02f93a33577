"""PCP (RFC 6887) codec for the MAP and ANNOUNCE opcodes: pure functions over bytes.

Layouts (network byte order):

* request header (§7.1), 24 bytes: ``version 2 | R=0, opcode (7 bits) | reserved u16 |
  requested lifetime u32 | PCP client's IP address (16 bytes)``;
* response header (§7.2), 24 bytes: ``version 2 | R=1, opcode | reserved u8 | result u8 |
  lifetime u32 | epoch time u32 | reserved (12 bytes)``;
* MAP opcode data (§11.1), 36 bytes, in the request and the response: ``mapping nonce
  (12 bytes) | protocol u8 | reserved (3 bytes) | internal port u16 | suggested (request)
  or assigned (response) external port u16 | suggested or assigned external address
  (16 bytes)``;
* ANNOUNCE (§14.1) is the bare header with lifetime 0: the cheapest way to ask "is a PCP
  server there?", which the prober uses before it maps anything;
* options (§7.3) follow: ``code u8 | reserved u8 | length u16 | data, padded to 4``. We send
  none; in answers their framing is checked and their contents skipped (§8.3: a client
  ignores what it does not understand in a response).

Addresses are always 16 bytes; IPv4 ones are IPv4-mapped IPv6 (``::ffff:a.b.c.d``, §5),
and "no preference" for an IPv4 external address is ``::ffff:0.0.0.0`` (§11.1).

Messages are a multiple of 4 bytes and at most 1100 (§7). A PCP server that receives a
NAT-PMP request (version 0) answers UNSUPP_VERSION with its own version, and a NAT-PMP-only
gateway answers a PCP request with NAT-PMP's 8-byte "unsupported version" (§9): the client
tells them apart by the first byte (:func:`punchd.portmap.natpmp.is_pcp_answer`) and falls
back to the other protocol. Every defect raises :class:`~punchd.errors.PortmapParseError`.
"""

from __future__ import annotations

import enum
import ipaddress
import struct

import msgspec

from punchd.errors import PortmapParseError

from . import code_name

PORT = 5351  # §19.1: the server's port, shared with NAT-PMP
VERSION = 2
RESPONSE_BIT = 0x80
MAX_MESSAGE = 1100  # §7
HEADER_LENGTH = 24
MAP_LENGTH = 36
NONCE_LENGTH = 12

OP_ANNOUNCE = 0  # §14.1
OP_MAP = 1  # §11.1

PROTO_TCP = 6  # IANA protocol numbers (§11.1)
PROTO_UDP = 17

IPV4_ANY = "0.0.0.0"  # encoded as ::ffff:0.0.0.0: "no preference" (§11.1)


class Result(enum.IntEnum):
    """RFC 6887 §7.4 result codes."""

    SUCCESS = 0
    UNSUPP_VERSION = 1
    NOT_AUTHORIZED = 2
    MALFORMED_REQUEST = 3
    UNSUPP_OPCODE = 4
    UNSUPP_OPTION = 5
    MALFORMED_OPTION = 6
    NETWORK_FAILURE = 7
    NO_RESOURCES = 8
    UNSUPP_PROTOCOL = 9
    USER_EX_QUOTA = 10
    CANNOT_PROVIDE_EXTERNAL = 11
    ADDRESS_MISMATCH = 12
    EXCESSIVE_REMOTE_PEERS = 13


# §7.4 splits errors into long-lived (do not retry the same request soon) and short-lived
# (retry later, the server may recover); the prober treats the long-lived ones as "PCP
# will not map here" and stops asking.
LONG_LIVED_ERRORS = frozenset({
    Result.UNSUPP_VERSION, Result.NOT_AUTHORIZED, Result.MALFORMED_REQUEST,
    Result.UNSUPP_OPCODE, Result.UNSUPP_OPTION, Result.MALFORMED_OPTION,
    Result.UNSUPP_PROTOCOL, Result.ADDRESS_MISMATCH, Result.EXCESSIVE_REMOTE_PEERS,
})


class Response(msgspec.Struct, frozen=True):
    version: int  # the server's version: with UNSUPP_VERSION, the highest it speaks (§9)
    opcode: int
    result: int
    lifetime: int  # §7.2: granted lifetime, or how long an error is expected to last
    epoch: int  # §8.5
    nonce: bytes | None = None  # MAP only, and only when the answer carries the MAP data
    protocol: int = 0
    internal_port: int = 0
    external_port: int = 0
    external_address: str | None = None  # IPv4 shown dotted, IPv6 as IPv6


def result_name(code: int) -> str:
    return code_name(Result, code)


def _encode_address(address: str) -> bytes:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv4Address):
        return ipaddress.IPv6Address(b"\x00" * 10 + b"\xff\xff" + ip.packed).packed  # §5
    return ip.packed


def _decode_address(raw: bytes) -> str:
    ip = ipaddress.IPv6Address(raw)
    return str(ip.ipv4_mapped) if ip.ipv4_mapped is not None else str(ip)


def _header(opcode: int, lifetime: int, client_ip: str) -> bytes:
    if not 0 <= lifetime <= 0xFFFFFFFF:
        raise ValueError("the lifetime is an unsigned 32-bit number of seconds")
    return struct.pack("!BBHI", VERSION, opcode, 0, lifetime) + _encode_address(client_ip)


# -- requests -----------------------------------------------------------------------


def announce_request(client_ip: str) -> bytes:
    """§14.1: header only, lifetime 0. A PCP server answers SUCCESS with its epoch."""
    return _header(OP_ANNOUNCE, 0, client_ip)


def map_request(client_ip: str, nonce: bytes, internal_port: int, lifetime: int, *,
                external_port: int = 0, external_address: str = IPV4_ANY,
                protocol: int = PROTO_UDP) -> bytes:
    """§11.1. Lifetime 0 with the mapping's nonce deletes it (§15)."""
    if len(nonce) != NONCE_LENGTH:
        raise ValueError("the mapping nonce is 12 bytes")
    if not 1 <= internal_port <= 0xFFFF or not 0 <= external_port <= 0xFFFF:
        raise ValueError("ports are 16-bit and the internal port is not 0")
    return _header(OP_MAP, lifetime, client_ip) + nonce + struct.pack(
        "!B3xHH", protocol, internal_port, external_port) + _encode_address(external_address)


# -- answers ------------------------------------------------------------------------


def _check_options(datagram: bytes, pos: int) -> None:
    while pos < len(datagram):
        if pos + 4 > len(datagram):
            raise PortmapParseError("truncated PCP option header")
        code, length = datagram[pos], int.from_bytes(datagram[pos + 2:pos + 4], "big")
        pos += 4 + length + (-length % 4)
        if pos > len(datagram):
            raise PortmapParseError(f"PCP option {code} runs past the end of the message")


def _check_framing(datagram: bytes, *, what: str) -> None:
    if len(datagram) < HEADER_LENGTH:
        raise PortmapParseError(f"{len(datagram)} bytes is shorter than a PCP {what} header")
    if len(datagram) > MAX_MESSAGE or len(datagram) % 4:
        raise PortmapParseError(f"a PCP message of {len(datagram)} bytes (§7: a multiple "
                                f"of 4, at most {MAX_MESSAGE})")


def parse_response(datagram: bytes) -> Response:
    """Parse a PCP server's answer (§7.2, §8.3); any defect raises PortmapParseError."""
    # §9: an UNSUPP_VERSION answer may be only the header, so the short check comes first.
    _check_framing(datagram, what="response")
    version, op_byte, result, lifetime, epoch = struct.unpack_from("!BBxBII", datagram)
    if version == 0:
        raise PortmapParseError("version 0 is NAT-PMP, not PCP")
    if not op_byte & RESPONSE_BIT:
        raise PortmapParseError(f"opcode byte {op_byte:#04x} is a request, not a response")
    opcode = op_byte & ~RESPONSE_BIT
    if version != VERSION:
        if result != Result.UNSUPP_VERSION:
            raise PortmapParseError(f"PCP version {version} answer that is not UNSUPP_VERSION")
        return Response(version=version, opcode=opcode, result=result, lifetime=lifetime,
                        epoch=epoch)
    if opcode == OP_ANNOUNCE:
        _check_options(datagram, HEADER_LENGTH)
        return Response(version=version, opcode=opcode, result=result, lifetime=lifetime,
                        epoch=epoch)
    if opcode != OP_MAP:
        raise PortmapParseError(f"PCP opcode {opcode} is not one this client sends")
    if len(datagram) < HEADER_LENGTH + MAP_LENGTH:
        if result == Result.SUCCESS:
            raise PortmapParseError(f"MAP success of {len(datagram)} bytes, expected at "
                                    f"least {HEADER_LENGTH + MAP_LENGTH}")
        return Response(version=version, opcode=opcode, result=result, lifetime=lifetime,
                        epoch=epoch)
    _check_options(datagram, HEADER_LENGTH + MAP_LENGTH)
    body = HEADER_LENGTH
    nonce = datagram[body:body + NONCE_LENGTH]
    protocol, internal, external = struct.unpack_from("!B3xHH", datagram, body + NONCE_LENGTH)
    address = _decode_address(datagram[body + 20:body + 36])
    if result == Result.SUCCESS and lifetime and not external:
        raise PortmapParseError("successful MAP answer with external port 0")
    return Response(version=version, opcode=opcode, result=result, lifetime=lifetime,
                    epoch=epoch, nonce=nonce, protocol=protocol, internal_port=internal,
                    external_port=external, external_address=address)


# -- the server half (the test responder) -----------------------------------------


class Request(msgspec.Struct, frozen=True):
    version: int
    opcode: int
    lifetime: int
    client_ip: str
    nonce: bytes | None = None
    protocol: int = 0
    internal_port: int = 0
    external_port: int = 0
    external_address: str | None = None


def parse_request(datagram: bytes) -> Request:
    """A client's request (§7.1). Other versions parse (the server answers UNSUPP_VERSION)."""
    _check_framing(datagram, what="request")
    version, op_byte, lifetime = struct.unpack_from("!BBxxI", datagram)
    if op_byte & RESPONSE_BIT:
        raise PortmapParseError("a PCP response where a request belongs")
    client_ip = _decode_address(datagram[8:24])
    if op_byte != OP_MAP or version != VERSION:
        return Request(version=version, opcode=op_byte, lifetime=lifetime, client_ip=client_ip)
    if len(datagram) < HEADER_LENGTH + MAP_LENGTH:
        raise PortmapParseError(f"MAP request of {len(datagram)} bytes")
    _check_options(datagram, HEADER_LENGTH + MAP_LENGTH)
    nonce = datagram[24:36]
    protocol, internal, external = struct.unpack_from("!B3xHH", datagram, 36)
    return Request(version=version, opcode=op_byte, lifetime=lifetime, client_ip=client_ip,
                   nonce=nonce, protocol=protocol, internal_port=internal,
                   external_port=external, external_address=_decode_address(datagram[44:60]))


def encode_response(opcode: int, result: int, lifetime: int, epoch: int, *,
                    map_data: tuple[bytes, int, int, int, str] | None = None,
                    version: int = VERSION) -> bytes:
    """A response; ``map_data`` is (nonce, protocol, internal port, external port, address)."""
    out = struct.pack("!BBxBII12x", version, RESPONSE_BIT | opcode, result, lifetime, epoch)
    if map_data is not None:
        nonce, protocol, internal, external, address = map_data
        out += nonce + struct.pack("!B3xHH", protocol, internal, external) \
            + _encode_address(address)
    return out
