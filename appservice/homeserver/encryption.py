"""The bot's end-to-end encryption: its device and keys, and the events it encrypts and
decrypts in encrypted rooms.

The device model is the appservice one of mautrix's bridges. The device is created with
the as_token (MSC4190), so there is no login and no /sync; Synapse pushes the to-device
messages (MSC2409), device-list changes and one-time-key counts (MSC3202) in the
appservice transactions. Only the active process runs it. The keys live in Gatekeeper's
database (mautrix's `crypto_*` tables); the key that pickles them is sealed in bot_state
with the config's secrets. docs/operator-guide.md says what Synapse needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from typing import TYPE_CHECKING, Any

from mautrix.api import Method, Path
from mautrix.appservice import AppService, IntentAPI
from mautrix.client import Client
from mautrix.errors import EncryptionError, MatrixRequestError, MNotFound, MUnknownToken
from mautrix.types import (
    ASToDeviceEvent,
    DeviceID,
    EncryptedEvent,
    Event,
    EventID,
    EventType,
    Membership,
    MessageEventContent,
    Obj,
    RoomEncryptionStateEventContent,
    RoomID,
    Serializable,
    TrustState,
    UserID,
)
from mautrix.util.async_db import Database

from gatekeeper.appservice.homeserver.appservice_listener import MemoryASStateStore
from gatekeeper.appservice.storage.bot_state import SealedState

if TYPE_CHECKING:
    from mautrix.crypto import OlmMachine, PgCryptoStore

log = logging.getLogger("gatekeeper.encryption")

PICKLE_KEY_STATE = "crypto_pickle_key"
DEVICE_NAME = "Gatekeeper"
# How long a message waits for its room key, which may come in a later transaction.
ROOM_KEY_WAIT_SECONDS = 10.0
# A to-device message the bot sends itself at start: Synapse without MSC2409 never pushes
# it, and then no room key ever arrives either.
DELIVERY_CHECK = EventType.find("org.gatekeeper.delivery_check", EventType.Class.TO_DEVICE)
DELIVERY_CHECK_SECONDS = 60.0
# Probes sent while Synapse holds our transactions back are lost: one goes out this often.
DELIVERY_PROBE_SECONDS = 0.5


class EncryptionUnavailable(Exception):
    """Encryption cannot work here; the message names the cause and the fix."""


class CryptoStoreLost(Exception):
    """The stored keys cannot be used; a fresh device replaces them."""


class BotEncryption:
    def __init__(
        self,
        appservice: AppService,
        db: Database,
        sealed: SealedState,
        state_store: MemoryASStateStore,
    ) -> None:
        self.appservice = appservice
        self.db = db
        self.sealed = sealed
        self.state_store = state_store
        self.client: Client | None = None
        self._store: PgCryptoStore | None = None
        self._machine: OlmMachine | None = None
        self._share_locks: dict[RoomID, asyncio.Lock] = {}
        self._delivery_checked = asyncio.Event()

    @property
    def machine(self) -> OlmMachine:
        if self._machine is None:
            raise RuntimeError("encryption is not started")
        return self._machine

    @property
    def device_id(self) -> str:
        return str(self.client.device_id) if self.client is not None else ""

    async def start(self) -> None:
        """Reuse the stored device and keys, or create them; hand the appservice the
        crypto parts of its transactions. Raises EncryptionUnavailable."""
        try:
            from mautrix.crypto import PgCryptoStore
        except ImportError as error:
            raise EncryptionUnavailable(
                f"the crypto packages are missing ({error}): install Gatekeeper with its "
                "dependencies, which include mautrix[encryption] and python-olm"
            ) from None
        await PgCryptoStore.upgrade_table.upgrade(self.db)
        try:
            await self._start_device(await self._pickle_key())
        except CryptoStoreLost as lost:
            log.error(
                "The bot's encryption keys cannot be used (%s): starting a new device. "
                "Admins who verified the old one will see a new, unverified device",
                lost,
            )
            await self._close_device()
            await self._forget_store()
            await self._start_device(await self._pickle_key(fresh=True))
        self.appservice.to_device_handler = self._on_to_device
        self.appservice.otk_handler = self.machine.handle_as_otk_counts
        self.appservice.device_list_handler = self.machine.handle_as_device_lists
        account = self.machine.account
        log.info(
            "End-to-end encryption is on (device %s, key %s)",
            self.device_id,
            account.signing_key if account is not None else "?",
        )

    async def _on_to_device(self, event: ASToDeviceEvent) -> None:
        if event.type == DELIVERY_CHECK and event.sender == self.appservice.bot_mxid:
            self._delivery_checked.set()
            return
        await self.machine.handle_as_to_device_event(event)

    async def check_delivery(self) -> str | None:
        """None once Synapse pushes the bot a to-device message it sent itself; otherwise,
        after DELIVERY_CHECK_SECONDS, what is missing. A probe goes out every half second:
        Synapse drops those of transactions it retries after marking us down."""
        client = self.client
        if client is None:
            raise RuntimeError("encryption is not started")
        self._delivery_checked.clear()
        deadline = asyncio.get_running_loop().time() + DELIVERY_CHECK_SECONDS
        while (left := deadline - asyncio.get_running_loop().time()) > 0:
            content = Obj(nonce=secrets.token_hex(8))
            await client.send_to_device(DELIVERY_CHECK, {client.mxid: {client.device_id: content}})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._delivery_checked.wait(), min(left, DELIVERY_PROBE_SECONDS)
                )
                return None
            # Synapse may have marked us down just now (a push to our previous listener
            # failed): a ping makes it retry at once instead of after its back-off.
            with contextlib.suppress(MatrixRequestError):
                await self.appservice.ping_self()
        return (
            f"Synapse sent no to-device message to the bot in {DELIVERY_CHECK_SECONDS:g} s, "
            "so no room key can reach it: set experimental_features "
            "msc2409_to_device_messages_enabled and msc3202_transaction_extensions in "
            "homeserver.yaml, and receive_ephemeral in the registration file"
        )

    async def _pickle_key(self, fresh: bool = False) -> str:
        """The key the stored Olm account and sessions are pickled with. Re-sealed at each
        start, so it follows the config's key rotation."""
        key = None if fresh else await self.sealed.get(PICKLE_KEY_STATE)
        if key is None:
            key = secrets.token_urlsafe(32)
        await self.sealed.set(PICKLE_KEY_STATE, key)
        return key

    async def _start_device(self, pickle_key: str) -> None:
        from mautrix.crypto import OlmMachine, PgCryptoStore

        appservice = self.appservice
        bot = UserID(appservice.bot_mxid)
        self._store = store = PgCryptoStore(bot, pickle_key, self.db)
        await store.open()
        stored_device = await store.get_device_id()
        self.client = client = Client(
            base_url=appservice.server,
            mxid=bot,
            sync_store=store,
            state_store=self.state_store,
            log=log.getChild("client"),
        )
        client.api.token = appservice.as_token
        try:
            await client.create_device_msc4190(
                device_id=stored_device or "", initial_display_name=DEVICE_NAME
            )
        except MUnknownToken:
            raise  # not about encryption: start-up reports the wrong as_token
        except MatrixRequestError as error:
            raise EncryptionUnavailable(
                f"the homeserver refused to create the bot's device ({error.errcode}: "
                f"{error.message}): the registration file needs io.element.msc4190: true "
                "(gatekeeper generate-registration writes it); see docs/operator-guide.md"
            ) from None
        # The state cache has what mautrix.crypto's StateStore asks for, without deriving
        # from it: that class needs python-olm, and the listener must load without it.
        self._machine = machine = OlmMachine(client, store, self.state_store)  # type: ignore[arg-type]
        # Admins' clients need not be cross-signed; the room's membership is the trust.
        machine.share_keys_min_trust = TrustState.UNVERIFIED
        machine.send_keys_min_trust = TrustState.UNVERIFIED
        machine.allow_key_share = _refuse_key_requests
        try:
            await machine.load()
        except Exception as error:
            raise CryptoStoreLost(f"the stored account cannot be read: {error}") from error
        if not stored_device:
            await store.put_device_id(client.device_id)
            await machine.share_keys()
            await self._delete_other_devices(client)
        elif machine.account is not None and machine.account.shared:
            await self._check_keys_on_server(client)
        else:
            await machine.share_keys()

    async def _delete_other_devices(self, client: Client) -> None:
        """The bot has one device. Others are left by a lost key store: admins' clients
        would go on sharing room keys with them."""
        listed = await client.api.request(Method.GET, Path.v3.devices)
        for device in listed.get("devices", []):
            device_id = device.get("device_id")
            if device_id and device_id != client.device_id:
                await client.api.request(Method.DELETE, Path.v3.devices[device_id], {})
                log.info("Deleted the bot's old device %s", device_id)

    async def _check_keys_on_server(self, client: Client) -> None:
        keys = await client.query_keys([client.mxid])
        own = keys.device_keys.get(client.mxid, {}).get(client.device_id)
        if own is None or not own.keys:
            raise CryptoStoreLost(f"the homeserver no longer has device {client.device_id}")
        account = self.machine.account
        if account is None or own.ed25519 != account.signing_key:
            raise CryptoStoreLost("the homeserver holds other keys for our device")

    async def _forget_store(self) -> None:
        from mautrix.crypto import PgCryptoStore

        await PgCryptoStore(UserID(self.appservice.bot_mxid), "", self.db).delete()

    async def stop(self) -> None:
        await self._close_device()

    async def _close_device(self) -> None:
        if self.client is not None:
            await self.client.api.session.close()
        if self._store is not None:
            await self._store.close()
        self.client = self._store = self._machine = None

    async def handle_member_event(self, event: Any) -> None:
        """A membership change ends the room's outgoing session: the next message is
        shared with the members as they are now."""
        await self.machine.handle_member_event(event)

    async def decrypt(self, event: EncryptedEvent) -> Event:
        """The event as its sender wrote it. Raises SessionNotFound while its room key has
        not arrived (see wait_for_key), DecryptionError when it cannot be decrypted."""
        return await self.machine.decrypt_megolm_event(event)

    async def wait_for_key(self, event: EncryptedEvent) -> bool:
        """Whether the room key of `event` arrived: first as sent, which may be in a later
        transaction; else asked again from the sender's device. Synapse drops the to-device
        messages of transactions it retries (after a restart of ours, say), and clients
        share a room key with each device only once unless asked."""
        content = event.content
        machine = self.machine
        if await machine.wait_for_session(
            event.room_id, content.session_id, timeout=ROOM_KEY_WAIT_SECONDS / 2
        ):
            return True
        log.info("Asking %s for the room key of %s", event.sender, event.event_id)
        return await machine.request_room_key(
            event.room_id,
            content.sender_key,
            content.session_id,
            {event.sender: [content.device_id or DeviceID("*")]},
            timeout=ROOM_KEY_WAIT_SECONDS / 2,
        )

    async def send(
        self,
        room_id: RoomID,
        event_type: EventType,
        content: Serializable,
        txn_id: str | None = None,
    ) -> EventID:
        """Encrypt `content` for the room's members and send it."""
        machine = self.machine
        try:
            encrypted = await machine.encrypt_megolm_event(room_id, event_type, content)
        except EncryptionError:
            # No outgoing session yet, or it ended (a member came or went): share a new one.
            async with self._share_locks.setdefault(room_id, asyncio.Lock()):
                await machine.share_group_session(room_id, await self._members(room_id))
            encrypted = await machine.encrypt_megolm_event(room_id, event_type, content)
        return await self.appservice.intent.send_message_event(
            room_id,
            EventType.ROOM_ENCRYPTED,
            encrypted,  # type: ignore[arg-type]  # mautrix's union lacks its own type
            txn_id=txn_id,
        )

    async def _members(self, room_id: RoomID) -> list[UserID]:
        """Everyone in the room or invited to it, but the bot (mautrix would share the key
        with our own device too, claiming one of its one-time keys for nothing). Invited
        admins of a room the bot just created can then read its first message."""
        intent = self.appservice.intent
        members = await intent.get_room_members(room_id, (Membership.JOIN, Membership.INVITE))
        return [member for member in members if member != intent.mxid]

    async def load_room(self, room_id: RoomID) -> None:
        """Fill the state cache that encryption reads: whether the room is encrypted, with
        what settings, and its members. After a restart the cache is empty."""
        intent = self.appservice.intent
        try:
            encryption = await intent.get_state_event(room_id, EventType.ROOM_ENCRYPTION)
        except MNotFound:
            pass
        else:
            if isinstance(encryption, RoomEncryptionStateEventContent):
                await self.state_store.set_encryption_info(room_id, encryption)
        await intent.get_joined_members(room_id)


async def _refuse_key_requests(*_: Any) -> bool:
    """Admins' other devices do not get old room keys from the bot: its messages are
    notices that the bot sends again on request (!pending, !show)."""
    return False


class RoomMessages:
    """The bot's messages into rooms: encrypted in an encrypted room while encryption runs,
    as they are elsewhere."""

    def __init__(self, intent: IntentAPI, encryption: BotEncryption | None) -> None:
        self.intent = intent
        self.encryption = encryption

    async def send(
        self, room_id: RoomID, content: MessageEventContent, txn_id: str | None = None
    ) -> EventID:
        if self.encryption is not None and await self.intent.state_store.is_encrypted(room_id):
            return await self.encryption.send(room_id, EventType.ROOM_MESSAGE, content, txn_id)
        return await self.intent.send_message(room_id, content, txn_id=txn_id)
