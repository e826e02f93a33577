"""SQLite behind :class:`signal_server.db.Database`: one file in WAL mode.

One connection, used from one thread at a time (the server's store thread). A write
transaction is ``BEGIN IMMEDIATE``: it takes the file's write lock at its start, so
what it reads cannot change before it commits.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from punchd.errors import ConfigError, DuplicateRow

from .db import Dialect

# The extended result codes of a row refused for a duplicate key; other constraint
# failures (NOT NULL, CHECK) are bugs and stay sqlite3 errors.
_DUPLICATE = {"SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"}


class SqliteDatabase:
    dialect: Dialect = "sqlite"
    error: type[Exception] = sqlite3.Error
    threads = 1  # one connection, one thread at a time

    def __init__(self, path: str | Path) -> None:
        self.name = str(path)
        try:
            self.conn = sqlite3.connect(self.name, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open the store {self.name}: {exc}") from exc
        try:
            self.conn.execute("PRAGMA journal_mode=WAL")
            # FULL: a transaction is on disk before the server answers (kill -9 safe).
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.execute("PRAGMA foreign_keys=ON")
            # A truncated file opens fine and fails on the first page it lacks, which
            # would be mid-request: check every page now, at start.
            (verdict,) = self.conn.execute("PRAGMA quick_check").fetchone()
            if verdict != "ok":
                raise sqlite3.DatabaseError(verdict)
        except sqlite3.Error as exc:
            self.conn.close()
            raise ConfigError(f"the store {self.name} is not a usable database ({exc}); "
                              "restore it from a backup or move it away") from exc

    def execute(self, sql: str, params: Sequence[object] = ()) -> sqlite3.Cursor:
        try:
            return self.conn.execute(sql, params)
        except sqlite3.IntegrityError as exc:
            if getattr(exc, "sqlite_errorname", "") in _DUPLICATE:
                raise DuplicateRow(str(exc)) from exc
            raise

    @contextmanager
    def transaction(self) -> Iterator[None]:
        if self.conn.in_transaction:  # nested: the outer one commits
            yield
            return
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    @contextmanager
    def read(self) -> Iterator[None]:
        # One connection, and every write goes through the same thread as this read:
        # nothing can commit between its statements.
        yield

    def table_exists(self, table: str) -> bool:
        row = self.conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                                (table,)).fetchone()
        return row is not None

    def notify_event(self, network: str, seq: int) -> None:
        pass  # one server per file: its own writes wake its streams

    def event_feed(self) -> None:
        return None

    def close(self) -> None:
        self.conn.close()
