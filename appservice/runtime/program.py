"""The running process: start-up in a fixed order, and a clean stop."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from aiohttp import web
from mautrix.errors import MatrixConnectionError, MatrixRequestError, MUnknownToken
from mautrix.util.async_db import Database

from gatekeeper.appservice.config import Config
from gatekeeper.appservice.domain.account_deletion import AccountDeletion
from gatekeeper.appservice.domain.accounts import Accounts
from gatekeeper.appservice.domain.antibot import AntiBot
from gatekeeper.appservice.domain.applicant_mail import ApplicantMail
from gatekeeper.appservice.domain.captcha import Captcha
from gatekeeper.appservice.domain.decisions import Decisions
from gatekeeper.appservice.domain.gate import Gate
from gatekeeper.appservice.domain.i18n import Catalogue
from gatekeeper.appservice.domain.moderation import Moderation
from gatekeeper.appservice.domain.passwords import PasswordHasher
from gatekeeper.appservice.domain.provisioner import Provisioner
from gatekeeper.appservice.domain.registrations import Registrations
from gatekeeper.appservice.domain.seed_registrations import SeedRegistrations
from gatekeeper.appservice.domain.signup import SignUps
from gatekeeper.appservice.domain.two_factor import TwoFactorResets
from gatekeeper.appservice.homeserver.account_backend import AccountBackend
from gatekeeper.appservice.homeserver.appservice_listener import GatekeeperAppService
from gatekeeper.appservice.homeserver.backends import account_backend
from gatekeeper.appservice.homeserver.encryption import (
    BotEncryption,
    EncryptionUnavailable,
    RoomMessages,
)
from gatekeeper.appservice.runtime.leadership import Leadership, leadership_for
from gatekeeper.appservice.runtime.mailer import Mailer
from gatekeeper.appservice.runtime.monitoring import Monitoring
from gatekeeper.appservice.runtime.worker import Worker
from gatekeeper.appservice.storage.bot_state import BotState, SealedState, TransactionLog
from gatekeeper.appservice.storage.crypto import SecretBox
from gatekeeper.appservice.storage.database import create_database, stop_database, upgrade
from gatekeeper.appservice.storage.mail_tokens import MailTokens
from gatekeeper.appservice.storage.ratelimit import Lockout, RateLimiter
from gatekeeper.appservice.storage.registration_store import RegistrationStore
from gatekeeper.appservice.storage.retention import Retention
from gatekeeper.appservice.storage.sessions import Sessions
from gatekeeper.appservice.storage.totp import TotpStore
from gatekeeper.appservice.timeutil import now_ms
from gatekeeper.appservice.web.account_api import AccountApi
from gatekeeper.appservice.web.app import WebApi, create_web_app
from gatekeeper.appservice.web.pages import Pages
from gatekeeper.appservice.web.security import Cookies, Csrf, security_middleware
from gatekeeper.appservice.web.seed_api import SeedApi
from gatekeeper.bot.admin_room import AdminRoomError
from gatekeeper.bot.bot import AdminBot
from gatekeeper.bot.commands import Reply
from gatekeeper.bot.notices import NoticeBoard

log = logging.getLogger("gatekeeper")

# How long start-up waits for a homeserver that is still starting (e.g. beside us in compose).
HOMESERVER_WAIT_SECONDS = 60.0


class StartupError(Exception):
    """Start-up cannot go on; `exit_code` tells which edge failed."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


EXIT_CONFIG = 10
EXIT_DATABASE = 11
EXIT_HOMESERVER = 12


SWEEP_SECONDS = 60.0
# Retention is counted in days: an hourly sweep is soon enough.
RETENTION_SWEEP_SECONDS = 3600.0
# How long start-up waits for the encryption's delivery check (it goes on after that).
DELIVERY_WAIT_SECONDS = 10.0
# A process that got the active role but could not start it waits this long to try again.
RETAKE_SECONDS = 10.0


def derived_key(purpose: str, config: Config) -> str:
    """A key of its own for each purpose, so none of them equals the encryption key."""
    secret = config.security.encryption_keys[0].get_secret_value()
    return hashlib.sha256(f"gatekeeper {purpose}\0{secret}".encode()).hexdigest()


@dataclass(frozen=True)
class Core:
    """What every process has, active or standing by."""

    db: Database
    box: SecretBox
    store: RegistrationStore
    tokens: MailTokens
    registrations: Registrations
    mailer: Mailer
    mail: ApplicantMail
    decisions: Decisions
    accounts: AccountBackend
    gate: Gate
    moderation: Moderation
    two_factor: TwoFactorResets
    retention: Retention
    leadership: Leadership
    monitoring: Monitoring


class Gatekeeper:
    """Owns the process's objects: database, listeners, bot, and the background workers.

    Every process serves the web endpoint; the active one (see leadership.py) also runs
    the appservice listener, the admin-room bot, the mail outbox and the workers."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.core: Core | None = None
        self.appservice: GatekeeperAppService | None = None
        self.bot: AdminBot | None = None
        self.encryption: BotEncryption | None = None
        self._delivery_check: asyncio.Task[None] | None = None
        # The bot that takes the gate's room notes: set once the active role is up.
        self._noting_bot: AdminBot | None = None
        self.web_runner: web.AppRunner | None = None
        self.metrics_runner: web.AppRunner | None = None
        self.workers: list[Worker] = []
        # The workers with something to do after a request changes (not the expiry sweep).
        self._change_workers: list[Worker] = []
        self._standing_by: asyncio.Task[None] | None = None
        self._hashing = ThreadPoolExecutor(
            max_workers=os.cpu_count() or 1, thread_name_prefix="argon2"
        )

    @property
    def started(self) -> Core:
        if self.core is None:
            raise RuntimeError("Gatekeeper.start() has not run")
        return self.core

    @property
    def db(self) -> Database:
        return self.started.db

    @property
    def store(self) -> RegistrationStore:
        return self.started.store

    @property
    def registrations(self) -> Registrations:
        return self.started.registrations

    @property
    def accounts(self) -> AccountBackend:
        return self.started.accounts

    @property
    def mailer(self) -> Mailer:
        return self.started.mailer

    @property
    def role(self) -> str:
        return self.core.leadership.role if self.core is not None else "stopped"

    async def start(self) -> None:
        config = self.config
        db = await self._start_database()
        box = SecretBox(config.security)
        store = RegistrationStore(db)
        tokens = MailTokens(db)
        registrations = Registrations(store, on_change=lambda _: self._announce_changes())
        mailer = Mailer(
            config.smtp, db, box, on_wake=lambda: self._announce_changes(mail_only=True)
        )
        mail = ApplicantMail(config, tokens, mailer, Catalogue(), RateLimiter(db))
        leadership = leadership_for(config.database, db, on_changes=self._wake_workers)
        accounts = account_backend(config, SealedState(BotState(db), box))
        totp = TotpStore(db, box, issuer=config.homeserver.domain)
        sessions = Sessions(db, config.web)
        self.core = core = Core(
            db=db,
            box=box,
            store=store,
            tokens=tokens,
            registrations=registrations,
            mailer=mailer,
            mail=mail,
            decisions=Decisions(config.registration, registrations, mail),
            accounts=accounts,
            gate=Gate(db, config.registration, BotState(db), room_note=self._room_note),
            moderation=Moderation(config, db, store, registrations, accounts, sessions, totp),
            two_factor=TwoFactorResets(config, db, store, totp, sessions, mail),
            retention=Retention(db, config.retention),
            leadership=leadership,
            monitoring=Monitoring(config, db, leadership),
        )
        await core.accounts.start()

        # Active before the web endpoint opens: whatever it changes is heard at once.
        if await leadership.try_acquire():
            await self._become_active()
        else:
            log.info("Another Gatekeeper process is active; this one serves the web and waits")
        self._standing_by = asyncio.create_task(self._hold_active_role(), name="active-role")
        await self._open_web(self._web_app(core))
        log.info("Gatekeeper is ready (%s)", leadership.role)

    def _web_app(self, core: Core) -> web.Application:
        config = self.config
        # One hash per core at a time: more threads only hold more 19 MiB buffers at once.
        hasher = PasswordHasher(self._hashing)
        limiter = RateLimiter(core.db)
        signups = SignUps(
            config,
            core.registrations,
            core.store,
            core.accounts,
            hasher,
            core.box,
            core.mail,
            limiter,
            core.gate,
            AntiBot(config.antibot, derived_key("altcha", config), core.db),
            Captcha(config.antibot),
        )
        sessions = Sessions(core.db, config.web)
        accounts = Accounts(
            config,
            core.store,
            core.tokens,
            sessions,
            hasher,
            TotpStore(core.db, core.box, issuer=config.homeserver.domain),
            limiter,
            Lockout(
                core.db,
                config.security.lockout_failures,
                config.security.lockout_first_wait_seconds,
                config.security.lockout_max_wait_seconds,
            ),
            core.mail,
            core.accounts,
            core.box,
        )
        cookies = Cookies(config)
        csrf = Csrf(derived_key("csrf", config).encode())
        account_api = AccountApi(accounts, sessions, cookies, csrf)
        pages = Pages(
            config,
            core.mail.catalogue,
            core.registrations,
            core.store,
            core.tokens,
            signups,
            accounts,
            sessions,
            cookies,
            csrf,
            AccountDeletion(core.store, core.tokens, core.mail, core.moderation),
        )
        return create_web_app(
            WebApi(
                config,
                core.registrations,
                core.store,
                core.tokens,
                signups,
                core.decisions,
                core.moderation,
            ),
            account_api,
            pages,
            security_middleware(cookies, csrf, sessions),
            core.monitoring,
            SeedApi(
                SeedRegistrations(
                    config,
                    core.db,
                    core.registrations,
                    core.store,
                    signups,
                    core.decisions,
                    core.accounts,
                    core.mail,
                )
            ),
        )

    async def _open_web(self, app: web.Application) -> None:
        config = self.config
        # Against PostgreSQL several processes may share the port; with SQLite a second
        # process must fail to bind rather than write the same file.
        shared = not config.database.url.startswith("sqlite:")
        # aiohttp's keep-alive timer also runs until a connection's first request head is
        # whole, so it bounds how long a head may take to arrive (bodies: web_security).
        self.web_runner = web.AppRunner(
            app, access_log=None, keepalive_timeout=config.web.receive_timeout_seconds
        )
        await self.web_runner.setup()
        await web.TCPSite(
            self.web_runner, config.web.hostname, config.web.port, reuse_port=shared
        ).start()
        log.info("Web endpoint on %s:%d", config.web.hostname, config.web.port)
        if config.metrics.enabled:
            self.metrics_runner = web.AppRunner(self.started.monitoring.app(), access_log=None)
            await self.metrics_runner.setup()
            await web.TCPSite(
                self.metrics_runner, config.metrics.hostname, config.metrics.port
            ).start()
            log.info("Metrics on %s:%d", config.metrics.hostname, config.metrics.port)

    async def _hold_active_role(self) -> None:
        """Stand by until active; give the role up when its connection drops, and try again."""
        leadership = self.started.leadership
        while True:
            if not leadership.active:
                await leadership.acquire()
                try:
                    await self._become_active()
                except Exception:
                    log.exception("Cannot take over the active role")
                    await self._stand_down()
                    await leadership.close()
                    await asyncio.sleep(RETAKE_SECONDS)
                    continue
            await leadership.lost.wait()
            await self._stand_down()

    async def _become_active(self) -> None:
        config = self.config
        core = self.started
        self.appservice = appservice = GatekeeperAppService(config, TransactionLog(core.db))
        await appservice.start(config.appservice.hostname, config.appservice.port)
        log.info(
            "Listening for Synapse on %s:%d", config.appservice.hostname, config.appservice.port
        )
        try:
            await self._wait_for_homeserver()
            self.encryption, encryption_missing = await self._start_encryption(appservice, core)
            self.bot = bot = AdminBot(
                config,
                appservice.intent,
                BotState(core.db),
                core.store,
                core.decisions,
                core.gate,
                core.moderation,
                core.two_factor,
                RoomMessages(appservice.intent, self.encryption),
                self.encryption,
                encryption_missing,
            )
            appservice.matrix_event_handler(bot.handle_event)
            appservice.handlers_ready.set()
            # Early: Synapse retries what it held back while we were down, and marks us up.
            await self._ping_from_homeserver()
            await bot.start()
            if not core.accounts.can_join_users:
                await bot.join_newcomer_rooms()
        except MUnknownToken:
            raise StartupError(
                "the homeserver does not know our as_token: add registration.yaml to Synapse's "
                "app_service_config_files (regenerate it if the config's tokens changed)",
                EXIT_HOMESERVER,
            ) from None
        except AdminRoomError as error:
            raise StartupError(str(error), EXIT_HOMESERVER) from None
        except MatrixRequestError as error:
            raise StartupError(
                f"the homeserver refused a start-up step: {error}", EXIT_HOMESERVER
            ) from None
        self._noting_bot = bot
        notices = NoticeBoard(config, bot.messages, core.store, bot.room)
        provisioner = Provisioner(
            config,
            core.registrations,
            core.store,
            core.accounts,
            core.box,
            core.mail,
            bot.invite_newcomer,
            self._room_note,
        )
        ttl_ms = int(config.registration.request_ttl_hours * 3_600_000)
        sweep_seconds = min(SWEEP_SECONDS, ttl_ms / 4000)

        async def expire() -> float:
            await core.registrations.expire_older_than(now_ms() - ttl_ms)
            return sweep_seconds

        self._change_workers = [
            Worker("notices", notices.step),
            Worker("provisioning", provisioner.step),
        ]
        self.workers = [
            *self._change_workers,
            Worker("expiry", expire, sweep_seconds),
            Worker("retention", self.sweep_retention, RETENTION_SWEEP_SECONDS),
        ]
        for worker in self.workers:
            worker.start()
        await core.mailer.start()
        log.info("Active: admin room %s", bot.room.room_id)
        if self.encryption is not None:
            self._delivery_check = check = asyncio.create_task(
                self._check_encryption_delivery(bot, self.encryption), name="delivery-check"
            )
            # Usually done in a round trip. Until then Synapse may still drop to-device
            # messages (room keys), so the start waits a little for it.
            await asyncio.wait([check], timeout=DELIVERY_WAIT_SECONDS)
        appservice.ready = True

    async def sweep_retention(self) -> float:
        """Erase the personal data whose time is up (docs/privacy.md); the active process's
        worker runs it every hour."""
        core = self.started
        erased = await core.retention.sweep()
        for kind, count in vars(erased).items():
            core.monitoring.erased.labels(kind).inc(count)
        if any(vars(erased).values()):
            log.info(
                "Retention: erased %d closed requests, %d rate-limit counters, %d sent mails,"
                " %d ended blocks",
                erased.requests,
                erased.rate_limits,
                erased.mails,
                erased.blocks,
            )
        return RETENTION_SWEEP_SECONDS

    async def _check_encryption_delivery(self, bot: AdminBot, encryption: BotEncryption) -> None:
        """Synapse accepts the registration's encryption keys even without the features
        behind them: only a to-device message that never comes shows it."""
        try:
            problem = await encryption.check_delivery()
        except MatrixRequestError as error:
            problem = f"the homeserver refused a to-device message: {error}"
        if problem is not None:
            log.error("Gatekeeper cannot read end-to-end encrypted rooms: %s", problem)
            await bot.cannot_read_encrypted(problem)

    async def _start_encryption(
        self, appservice: GatekeeperAppService, core: Core
    ) -> tuple[BotEncryption | None, str | None]:
        """The bot's encryption, or None and why it cannot work (no reason when the config
        turns it off)."""
        if not self.config.admin_room.encryption:
            return None, None
        encryption = BotEncryption(
            appservice, core.db, SealedState(BotState(core.db), core.box), appservice.room_state
        )
        try:
            await encryption.start()
        except EncryptionUnavailable as error:
            log.warning("Gatekeeper cannot read or write end-to-end encrypted rooms: %s", error)
            return None, str(error)
        return encryption, None

    async def _room_note(self, text: str) -> None:
        """The gate's one-line notes: into the admin room while this process is active,
        dropped while it stands by."""
        bot = self._noting_bot
        if bot is not None and bot.room.room_id is not None:
            await bot.send(bot.room.room_id, Reply(text))

    def _wake_workers(self) -> None:
        for worker in self._change_workers:
            worker.wake()
        if self.core is not None:
            self.core.mailer.wake_sender()

    def _announce_changes(self, mail_only: bool = False) -> None:
        """After a commit: the notice, the queue or the outbox may have work."""
        leadership = self.started.leadership
        if not leadership.active:
            leadership.announce_changes()
        elif mail_only:
            self.started.mailer.wake_sender()
        else:
            self._wake_workers()

    async def _stand_down(self) -> None:
        """Stop what only the active process may do; the web endpoint goes on."""
        if self._delivery_check is not None:
            self._delivery_check.cancel()
            self._delivery_check = None
        for worker in self.workers:
            await worker.stop()
        self.workers = self._change_workers = []
        self._noting_bot = None
        if self.core is not None:
            await self.core.mailer.stop()
        if self.appservice is not None:
            await self.appservice.stop()
            self.appservice = None
        if self.encryption is not None:
            await self.encryption.stop()
            self.encryption = None
        self.bot = None

    async def _start_database(self) -> Database:
        db = create_database(self.config.database)
        try:
            await db.start()
            applied = await upgrade(db)
        except Exception as error:
            raise StartupError(f"database: {error}", EXIT_DATABASE) from error
        if applied:
            log.info("Database schema upgraded to version %d", applied[-1])
        return db

    async def _wait_for_homeserver(self) -> None:
        assert self.appservice is not None
        deadline = time.monotonic() + HOMESERVER_WAIT_SECONDS
        while True:
            try:
                await self.appservice.intent.versions()
                return
            except (TimeoutError, MatrixConnectionError, OSError) as error:
                if time.monotonic() > deadline:
                    raise StartupError(
                        f"homeserver.address: no homeserver answers at "
                        f"{self.config.homeserver.address} ({error})",
                        EXIT_HOMESERVER,
                    ) from None
                log.info("Waiting for the homeserver at %s", self.config.homeserver.address)
                await asyncio.sleep(1)

    async def _ping_from_homeserver(self) -> None:
        """Ask Synapse to reach us: proves the hs_token and address, and ends Synapse's
        back-off so events queued while we were down arrive now."""
        assert self.appservice is not None
        try:
            await self.appservice.ping_self()
        except MatrixRequestError as error:
            log.error(
                "Synapse cannot reach Gatekeeper at %s (%s): check appservice.address and "
                "that registration.yaml matches this config",
                self.config.appservice.address,
                error.message,
            )

    async def stop(self) -> None:
        if self._standing_by is not None:
            self._standing_by.cancel()
            await asyncio.wait([self._standing_by])
            self._standing_by = None
        # The web first: nothing it starts may find the workers gone.
        for runner in (self.web_runner, self.metrics_runner):
            if runner is not None:
                await runner.cleanup()
        self.web_runner = self.metrics_runner = None
        await self._stand_down()
        core, self.core = self.core, None
        if core is not None:
            await core.gate.stop()
            await core.monitoring.close()
            await core.accounts.close()
            # Closing its connection hands the active role to a waiting process.
            await core.leadership.close()
            await stop_database(core.db)
        self._hashing.shutdown(wait=False, cancel_futures=True)
        log.info("Gatekeeper stopped")
