"""The small interface between the store's rules and an SQL database.

:class:`signal_server.store.Store` holds every rule (validation, address choice,
access-key use counts, the event log, nonces) and speaks one SQL subset to a
:class:`Database`: ``?`` placeholders, ``ON CONFLICT ... DO UPDATE`` upserts,
``LIMIT ... OFFSET``, ``lower()``. The subset runs unchanged on SQLite and on
PostgreSQL, so the two adapters only open connections, run transactions and
translate their library's errors into ours:

- :mod:`signal_server.db_sqlite`: one SQLite file (WAL), today's behaviour.
- :mod:`signal_server.db_postgres`: PostgreSQL through a psycopg connection pool.

Both promise the same thing of :meth:`Database.transaction`: its body runs as if no
other write transaction ran at the same time, on this process or any other sharing
the database (SQLite's ``BEGIN IMMEDIATE``; a transaction-level lock on PostgreSQL).
The event log needs that anyway (see ``db_postgres``), and it lets every rule read,
decide and write without a lock of its own.

Replicas (several servers on one PostgreSQL) also hear of each other's writes through
the database: :meth:`Database.notify_event` inside a write, :meth:`Database.event_feed`
to listen (:mod:`signal_server.event_feed`). SQLite has one server per file, so both
do nothing there.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

import msgspec

from punchd.errors import ConfigError

if TYPE_CHECKING:
    from .event_feed import PostgresEventFeed

T = TypeVar("T")

Dialect = Literal["sqlite", "postgresql"]
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


class Rows(Protocol):
    """What :meth:`Database.execute` returns: an ``sqlite3.Cursor`` satisfies it."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Database(Protocol):
    dialect: Dialect
    name: str  # for messages: a path, or a URL without its password
    error: type[Exception]  # the root of the driver's own errors
    # How many threads may call at once: the server runs its store calls on up to this
    # many (SQLite's one connection: 1; PostgreSQL: its pool, writers still one at a
    # time behind the advisory lock, reads beside them).
    threads: int

    def execute(self, sql: str, params: Sequence[object] = ()) -> Rows:
        """One statement; inside a transaction if one is open in this thread.

        Raises :class:`punchd.errors.DuplicateRow` when a UNIQUE or PRIMARY KEY
        constraint refuses a row, :class:`punchd.errors.StoreUnavailable` when the
        database cannot be reached."""
        ...

    def transaction(self) -> AbstractContextManager[None]:
        """A write transaction, alone among writers (see the module docstring);
        COMMIT on success, ROLLBACK on any error; nested use joins the outer one."""
        ...

    def read(self) -> AbstractContextManager[None]:
        """Several reads that must agree with each other (one snapshot)."""
        ...

    def table_exists(self, table: str) -> bool: ...

    def notify_event(self, network: str, seq: int) -> None:
        """Inside a write transaction: tell the other replicas, at commit, that
        ``network``'s log grew to ``seq``. Nothing on SQLite."""
        ...

    def event_feed(self) -> PostgresEventFeed | None:
        """What hears the other replicas' notices; None on SQLite (no other replicas)."""
        ...

    def close(self) -> None: ...


def decode_row(table: str, body: object, decode: msgspec.json.Decoder[T]) -> T:
    """A stored body as its Struct; one that does not decode (a hand edit, a bad
    restore, a newer release's record) is a ConfigError naming its table."""
    try:
        return decode.decode(body)  # type: ignore[arg-type]
    except (msgspec.DecodeError, TypeError) as exc:
        raise ConfigError(f"the store's {table} table holds a row that does not decode "
                          f"({exc}): repair or remove that row") from exc


def is_postgres_url(target: str | Path) -> bool:
    return isinstance(target, str) and target.startswith(POSTGRES_SCHEMES)


def open_database(target: str | Path) -> Database:
    """A ``postgresql://`` URL opens PostgreSQL; anything else is an SQLite path."""
    if is_postgres_url(target):
        from .db_postgres import PostgresDatabase

        return PostgresDatabase(str(target))
    from .db_sqlite import SqliteDatabase

    return SqliteDatabase(target)
