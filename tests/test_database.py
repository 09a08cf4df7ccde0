"""Migrations and stored state, on SQLite and on PostgreSQL."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mautrix.util.async_db import Database

from gatekeeper.appservice.storage.bot_state import BotState, TransactionLog
from gatekeeper.appservice.storage.database import (
    DatabaseError,
    load_migrations,
    schema_version,
    upgrade,
)


@pytest.fixture
def migration_package(tmp_path: Path) -> Iterator[Path]:
    """An importable package of migration files that a test writes."""
    package = tmp_path / "pkg" / "test_migrations"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    sys.path.insert(0, str(package.parent))
    try:
        yield package
    finally:
        sys.path.remove(str(package.parent))
        sys.modules.pop("test_migrations", None)


async def tables(db: Database) -> set[str]:
    if db.scheme.value == "sqlite":
        rows = await db.fetch("SELECT name FROM sqlite_master WHERE type='table'")
    else:
        rows = await db.fetch(
            "SELECT table_name AS name FROM information_schema.tables WHERE table_schema='public'"
        )
    return {row["name"] for row in rows}


async def test_upgrade_applies_every_migration_once(database: Database) -> None:
    shipped = load_migrations("sqlite")
    assert await upgrade(database) == [m.version for m in shipped]
    assert await schema_version(database) == shipped[-1].version
    assert {"schema_version", "bot_state", "appservice_transaction"} <= await tables(database)
    assert {"registration_request", "invite", "signup_block", "totp"} <= await tables(database)

    assert await upgrade(database) == []
    rows = await database.fetch("SELECT version FROM schema_version ORDER BY version")
    assert [row["version"] for row in rows] == [m.version for m in shipped]


async def test_database_newer_than_the_code_is_refused(database: Database) -> None:
    await upgrade(database)
    await database.execute(
        "INSERT INTO schema_version (version, name, applied_at) VALUES (999, 'future', 0)"
    )
    with pytest.raises(DatabaseError, match="at version 999, but this Gatekeeper only knows"):
        await upgrade(database)


async def test_failed_migration_leaves_nothing_behind(
    database: Database, migration_package: Path
) -> None:
    (migration_package / "001_first.sql").write_text("CREATE TABLE first (id INTEGER);\n")
    (migration_package / "002_broken.sql").write_text(
        "CREATE TABLE second (id INTEGER);\nTHIS IS NOT SQL;\n"
    )
    with pytest.raises(Exception, match=r"(?i)syntax"):
        await upgrade(database, "test_migrations")
    assert not {"first", "second"} & await tables(database)
    assert await schema_version(database) == 0


async def test_dialect_variant_wins(database: Database, migration_package: Path) -> None:
    (migration_package / "001_kv.sql").write_text("CREATE TABLE kv (generic INTEGER);\n")
    (migration_package / "001_kv.sqlite.sql").write_text("CREATE TABLE kv (on_sqlite INTEGER);\n")
    (migration_package / "001_kv.postgres.sql").write_text(
        "-- a comment; with a semicolon\nCREATE TABLE kv (on_postgres INTEGER);\n"
    )
    await upgrade(database, "test_migrations")
    dialect = "sqlite" if database.scheme.value == "sqlite" else "postgres"
    await database.execute(f"INSERT INTO kv (on_{dialect}) VALUES (1)")


def test_gap_in_numbers_is_an_error(migration_package: Path) -> None:
    (migration_package / "001_a.sql").write_text("SELECT 1;\n")
    (migration_package / "003_c.sql").write_text("SELECT 1;\n")
    with pytest.raises(DatabaseError, match="migration 002 is missing"):
        load_migrations("sqlite", "test_migrations")


async def test_bot_state_and_transaction_log(database: Database) -> None:
    await upgrade(database)
    state = BotState(database)
    assert await state.get("admin_room_id") is None
    await state.set("admin_room_id", "!a:x")
    await state.set("admin_room_id", "!b:x")
    assert await state.get("admin_room_id") == "!b:x"

    transactions = TransactionLog(database)
    assert not await transactions.seen("txn1", "digest-a")
    await transactions.record("txn1", "digest-a")
    await transactions.record("txn1", "digest-a")
    assert await transactions.seen("txn1", "digest-a")
    assert not await transactions.seen("txn1", "digest-b")  # a reused ID, new content
    await database.execute("UPDATE appservice_transaction SET received_at = 0")
    await transactions.record("txn2", "digest-c")  # forgets what is a day old
    assert not await transactions.seen("txn1", "digest-a")
