"""The appservice edge towards Synapse: the `/_matrix/app/*` listener and the bot's intent."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from mautrix.appservice import AppService
from mautrix.appservice.state_store import ASStateStore
from mautrix.client.state_store import MemoryStateStore
from mautrix.types import JSON, Membership, RoomID, UserID

from gatekeeper.appservice.config import Config
from gatekeeper.appservice.storage.bot_state import TransactionLog

log = logging.getLogger("gatekeeper.appservice")

# mautrix also serves the pre-v1 paths; they carry the same token and get the same check.
GUARDED_PREFIXES = ("/_matrix/app/", "/transactions/", "/users/", "/rooms/")


class MemoryASStateStore(MemoryStateStore, ASStateStore):
    """Room state cache; rebuilt from the homeserver after a restart. Encryption reads it
    too (mautrix.crypto's StateStore: whether a room is encrypted, who shares one)."""

    def __init__(self) -> None:
        MemoryStateStore.__init__(self)
        ASStateStore.__init__(self)

    async def find_shared_rooms(self, user_id: UserID) -> list[RoomID]:
        """The encrypted rooms `user_id` is in: those whose keys must follow its devices."""
        return [
            room_id
            for room_id, members in self.members.items()
            if self.encryption.get(room_id) is not None
            and (member := members.get(user_id)) is not None
            and member.membership == Membership.JOIN
        ]


def _error(status: int, errcode: str, message: str) -> web.Response:
    return web.json_response({"errcode": errcode, "error": message}, status=status)


def hs_token_middleware(hs_token: str) -> Middleware:
    """Missing token → 401, wrong token → 403 M_FORBIDDEN, compared in constant time."""
    expected = hs_token.encode()

    @web.middleware
    async def check_hs_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith(GUARDED_PREFIXES):
            return await handler(request)
        header = request.headers.get("Authorization", "")
        token = header.removeprefix("Bearer ") if header.startswith("Bearer ") else None
        if token is None:
            token = request.query.get("access_token")
        if not token:
            return _error(401, "M_UNAUTHORIZED", "Missing access token")
        if not hmac.compare_digest(token.encode(), expected):
            return _error(403, "M_FORBIDDEN", "Invalid access token")
        return await handler(request)

    return check_hs_token


class GatekeeperAppService(AppService):
    """mautrix's AppService with a transaction log that survives restarts.

    Transactions are handled one at a time and recorded only once handled, so a
    retry of a transaction that failed half-way is processed again, and a retry of
    one that succeeded is a no-op.
    """

    def __init__(self, config: Config, transactions: TransactionLog) -> None:
        hs_token = config.appservice.hs_token.get_secret_value()
        # The same object as mautrix's state_store, with its own type: encryption reads it.
        self.room_state = room_state = MemoryASStateStore()
        super().__init__(
            server=config.homeserver.address,
            domain=config.homeserver.domain,
            as_token=config.appservice.as_token.get_secret_value(),
            hs_token=hs_token,
            bot_localpart=config.appservice.bot_username,
            id=config.appservice.id,
            log=logging.getLogger("gatekeeper.appservice.mautrix"),
            state_store=room_state,
            aiohttp_params={"middlewares": [hs_token_middleware(hs_token)]},
            default_http_retry_count=2,
            # The crypto parts of transactions (MSC2409, MSC3202), for encrypted rooms.
            ephemeral_events=True,
            encryption_events=True,
        )
        # Until encryption starts (homeserver/encryption.py), or if it cannot, the crypto
        # parts of a transaction have no reader.
        self.to_device_handler = _ignore
        self.otk_handler = _ignore
        self.device_list_handler = _ignore
        # Our handlers run inside the transaction, so "recorded" means "handled".
        self.synchronous_handlers = True
        self.transactions = _ForgetfulSet()
        self._transaction_log = transactions
        self._transaction_lock = asyncio.Lock()
        # Set once the bot's handlers (and its encryption) are in place: a transaction that
        # comes earlier waits, rather than losing room keys sent to a device not yet loaded.
        self.handlers_ready = asyncio.Event()
        self._request_timeout = config.homeserver.request_timeout

    async def start(self, host: str = "127.0.0.1", port: int = 8080) -> None:
        await super().start(host, port)
        # mautrix builds its client session without a timeout; a hanging homeserver must
        # fail the call in time instead of holding the bot forever.
        self.http_session._timeout = aiohttp.ClientTimeout(total=self._request_timeout)

    async def handle_transaction(self, txn_id: str, **kwargs: Any) -> JSON:
        digest = transaction_digest(kwargs)
        await self.handlers_ready.wait()
        async with self._transaction_lock:
            if await self._transaction_log.seen(txn_id, digest):
                log.debug("Transaction %s was already handled", txn_id)
                return JSON({})
            result = await super().handle_transaction(txn_id, **kwargs)
            await self._transaction_log.record(txn_id, digest)
            return result


async def _ignore(_: object) -> None:
    pass


def transaction_digest(content: dict[str, Any]) -> str:
    """A digest of what a transaction carries, the same for a retry of it."""
    encoded = json.dumps(content, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(encoded.encode()).hexdigest()


class _ForgetfulSet(set[str]):
    """Stands in for mautrix's in-memory set of transaction IDs, which would drop a
    reused ID for good; the database log (ID and content) decides instead."""

    def __contains__(self, item: object) -> bool:
        return False

    def add(self, item: str) -> None:
        pass
