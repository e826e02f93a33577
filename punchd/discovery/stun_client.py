"""A STUN Binding transaction over UDP, sans-IO (RFC 8489 §6.2.1).

Theory of operation. A transaction is created with the request's destination and
the time it starts; the owner asks :meth:`StunTransaction.datagram_to_send` for the
bytes to send now, :meth:`next_deadline` for when to call :meth:`handle_timer`, and
feeds every received STUN datagram to :meth:`handle_datagram`. The transaction

* retransmits with RTO doubling from 500 ms, sending at most 7 requests (Rc), so at
  0, 0.5, 1.5, 3.5, 7.5, 15.5 and 31.5 s, and fails 16·RTO (8 s) after the last,
  at 39.5 s (RFC 8489 §6.2.1, Rc = 7, Rm = 16);
* accepts only a response whose transaction id matches, whose FINGERPRINT (when
  present) verifies, and that comes from the address asked — or from the address a
  CHANGE-REQUEST asked for (RFC 5780 §4.3/4.4: any source, since the answer may come
  from the alternate address);
* ends ``succeeded`` with the mapped address (XOR-MAPPED-ADDRESS, or MAPPED-ADDRESS
  from old servers) plus OTHER-ADDRESS / RESPONSE-ORIGIN, or ``failed`` (timeout or an
  error response).

No clock, no socket: time is an argument, so tests run the whole schedule with a
fake clock and a lossy fake network in microseconds.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Literal

from punchd.errors import StunParseError
from punchd.wire import stun

from ..wire.addr import Addr

RTO_S = 0.5  # RFC 8489 §6.2.1 initial RTO
MAX_REQUESTS = 7  # Rc
FINAL_WAIT_RTO = 16  # Rm


@dataclass(frozen=True)
class StunResult:
    mapped: Addr
    response_origin: Addr | None
    other_address: Addr | None
    source: Addr  # where the response actually came from
    rtt: float  # from the last request sent to the response


State = Literal["waiting", "succeeded", "failed"]


class StunTransaction:
    def __init__(self, dest: Addr, now: float, *, change: int = 0,
                 transaction_id: bytes | None = None, rto: float = RTO_S,
                 max_requests: int = MAX_REQUESTS, final_wait_rto: int = FINAL_WAIT_RTO) -> None:
        self.dest = dest
        self.change = change
        self.transaction_id = transaction_id or secrets.token_bytes(12)
        self.request = stun.binding_request(self.transaction_id, change=change,
                                            software="punchd")
        self.rto = rto
        self.max_requests = max_requests
        self.final_wait_rto = final_wait_rto
        self.sent = 0
        self.state: State = "waiting"
        self.result: StunResult | None = None
        self.error: str | None = None
        self._next_send = now
        self._last_sent_at = now
        self._fail_at: float | None = None
        self.ignored = 0  # datagrams that were not our answer

    def datagram_to_send(self, now: float) -> bytes | None:
        """The request, when one is due now (the first at once, then on each timer)."""
        if self.state != "waiting" or self.sent >= self.max_requests or now < self._next_send:
            return None
        self.sent += 1
        self._last_sent_at = now
        if self.sent == self.max_requests:
            self._fail_at = now + self.final_wait_rto * self.rto
        else:
            self._next_send = now + self.rto * (2 ** (self.sent - 1))
        return self.request

    def next_deadline(self) -> float | None:
        if self.state != "waiting":
            return None
        return self._fail_at if self._fail_at is not None else self._next_send

    def handle_timer(self, now: float) -> None:
        if self.state == "waiting" and self._fail_at is not None and now >= self._fail_at:
            self.state = "failed"
            self.error = f"no answer from {self.dest[0]}:{self.dest[1]} after {self.sent} requests"

    def handle_datagram(self, data: bytes, source: Addr, now: float) -> bool:
        """True when the datagram was this transaction's answer (success or error)."""
        if self.state != "waiting":
            return False
        try:
            msg = stun.parse(data)
        except StunParseError:
            self.ignored += 1
            return False
        if msg.transaction_id != self.transaction_id or msg.message_method != stun.Method.BINDING:
            self.ignored += 1
            return False
        if not self.change and source != self.dest:
            self.ignored += 1  # an answer to our question, but from somewhere we did not ask
            return False
        if msg.message_class == stun.Class.ERROR:
            code, reason = msg.attributes.get("ERROR-CODE", (0, "unknown"))
            self.state, self.error = "failed", f"STUN error {code} {reason}"
            return True
        if msg.message_class != stun.Class.RESPONSE:
            self.ignored += 1
            return False
        mapped = msg.attributes.get("XOR-MAPPED-ADDRESS") or msg.attributes.get("MAPPED-ADDRESS")
        if mapped is None:
            self.state, self.error = "failed", "response without a mapped address"
            return True
        self.state = "succeeded"
        self.result = StunResult(
            mapped=(str(mapped[0]), int(mapped[1])),
            response_origin=_addr(msg.attributes.get("RESPONSE-ORIGIN")),
            other_address=_addr(msg.attributes.get("OTHER-ADDRESS")),
            source=source, rtt=now - self._last_sent_at,
        )
        return True


def _addr(value: object) -> Addr | None:
    if isinstance(value, tuple) and len(value) == 2:
        return (str(value[0]), int(value[1]))
    return None
