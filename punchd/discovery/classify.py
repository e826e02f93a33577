"""NAT behaviour discovery (RFC 5780 §4.3 mapping, §4.4 filtering), sans-IO.

Theory of operation. The mapping tests run from WireGuard's own port, because the
point is what the NAT does to *that* port; the filtering tests from another one:

1. Test I: Binding to the primary address P. Gives the mapped address M1 and the
   server's OTHER-ADDRESS A (without one, only the public endpoint is known).
2. Mapping (§4.3): a Binding to (A.ip, P.port) gives M2; M2 == M1 is
   endpoint-independent; otherwise a Binding to (A.ip, A.port) gives M3: M3 == M2 is
   address-dependent, else address-and-port-dependent. The port differences are kept
   for port prediction; the three bindings go back to back, so a sequential
   allocator's step shows undisturbed.
3. Filtering (§4.4), from an auxiliary local port (``via == "aux"``) that has sent
   nothing toward A, so no filter is open for it: a Binding to P asking for the answer
   from A's IP and port (CHANGE IP+PORT) — an answer means endpoint-independent
   filtering; otherwise one asking for P's IP and A's port (CHANGE PORT) — an answer
   means address-dependent; neither means address-and-port-dependent. A filtered answer
   simply never comes, so these tests use a short schedule (3 requests, 1 s wait)
   rather than RFC 8489's 39.5 s. Not from WireGuard's port: a router that accepts
   unsolicited input to itself records each filtered answer in conntrack, and Linux
   then gives the WireGuard port's later mapping toward that source another port —
   the peer behind it would punch at a port that is not the mapping. Filtering is the
   NAT's, not the port's (RFC 4787 §5), so any port measures it.
"""

from __future__ import annotations

from typing import Literal

from punchd.wire import api, stun

from ..wire.addr import Addr, format_addr
from .stun_client import StunTransaction

Behaviour = Literal["endpoint-independent", "address-dependent", "address-and-port-dependent"]
Via = Literal["port", "aux"]  # WireGuard's port, or the auxiliary one (the filtering tests)


class NatClassifier:
    def __init__(self, primary: Addr, local_port: int, now: float) -> None:
        self.primary = primary
        self.local_port = local_port
        self.step = "test1"
        self.tx = StunTransaction(primary, now)
        self.m1: Addr | None = None
        self.m2: Addr | None = None
        self.other: Addr | None = None
        self.mapping: Behaviour | None = None
        self.filtering: Behaviour | None = None
        self.deltas: list[int] = []
        self.error: str | None = None

    @property
    def done(self) -> bool:
        return self.step == "done"

    @property
    def via(self) -> Via:
        """Which local port the current test's datagrams must leave from."""
        return "aux" if self.step.startswith("filter_") else "port"

    def datagram_to_send(self, now: float) -> tuple[bytes, Addr] | None:
        if self.done:
            return None
        data = self.tx.datagram_to_send(now)
        return None if data is None else (data, self.tx.dest)

    def next_deadline(self) -> float | None:
        return None if self.done else self.tx.next_deadline()

    def handle_datagram(self, data: bytes, source: Addr, now: float) -> None:
        if not self.done and self.tx.handle_datagram(data, source, now):
            self._advance(now)

    def handle_timer(self, now: float) -> None:
        if not self.done:
            self.tx.handle_timer(now)
            if self.tx.state == "failed":
                self._advance(now)

    def _start(self, step: str, dest: Addr, now: float, *, change: int = 0,
               short: bool = False) -> None:
        self.step = step
        if short:
            self.tx = StunTransaction(dest, now, change=change, rto=0.25, max_requests=3,
                                      final_wait_rto=2)
        else:
            self.tx = StunTransaction(dest, now, change=change)

    def _advance(self, now: float) -> None:
        ok = self.tx.state == "succeeded" and self.tx.result is not None
        result = self.tx.result
        if self.step == "test1":
            if not ok or result is None:
                self.error, self.step = self.tx.error or "no STUN answer", "done"
                return
            self.m1, self.other = result.mapped, result.other_address
            if self.other is None:
                self.step = "done"  # a server without RFC 5780: the endpoint only
                return
            self._start("mapping2", (self.other[0], self.primary[1]), now)
        elif self.step == "mapping2":
            if not ok or result is None or self.m1 is None:
                self.error, self.step = "no answer from the alternate address", "done"
                return
            self.m2 = result.mapped
            self.deltas.append(self.m2[1] - self.m1[1])
            if self.m2 == self.m1:
                self.mapping = "endpoint-independent"
                self._start_filtering(now)
            else:
                assert self.other is not None
                self._start("mapping3", self.other, now)
        elif self.step == "mapping3":
            if not ok or result is None or self.m2 is None:
                self.error, self.step = "no answer from the alternate port", "done"
                return
            self.deltas.append(result.mapped[1] - self.m2[1])
            self.mapping = ("address-dependent" if result.mapped == self.m2
                            else "address-and-port-dependent")
            self._start_filtering(now)
        elif self.step == "filter_ip_port":
            if ok:
                self.filtering, self.step = "endpoint-independent", "done"
            else:
                self._start("filter_port", self.primary, now, change=stun.CHANGE_PORT, short=True)
        elif self.step == "filter_port":
            self.filtering = "address-dependent" if ok else "address-and-port-dependent"
            self.step = "done"

    def _start_filtering(self, now: float) -> None:
        self._start("filter_ip_port", self.primary, now,
                    change=stun.CHANGE_IP | stun.CHANGE_PORT, short=True)

    def report(self) -> api.NatReport:
        return api.NatReport(
            public_endpoint=format_addr(self.m1) if self.m1 is not None else None, mapping=self.mapping, filtering=self.filtering,
            port_preserved=None if self.m1 is None else self.m1[1] == self.local_port,
            port_deltas=tuple(self.deltas),
        )
