"""Outgoing mail: a persistent outbox in the database, sent over SMTP with retries.

Callers enqueue in the transaction of the change the mail tells of; a background task
sends it, and keeps retrying with back-off until the SMTP server takes it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr

import aiosmtplib
from mautrix.util.async_db import Database
from mautrix.util.async_db.connection import LoggingConnection

from gatekeeper.appservice.config import SmtpConfig
from gatekeeper.appservice.runtime.worker import Worker
from gatekeeper.appservice.storage.crypto import SecretBox, TamperedSecret
from gatekeeper.appservice.timeutil import now_ms

log = logging.getLogger("gatekeeper.mailer")

# The background task looks at the outbox at least this often, so that mail queued by
# another process (which cannot wake us) still goes out soon.
MAX_IDLE_SECONDS = 30.0
MAX_ERROR_LENGTH = 300
# A send is a handful of SMTP round trips, each bounded by the timeout; a claim older
# than this belongs to a process that died mid-send, and the mail is tried again.
CLAIM_TIMEOUTS = 4

SendFailure = (OSError, aiosmtplib.SMTPException, TimeoutError, ValueError, TamperedSecret)


def mask_address(address: str) -> str:
    """`ann@example.org` as `a…@example.org`: enough to tell mails apart in a log."""
    local, at, domain = parseaddr(address)[1].rpartition("@")
    return f"{local[:1]}…@{domain}" if at else "…"


class Mailer:
    """`on_wake` hears that mail was queued (wake()): our own sender by default, or what
    passes the news on to the active process."""

    def __init__(
        self,
        config: SmtpConfig,
        db: Database,
        box: SecretBox,
        on_wake: Callable[[], None] | None = None,
    ) -> None:
        self._config = config
        self._db = db
        self._box = box
        self._sending = asyncio.Lock()
        # The mail being sent right now and the time its claim runs to, if any.
        self._in_hand: tuple[str, int] | None = None
        # A failed round (the database down for a moment) is retried: the mail is safe in it.
        self._sender = Worker("mail sender", self._round, MAX_IDLE_SECONDS)
        # make_msgid() would otherwise ask DNS for our host name, blocking the loop.
        sender_domain = parseaddr(config.from_address)[1].rpartition("@")[2]
        self._msgid_domain = sender_domain or "gatekeeper.invalid"
        self._on_wake = on_wake or self.wake_sender

    async def enqueue(
        self, conn: LoggingConnection | Database, recipient: str, subject: str, body: str
    ) -> None:
        """Queue a mail on `conn`, so that it exists if and only if the caller's change commits.

        The caller calls wake() once that commit is done: woken earlier, the sender would not
        see the row yet (on PostgreSQL) and would sleep until its next round."""
        now = now_ms()
        await conn.execute(
            """INSERT INTO mail_outbox
                   (id, recipient, subject, body, created_at, attempts, next_attempt_at)
               VALUES ($1, $2, $3, $4, $5, 0, $5)""",
            secrets.token_hex(8),
            recipient,
            subject,
            # The body may hold single-use links: never plaintext at rest.
            self._box.encrypt(body),
            now,
        )

    def wake(self) -> None:
        self._on_wake()

    def wake_sender(self) -> None:
        self._sender.wake()

    async def pending_count(self) -> int:
        return int(
            await self._db.fetchval("SELECT COUNT(*) FROM mail_outbox WHERE sent_at IS NULL")
        )

    async def send_due(self) -> int:
        """Try every unsent mail that is due, oldest first; return how many were sent."""
        async with self._sending:
            rows = await self._db.fetch(
                """SELECT id, recipient, subject, body, attempts, next_attempt_at
                   FROM mail_outbox WHERE sent_at IS NULL AND next_attempt_at <= $1
                   ORDER BY created_at, id""",
                now_ms(),
            )
            sent = 0
            for row in rows:
                # Set before claiming and left set if a stop cancels this round (even
                # mid-claim): stop() gives back a claim that is still ours.
                claim = (row["id"], now_ms() + int(self._config.timeout * CLAIM_TIMEOUTS * 1000))
                self._in_hand = claim
                if not await self._claim(*claim, row["next_attempt_at"]):
                    self._in_hand = None
                    continue
                try:
                    message = self._message(row["recipient"], row["subject"], row["body"])
                    await self._send(message)
                except SendFailure as error:
                    await self._failed(row["id"], row["recipient"], row["attempts"] + 1, error)
                    self._in_hand = None
                    continue
                await self._db.execute(
                    "UPDATE mail_outbox SET sent_at = $1, body = '' WHERE id = $2",
                    now_ms(),
                    row["id"],
                )
                self._in_hand = None
                sent += 1
                log.info("Sent mail %s (%r)", row["id"], row["subject"])
                log.debug("Mail %s went to %s", row["id"], row["recipient"])
            return sent

    async def _claim(self, mail_id: str, until: int, seen_next_attempt_at: int) -> bool:
        """Push the mail's next attempt out while we send it, unless another process did."""
        claimed = await self._db.fetchval(
            """UPDATE mail_outbox SET next_attempt_at = $1
               WHERE id = $2 AND sent_at IS NULL AND next_attempt_at = $3
               RETURNING id""",
            until,
            mail_id,
            seen_next_attempt_at,
        )
        return claimed is not None

    def _message(self, recipient: str, subject: str, encrypted_body: str) -> EmailMessage:
        message = EmailMessage()
        message["From"] = self._config.from_address
        message["To"] = recipient
        message["Subject"] = subject
        message["Date"] = formatdate(localtime=False)
        message["Message-ID"] = make_msgid(domain=self._msgid_domain)
        message.set_content(self._box.decrypt(encrypted_body), charset="utf-8")
        return message

    async def _send(self, message: EmailMessage) -> None:
        config = self._config
        username = config.username
        password = config.password.get_secret_value() if config.password else None
        await aiosmtplib.send(
            message,
            hostname=config.hostname,
            port=config.port,
            username=username if username and password is not None else None,
            password=password if username else None,
            use_tls=config.security == "tls",
            # False, not None: None would let aiosmtplib upgrade on its own when offered.
            start_tls=config.security == "starttls",
            timeout=config.timeout,
        )

    async def _failed(self, mail_id: str, recipient: str, attempts: int, error: Exception) -> None:
        config = self._config
        # Capped exponent: the delay is capped anyway, and 2**attempts must not overflow.
        delay = min(
            config.retry_initial_seconds * 2 ** min(attempts - 1, 60), config.retry_max_seconds
        )
        address = parseaddr(recipient)[1]
        # SMTP replies may quote the recipient; the log and the row keep a masked form.
        detail = f"{type(error).__name__}: {error}"
        if address:
            detail = detail.replace(address, mask_address(address))
        detail = detail[:MAX_ERROR_LENGTH]
        await self._db.execute(
            """UPDATE mail_outbox SET attempts = $1, last_error = $2, next_attempt_at = $3
               WHERE id = $4""",
            attempts,
            detail,
            now_ms() + int(delay * 1000),
            mail_id,
        )
        log.warning(
            "Could not send mail %s (attempt %d), trying again in %.0f s: %s",
            mail_id,
            attempts,
            delay,
            detail,
        )
        log.debug("Mail %s is for %s", mail_id, recipient)

    async def _seconds_until_due(self) -> float:
        earliest = await self._db.fetchval(
            "SELECT MIN(next_attempt_at) FROM mail_outbox WHERE sent_at IS NULL"
        )
        if earliest is None:
            return MAX_IDLE_SECONDS
        return min(max((int(earliest) - now_ms()) / 1000, 0.0), MAX_IDLE_SECONDS)

    async def _round(self) -> float:
        """One round of the sender: what is due goes out; then the seconds until the next."""
        await self.send_due()
        return await self._seconds_until_due()

    async def start(self) -> None:
        self._sender.start()

    async def stop(self) -> None:
        await self._sender.stop()
        claim, self._in_hand = self._in_hand, None
        if claim is not None:
            # Stopped mid-send: give the claim back (if it is still ours), so the next
            # process or our next start tries at once instead of waiting it out.
            mail_id, until = claim
            await self._db.execute(
                "UPDATE mail_outbox SET next_attempt_at = $1"
                " WHERE id = $2 AND sent_at IS NULL AND next_attempt_at = $3",
                now_ms(),
                mail_id,
                until,
            )
