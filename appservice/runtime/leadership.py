"""Which process is active: exactly one runs the bot, the appservice listener and the workers.

Every Gatekeeper process serves the web endpoint. Against PostgreSQL, the active one holds
a session advisory lock on a connection of its own; the others stand by, trying for the
lock, and take over within a second or two when the active process dies (PostgreSQL
drops its lock with its connection). That connection also carries the wake-up calls:
a standby process that changes a request NOTIFYs, the active one LISTENs. With SQLite
there is one process, always active.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import asyncpg
from mautrix.util.async_db import Database

from gatekeeper.appservice.config import DatabaseConfig

log = logging.getLogger("gatekeeper.leadership")

# Any fixed number, different from the migration lock; advisory locks are per database.
ACTIVE_ROLE_LOCK_ID = 0x67746B61
CHANGES_CHANNEL = "gatekeeper_changes"
# How often a standby process tries for the lock, and the active one checks its connection.
POLL_SECONDS = 1.0
HEARTBEAT_SECONDS = 5.0


class Leadership:
    """The single process case: always active, nothing to tell anyone."""

    def __init__(self) -> None:
        self.active = False
        # Set when the active role is lost (the lock's connection dropped).
        self.lost = asyncio.Event()

    @property
    def role(self) -> str:
        return "active" if self.active else "standby"

    async def try_acquire(self) -> bool:
        self.active = True
        return True

    async def acquire(self) -> None:
        await self.try_acquire()

    def announce_changes(self) -> None:
        """Tell the active process that requests or mail changed (ours is woken directly)."""

    async def close(self) -> None:
        self.active = False


class PostgresLeadership(Leadership):
    """`on_changes` is called when another process announces changes (while we are active)."""

    def __init__(self, url: str, db: Database, on_changes: Callable[[], None]) -> None:
        super().__init__()
        self._url = url
        self._db = db
        self._on_changes = on_changes
        self._conn: asyncpg.Connection | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._announcements: set[asyncio.Task[None]] = set()
        self._closing = asyncio.Event()

    async def try_acquire(self) -> bool:
        if self.active:
            return True
        try:
            conn = await self._connection()
            got = bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", ACTIVE_ROLE_LOCK_ID))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            log.warning("Cannot reach PostgreSQL for the active role: %s", error)
            await self._drop_connection()
            return False
        if got:
            self.lost.clear()
            self._closing.clear()
            self.active = True
            await conn.add_listener(CHANGES_CHANNEL, self._heard)
            self._heartbeat = asyncio.create_task(self._watch(conn), name="leadership-heartbeat")
            log.info("This process is now active")
        return got

    async def acquire(self) -> None:
        while not await self.try_acquire():  # noqa: ASYNC110 (the lock lives in PostgreSQL)
            await asyncio.sleep(POLL_SECONDS)

    def announce_changes(self) -> None:
        task = asyncio.create_task(self._notify(), name="leadership-notify")
        self._announcements.add(task)
        task.add_done_callback(self._announcements.discard)

    async def close(self) -> None:
        self._closing.set()
        heartbeat, self._heartbeat = self._heartbeat, None
        if heartbeat is not None:
            heartbeat.cancel()
            await asyncio.wait([heartbeat])
        if self._announcements:
            await asyncio.wait(self._announcements)
        self.active = False
        await self._drop_connection()

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(self._url, timeout=10)
        return self._conn

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            # Closing the session is what releases the lock for the others.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 5)
            if not conn.is_closed():
                conn.terminate()

    async def _watch(self, conn: asyncpg.Connection) -> None:
        """Notice a dead connection even when no query runs: the lock went with it."""
        # The closing flag, not only the cancel, ends the loop: Python 3.11's wait_for can
        # lose a cancel that lands as it times out.
        while not self._closing.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), HEARTBEAT_SECONDS)
            if self._closing.is_set():
                return
            try:
                await asyncio.wait_for(conn.fetchval("SELECT 1"), HEARTBEAT_SECONDS)
            except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                log.error("Lost the connection that holds the active role; standing by")
                self.active = False
                self._heartbeat = None
                await self._drop_connection()
                self.lost.set()
                return

    def _heard(self, *_: object) -> None:
        self._on_changes()

    async def _notify(self) -> None:
        try:
            await self._db.execute(f"NOTIFY {CHANGES_CHANNEL}")
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            # The active process also looks on its own every so often.
            log.warning("Could not wake the active process: %s", error)


def leadership_for(
    config: DatabaseConfig, db: Database, on_changes: Callable[[], None]
) -> Leadership:
    """The leadership for this database; `on_changes` hears other processes' wake-up calls
    (with SQLite there are none)."""
    if config.url.startswith("sqlite:"):
        return Leadership()
    return PostgresLeadership(config.url, db, on_changes)
