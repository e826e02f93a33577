"""Event fan-out across replicas: PostgreSQL ``LISTEN``/``NOTIFY`` wakes other servers' streams.

Theory of operation
-------------------
Every signal-server replica sharing one PostgreSQL database serves event streams,
but :class:`signal_server.service.EventHub` wakes only the streams of its own
process. So every write that appends an event also sends a *notice*
(``pg_notify`` on :data:`CHANNEL`, see :meth:`Store._emit`) inside its transaction:
PostgreSQL delivers a NOTIFY at commit and only then (``NOTIFY`` reference page,
"Notes"), so a replica never wakes a stream before the event is readable, and it
delivers the notices of one transaction in order.

Each replica runs one :class:`PostgresEventFeed`: one dedicated connection, ``LISTEN``,
then trio waits until that connection's socket is readable and drains libpq's notice
queue without a thread. For each batch it calls back with the networks named (each
once): the service wakes their streams and rebuilds the DNS zone, exactly as after a
local write. A stream woken this way re-reads the log from its cursor, so the notice
carries only *which* network moved; the event itself always comes from the database.

Notices a replica sent itself are skipped (its own write woke its streams already):
each database handle has a random ``origin`` it puts in its notices.

When the connection drops (the database restarts, a network fault, a failover) the
feed reconnects with capped exponential backoff (:class:`Backoff`), and after each
reconnect wakes every local stream once: a notice sent while it was away is lost for
good (NOTIFY is not queued for absent listeners), and a spurious wake costs one read
from the stream's cursor. A connection that stays silent is pinged every
:data:`PING_S` so a vanished server (no FIN, e.g. its host died) is noticed too.

SQLite has no feed: one process serves the file, and its own writes wake its streams.

A notice is ``origin/network/seq``: 16 hex digits, a network name (a DNS label, at
most 63 characters of ``[a-z0-9-]``) and the event's seq, far under NOTIFY's 8000-byte
limit. Anyone who may connect to the database can NOTIFY that channel, so a notice is
parsed like any untrusted input (:func:`parse_notice`): a malformed one is counted and
dropped. The worst a forged well-formed one can do is a spurious wake.
"""

from __future__ import annotations

import logging
import random
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import trio

from punchd.errors import EventNoticeError

log = logging.getLogger("signal_server.event_feed")

CHANNEL = "punchd_events"
SEQ_MAX = 2**63 - 1  # the events table's BIGINT seq
# A silent connection is pinged this often; a dead server is noticed within
# PING_S + PING_TIMEOUT_S at worst (a closed connection is noticed at once).
PING_S = 5.0
PING_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 5
BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 5.0

_ORIGIN = re.compile(r"^[0-9a-f]{16}$")
_NETWORK = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def new_origin() -> str:
    """A database handle's tag for the notices it sends."""
    return secrets.token_hex(8)


class Notice(msgspec.Struct, frozen=True):
    origin: str
    network: str
    seq: int


def encode_notice(notice: Notice) -> str:
    return f"{notice.origin}/{notice.network}/{notice.seq}"


def parse_notice(text: str) -> Notice:
    """A notice's payload as sent by :func:`encode_notice`; anything else raises
    :class:`EventNoticeError`."""
    parts = text.split("/")
    if len(parts) != 3:
        raise EventNoticeError(f"expected origin/network/seq, got {text[:80]!r}")
    origin, network, seq = parts
    if not _ORIGIN.match(origin):
        raise EventNoticeError(f"bad origin {origin[:40]!r}")
    if not _NETWORK.match(network):
        raise EventNoticeError(f"bad network name {network[:80]!r}")
    # isdecimal, not int(): int() takes "+1", " 1", "1_0" and Unicode digits.
    if not (seq.isascii() and seq.isdecimal() and len(seq) <= 19 and int(seq) <= SEQ_MAX):
        raise EventNoticeError(f"bad seq {seq[:40]!r}")
    return Notice(origin, network, int(seq))


class Backoff:
    """Capped exponential backoff with jitter, sans-IO: the delays to wait between
    reconnect attempts. ``reset`` after a connection that worked."""

    def __init__(self, *, low: float = BACKOFF_MIN_S, high: float = BACKOFF_MAX_S,
                 rng: random.Random | None = None) -> None:
        self.low = low
        self.high = high
        self._rng = rng or random.Random()
        self._next = low

    def next_delay(self) -> float:
        # Full range [d/2, d]: replicas that lost the database together do not all
        # knock again in the same millisecond.
        delay = self._next * self._rng.uniform(0.5, 1.0)
        self._next = min(self.high, self._next * 2)
        return delay

    def reset(self) -> None:
        self._next = self.low


@dataclass
class FeedStatistics:
    notices: int = 0  # accepted from other replicas
    own: int = 0  # our own, skipped
    malformed: int = 0
    connects: int = 0
    losses: int = 0
    last_error: str | None = None


# The callbacks: networks other replicas changed (each once per batch), and "wake
# everything" after a gap in what we heard.
OnChanged = Callable[[list[str]], None]
OnGap = Callable[[], None]


class PostgresEventFeed:
    """Listens on :data:`CHANNEL` over its own connection; see the module docstring."""

    def __init__(self, url: str, origin: str, *, name: str = "the store",
                 backoff: Backoff | None = None) -> None:
        self._url = url
        self.origin = origin
        self.name = name  # for messages: the URL without its password
        self.backoff = backoff or Backoff()
        self.stats = FeedStatistics()
        self._heard: list[str] = []  # payloads psycopg handed to our handler

    def _connect(self) -> Any:
        import psycopg

        conn = psycopg.connect(self._url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        try:
            # Notices that arrive while psycopg runs a statement (our pings) go to
            # the handlers, not to libpq's queue that the readable path drains.
            conn.add_notify_handler(lambda n: self._heard.append(n.payload))
            conn.execute(f"LISTEN {CHANNEL}")
        except BaseException:
            conn.close()
            raise
        return conn

    async def run(self, on_changed: OnChanged, on_gap: OnGap, *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Forever: connect, listen, deliver; reconnect when the connection is lost.

        Started as soon as the first attempt has ended, connected or not: a replica
        whose database blinks at start serves its own streams meanwhile."""
        import psycopg

        started = False
        while True:
            conn = None
            try:
                conn = await trio.to_thread.run_sync(self._connect)
                self.stats.connects += 1
                if self.stats.connects > 1:
                    log.warning("event feed: listening on %s again", self.name)
                    on_gap()  # what was sent while we were away is lost: re-read all
                if not started:
                    started = True
                    task_status.started()
                self.backoff.reset()
                await self._listen(conn, on_changed)
            except psycopg.Error as exc:
                self.stats.losses += 1
                self.stats.last_error = " ".join(str(exc).split())
                log.warning("event feed: %s lost (%s); other replicas' changes reach "
                            "this one's streams again once it is back", self.name,
                            self.stats.last_error)
            finally:
                if conn is not None:
                    with trio.CancelScope(shield=True):
                        await trio.to_thread.run_sync(conn.close)
            if not started:
                started = True
                task_status.started()
            await trio.sleep(self.backoff.next_delay())

    async def _listen(self, conn: Any, on_changed: OnChanged) -> None:
        pgconn = conn.pgconn
        while True:
            self._deliver(pgconn, on_changed)
            with trio.move_on_after(PING_S) as idle:
                await trio.lowlevel.wait_readable(pgconn.socket)
            if idle.cancelled_caught:
                with trio.fail_after(PING_TIMEOUT_S):
                    # abandon_on_cancel: a ping stuck on a dead server must not hold up
                    # the reconnect; the connection is closed (and the thread freed) then.
                    await trio.to_thread.run_sync(conn.execute, "SELECT 1",
                                                  abandon_on_cancel=True)
            else:
                pgconn.consume_input()  # OperationalError when the server closed it

    def _deliver(self, pgconn: Any, on_changed: OnChanged) -> None:
        while (raw := pgconn.notifies()) is not None:
            self._heard.append(raw.extra.decode("utf-8", "replace"))
        payloads, self._heard = self._heard, []
        networks = self.sort(payloads)
        if networks:
            on_changed(networks)

    def sort(self, payloads: list[str]) -> list[str]:
        """The networks other replicas' notices name, each once, in first-heard order;
        our own notices and malformed ones are counted and dropped."""
        networks: dict[str, None] = {}
        for payload in payloads:
            try:
                notice = parse_notice(payload)
            except EventNoticeError as exc:
                self.stats.malformed += 1
                log.debug("event feed: dropped a notice: %s", exc)
                continue
            if notice.origin == self.origin:
                self.stats.own += 1
                continue
            self.stats.notices += 1
            networks[notice.network] = None
        return list(networks)
