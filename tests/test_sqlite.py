"""The embedded SQLite database: reads beside each other and beside the writer, transactions
that wait for another process's lock instead of failing with "database is locked"."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mautrix.util.async_db import Database

from gatekeeper.appservice.config import DatabaseConfig
from gatekeeper.appservice.storage.database import create_database, transaction
from gatekeeper.appservice.storage.sqlite import is_plain_read

# About half a second of SQLite's own work, as one SELECT.
SLOW_READ = (
    "SELECT (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000000)"
    " SELECT COUNT(*) FROM c)"
)


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = create_database(DatabaseConfig(url=f"sqlite:{tmp_path / 'gatekeeper.db'}"))
    await database.start()
    await database.execute("CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
    try:
        yield database
    finally:
        await database.stop()


def test_only_a_plain_select_counts_as_a_read() -> None:
    assert is_plain_read("  select 1")
    assert is_plain_read("SELECT * FROM item")
    assert not is_plain_read("WITH gone AS (DELETE FROM item RETURNING id) SELECT * FROM gone")
    assert not is_plain_read("UPDATE item SET name='x' RETURNING id")
    assert not is_plain_read("PRAGMA foreign_key_check")


async def test_a_read_does_not_wait_for_a_slow_read(db: Database) -> None:
    slow = asyncio.create_task(db.fetchval(SLOW_READ))
    await asyncio.sleep(0.05)  # the slow read has reached its thread
    assert await db.fetchval("SELECT COUNT(*) FROM item") == 0
    assert not slow.done(), "the quick read waited for the slow one"
    assert await slow == 3000000


async def test_reads_go_on_beside_an_open_transaction(db: Database) -> None:
    await db.execute("INSERT INTO item (id, name) VALUES (1, 'committed')")
    written = asyncio.Event()

    async def another_request() -> list[str]:
        # Started outside the transaction (a task started inside shares its connection).
        await written.wait()
        rows = await db.fetch("SELECT name FROM item ORDER BY id")
        return [row["name"] for row in rows]

    reader = asyncio.create_task(another_request())
    async with transaction(db) as conn:
        await conn.execute("INSERT INTO item (id, name) VALUES (2, 'pending')")
        # Inside the transaction a read sees what it wrote, even through the database object.
        assert await db.fetchval("SELECT COUNT(*) FROM item") == 2
        written.set()
        # The other request reads what is committed, without waiting for the transaction.
        assert await asyncio.wait_for(reader, 5) == ["committed"]
    assert await db.fetchval("SELECT COUNT(*) FROM item") == 2


async def test_a_failed_transaction_leaves_nothing(db: Database) -> None:
    async def half_done() -> None:
        async with transaction(db) as conn:
            await conn.execute("INSERT INTO item (id, name) VALUES (1, 'half')")
            raise RuntimeError("the second half failed")

    with pytest.raises(RuntimeError, match="second half"):
        await half_done()
    assert await db.fetchval("SELECT COUNT(*) FROM item") == 0
    # The writer is usable again: the transaction was rolled back, not left open.
    async with transaction(db) as conn:
        await conn.execute("INSERT INTO item (id, name) VALUES (1, 'whole')")
    assert await db.fetchval("SELECT name FROM item WHERE id=$1", 1) == "whole"


async def test_a_write_that_returns_rows_goes_to_the_writer(db: Database) -> None:
    await db.execute("INSERT INTO item (id, name) VALUES (1, 'old')")
    renamed = await db.fetchval("UPDATE item SET name=$2 WHERE id=$1 RETURNING name", 1, "new")
    assert renamed == "new"
    assert await db.fetchval("SELECT name FROM item WHERE id=1") == "new"


async def test_many_writers_and_readers_at_once(db: Database) -> None:
    async def write(number: int) -> None:
        async with transaction(db) as conn:
            count = await conn.fetchval("SELECT COUNT(*) FROM item")
            await conn.execute(
                "INSERT INTO item (id, name) VALUES ($1, $2)", number, f"after {count}"
            )

    async def read() -> int:
        return int(await db.fetchval("SELECT COUNT(*) FROM item"))

    results = await asyncio.gather(
        *(write(n) for n in range(200)), *(read() for _ in range(400)), return_exceptions=True
    )
    assert [r for r in results if isinstance(r, BaseException)] == []
    # Each transaction saw every earlier one: the counts it read are 0..199, once each.
    names = {row["name"] for row in await db.fetch("SELECT name FROM item")}
    assert names == {f"after {n}" for n in range(200)}


async def test_a_transaction_waits_for_another_processs_lock(db: Database, tmp_path: Path) -> None:
    """A transaction that reads, then writes, while another connection (a CLI command on
    the same file) holds the write lock: it waits for the lock instead of failing."""
    other = sqlite3.connect(
        tmp_path / "gatekeeper.db", isolation_level=None, check_same_thread=False
    )
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO item (id, name) VALUES (1, 'from the CLI')")
    committer = threading.Timer(0.3, other.commit)
    committer.start()
    try:
        async with transaction(db) as conn:
            count = await conn.fetchval("SELECT COUNT(*) FROM item")
            await conn.execute("INSERT INTO item (id, name) VALUES (2, $1)", f"after {count}")
    finally:
        committer.join()
        other.close()
    rows = await db.fetch("SELECT name FROM item ORDER BY id")
    assert [row["name"] for row in rows] == ["from the CLI", "after 1"]


async def test_a_stopped_database_refuses_work(tmp_path: Path) -> None:
    database = create_database(DatabaseConfig(url=f"sqlite:{tmp_path / 'gatekeeper.db'}"))
    await database.start()
    assert await database.fetchval("SELECT 1") == 1
    await database.stop()
    with pytest.raises(RuntimeError, match="not started"):
        await database.execute("SELECT 1")
