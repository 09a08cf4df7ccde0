"""The embedded SQLite database: one writer connection and a few readers, each on its own
thread, so that reads neither queue behind one another nor behind a write.

mautrix's SQLite pool is one aiosqlite connection: every query of the process waits for
the one before it, and a query costs three thread hops (execute, fetch, close the
cursor). Here a statement is one hop, and plain SELECTs outside a transaction go to a
pool of read-only connections (WAL lets them read while the writer writes). Everything
else, and every statement of a transaction, goes to the single writer, whose transactions
take the write lock up front (BEGIN IMMEDIATE): a transaction that read first and wrote
later could otherwise fail with "database is locked" when another process (a CLI command
on the same file) wrote in between.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import re
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar, cast

from mautrix.util.async_db import Database, Scheme, UpgradeTable
from mautrix.util.async_db.connection import LoggingConnection
from mautrix.util.async_db.database import conn_var
from mautrix.util.logging import TraceLogger
from yarl import URL

# Our SQL is written for asyncpg ($1); sqlite3 takes the same numbered parameters as ?1.
POSITIONAL_PARAMETER_RE = re.compile(r"\$(\d+)")
# A lock held by another process (a CLI command on the same file) is waited for this long.
BUSY_TIMEOUT_MS = 5000
PRAGMAS = (
    "PRAGMA foreign_keys = ON",
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = NORMAL",
    f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}",
)
# Readers beyond the cores only wait for the GIL; two keep a slow read from holding up
# the others on a one-core machine.
READERS = max(2, os.cpu_count() or 1)

T = TypeVar("T")
# Every statement at DEBUG (never its arguments): what aiosqlite logged before.
log = logging.getLogger("gatekeeper.database.sqlite")
_in_transaction = contextvars.ContextVar("gatekeeper_sqlite_in_transaction", default=False)


def _sqlite_sql(query: str) -> str:
    return POSITIONAL_PARAMETER_RE.sub(r"?\1", query)


def is_plain_read(query: str) -> bool:
    """A statement that only reads: SELECT (a WITH may hide a write, so it is not one)."""
    return query.lstrip()[:6].upper() == "SELECT"


def _connect(path: str, read_only: bool) -> sqlite3.Connection:
    # The same options as mautrix's aiosqlite connections, so rows read the same.
    conn = sqlite3.connect(
        path,
        detect_types=sqlite3.PARSE_DECLTYPES,
        isolation_level=None,
        check_same_thread=False,
    )
    for pragma in PRAGMAS:
        conn.execute(pragma)
    if read_only:
        conn.execute("PRAGMA query_only = ON")
    conn.row_factory = sqlite3.Row
    return conn


def _fetch(conn: sqlite3.Connection, query: str, args: Sequence[Any]) -> list[sqlite3.Row]:
    return conn.execute(_sqlite_sql(query), args).fetchall()


def _fetchrow(conn: sqlite3.Connection, query: str, args: Sequence[Any]) -> sqlite3.Row | None:
    cursor = conn.execute(_sqlite_sql(query), args)
    try:
        row: sqlite3.Row | None = cursor.fetchone()
        return row
    finally:
        cursor.close()


def _execute(conn: sqlite3.Connection, query: str, args: Sequence[Any]) -> None:
    conn.execute(_sqlite_sql(query), args).close()


def _executemany(conn: sqlite3.Connection, query: str, rows: Iterable[Sequence[Any]]) -> None:
    conn.executemany(_sqlite_sql(query), rows).close()


def _column(row: sqlite3.Row | None, column: int) -> Any:
    return None if row is None else row[column]


class WriterConnection:
    """The one connection that writes, on a thread of its own; the shape mautrix's
    LoggingConnection wraps (execute, fetch…, transaction)."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._conn: sqlite3.Connection | None = None

    async def _run(self, call: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, call, *args)

    async def _statement(self, call: Callable[..., T], query: str, args: Any) -> T:
        log.debug("writer: %s", query)
        return await self._run(call, self.conn, query, args)

    async def open(self) -> None:
        self._conn = await self._run(_connect, self._path, False)

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("the SQLite database is not started")
        return self._conn

    async def close(self) -> None:
        if self._conn is not None:
            await self._run(self._conn.close)
            self._conn = None
        self._thread.shutdown()

    # The `timeout` keyword is asyncpg's; LoggingConnection passes it to both backends.
    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> None:
        await self._statement(_execute, query, args)

    async def executemany(
        self, query: str, rows: Iterable[Sequence[Any]], timeout: float | None = None
    ) -> None:
        await self._statement(_executemany, query, list(rows))

    async def fetch(self, query: str, *args: Any, timeout: float | None = None) -> list[Any]:
        return await self._statement(_fetch, query, args)

    async def fetchrow(self, query: str, *args: Any, timeout: float | None = None) -> Any:
        return await self._statement(_fetchrow, query, args)

    async def fetchval(
        self, query: str, *args: Any, column: int = 0, timeout: float | None = None
    ) -> Any:
        return _column(await self.fetchrow(query, *args), column)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        # A transaction inside a transaction is part of it, as with mautrix's connections.
        if _in_transaction.get():
            yield
            return
        await self.execute("BEGIN IMMEDIATE")
        token = _in_transaction.set(True)
        try:
            yield
        except BaseException:
            await self.execute("ROLLBACK")
            raise
        else:
            await self.execute("COMMIT")
        finally:
            _in_transaction.reset(token)


class Readers:
    """Read-only connections, one per thread of a pool: a read is one hop to any of them."""

    def __init__(self, path: str, count: int) -> None:
        self._path = path
        self._threads = ThreadPoolExecutor(count, thread_name_prefix="sqlite-reader")
        self._local = threading.local()
        self._opened: list[sqlite3.Connection] = []
        self._opened_lock = threading.Lock()

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = _connect(self._path, read_only=True)
            with self._opened_lock:
                self._opened.append(conn)
        return conn

    def _call(self, call: Callable[..., T], query: str, args: Sequence[Any]) -> T:
        return call(self._conn(), query, args)

    async def run(self, call: Callable[..., T], query: str, args: Sequence[Any]) -> T:
        log.debug("reader: %s", query)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._threads, self._call, call, query, args)

    def close(self) -> None:
        self._threads.shutdown()
        with self._opened_lock:
            for conn in self._opened:
                conn.close()
            self._opened.clear()


class SQLiteDatabase(Database):
    """mautrix's Database over one WriterConnection and a pool of Readers."""

    scheme = Scheme.SQLITE

    def __init__(self, url: URL, log: logging.Logger, readers: int = READERS) -> None:
        # mautrix makes every logger a TraceLogger when imported; its signature says so.
        super().__init__(url, upgrade_table=UpgradeTable(), log=cast(TraceLogger, log))
        self._path = url.path
        self._writer = WriterConnection(self._path)
        self._writer_lock = asyncio.Lock()
        self._readers = Readers(self._path, readers)
        self._started = False

    async def start(self) -> None:
        # The writer opens (and creates) the file first and turns WAL on for everyone.
        await self._writer.open()
        self._started = True
        await super().start()

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        async with self._writer_lock:
            await self._writer.close()
        await asyncio.get_running_loop().run_in_executor(None, self._readers.close)

    def acquire_direct(self) -> AbstractAsyncContextManager[LoggingConnection]:
        return self._acquire_writer()

    @asynccontextmanager
    async def _acquire_writer(self) -> AsyncIterator[LoggingConnection]:
        if not self._started:
            raise RuntimeError("the SQLite database is not started")
        async with self._writer_lock:
            # LoggingConnection is typed for mautrix's own connection classes.
            yield LoggingConnection(self.scheme, self._writer, self.log)  # type: ignore[arg-type]

    def _reads_alone(self, query: str) -> bool:
        """Whether a statement can go to a reader: a plain read, outside a connection in
        use (inside one, a read must see what the transaction wrote)."""
        return self._started and conn_var.get(None) is None and is_plain_read(query)

    async def fetch(self, query: str, *args: Any, timeout: float | None = None) -> list[Any]:
        if self._reads_alone(query):
            return await self._readers.run(_fetch, query, args)
        return await super().fetch(query, *args, timeout=timeout)

    async def fetchrow(self, query: str, *args: Any, timeout: float | None = None) -> Any:
        if self._reads_alone(query):
            return await self._readers.run(_fetchrow, query, args)
        return await super().fetchrow(query, *args, timeout=timeout)

    async def fetchval(
        self, query: str, *args: Any, column: int = 0, timeout: float | None = None
    ) -> Any:
        if self._reads_alone(query):
            return _column(await self._readers.run(_fetchrow, query, args), column)
        return await super().fetchval(query, *args, column=column, timeout=timeout)
