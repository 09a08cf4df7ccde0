"""The running process: start-up in a fixed order, and a clean stop."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time

from aiohttp import web
from mautrix.errors import MatrixConnectionError, MatrixRequestError, MUnknownToken
from mautrix.util.async_db import Database

from appservice.accounts import Accounts
from appservice.antibot import AntiBot
from appservice.applicant_mail import ApplicantMail
from appservice.captcha import Captcha
from appservice.config import Config
from appservice.crypto import SecretBox
from appservice.database import create_database, upgrade
from appservice.decisions import Decisions
from appservice.gate import Gate
from appservice.i18n import Catalogue
from appservice.mailer import Mailer
from appservice.matrix import GatekeeperAppService
from appservice.pages import Pages
from appservice.passwords import PasswordHasher
from appservice.provisioner import Provisioner
from appservice.ratelimit import Lockout, RateLimiter
from appservice.registrations import RegistrationRequest, Registrations
from appservice.sessions import Sessions
from appservice.signup import SignUps
from appservice.state import BotState, TransactionLog
from appservice.synapse_admin import SynapseAdmin
from appservice.timeutil import now_ms
from appservice.totp import TotpStore
from appservice.web import WebApi, create_web_app
from appservice.web_account import AccountApi
from appservice.web_security import Cookies, Csrf, security_middleware
from appservice.worker import Worker
from bot.admin_room import AdminRoomError
from bot.bot import AdminBot
from bot.commands import Reply
from bot.notices import NoticeBoard

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


def derived_key(purpose: str, config: Config) -> str:
    """A key of its own for each purpose, so none of them equals the encryption key."""
    secret = config.security.encryption_keys[0].get_secret_value()
    return hashlib.sha256(f"gatekeeper {purpose}\0{secret}".encode()).hexdigest()


class Gatekeeper:
    """Owns the process's objects: database, listeners, bot, and the background workers."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.db: Database | None = None
        self.appservice: GatekeeperAppService | None = None
        self.bot: AdminBot | None = None
        self.registrations: Registrations | None = None
        self.synapse: SynapseAdmin | None = None
        self.mailer: Mailer | None = None
        self.web_runner: web.AppRunner | None = None
        self.workers: list[Worker] = []

    async def start(self) -> None:
        config = self.config
        self.db = await self._start_database()
        box = SecretBox(config.security)
        self.registrations = registrations = Registrations(self.db)
        resumed = await registrations.resume_interrupted()
        if resumed:
            log.info("Resumed %d interrupted account creations", resumed)
        self.mailer = mailer = Mailer(config.smtp, self.db, box)
        catalogue = Catalogue()
        mail = ApplicantMail(config, registrations, self.mailer, catalogue)
        decisions = Decisions(config.registration, registrations, mail)
        self.synapse = SynapseAdmin(
            config.homeserver, config.appservice.as_token.get_secret_value()
        )
        await self.synapse.start()

        self.appservice = GatekeeperAppService(config, TransactionLog(self.db))
        await self.appservice.start(config.appservice.hostname, config.appservice.port)
        log.info(
            "Listening for Synapse on %s:%d", config.appservice.hostname, config.appservice.port
        )
        gate = Gate(self.db, config.registration, BotState(self.db))
        self.bot = AdminBot(
            config, self.appservice.intent, BotState(self.db), registrations, decisions, gate
        )
        self.appservice.matrix_event_handler(self.bot.handle_event)
        await self._wait_for_homeserver()
        try:
            await self.bot.start()
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
        await self._ping_from_homeserver()

        hasher = PasswordHasher()
        limiter = RateLimiter(self.db)
        antibot = AntiBot(config.antibot, derived_key("altcha", config))
        signups = SignUps(
            config,
            registrations,
            self.synapse,
            hasher,
            box,
            mail,
            limiter,
            gate,
            antibot,
            Captcha(config.antibot),
        )
        bot = self.bot

        async def room_note(text: str) -> None:
            if bot.room.room_id is not None:
                await bot.send(bot.room.room_id, Reply(text))

        gate.room_note = room_note
        sessions = Sessions(self.db, config.web)
        accounts = Accounts(
            config,
            registrations,
            sessions,
            hasher,
            TotpStore(self.db, box, issuer=config.homeserver.domain),
            limiter,
            Lockout(
                self.db,
                config.security.lockout_failures,
                config.security.lockout_first_wait_seconds,
                config.security.lockout_max_wait_seconds,
            ),
            mail,
            self.synapse,
        )
        cookies = Cookies(config)
        csrf = Csrf(derived_key("csrf", config).encode())
        account_api = AccountApi(accounts, registrations, sessions, cookies, csrf)
        pages = Pages(config, catalogue, registrations, signups, accounts, sessions, cookies, csrf)
        app = create_web_app(
            WebApi(config, registrations, signups, decisions),
            account_api,
            pages,
            security_middleware(cookies, csrf, sessions, registrations),
        )
        notices = NoticeBoard(config, self.appservice.intent, registrations, self.bot.room)
        provisioner = Provisioner(
            config, registrations, self.synapse, box, mail, self.bot.invite_newcomer
        )
        ttl_ms = int(config.registration.request_ttl_hours * 3_600_000)

        sweep_seconds = min(SWEEP_SECONDS, ttl_ms / 4000)

        async def expire() -> float:
            await registrations.expire_older_than(now_ms() - ttl_ms)
            return sweep_seconds

        notice_worker = Worker("notices", notices.step)
        provisioning_worker = Worker("provisioning", provisioner.step)

        def on_change(_: RegistrationRequest) -> None:
            # After the commit: a transition's mail (confirmation, welcome, rejection) is
            # in the outbox now, and the notice or the queue may have work.
            notice_worker.wake()
            provisioning_worker.wake()
            mailer.wake()

        registrations.listeners.append(on_change)
        self.workers = [notice_worker, provisioning_worker, Worker("expiry", expire, sweep_seconds)]
        for worker in self.workers:
            worker.start()
        await self.mailer.start()
        # The web endpoint opens last: whatever it changes is heard by the workers.
        self.web_runner = web.AppRunner(app, access_log=None)
        await self.web_runner.setup()
        await web.TCPSite(self.web_runner, config.web.hostname, config.web.port).start()
        log.info("Web endpoint on %s:%d", config.web.hostname, config.web.port)

        self.appservice.ready = True
        log.info("Gatekeeper is ready; admin room %s", self.bot.room.room_id)

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
        for worker in self.workers:
            await worker.stop()
        self.workers = []
        if self.mailer is not None:
            await self.mailer.stop()
            self.mailer = None
        if self.web_runner is not None:
            await self.web_runner.cleanup()
            self.web_runner = None
        if self.synapse is not None:
            await self.synapse.close()
            self.synapse = None
        if self.appservice is not None:
            await self.appservice.stop()
            self.appservice = None
        if self.db is not None:
            await self.db.stop()
            self.db = None
        log.info("Gatekeeper stopped")
