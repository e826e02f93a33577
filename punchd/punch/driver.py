"""The thin trio adapter around one :class:`PunchSession`.

One task per peer: it waits for the peer's next probe datagram or the session's next
deadline, whichever comes first (``CancelScope(deadline=session.next_deadline())``),
feeds the session, and then sends what the session wants sent and hands its events
to the owner. The owner (the daemon) demultiplexes the shared WireGuard port by the
probe's sender key (:func:`punchd.wire.probe.peek_sender`) into each peer's receive
channel, and integrates the events (set the WireGuard endpoint, fall back to relay).

Under load. Probes already in the inbox are fed in one go (no wait, no cancel scope
for each), so a burst costs one flush. And a path is judged lost only on what has
arrived: when the session's pong is overdue but the shared port's reader has not yet
caught up (``caught_up``: its backlog holds datagrams older than now), the verdict
waits for the reader, at most ``CATCH_UP_MAX`` — a backlog is load, not a lost path
(issue #22).
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
CaughtUpFn = Callable[[float], bool]
INBOX_BATCH = 64  # queued probes fed per pass; bounded so a flood still flushes
CATCH_UP_MAX = 1.0  # how long a lost-path verdict waits for a reader that is behind
CATCH_UP_POLL = 0.01


class PunchDriver:
    def __init__(self, session: PunchSession, send: SendFn,
                 on_event: EventFn | None = None, *, caught_up: CaughtUpFn | None = None) -> None:
        self.session = session
        self._send = send
        self._on_event = on_event
        self._caught_up = caught_up
        self._closed = False
        self.catch_up_waits = 0
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

    def note_traffic(self) -> None:
        """WireGuard carried traffic with the peer (see :meth:`PunchSession.note_traffic`)."""
        self.session.note_traffic(trio.current_time())
        self._wake()

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

    def _feed_queued(self, receive: trio.MemoryReceiveChannel[tuple[bytes, Addr]]) -> bool:
        """Feed what the inbox holds now, without waiting; True if anything was fed."""
        fed = False
        for _ in range(INBOX_BATCH):
            try:
                data, src = receive.receive_nowait()
            except trio.WouldBlock:
                break
            except (trio.EndOfChannel, trio.ClosedResourceError):
                self._closed = True
                break
            self.session.handle_datagram(data, src, trio.current_time())
            fed = True
        return fed

    async def _wait_caught_up(self, receive: trio.MemoryReceiveChannel[tuple[bytes, Addr]],
                              since: float) -> None:
        """The pong is overdue and the reader is behind: let it hand on its backlog."""
        assert self._caught_up is not None
        self.catch_up_waits += 1
        for _ in range(math.ceil(CATCH_UP_MAX / CATCH_UP_POLL)):
            await trio.sleep(CATCH_UP_POLL)
            self._feed_queued(receive)
            if self._closed or self._caught_up(since) \
                    or not self.session.path_overdue(trio.current_time()):
                return

    async def run(self, receive: trio.MemoryReceiveChannel[tuple[bytes, Addr]], *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Drive the session until ``receive`` is closed by its sender."""
        self.session.wall_offset = time.time() - trio.current_time()
        task_status.started()
        while not self._closed:
            self._dirty = False
            await self._flush()
            if self._dirty:  # punch() while we were sending: flush its probes too
                continue
            if self._feed_queued(receive):  # a burst arrived meanwhile: one more flush
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
                self._feed_queued(receive)
                continue
            now = trio.current_time()
            deadline = self.session.next_deadline()
            if deadline is None or now < deadline:
                continue
            self._feed_queued(receive)
            if (self._caught_up is not None and self.session.path_overdue(now)
                    and not self._caught_up(now)):
                await self._wait_caught_up(receive, now)
            self.session.handle_timer(trio.current_time())
