"""The database connection (mautrix async_db) and the migration runner."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol

import asyncpg
from mautrix.util.async_db import Database, PostgresDatabase, Scheme, UpgradeTable
from mautrix.util.async_db.connection import LoggingConnection
from yarl import URL

from gatekeeper.appservice.config import DatabaseConfig
from gatekeeper.appservice.storage.sqlite import SQLiteDatabase
from gatekeeper.appservice.timeutil import now_ms

log = logging.getLogger("gatekeeper.database")

MIGRATION_FILE_RE = re.compile(r"^(\d{3})_([a-z0-9_]+?)(?:\.(sqlite|postgres))?\.sql$")
# Any fixed number: it only has to be the same in every Gatekeeper process.
MIGRATION_LOCK_ID = 0x6761746B
POOL_CLOSE_SECONDS = 10.0
# PostgreSQL is restarting or out of reach: worth a "try again", not a crash report.
DATABASE_UNAVAILABLE = (
    OSError,
    asyncpg.InterfaceError,
    # A connection that broke mid-query: "cannot switch to state …".
    asyncpg.InternalClientError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
)


class Row(Protocol):
    """A result row of either backend (asyncpg's Record, sqlite3's Row), read by column."""

    def __getitem__(self, column: str, /) -> Any: ...


class DatabaseError(Exception):
    """The database cannot be used by this version of Gatekeeper."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    def statements(self) -> list[str]:
        # Our migration files keep each statement's closing ';' at the end of a line.
        parts = re.split(r";\s*$", self.sql, flags=re.MULTILINE)
        return [p.strip() for p in parts if _without_comments(p).strip()]


def _without_comments(sql: str) -> str:
    return re.sub(r"--[^\n]*", "", sql)


# mautrix annotates the generators behind db.acquire() and conn.transaction() as returning
# what they yield, so mypy sees neither as a context manager of a connection: use these.
def acquire(db: Database) -> AbstractAsyncContextManager[LoggingConnection]:
    """A connection of the pool: db.acquire(), typed."""
    return db.acquire()


@asynccontextmanager
async def transaction(db: Database) -> AsyncIterator[LoggingConnection]:
    """A connection of the pool in a transaction: db.acquire() and conn.transaction(), typed."""
    async with acquire(db) as conn, conn.transaction():  # type: ignore[attr-defined]
        yield conn


def dialect(db: Database) -> str:
    return "sqlite" if db.scheme == Scheme.SQLITE else "postgres"


def load_migrations(for_dialect: str, package: str = "gatekeeper.migrations") -> list[Migration]:
    """The migrations for one backend, in order; a dialect variant wins over the shared file."""
    chosen: dict[int, tuple[bool, Migration]] = {}
    for entry in resources.files(package).iterdir():
        match = MIGRATION_FILE_RE.match(entry.name)
        if not match:
            continue
        number, name, variant = match.groups()
        if variant not in (None, for_dialect):
            continue
        migration = Migration(int(number), name, entry.read_text(encoding="utf-8"))
        is_variant = variant is not None
        previous = chosen.get(migration.version)
        if previous and previous[0] == is_variant:
            raise DatabaseError(f"two migration files share number {number}")
        if not previous or is_variant:
            chosen[migration.version] = (is_variant, migration)
    migrations = [chosen[v][1] for v in sorted(chosen)]
    for expected, migration in enumerate(migrations, start=1):
        if migration.version != expected:
            raise DatabaseError(f"migration {expected:03d} is missing")
    return migrations


async def _keep_session_state(_: asyncpg.Connection) -> None:
    """Pooled connections never change session state (no SET, session locks or LISTEN: the
    active role's lock has a connection of its own), so asyncpg's RESET ALL etc. on every
    release is a round trip for nothing. It still rolls back an open transaction."""


class ReconnectingPostgresDatabase(PostgresDatabase):
    """mautrix's PostgreSQL pool, made to survive a PostgreSQL restart whole.

    When a protocol error breaks a connection mid-query (as when the server goes away
    under load: "cannot switch to state …"), asyncpg 0.31 aborts it without giving its
    place back to the pool (asyncpg issue 1307). Every restart then shrank the pool for
    good, until queries waited forever and closing it hung. terminate() on a closed
    connection hands the place back, and is harmless where asyncpg already did.
    """

    # mautrix annotates its generator as returning a LoggingConnection (see acquire above).
    @asynccontextmanager
    async def acquire_direct(self) -> AsyncIterator[LoggingConnection]:  # type: ignore[override]
        async with self.pool.acquire() as conn:
            try:
                yield LoggingConnection(
                    self.scheme,
                    # mautrix takes a Connection; the pool's proxy stands in for one, as in
                    # mautrix's own acquire_direct.
                    conn,  # type: ignore[arg-type]
                    self.log,
                    handle_exception=self._handle_exception,
                )
            finally:
                if conn.is_closed():
                    conn.terminate()


def create_database(config: DatabaseConfig) -> Database:
    log = logging.getLogger("gatekeeper.database.sql")
    if config.url.startswith("sqlite:"):
        return SQLiteDatabase(URL(config.url), log)
    # Keep the process alive when PostgreSQL restarts: the pool reconnects.
    db_args: dict[str, object] = {
        "min_size": 1,
        "max_size": config.max_connections,
        "meow_exit_on_ice": False,
        "reset": _keep_session_state,
    }
    return ReconnectingPostgresDatabase(URL(config.url), UpgradeTable(), db_args=db_args, log=log)


async def stop_database(db: Database) -> None:
    """Close the pool; after PostgreSQL restarted under load asyncpg may wait forever on a
    connection that died mid-query, so a close that takes too long is forced."""
    try:
        await asyncio.wait_for(db.stop(), POOL_CLOSE_SECONDS)
    except TimeoutError:
        log.warning(
            "The database pool did not close in %g s; closing it by force", POOL_CLOSE_SECONDS
        )
        if isinstance(db, PostgresDatabase):
            db.pool.terminate()


@asynccontextmanager
async def _sqlite_foreign_keys_off(db: Database, conn: LoggingConnection) -> AsyncIterator[None]:
    """SQLite's way to rebuild a table that others reference (migration 011): foreign keys
    off around the transaction (inside one the pragma does nothing), checked before commit
    by upgrade()."""
    if db.scheme != Scheme.SQLITE:
        yield
        return
    await conn.execute("PRAGMA foreign_keys = OFF")
    try:
        yield
    finally:
        await conn.execute("PRAGMA foreign_keys = ON")


async def upgrade(db: Database, package: str = "gatekeeper.migrations") -> list[int]:
    """Apply pending migrations in one transaction; return the versions applied."""
    migrations = load_migrations(dialect(db), package)
    latest = migrations[-1].version if migrations else 0
    async with (
        acquire(db) as conn,
        _sqlite_foreign_keys_off(db, conn),
        conn.transaction(),  # type: ignore[attr-defined]
    ):
        if db.scheme != Scheme.SQLITE:
            # Two processes starting at once must not both apply the same migration.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_ID)
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_version (
                version    INTEGER PRIMARY KEY,
                name       TEXT NOT NULL,
                applied_at BIGINT NOT NULL
            )"""
        )
        current = await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version")
        if current > latest:
            raise DatabaseError(
                f"the database schema is at version {current}, but this Gatekeeper only knows "
                f"up to version {latest}: upgrade Gatekeeper or restore a matching backup"
            )
        applied = []
        for migration in migrations[current:]:
            log.info("Applying migration %03d_%s", migration.version, migration.name)
            applied_at = now_ms()
            for statement in migration.statements():
                await conn.execute(statement, *([applied_at] if "$1" in statement else []))
            await conn.execute(
                "INSERT INTO schema_version (version, name, applied_at) VALUES ($1, $2, $3)",
                migration.version,
                migration.name,
                applied_at,
            )
            applied.append(migration.version)
        if db.scheme == Scheme.SQLITE and await conn.fetch("PRAGMA foreign_key_check"):
            raise DatabaseError("a migration left rows whose foreign key points nowhere")
    return applied


async def schema_version(db: Database) -> int:
    if not await db.table_exists("schema_version"):
        return 0
    return int(await db.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version"))
