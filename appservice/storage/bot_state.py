"""Small key-value facts the process keeps in the database across restarts."""

from __future__ import annotations

import logging

from mautrix.util.async_db import Database

from gatekeeper.appservice.storage.crypto import SecretBox, TamperedSecret
from gatekeeper.appservice.timeutil import now_ms

log = logging.getLogger("gatekeeper.state")

ADMIN_ROOM_ID = "admin_room_id"


class BotState:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, key: str) -> str | None:
        value = await self.db.fetchval("SELECT value FROM bot_state WHERE key=$1", key)
        return None if value is None else str(value)

    async def set(self, key: str, value: str) -> None:
        await self.db.execute(
            "INSERT INTO bot_state (key, value) VALUES ($1, $2)"
            " ON CONFLICT (key) DO UPDATE SET value=excluded.value",
            key,
            value,
        )


class SealedState:
    """BotState values kept encrypted: secrets Gatekeeper obtained itself (a token)."""

    def __init__(self, state: BotState, box: SecretBox) -> None:
        self.state = state
        self.box = box

    async def get(self, key: str) -> str | None:
        sealed = await self.state.get(key)
        if sealed is None:
            return None
        try:
            return self.box.decrypt(sealed)
        except TamperedSecret:
            # Its key was removed or the row altered: the owner obtains a new one.
            log.warning("The stored %s cannot be decrypted; it will be replaced", key.split()[0])
            return None

    async def set(self, key: str, value: str) -> None:
        await self.state.set(key, self.box.encrypt(value))


# Synapse retries a transaction for minutes to hours; a day covers every retry.
TRANSACTION_MEMORY_MS = 24 * 3600 * 1000


class TransactionLog:
    """Appservice transactions already handled (Synapse retries until it gets a 200).

    A transaction is its ID and a digest of its content: Synapse may reuse an ID after
    it restarts, and a reused ID with new events must not be mistaken for a retry.
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    async def seen(self, txn_id: str, digest: str) -> bool:
        row = await self.db.fetchval(
            "SELECT 1 FROM appservice_transaction WHERE txn_id=$1 AND digest=$2", txn_id, digest
        )
        return row is not None

    async def record(self, txn_id: str, digest: str) -> None:
        now = now_ms()
        await self.db.execute(
            "INSERT INTO appservice_transaction (txn_id, digest, received_at) VALUES ($1, $2, $3)"
            " ON CONFLICT (txn_id, digest) DO NOTHING",
            txn_id,
            digest,
            now,
        )
        await self.db.execute(
            "DELETE FROM appservice_transaction WHERE received_at < $1", now - TRANSACTION_MEMORY_MS
        )
