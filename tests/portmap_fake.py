"""A fake NAT gateway for the port mapping tests: NAT-PMP and PCP server logic, sans-IO,
plus a tiny UPnP IGD (SSDP answer + an httpx transport for the description and SOAP).

:class:`FakeGateway` answers like RFC 6886/6887 servers do, with knobs for the cases the
client must survive: which protocols it speaks (the other gets the RFC 6887 §9
version answer), a result code for every mapping, garbage instead of answers, silence,
and a restart that resets the epoch and forgets every mapping.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import trio

from punchd.errors import PortmapParseError
from punchd.portmap import natpmp, pcp, upnp
from punchd.wire.addr import Addr

WANIP1 = "urn:schemas-upnp-org:service:WANIPConnection:1"


@dataclass
class FakeGateway:
    external_ip: str = "192.0.2.1"
    speaks: tuple[str, ...] = ("nat-pmp", "pcp")
    map_result: int = 0  # result code for every mapping (0: success)
    garbage: bool = False  # answer every request with bytes that do not parse
    silent: bool = False
    port_offset: int = 0  # external port = internal + offset
    epoch_start: float = 0.0
    mappings: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)
    requests: list[tuple[float, bytes]] = field(default_factory=list)

    def restart(self, now: float) -> None:
        self.epoch_start, self.mappings = now, {}

    def epoch(self, now: float) -> int:
        return int(now - self.epoch_start)

    def handle(self, data: bytes, source: Addr, now: float) -> bytes | None:
        self.requests.append((now, data))
        if self.silent:
            return None
        if self.garbage:
            return b"\x05" + data[1:8]  # version 5: neither NAT-PMP (0) nor PCP (2)
        try:
            if data[:1] == b"\x00":
                return self._natpmp(data, source, now)
            return self._pcp(data, source, now)
        except PortmapParseError:
            return None

    def _natpmp(self, data: bytes, source: Addr, now: float) -> bytes | None:
        if "nat-pmp" not in self.speaks:
            if "pcp" not in self.speaks:
                return None
            # RFC 6887 §9: a PCP-only server answers a version-0 request with its version.
            return pcp.encode_response(data[1] & 0x7F, pcp.Result.UNSUPP_VERSION, 0,
                                       self.epoch(now))
        opcode, internal, _, lifetime = natpmp.parse_request(data)
        if opcode == natpmp.OP_EXTERNAL_ADDRESS:
            return natpmp.encode_external_address(self.epoch(now), self.external_ip)
        if self.map_result:
            return natpmp.encode_map(opcode, self.epoch(now), internal, 0, 0,
                                     result=self.map_result)
        key = (source[0], internal)
        if lifetime == 0:
            self.mappings.pop(key, None)
            return natpmp.encode_map(opcode, self.epoch(now), internal, 0, 0)
        external = internal + self.port_offset
        self.mappings[key] = (external, lifetime)
        return natpmp.encode_map(opcode, self.epoch(now), internal, external, lifetime)

    def _pcp(self, data: bytes, source: Addr, now: float) -> bytes | None:
        if "pcp" not in self.speaks:
            if "nat-pmp" not in self.speaks:
                return None
            # A NAT-PMP-only gateway: "unsupported version" (RFC 6886 §3.5, RFC 6887 §9).
            return natpmp.encode_error(0, natpmp.Result.UNSUPPORTED_VERSION, self.epoch(now))
        request = pcp.parse_request(data)
        if request.client_ip != source[0]:
            return pcp.encode_response(request.opcode, pcp.Result.ADDRESS_MISMATCH, 0,
                                       self.epoch(now))
        if request.opcode == pcp.OP_ANNOUNCE:
            return pcp.encode_response(pcp.OP_ANNOUNCE, 0, 0, self.epoch(now))
        assert request.nonce is not None
        key = (source[0], request.internal_port)
        if self.map_result:
            return pcp.encode_response(pcp.OP_MAP, self.map_result, 30, self.epoch(now),
                                       map_data=(request.nonce, request.protocol,
                                                 request.internal_port, 0, "0.0.0.0"))
        if request.lifetime == 0:
            self.mappings.pop(key, None)
            external = 0
        else:
            external = request.internal_port + self.port_offset
            self.mappings[key] = (external, request.lifetime)
        return pcp.encode_response(pcp.OP_MAP, 0, request.lifetime, self.epoch(now),
                                   map_data=(request.nonce, request.protocol,
                                             request.internal_port, external,
                                             self.external_ip))


async def serve_udp(gateway: FakeGateway, sock: trio.socket.SocketType) -> None:
    """The responder: answer each datagram from where it came (closes ``sock`` at the end)."""
    with sock:
        while True:
            data, source = await sock.recvfrom(2048)
            reply = gateway.handle(data, source, trio.current_time())
            if reply is not None:
                await sock.sendto(reply, source)


async def bound_udp() -> tuple[trio.socket.SocketType, int]:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    return sock, sock.getsockname()[1]


@dataclass
class FakeIgd:
    """UPnP IGD: an SSDP responder (UDP) and the HTTP side as an httpx transport."""

    http_port: int = 5000
    external_ip: str = "192.0.2.1"
    faults: list[int] = field(default_factory=list)  # AddPortMapping faults, in order
    mappings: dict[int, tuple[str, int, int]] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    ssdp_answer: Callable[[str], bytes] | None = None
    description: bytes | None = None

    def location(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/rootDesc.xml"

    def ssdp(self, data: bytes) -> bytes | None:
        if not data.startswith(b"M-SEARCH"):
            return None
        if self.ssdp_answer is not None:
            return self.ssdp_answer(self.location())
        return (f"HTTP/1.1 200 OK\r\nST: {upnp.SEARCH_TARGET}\r\nLOCATION: {self.location()}"
                "\r\nSERVER: fake\r\n\r\n").encode()

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self._http)

    def _http(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "GET" and path == "/rootDesc.xml":
            self.calls.append("description")
            return httpx.Response(200, content=self.description or _DESCRIPTION)
        if request.method != "POST" or path != "/ctl/IPConn":
            return httpx.Response(404)
        action = request.headers["SOAPAction"].strip('"').split("#")[1]
        self.calls.append(action)
        args = {c.tag: c.text or "" for c in upnp.parse_xml(request.content)[0][0]}
        if action == "GetExternalIPAddress":
            return _soap(action, f"<NewExternalIPAddress>{self.external_ip}"
                         "</NewExternalIPAddress>")
        if action == "AddPortMapping":
            if self.faults:
                return _fault(self.faults.pop(0))
            self.mappings[int(args["NewExternalPort"])] = (
                args["NewInternalClient"], int(args["NewInternalPort"]),
                int(args["NewLeaseDuration"]))
            return _soap(action, "")
        if action == "DeletePortMapping":
            if self.mappings.pop(int(args["NewExternalPort"]), None) is None:
                return _fault(714)  # NoSuchEntryInArray
            return _soap(action, "")
        return _fault(401)


def _soap(action: str, inner: str) -> httpx.Response:
    return httpx.Response(200, content=(
        f'<?xml version="1.0"?><s:Envelope xmlns:s="{upnp.SOAP_ENV}"><s:Body>'
        f'<u:{action}Response xmlns:u="{WANIP1}">{inner}</u:{action}Response>'
        "</s:Body></s:Envelope>").encode())


def _fault(code: int) -> httpx.Response:
    return httpx.Response(500, content=(
        f'<s:Envelope xmlns:s="{upnp.SOAP_ENV}"><s:Body><s:Fault><faultcode>s:Client'
        "</faultcode><faultstring>UPnPError</faultstring><detail><UPnPError xmlns="
        f'"urn:schemas-upnp-org:control-1-0"><errorCode>{code}</errorCode><errorDescription>'
        f"fault {code}</errorDescription></UPnPError></detail></s:Fault></s:Body>"
        "</s:Envelope>").encode())


_DESCRIPTION = (
    '<?xml version="1.0"?><root xmlns="urn:schemas-upnp-org:device-1-0"><device>'
    "<deviceList><device><deviceList><device><serviceList><service>"
    f"<serviceType>{WANIP1}</serviceType><controlURL>/ctl/IPConn</controlURL>"
    "</service></serviceList></device></deviceList></device></deviceList></device></root>"
).encode()


async def serve_ssdp(igd: FakeIgd, sock: trio.socket.SocketType) -> None:
    with sock:
        while True:
            data, source = await sock.recvfrom(2048)
            reply = igd.ssdp(data)
            if reply is not None:
                await sock.sendto(reply, source)
