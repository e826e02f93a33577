"""PostgreSQL behind :class:`signal_server.db.Database`: psycopg 3 and a connection pool.

Theory of operation
-------------------
Connections are in autocommit mode; a statement outside a transaction takes a
connection from the pool for itself. A transaction pins one connection to the calling
thread until it ends, so ``Store`` code reads the same with either backend.

Write transactions take one transaction-level advisory lock first
(``pg_advisory_xact_lock``), in READ COMMITTED. Writers on every replica sharing the
database therefore run one after another, each reading what the previous one
committed, exactly like SQLite's ``BEGIN IMMEDIATE``. Why this and not SERIALIZABLE
with retries, or row locks per rule:

- The event log hands out one global ``seq`` and a stream resumes from the last seq
  it saw, so events must become visible in seq order: had transaction A taken seq 10
  and B seq 11, and B committed first, a stream woken by B resumes from 11 and never
  sees 10. Whatever hands out seqs must serialize every event-writing transaction
  until it commits (an identity column does not: it hands out values at insert).
  Nearly every write emits an event, so writers are serial in any case.
- Taking that serialization at the start instead of at the first event makes every
  rule hold without a lock of its own: address choice, access-key use counts, CIDR
  overlap between networks (no row to lock there), CNAME exclusivity, renumbering.
  SERIALIZABLE would give the same but abort most concurrent writers (they all touch
  the seq counter) and retry them; here they wait, and nothing is retried.
- An advisory lock exists before any table does, so migrations at start by two
  replicas at once are serialized by the same lock.

UNIQUE constraints (addresses, keys and names per network) stay as the backstop: a
row they refuse is :class:`punchd.errors.DuplicateRow`, a 409, never a second owner.
Reads take no lock; :meth:`read` gives several reads one REPEATABLE READ snapshot.

Replicas hear of each other's writes: :meth:`notify_event` is a ``pg_notify`` in the
write's transaction (delivered at commit), :meth:`event_feed` listens on its own
connection (:mod:`signal_server.event_feed`).

Errors: a unique violation is ``DuplicateRow``; a lost server or an exhausted pool is
:class:`punchd.errors.StoreUnavailable` (503: the client retries).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
import psycopg.errors
from psycopg_pool import ConnectionPool, PoolTimeout

from punchd.errors import ConfigError, DuplicateRow, StoreUnavailable

from .db import Dialect
from .event_feed import CHANNEL, Notice, PostgresEventFeed, encode_notice, new_origin

# The key of the writers' advisory lock: "punchd" and 1, one number per database.
WRITE_LOCK = 0x70756E6368640001
POOL_MAX = 8
CONNECT_TIMEOUT_S = 10.0


# user:password@ in a URL's authority; a regex, not urlsplit, because a URL that does
# not parse (a stray "[") must still lose its password before it is shown.
_PASSWORD = re.compile(r"^([a-z]+://[^/:@?#]*):[^@/?#]*@", re.IGNORECASE)
_PASSWORD_PARAM = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)


def redact(url: str) -> str:
    """The URL without its password (in the authority or a ``password=`` parameter)."""
    return _PASSWORD_PARAM.sub(r"\1***", _PASSWORD.sub(r"\1:***@", url))


class _Rows:
    """A finished result: the rows are fetched before the connection goes back."""

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self._rows = rows
        self._next = 0
        self.rowcount = rowcount

    def fetchone(self) -> Any:
        if self._next >= len(self._rows):
            return None
        self._next += 1
        return self._rows[self._next - 1]

    def fetchall(self) -> list[Any]:
        rest, self._next = self._rows[self._next:], len(self._rows)
        return rest

    def __iter__(self) -> Iterator[Any]:
        return iter(self.fetchall())


def _run(conn: psycopg.Connection[Any], sql: str, params: Sequence[object]) -> _Rows:
    if params:
        # The store writes qmark placeholders; psycopg wants %s (and a literal % doubled).
        cur = conn.execute(sql.replace("%", "%%").replace("?", "%s"), tuple(params))
    else:
        cur = conn.execute(sql)
    rows = cur.fetchall() if cur.description is not None else []
    return _Rows(rows, cur.rowcount)


class PostgresDatabase:
    dialect: Dialect = "postgresql"
    error: type[Exception] = psycopg.Error

    def __init__(self, url: str, *, max_size: int = POOL_MAX) -> None:
        self.name = redact(url)
        self._url = url
        self.origin = new_origin()  # our notices carry it, so our feed skips them
        self._local = threading.local()
        # Each calling thread holds at most one pooled connection (its transaction's,
        # or one statement's), so as many threads as the pool has connections.
        self.threads = max_size
        # One direct connection first: the pool only logs why it cannot connect, and
        # the operator needs that reason (wrong password, no such database) in one line.
        try:
            psycopg.connect(url, connect_timeout=int(CONNECT_TIMEOUT_S)).close()
        except psycopg.Error as exc:
            reason = " ".join(str(exc).split())
            raise ConfigError(f"cannot open the store {self.name}: {reason}") from exc
        self.pool = ConnectionPool(url, min_size=1, max_size=max_size, open=False,
                                   timeout=CONNECT_TIMEOUT_S, kwargs={"autocommit": True},
                                   name="signal-store")
        try:
            self.pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
        except PoolTimeout as exc:
            self.pool.close()
            raise ConfigError(f"cannot open the store {self.name}: {exc}") from exc

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        pinned = getattr(self._local, "conn", None)
        if pinned is not None:
            yield pinned
            return
        try:
            with self.pool.connection() as conn:
                yield conn
        except PoolTimeout as exc:
            raise StoreUnavailable(f"the store {self.name} has no free connection") from exc
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"the store {self.name} is unreachable: {exc}") from exc

    def execute(self, sql: str, params: Sequence[object] = ()) -> _Rows:
        with self._connection() as conn:
            try:
                return _run(conn, sql, params)
            except psycopg.errors.UniqueViolation as exc:
                raise DuplicateRow(" ".join(str(exc).split())) from exc

    @contextmanager
    def _pinned(self, first: str, params: Sequence[object]) -> Iterator[None]:
        if getattr(self._local, "conn", None) is not None:  # nested: the outer one commits
            yield
            return
        with self._connection() as conn:
            self._local.conn = conn
            try:
                with conn.transaction():
                    _run(conn, first, params)
                    yield
            finally:
                self._local.conn = None

    def transaction(self) -> Any:
        return self._pinned("SELECT pg_advisory_xact_lock(?)", (WRITE_LOCK,))

    def read(self) -> Any:
        return self._pinned("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY", ())

    def table_exists(self, table: str) -> bool:
        row = self.execute("SELECT to_regclass(?) IS NOT NULL", (table,)).fetchone()
        return bool(row[0])

    def notify_event(self, network: str, seq: int) -> None:
        payload = encode_notice(Notice(self.origin, network, seq))
        self.execute("SELECT pg_notify(?, ?)", (CHANNEL, payload))

    def event_feed(self) -> PostgresEventFeed:
        return PostgresEventFeed(self._url, self.origin, name=self.name)

    def close(self) -> None:
        self.pool.close()
