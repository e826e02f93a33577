"""The thin trio adapter around one :class:`PunchSession`.

One task per peer: it waits for the peer's next probe datagram or the session's next
deadline, whichever comes first (``CancelScope(deadline=session.next_deadline())``),
feeds the session, and then sends what the session wants sent and hands its events
to the owner. The owner (the daemon) demultiplexes the shared WireGuard port by the
probe's sender key (:func:`punchd.wire.probe.peek_sender`) into each peer's receive
channel, and integrates the events (set the WireGuard endpoint, fall back to relay).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable

import trio

from punchd.wire.api import Candidate, NatReport

from ..wire.addr import Addr
from .session import PunchEvent, PunchSession

log = logging.getLogger(__name__)

SendFn = Callable[[bytes, Addr], Awaitable[None]]
EventFn = Callable[[PunchEvent], None]


class PunchDriver:
    def __init__(self, session: PunchSession, send: SendFn,
                 on_event: EventFn | None = None) -> None:
        self.session = session
        self._send = send
        self._on_event = on_event
        self._wait: trio.CancelScope | None = None
        self._dirty = False
        self.send_errors = 0

    # Calls from other tasks change the session's schedule: wake the loop to re-read it.
    def punch(self) -> None:
        self.session.punch(trio.current_time())
        self._wake()

    def ping(self) -> list[bytes]:
        """A user's ping now (see :meth:`PunchSession.ping_now`); wakes the loop to send it."""
        txids = self.session.ping_now(trio.current_time())
        self._wake()
        return txids

    def set_relay(self, relay: Addr | None) -> None:
        self.session.set_relay(relay, trio.current_time())
        self._wake()

    def update_peer(self, candidates: list[Candidate], nat: NatReport | None) -> None:
        self.session.update_peer(candidates, nat)

    def update_local(self, candidates: list[Candidate], nat: NatReport | None) -> None:
        self.session.update_local(candidates, nat)

    def _wake(self) -> None:
        self._dirty = True
        if self._wait is not None:
            self._wait.cancel()

    async def _flush(self) -> None:
        for event in self.session.events():
            if self._on_event is not None:
                self._on_event(event)
        for data, dest in self.session.datagrams_to_send():
            try:
                await self._send(data, dest)
            except OSError as exc:  # one unreachable candidate must not end the session
                self.send_errors += 1
                log.debug("probe to %s failed: %s", dest, exc)

    async def run(self, receive: trio.abc.ReceiveChannel[tuple[bytes, Addr]], *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Drive the session until ``receive`` is closed by its sender."""
        self.session.wall_offset = time.time() - trio.current_time()
        task_status.started()
        while True:
            self._dirty = False
            await self._flush()
            if self._dirty:  # punch() while we were sending: flush its probes too
                continue
            deadline = self.session.next_deadline()
            with trio.CancelScope(deadline=math.inf if deadline is None else deadline) as wait:
                self._wait = wait
                try:
                    data, src = await receive.receive()
                except (trio.EndOfChannel, trio.ClosedResourceError):
                    return
                finally:
                    self._wait = None
                self.session.handle_datagram(data, src, trio.current_time())
                continue
            now = trio.current_time()
            deadline = self.session.next_deadline()
            if deadline is not None and now >= deadline:
                self.session.handle_timer(now)
