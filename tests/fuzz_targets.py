"""Fuzz targets shared by ``tests/test_fuzz.py`` (a few hundred inputs each, in CI) and
``python -m bench fuzz`` (1e5 each): one parser that takes bytes or text from outside
per target, the inputs it gets, and the only errors it may raise (issue #14).

A target's ``check(value)`` feeds one input to the parser and returns what came out:
``"ok"`` or the name of an allowed error class. Any other exception propagates: that is
a finding. Inputs are a mix of raw bytes/text and structure-aware ones (mutations of
valid messages: the RFC 5769 vectors for STUN, real sealed probes, real tokens, real
signed headers, well-framed messages built from attribute tables), so the parsers'
deeper branches see inputs that pass their first checks.

Every check is deterministic and builds its own state (resolver, temp dir, trio run)
per input, so a failing input replays on its own.
"""

from __future__ import annotations

import struct
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import tomli_w
import trio
import trio.testing
from aioice import stun as aioice_stun
from dnslib import EDNS0, DNSRecord
from hypothesis import strategies as st
from nacl.public import Box, PrivateKey
from nacl.signing import SigningKey
from starlette.requests import Request as HttpRequest

from meshdns.server import MAX_UDP_EDNS, MAX_UDP_NO_EDNS, Resolver, TcpSession
from meshdns.zone import CustomRecord, NetworkZone, NodeRecord, ZoneSet
from punchd.daemon import control
from punchd.daemon.state import NetworkConfig, StateDir
from punchd.errors import (
    ConfigError,
    ControlError,
    Invalid,
    PortmapParseError,
    ProbeParseError,
    RelayBindError,
    StunParseError,
    TokenError,
    Unauthorized,
)
from punchd.portmap import natpmp, pcp, upnp
from punchd.wire import api, probe, relay, signing, stun, token
from signal_server.routes.common import decode_body


@dataclass(frozen=True)
class Target:
    name: str
    what: str  # one line for the report
    strategy: st.SearchStrategy[Any]
    check: Callable[[Any], str]


def _outcome(fn: Callable[[], object], allowed: tuple[type[BaseException], ...]) -> str:
    try:
        fn()
    except allowed as exc:
        return type(exc).__name__
    return "ok"


# -- generic mutation of valid messages --------------------------------------------------

# Boundary values that length and count fields trip over.
_INTERESTING16 = (0, 1, 3, 4, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF)


@st.composite
def _mutate(draw: st.DrawFn, seeds: Sequence[bytes], max_ops: int = 6) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, max_ops))):
        op = draw(st.integers(0, 6))
        pos = draw(st.integers(0, len(data)))
        if op == 0 and pos < len(data):  # overwrite a byte
            data[pos] = draw(st.integers(0, 255))
        elif op == 1 and pos < len(data):  # flip a bit
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == 2:  # insert
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == 3:  # delete a run
            del data[pos:pos + draw(st.integers(1, 16))]
        elif op == 4:  # truncate
            del data[pos:]
        elif op == 5:  # a boundary value in a 16-bit field
            data[pos:pos + 2] = struct.pack("!H", draw(st.sampled_from(_INTERESTING16)))
        elif op == 6 and len(data) > 1:  # duplicate a slice (repeated attributes, labels)
            end = draw(st.integers(pos, min(len(data), pos + 32)))
            data[end:end] = data[pos:end]
    return bytes(data)


def _bytes_inputs(seeds: Sequence[bytes], max_size: int = 300) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=max_size), _mutate(seeds),
                     st.sampled_from(seeds).map(lambda s: s[:len(s) // 2]))


def _text_mutate(seeds: Sequence[str]) -> st.SearchStrategy[str]:
    return _mutate([s.encode() for s in seeds]).map(lambda b: b.decode("latin-1"))


_json_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=8,
)


@st.composite
def _mutate_fields(draw: st.DrawFn, examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A valid object with some fields dropped, replaced by any JSON value, or added."""
    obj = dict(draw(st.sampled_from(examples)))
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.integers(0, 2))
        if op == 0 and obj:
            del obj[draw(st.sampled_from(sorted(obj)))]
        elif op == 1 and obj:
            obj[draw(st.sampled_from(sorted(obj)))] = draw(_json_values)
        else:
            obj[draw(st.text(max_size=8))] = draw(_json_values)
    return obj


# -- STUN (punchd/wire/stun.py) ------------------------------------------------------------

STUN_PASSWORD = b"VOkJxbRl1RmTxUk/WvJxBt"  # RFC 5769 §2
STUN_VECTORS = [bytes.fromhex(h) for h in (
    # RFC 5769 §2.1 request
    "000100582112a442b7e7a701bc34d686fa87dfae802200105354554e207465737420636c69656e74"
    "002400046e0001ff80290008932ff9b151263b36000600096576746a3a6836765920202000080014"
    "9aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a280280004e57a3bcf",
    # RFC 5769 §2.2 IPv4 response
    "0101003c2112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563746f722000200008"
    "0001a147e112a643000800142b91f599fd9e90c38c7489f92af9ba53f06be7d780280004c07d4c96",
    # RFC 5769 §2.3 IPv6 response
    "010100482112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563746f722000200014"
    "0002a1470113a9faa5d3f179bc25f4b5bed2b9d900080014a382954e4be67bf11784c97c8292c275"
    "bfe3ed4180280004c8fb0b4c",
)]
_TXID = bytes.fromhex("b7e7a701bc34d686fa87dfae")
_STUN_SEEDS = [
    *STUN_VECTORS,
    stun.binding_request(_TXID, change=stun.CHANGE_IP | stun.CHANGE_PORT, software="punchd"),
    stun.binding_success(_TXID, ("203.0.113.5", 40000), response_origin=("192.0.2.1", 3478),
                         other_address=("192.0.2.2", 3479)),
    stun.binding_success(_TXID, ("2001:db8::1", 1), classic_cookie=b"\x01\x02\x03\x04"),
    stun.binding_error(_TXID, 420, "Unknown Attribute", unknown=(0x0777,)),
]
_ATTR_TYPES = [*sorted(stun.KNOWN_TYPES), stun.UNKNOWN_ATTRIBUTES_TYPE, 0x7FFF, 0x8000, 0xFFFF]


@st.composite
def _framed_stun(draw: st.DrawFn) -> bytes:
    """Header and attribute framing right, so the input reaches aioice's attribute decoders."""
    attrs = draw(st.lists(st.tuples(st.sampled_from(_ATTR_TYPES), st.binary(max_size=24)),
                          max_size=6))
    body = b"".join(struct.pack("!HH", t, len(v)) + v + bytes(-len(v) % 4) for t, v in attrs)
    msg_type = draw(st.sampled_from([0x0001, 0x0101, 0x0111, 0x0011, 0x0002, 0x3FFF]))
    data = struct.pack("!HHI", msg_type, len(body), stun.MAGIC_COOKIE) + _TXID + body
    if draw(st.booleans()):  # a correct FINGERPRINT, so the parser goes past it
        data = aioice_stun.set_body_length(data, len(data) - 20 + 8)
        data += struct.pack("!HHI", stun.FINGERPRINT_TYPE, 4, aioice_stun.message_fingerprint(data))
    return data


def check_stun(data: bytes) -> str:
    def run() -> None:
        for classic in (False, True):
            try:
                stun.parse(data, classic=classic)
            except StunParseError:
                continue
            stun.unknown_comprehension_required(data)
            stun.response_port(data)
        stun.parse(data, integrity_key=STUN_PASSWORD)
    return _outcome(run, (StunParseError,))


# -- probes (punchd/wire/probe.py) -------------------------------------------------------

_PROBE_A = PrivateKey(bytes(range(32)))
_PROBE_B = PrivateKey(bytes(range(32, 64)))
_PROBE_SEND = probe.ProbeCodec(_PROBE_A, _PROBE_B.public_key)
_PROBE_RECV = probe.ProbeCodec(_PROBE_B, _PROBE_A.public_key)
_PROBE_SEEDS = [
    _PROBE_SEND.seal(probe.Probe("ping", bytes(16), 1.5e9), nonce=bytes(24)),
    _PROBE_SEND.seal(probe.Probe("pong", bytes(range(16)), 1.7e9, ("203.0.113.9", 51820)),
                     nonce=bytes(range(24))),
    _PROBE_SEND.seal(probe.Probe("pong", b"x" * 16, 0.0, ("2001:db8::7", 1)), nonce=b"n" * 24),
]


@st.composite
def _sealed_plaintext(draw: st.DrawFn) -> bytes:
    """Any plaintext, sealed with the right keys: the part after the box opens."""
    kind = draw(st.sampled_from([0, 1, 2, 3, 255]))
    plain = bytes([kind]) + draw(st.binary(min_size=0, max_size=40))
    if draw(st.booleans()):
        plain = bytes([kind]) + bytes(24) + draw(st.sampled_from(
            [b"", b"\x04\x00\x01" + bytes(4), b"\x06\xff\xff" + bytes(16), b"\x05\x00\x01",
             b"\x04", b"\x04\x00\x01" + bytes(16)]))
    box = Box(_PROBE_A, _PROBE_B.public_key)
    sealed = box.encrypt(plain, bytes(24)).ciphertext
    return probe.MAGIC + bytes([probe.VERSION]) + bytes(_PROBE_A.public_key) + bytes(24) + sealed


def check_probe(data: bytes) -> str:
    def run() -> None:
        if probe.is_probe(data):
            try:
                probe.peek_sender(data)
            except ProbeParseError:
                pass
        _PROBE_RECV.open(data)
    return _outcome(run, (ProbeParseError,))


# -- relay binds (punchd/wire/relay.py) --------------------------------------------------

_RELAY_SECRET = bytes.fromhex("00112233445566778899aabbccddeeff")
_RELAY_SEEDS = [
    relay.bind_request("a1b2c3", 0, _RELAY_SECRET, 1_700_000_000_000)[0],
    relay.bind_request("x" * 64, 1, _RELAY_SECRET, 0)[0],
    relay.bind_success(_TXID, ("198.51.100.4", 40001), _RELAY_SECRET),
    relay.bind_success(_TXID, ("2001:db8::4", 65535), _RELAY_SECRET),
]


@st.composite
def _authentic_bind(draw: st.DrawFn) -> bytes:
    """A bind with any USERNAME and class, correctly signed: past the integrity check."""
    attrs: dict[str, Any] = {"USERNAME": draw(st.text(max_size=80))}
    cls = draw(st.sampled_from([stun.Class.REQUEST, stun.Class.RESPONSE, stun.Class.ERROR]))
    if cls == stun.Class.RESPONSE and draw(st.booleans()):
        attrs["XOR-MAPPED-ADDRESS"] = ("192.0.2.1", draw(st.integers(0, 65535)))
    msg = stun.Message(stun.Method.BINDING, cls, draw(st.binary(min_size=12, max_size=12)), attrs)
    msg.add_message_integrity(_RELAY_SECRET)
    return bytes(msg)


def check_relay(data: bytes) -> str:
    allowed = (RelayBindError, StunParseError)

    def run() -> None:
        relay.verify_bind_request(data, _RELAY_SECRET)
        try:
            relay.parse_bind_request(data)
        except allowed:
            pass
        relay.parse_bind_success(data, _RELAY_SECRET)
    return _outcome(run, allowed)


# -- join tokens (punchd/wire/token.py) --------------------------------------------------

_TOKEN_SEEDS = [
    token.encode_token("http://203.0.113.10:8080", "office", "k" * 32),
    token.encode_token("https://[2001:db8::1]:443", "n", ""),
]
_TOKEN_FIELDS = {"v": 1, "server": "http://x", "network": "net", "key": "secret"}


def _b64_json(obj: Any) -> str:
    import base64
    return base64.urlsafe_b64encode(msgspec.json.encode(obj)).rstrip(b"=").decode()


def check_token(text: str) -> str:
    return _outcome(lambda: token.decode_token(text), (TokenError,))


# -- signed request headers (punchd/wire/signing.py) ---------------------------------------

_SIGN_KEY = SigningKey(bytes(range(32)))
_SIGN_NOW = 1_700_000_000.0
_SIGN_BODY = b'{"peer":"beta"}'
_SIGN_HEADERS = signing.sign_request(_SIGN_KEY, "POST", "/api/v1/punch", _SIGN_BODY, now=_SIGN_NOW)
_HEADER_TEXT = st.text(st.characters(max_codepoint=255), max_size=120)  # headers are latin-1


@st.composite
def _signed_case(draw: st.DrawFn) -> tuple[dict[str, str], str, str, bytes]:
    headers = dict(_SIGN_HEADERS)
    for name in list(headers):
        op = draw(st.integers(0, 4))
        if op == 1:
            del headers[name]
        elif op == 2:
            headers[name] = draw(_HEADER_TEXT)
        elif op == 3:
            headers[name] = draw(_text_mutate([headers[name]]))
        elif op == 4:
            headers[name] = draw(st.sampled_from(["", "nan", "inf", "-0", "1e999", "=", "====",
                                                  "AAAA", "0" * 64, "0" * 65, " " * 16]))
    if draw(st.booleans()):
        headers[draw(st.text(max_size=10))] = draw(_HEADER_TEXT)
    method = draw(st.sampled_from(["POST", "GET", "post", "PÖST", ""]))
    path = draw(st.sampled_from(["/api/v1/punch", "/api/v1/punch?x=1", ""]) | _HEADER_TEXT)
    body = draw(st.sampled_from([_SIGN_BODY, b""]) | st.binary(max_size=40))
    return headers, method, path, body


def check_signed(case: tuple[dict[str, str], str, str, bytes]) -> str:
    headers, method, path, body = case
    return _outcome(lambda: signing.verify_request(headers, method, path, body,
                                                   now=_SIGN_NOW),
                    (Unauthorized,))


# -- DNS queries (meshdns/server.py) -----------------------------------------------------

_ZONES = ZoneSet("mesh", [NetworkZone(
    network="office",
    nodes=(NodeRecord("alpha", "198.19.0.1/24", "fd00::1/64"), NodeRecord("beta", "198.19.0.2/24")),
    records=(CustomRecord("www", "A", "198.19.0.80"),
             CustomRecord("docs", "CNAME", "www.office.mesh"),
             CustomRecord("@", "TXT", "v=mesh1"),
             *(CustomRecord("big", "TXT", "x" * 200 + str(i)) for i in range(5))),
)])


def _dns_query(name: str, qtype: str, *, edns: bool = False) -> bytes:
    q = DNSRecord.question(name, qtype)
    q.header.id = 0x1234
    if edns:
        q.add_ar(EDNS0(udp_len=4096))
    return bytes(q.pack())


_DNS_SEEDS = [
    _dns_query("alpha.office.mesh", "A"), _dns_query("alpha.office.mesh", "AAAA", edns=True),
    _dns_query("big.office.mesh", "TXT"), _dns_query("docs.office.mesh", "CNAME"),
    _dns_query("office.mesh", "SOA", edns=True), _dns_query("example.com", "A"),
    _dns_query("nobody.office.mesh", "ANY"), _dns_query("mesh", "NS"),
]
_DNS_SIZES = (None, MAX_UDP_NO_EDNS, MAX_UDP_EDNS)  # TCP, and the UDP listener's sizes


def check_dns(case: tuple[bytes, int | None]) -> str:
    query, max_size = case
    reply = Resolver(_ZONES).answer(query, max_size)
    # bytes-like, not strictly bytes: a fresh answer is dnslib's bytearray today (harmless
    # to the listeners; pinned by an xfail in tests/test_fuzz.py) and must not hide crashes.
    if reply is not None and not isinstance(reply, bytes | bytearray):
        raise TypeError(f"answer returned {type(reply).__name__}")
    return "dropped" if reply is None else "answered"


@st.composite
def _tcp_stream(draw: st.DrawFn) -> bytes:
    """Length-prefixed queries (RFC 1035 §4.2.2), some framed wrong, or raw bytes."""
    if draw(st.integers(0, 3)) == 0:
        return draw(st.binary(max_size=600))
    out = b""
    for _ in range(draw(st.integers(0, 5))):
        query = draw(_bytes_inputs(_DNS_SEEDS, 120))
        length = draw(st.sampled_from([len(query), len(query), 0, len(query) + 1, 0xFFFF]))
        out += struct.pack("!H", length) + query
    return out + draw(st.sampled_from([b"", b"\x00", b"\x00\x20"]))


def check_dns_tcp(stream: bytes) -> str:
    """The TCP framing (meshdns.server.TcpSession) fed in chunks of every size: it never
    raises, gives back exactly the complete messages, and the resolver answers each."""
    resolver = Resolver(_ZONES)
    for chunk_size in (1, 7, len(stream) or 1):
        session = TcpSession(0.0)
        queries: list[bytes] = []
        for at in range(0, len(stream), chunk_size):
            queries += session.receive(stream[at:at + chunk_size], float(at))
        framed = b"".join(struct.pack("!H", len(q)) + q for q in queries)
        if not stream.startswith(framed):
            raise AssertionError("messages out of the stream's framing")
        for query in queries:
            reply = resolver.answer(query, None)
            if reply is not None and not isinstance(reply, bytes):
                raise AssertionError(f"answer of type {type(reply).__name__}")
    return "framed"


# -- control socket (punchd/daemon/control.py) -------------------------------------------

_CONTROL_SEEDS = [b'{"cmd": "status", "args": {}}', b'{"cmd":"join","args":{"token":"x"}}',
                  b'{"cmd": "leave", "args": {"network": "office"}}', b'{"cmd":"status"}']


def check_control_decode(line: bytes) -> str:
    return _outcome(lambda: control.decode_request(line), (ControlError,))


def check_control_serve(chunks: list[bytes]) -> str:
    """``ControlServer._serve`` over a memory stream pair with a recording handler: it never
    raises, answers one JSON line, and ``ok: false`` whenever the request did not decode."""
    seen: list[object] = []

    async def handler(request: Any) -> object:
        seen.append(request)
        return "done"

    server = control.ControlServer(Path("/nonexistent/punchd.sock"), handler)

    async def main() -> bytes:
        # The memory streams buffer without limit: send everything, then serve it in this
        # task, so an exception out of _serve arrives bare, not in a nursery's group.
        client, served = trio.testing.memory_stream_pair()
        for chunk in chunks:
            await client.send_all(chunk)
        await client.send_eof()
        await server._serve(served)  # type: ignore[arg-type]  # any Stream will do
        answer = b""
        while data := await client.receive_some():
            answer += data
        return answer

    answer = trio.run(main)
    if not answer.endswith(b"\n") or answer.count(b"\n") != 1:
        raise AssertionError(f"not one answer line: {answer!r}")
    response = msgspec.json.decode(answer, type=control.Response)
    if not seen and response.ok:
        raise AssertionError("ok: true without the handler being called")
    return "ok" if response.ok else "refused"


# -- API bodies (signal_server/routes/common.py decode_body, the Structs of punchd/wire/api.py) --

API_REQUESTS: dict[str, type[Any]] = {
    name: cls for name, cls in vars(api).items()
    if isinstance(cls, type) and issubclass(cls, msgspec.Struct) and cls.__module__ == api.__name__
    and cls.__struct_config__.forbid_unknown_fields
}
_KEY = signing.b64(bytes(32))
_API_EXAMPLES: list[dict[str, Any]] = [
    {"name": "office", "ipv4_cidr": "198.19.0.0/24", "mtu": 1420, "listen_port": 51820},
    {"ipv4_cidr": "10.0.0.0/8", "keepalive": 25, "hole_punching": False},
    {"uses": 1, "expires_in": 60},
    {"access_key": "k", "signing_key": _KEY, "wg_public_key": _KEY, "probe_public_key": _KEY,
     "name": "alpha", "candidates": [{"kind": "host", "address": "192.0.2.1:51820"}]},
    {"candidates": [{"kind": "srflx", "address": "[2001:db8::1]:1", "priority": 5}],
     "nat": {"mapping": "endpoint-independent", "port_deltas": [1, 2]}},
    {"expires_in": None}, {"peer": "beta"},
    {"name": "www", "rtype": "A", "value": "198.19.0.80"},
]


def _run_coroutine(coro: Any) -> Any:
    """Drive a coroutine that never really waits (a body already in memory)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise AssertionError("the decode waited for something")


def check_api_body(case: tuple[str, bytes]) -> str:
    struct_name, body = case
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    request = HttpRequest({"type": "http", "method": "POST", "path": "/", "headers": [],
                           "query_string": b""}, receive)
    return _outcome(lambda: _run_coroutine(decode_body(request, API_REQUESTS[struct_name])),
                    (Invalid,))


def _api_bodies() -> st.SearchStrategy[bytes]:
    seeds = [msgspec.json.encode(e) for e in _API_EXAMPLES]
    return st.one_of(
        st.binary(max_size=200), _mutate(seeds),
        _mutate_fields(_API_EXAMPLES).map(msgspec.json.encode),
        _json_values.map(msgspec.json.encode),
    )


# -- config files (punchd/daemon/state.py) -----------------------------------------------

_CONFIG_EXAMPLE = msgspec.to_builtins(NetworkConfig(
    name="office", server="http://203.0.113.10:8080", interface="punch0", node_id="n1",
    node_name="alpha", listen_port=51820))
_toml_values: st.SearchStrategy[Any] = st.recursive(
    st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3),
    max_leaves=6,
)


@st.composite
def _toml_config(draw: st.DrawFn) -> bytes:
    obj = dict(_CONFIG_EXAMPLE)
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from(sorted(obj)) | st.text(max_size=6))
        if draw(st.booleans()) and key in obj:
            del obj[key]
        else:
            obj[key] = draw(_toml_values)
    return tomli_w.dumps(obj).encode()


def check_config(raw: bytes) -> str:
    with tempfile.TemporaryDirectory(prefix="punchd-fuzz-") as tmp:
        state = StateDir(Path(tmp))
        directory = state.network_dir("office")
        directory.mkdir(parents=True)
        (directory / "config.toml").write_bytes(raw)
        return _outcome(lambda: state.load_config("office"), (ConfigError,))


# -- the table -----------------------------------------------------------------------------

_CONFIG_SEED = tomli_w.dumps(_CONFIG_EXAMPLE).encode()

# -- port mapping (punchd/portmap/: NAT-PMP, PCP, UPnP IGD) ----------------------------------

_NATPMP_SEEDS = [
    natpmp.encode_external_address(7, "192.0.2.1"),
    natpmp.encode_map(natpmp.OP_MAP_UDP, 7, 51820, 51820, 7200),
    natpmp.encode_error(natpmp.OP_MAP_UDP, natpmp.Result.NOT_AUTHORIZED, 7),
    natpmp.map_request(51820, 51820, 7200),
]
_PCP_NONCE = bytes(range(12))
_PCP_SEEDS = [
    pcp.encode_response(pcp.OP_ANNOUNCE, 0, 0, 9),
    pcp.encode_response(pcp.OP_MAP, 0, 7200, 9,
                        map_data=(_PCP_NONCE, 17, 51820, 51820, "192.0.2.1")),
    pcp.encode_response(pcp.OP_MAP, pcp.Result.NO_RESOURCES, 30, 9,
                        map_data=(_PCP_NONCE, 17, 51820, 0, "::")),
    pcp.map_request("10.0.0.2", _PCP_NONCE, 51820, 7200),
]
_UPNP_SSDP = (b"HTTP/1.1 200 OK\r\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1"
              b"\r\nLOCATION: http://192.0.2.1:5000/rootDesc.xml\r\nSERVER: x\r\n\r\n")
_UPNP_DESCRIPTION = (
    b'<?xml version="1.0"?><root xmlns="urn:schemas-upnp-org:device-1-0"><device>'
    b"<deviceList><device><deviceList><device><serviceList><service>"
    b"<serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType>"
    b"<controlURL>/ctl/IPConn</controlURL></service></serviceList></device></deviceList>"
    b"</device></deviceList></device></root>")
_UPNP_SOAP = (
    b'<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/">'
    b'<s:Body><u:GetExternalIPAddressResponse xmlns:u="urn:schemas-upnp-org:service:'
    b'WANIPConnection:1"><NewExternalIPAddress>192.0.2.1</NewExternalIPAddress>'
    b"</u:GetExternalIPAddressResponse></s:Body></s:Envelope>")


def check_natpmp(data: bytes) -> str:
    def run() -> None:
        try:
            natpmp.parse_response(data)
        finally:
            natpmp.parse_request(data)
    return _outcome(run, (PortmapParseError,))


def check_pcp(data: bytes) -> str:
    def run() -> None:
        try:
            pcp.parse_response(data)
        finally:
            pcp.parse_request(data)
    return _outcome(run, (PortmapParseError,))


def check_upnp(data: bytes) -> str:
    """Every UPnP parser on the same bytes: SSDP answer, description, SOAP answer."""
    def run() -> None:
        failures = 0
        for parse in (lambda: upnp.parse_ssdp_response(data, source_ip="192.0.2.1"),
                      lambda: upnp.parse_description(data, "http://192.0.2.1:5000/d.xml"),
                      lambda: upnp.external_ip_from(
                          _soap_arguments(upnp.parse_soap_response(data, "GetExternalIPAddress")))):
            try:
                parse()
            except PortmapParseError:
                failures += 1
        if failures == 3:
            raise PortmapParseError("no parser took it")
    return _outcome(run, (PortmapParseError,))


def _soap_arguments(answer: dict[str, str] | upnp.SoapFault) -> dict[str, str]:
    if isinstance(answer, upnp.SoapFault):
        raise PortmapParseError("a fault")
    return answer


TARGETS: dict[str, Target] = {t.name: t for t in [
    Target("stun", "punchd.wire.stun.parse (plain, classic, with integrity) -> StunParseError",
           st.one_of(_bytes_inputs(_STUN_SEEDS), _framed_stun()), check_stun),
    Target("probe", "punchd.wire.probe ProbeCodec.open -> ProbeParseError",
           st.one_of(_bytes_inputs(_PROBE_SEEDS), _sealed_plaintext()), check_probe),
    Target("relay", "punchd.wire.relay parse/verify bind, parse bind success "
           "-> RelayBindError/StunParseError",
           st.one_of(_bytes_inputs(_RELAY_SEEDS), _authentic_bind()), check_relay),
    Target("token", "punchd.wire.token.decode_token -> TokenError",
           st.one_of(st.text(max_size=200), _text_mutate(_TOKEN_SEEDS),
                     _mutate_fields([_TOKEN_FIELDS]).map(_b64_json),
                     _json_values.map(_b64_json)), check_token),
    Target("signed", "punchd.wire.signing.verify_request -> Unauthorized",
           _signed_case(), check_signed),
    Target("dns", "meshdns Resolver.answer: bytes or None, never raises",
           st.tuples(_bytes_inputs(_DNS_SEEDS), st.sampled_from(_DNS_SIZES)), check_dns),
    Target("dns-tcp", "meshdns TcpSession framing, fed in chunks of 1, 7 and all bytes: "
           "never raises, complete messages only", _tcp_stream(), check_dns_tcp),
    Target("control-decode", "control.decode_request(line) -> only ControlError",
           _bytes_inputs(_CONTROL_SEEDS), check_control_decode),
    Target("control-serve", "ControlServer._serve over a memory stream: one answer line, never "
           "raises", st.lists(_bytes_inputs([s + b"\n" for s in _CONTROL_SEEDS]), max_size=3),
           check_control_serve),
    Target("api-body", "signal_server.routes.common.decode_body for every request Struct -> Invalid",
           st.tuples(st.sampled_from(sorted(API_REQUESTS)), _api_bodies()), check_api_body),
    Target("config", "StateDir.load_config on any config.toml -> ConfigError",
           st.one_of(st.binary(max_size=200), _mutate([_CONFIG_SEED]), _toml_config(),
                     _text_mutate([_CONFIG_SEED.decode()]).map(lambda s: s.encode("latin-1"))),
           check_config),
    Target("natpmp", "punchd.portmap.natpmp parse_response/parse_request -> PortmapParseError",
           _bytes_inputs(_NATPMP_SEEDS, max_size=64), check_natpmp),
    Target("pcp", "punchd.portmap.pcp parse_response/parse_request -> PortmapParseError",
           _bytes_inputs(_PCP_SEEDS, max_size=1200), check_pcp),
    Target("upnp", "punchd.portmap.upnp SSDP, description and SOAP parsers -> PortmapParseError",
           _bytes_inputs([_UPNP_SSDP, _UPNP_DESCRIPTION, _UPNP_SOAP], max_size=2000),
           check_upnp),
]}
