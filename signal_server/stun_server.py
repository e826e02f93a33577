"""STUN responder (RFC 8489 Binding) with RFC 5780 NAT behaviour discovery.

Theory of operation. With an alternate address configured the responder binds the
four combinations of the two IPs and two ports — (IP1,P1), (IP1,P2), (IP2,P1),
(IP2,P2) — answers with OTHER-ADDRESS and RESPONSE-ORIGIN, and honours
CHANGE-REQUEST by answering from the socket with the other IP and/or port (RFC 5780
§6). Without one it binds only the primary, leaves OTHER-ADDRESS out and refuses
CHANGE-REQUEST with 420 (RFC 5780 §6.1). IPv4 and IPv6 both work; the two addresses
must be of one family.

The decision is sans-IO (:meth:`StunCore.handle`: datagram, source, local address
in; a :class:`StunAnswer` — reply, the local address to send it from, destination —
out); :class:`StunResponder` is the thin trio adapter, one receive loop per bound
socket.

What gets an answer:

* an RFC 8489 Binding request: XOR-MAPPED-ADDRESS (+ RESPONSE-ORIGIN, OTHER-ADDRESS
  with an alternate) and FINGERPRINT;
* an RFC 3489 ("classic") Binding request, recognised by the missing magic cookie
  (RFC 8489 §12): the cookie echoed, MAPPED-ADDRESS, SOURCE-ADDRESS, CHANGED-ADDRESS —
  so old clients such as Debian's ``stun`` work. RESPONSE-ADDRESS (RFC 3489's "send
  the answer elsewhere") is never honoured: the answer goes to the source only;
* RFC 5780 §7.5 RESPONSE-PORT: the answer goes to that port of the request's source
  IP (coturn's client tests filtering this way); never to another IP;
* a request with unknown comprehension-required attributes: 420 with
  UNKNOWN-ATTRIBUTES (RFC 8489 §6.3.1.1).

Never an amplifier: nothing but a Binding *request* gets an answer (indications,
responses, other methods and malformed datagrams are dropped and counted), the
answer goes to the request's source IP only, and it carries only the attributes above:
at most ``MAX_RESPONSE_BYTES``.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import trio

from punchd.errors import StunParseError, StunServerError
from punchd.wire import stun
from punchd.wire.addr import Addr

log = logging.getLogger(__name__)

# The largest answer: header 20 + three IPv6 address attributes (4+20 each) +
# FINGERPRINT 8. A classic IPv6 answer has no FINGERPRINT and is smaller.
MAX_RESPONSE_BYTES = 20 + 3 * 24 + 8
RECEIVE_BUFFER = 2048  # STUN over UDP stays under the path MTU (RFC 8489 §6.1)


@dataclass(frozen=True)
class StunStatistics:
    requests: int  # Binding requests answered (successes and errors)
    responses: int  # datagrams sent
    malformed: int  # datagrams that did not parse as STUN
    ignored: int  # well-formed STUN that is not a Binding request


class StunAnswer(NamedTuple):
    reply: bytes
    reply_from: Addr  # which of our local addresses sends it
    dest: Addr  # the request's source, or its RESPONSE-PORT on the source IP


class StunCore:
    """Sans-IO: (datagram, source, local address) -> (reply, local address to send from)."""

    def __init__(self, primary: Addr, alternate: Addr | None = None) -> None:
        self.primary = _normal(primary)
        self.alternate = None if alternate is None else _normal(alternate)
        if self.alternate is not None:
            (ip1, p1), (ip2, p2) = self.primary, self.alternate
            if ipaddress.ip_address(ip1).version != ipaddress.ip_address(ip2).version:
                raise StunServerError(f"{ip1} and {ip2}: both STUN addresses must be IPv4 "
                                      "or both IPv6")
            if ip1 == ip2 or p1 == p2:
                raise StunServerError("RFC 5780 needs a second IP address and a second port "
                                      f"(got {ip1}:{p1} and {ip2}:{p2})")
        self.requests = self.responses = self.malformed = self.ignored = 0

    def local_addresses(self) -> list[Addr]:
        if self.alternate is None:
            return [self.primary]
        (ip1, p1), (ip2, p2) = self.primary, self.alternate
        return [(ip1, p1), (ip1, p2), (ip2, p1), (ip2, p2)]

    def handle(self, datagram: bytes, source: Addr, local: Addr) -> StunAnswer | None:
        try:
            msg = stun.parse(datagram, classic=True)
            unknown = stun.unknown_comprehension_required(datagram)
            port = stun.response_port(datagram)
        except StunParseError:
            self.malformed += 1
            return None
        if msg.message_method != stun.Method.BINDING or msg.message_class != stun.Class.REQUEST:
            self.ignored += 1  # RFC 8489 §6.3: only requests are answered
            return None
        self.requests += 1
        self.responses += 1
        cookie = datagram[4:8] if stun.is_classic(datagram) else None
        tid = msg.transaction_id
        if unknown:
            return StunAnswer(stun.binding_error(tid, 420, "Unknown Attribute", unknown=unknown,
                                                 classic_cookie=cookie), local, source)
        dest = source if port is None else (source[0], port)
        change = msg.attributes.get("CHANGE-REQUEST", 0)
        if change & (stun.CHANGE_IP | stun.CHANGE_PORT) and self.alternate is None:
            # RFC 5780 §6.1: no second address, so the request cannot be honoured.
            return StunAnswer(stun.binding_error(tid, 420, "Unknown Attribute", unknown=(0x0003,),
                                                 classic_cookie=cookie), local, dest)
        reply_from = local
        other: Addr | None = None
        if self.alternate is not None:
            (ip1, p1), (ip2, p2) = self.primary, self.alternate
            other_ip = ip2 if local[0] == ip1 else ip1
            other_port = p2 if local[1] == p1 else p1
            other = (other_ip, other_port)
            reply_from = (other_ip if change & stun.CHANGE_IP else local[0],
                          other_port if change & stun.CHANGE_PORT else local[1])
        reply = stun.binding_success(tid, source, response_origin=reply_from,
                                     other_address=other, classic_cookie=cookie)
        return StunAnswer(reply, reply_from, dest)

    def statistics(self) -> StunStatistics:
        return StunStatistics(self.requests, self.responses, self.malformed, self.ignored)


class StunResponder:
    """The trio adapter: binds every local address of the core, one receive loop each."""

    def __init__(self, primary: Addr, alternate: Addr | None = None, *,
                 sockets: Mapping[Addr, trio.socket.SocketType] | None = None) -> None:
        """``sockets``: UDP sockets already bound, one for each local address of the
        core, to serve on instead of binding them (tests bind port 0 and pass them, so
        no one takes a port between choosing and binding it); the responder owns them."""
        self.core = StunCore(primary, alternate)
        self._given = {_normal(local): sock for local, sock in (sockets or {}).items()}
        if self._given and set(self._given) != set(self.core.local_addresses()):
            raise StunServerError(f"STUN sockets for {sorted(self._given)}, expected one for "
                                  f"each of {self.core.local_addresses()}")
        self._sockets: dict[Addr, trio.socket.SocketType] = {}

    def statistics(self) -> StunStatistics:
        return self.core.statistics()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        given, self._given = self._given, {}
        try:
            for local in self.core.local_addresses():
                sock = given.pop(local, None)
                self._sockets[local] = sock if sock is not None else await _bind(local)
            async with trio.open_nursery() as nursery:
                for local, sock in self._sockets.items():
                    nursery.start_soon(self._serve, local, sock)
                task_status.started()
        finally:
            for sock in [*self._sockets.values(), *given.values()]:
                sock.close()
            self._sockets.clear()

    async def _serve(self, local: Addr, sock: trio.socket.SocketType) -> None:
        while True:
            try:
                data, source = await sock.recvfrom(RECEIVE_BUFFER)
            except OSError:
                continue  # ICMP-induced errors on UDP sockets are not ours to die of
            answer = self.core.handle(data, _normal(source[:2]), local)
            if answer is None:
                continue
            try:
                await self._sockets[answer.reply_from].sendto(answer.reply, answer.dest)
            except OSError as exc:
                log.debug("STUN answer to %s: %s", source, exc)


def _normal(addr: tuple[object, ...]) -> Addr:
    """("::1", 5, 0, 0) or ("::1", 5) -> the compressed text form and the port."""
    return str(ipaddress.ip_address(str(addr[0]))), int(str(addr[1]))


async def _bind(local: Addr) -> trio.socket.SocketType:
    family = socket.AF_INET6 if ipaddress.ip_address(local[0]).version == 6 else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        await sock.bind(local)
    except OSError as exc:
        sock.close()
        raise StunServerError(f"STUN cannot bind {local[0]}:{local[1]}: {exc.strerror}") from exc
    return sock
