"""TOTP second factor: seeds encrypted at rest, enrolment confirmed by a code, every code
once, and single-use recovery codes.

A code is accepted only for a time step beyond the last accepted one, claimed by one
atomic UPDATE, so a replayed or raced code is refused like a wrong one; `just_used()`
then tells the person (who gave the right password) to wait for the next code.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import pyotp
import segno
from mautrix.util.async_db import Database
from mautrix.util.async_db.connection import LoggingConnection

from gatekeeper.appservice.domain.registration_request import REQUEST_ID_ALPHABET
from gatekeeper.appservice.storage.crypto import SecretBox, TamperedSecret
from gatekeeper.appservice.storage.database import transaction
from gatekeeper.appservice.timeutil import now_ms

log = logging.getLogger("gatekeeper.totp")

STEP_SECONDS = 30
WINDOW_STEPS = 1  # one step either side absorbs clock drift and typing time
SECRET_LENGTH = 32  # base32 characters: 160 bits from pyotp's SystemRandom
CODE_RE = re.compile(r"[0-9]{6}")
RECOVERY_CODES = 10
# Four groups of four from the request IDs' alphabet (no 0/o, 1/l/i): about 79 bits each,
# so a plain hash of one cannot be reversed by trying them all.
RECOVERY_GROUPS, RECOVERY_GROUP_LENGTH = 4, 4


@dataclass(frozen=True)
class Enrolment:
    secret: str
    otpauth_uri: str
    qr_svg: str


def _normalize(code: str) -> str | None:
    """The six digits of a code as typed (spaces allowed), or None when it cannot be one."""
    digits = "".join(code.split())
    return digits if CODE_RE.fullmatch(digits) else None


def _recovery_hash(request_id: str, code: str) -> str:
    """The stored form of a recovery code as typed (any case, spaces and dashes ignored)."""
    typed = "".join(code.lower().replace("-", "").split())
    return hashlib.sha256(f"{request_id}:{typed}".encode()).hexdigest()


def _new_recovery_code() -> str:
    return "-".join(
        "".join(secrets.choice(REQUEST_ID_ALPHABET) for _ in range(RECOVERY_GROUP_LENGTH))
        for _ in range(RECOVERY_GROUPS)
    )


def _qr_svg(uri: str) -> str:
    buffer = io.BytesIO()
    segno.make(uri, error="m").save(
        buffer, kind="svg", xmldecl=False, svgns=True, nl=False, scale=4
    )
    return buffer.getvalue().decode("utf-8")


class TotpStore:
    """Each account's TOTP seed (active and pending) and the last time step it accepted."""

    def __init__(
        self,
        db: Database,
        box: SecretBox,
        issuer: str,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.box = box
        self.issuer = issuer
        self.now = now

    # --- enrolment -----------------------------------------------------------------------

    async def start_enrolment(self, request_id: str, account_name: str) -> Enrolment:
        """A fresh pending seed; the active one (if any) stays in force until confirmation."""
        secret = pyotp.random_base32(SECRET_LENGTH)
        await self.db.execute(
            "INSERT INTO totp (request_id, pending_secret_encrypted) VALUES ($1, $2)"
            " ON CONFLICT (request_id)"
            " DO UPDATE SET pending_secret_encrypted=excluded.pending_secret_encrypted",
            request_id,
            self.box.encrypt(secret),
        )
        return self._enrolment(secret, account_name)

    async def pending_enrolment(self, request_id: str, account_name: str) -> Enrolment | None:
        """The seed waiting for its confirming code, as it was shown: an app that scanned it
        keeps working until the enrolment is confirmed or started anew."""
        encrypted = await self.db.fetchval(
            "SELECT pending_secret_encrypted FROM totp WHERE request_id=$1", request_id
        )
        if encrypted is None:
            return None
        try:
            return self._enrolment(self.box.decrypt(encrypted), account_name)
        except TamperedSecret:
            log.warning("Pending TOTP seed of request %s cannot be decrypted", request_id)
            return None

    def _enrolment(self, secret: str, account_name: str) -> Enrolment:
        uri = pyotp.TOTP(secret, interval=STEP_SECONDS).provisioning_uri(
            name=account_name, issuer_name=self.issuer
        )
        return Enrolment(secret=secret, otpauth_uri=uri, qr_svg=_qr_svg(uri))

    async def confirm_enrolment(self, request_id: str, code: str) -> bool:
        """Make the pending seed active if `code` is valid for it; otherwise change nothing."""
        digits = _normalize(code)
        if digits is None:
            return False
        row = await self.db.fetchrow(
            "SELECT pending_secret_encrypted, last_step FROM totp WHERE request_id=$1",
            request_id,
        )
        if row is None or row["pending_secret_encrypted"] is None:
            return False
        pending = row["pending_secret_encrypted"]
        step = self._matching_step(request_id, pending, digits, int(row["last_step"]))
        if step is None:
            return False
        # Matching the ciphertext too: a re-enrolment started meanwhile must not be activated
        # by a code for the seed it replaced.
        claimed = await self.db.fetchval(
            "UPDATE totp SET secret_encrypted=pending_secret_encrypted,"
            " pending_secret_encrypted=NULL, last_step=$2"
            " WHERE request_id=$1 AND last_step < $2 AND pending_secret_encrypted=$3"
            " RETURNING request_id",
            request_id,
            step,
            pending,
        )
        return claimed is not None

    # --- use -----------------------------------------------------------------------------

    async def is_enabled(self, request_id: str) -> bool:
        active = await self.db.fetchval(
            "SELECT 1 FROM totp WHERE request_id=$1 AND secret_encrypted IS NOT NULL",
            request_id,
        )
        return active is not None

    async def verify(self, request_id: str, code: str) -> bool:
        """True once per valid code; wrong, replayed, raced or malformed codes all give False."""
        digits = _normalize(code)
        if digits is None:
            return False
        row = await self.db.fetchrow(
            "SELECT secret_encrypted, last_step FROM totp WHERE request_id=$1", request_id
        )
        if row is None or row["secret_encrypted"] is None:
            return False
        step = self._matching_step(
            request_id, row["secret_encrypted"], digits, int(row["last_step"])
        )
        if step is None:
            return False
        # The claim itself decides: of concurrent submissions only one moves last_step.
        claimed = await self.db.fetchval(
            "UPDATE totp SET last_step=$2 WHERE request_id=$1 AND last_step < $2"
            " RETURNING request_id",
            request_id,
            step,
        )
        return claimed is not None

    async def just_used(self, request_id: str, code: str) -> bool:
        """Whether `code` is the active seed's code of a step already accepted (at login or
        at enrolment) and still inside the window: the person should wait for the next."""
        digits = _normalize(code)
        if digits is None:
            return False
        row = await self.db.fetchrow(
            "SELECT secret_encrypted, last_step FROM totp WHERE request_id=$1", request_id
        )
        if row is None or row["secret_encrypted"] is None:
            return False
        # Matched as if nothing had been accepted yet, then compared with what was.
        step = self._matching_step(request_id, row["secret_encrypted"], digits, -1)
        return step is not None and step <= int(row["last_step"])

    async def disable(
        self, request_id: str, conn: LoggingConnection | Database | None = None
    ) -> bool:
        """The second factor goes, with its recovery codes (in `conn`'s transaction, if
        given); whether it was on."""
        on = conn or self.db
        await on.execute("DELETE FROM recovery_code WHERE request_id=$1", request_id)
        deleted = await on.fetchrow(
            "DELETE FROM totp WHERE request_id=$1 RETURNING secret_encrypted", request_id
        )
        return deleted is not None and deleted["secret_encrypted"] is not None

    # --- recovery codes ------------------------------------------------------------------

    async def new_recovery_codes(self, request_id: str) -> list[str]:
        """RECOVERY_CODES fresh codes, to be shown once; the earlier ones stop working."""
        codes = [_new_recovery_code() for _ in range(RECOVERY_CODES)]
        now = now_ms()
        async with transaction(self.db) as conn:
            await conn.execute("DELETE FROM recovery_code WHERE request_id=$1", request_id)
            for code in codes:
                await conn.execute(
                    "INSERT INTO recovery_code (code_hash, request_id, created_at)"
                    " VALUES ($1, $2, $3)",
                    _recovery_hash(request_id, code),
                    request_id,
                    now,
                )
        return codes

    async def use_recovery_code(self, request_id: str, code: str) -> bool:
        """True once per recovery code of this account; the DELETE decides a race."""
        used = await self.db.fetchval(
            "DELETE FROM recovery_code WHERE code_hash=$1 AND request_id=$2 RETURNING request_id",
            _recovery_hash(request_id, code),
            request_id,
        )
        return used is not None

    async def recovery_codes_left(self, request_id: str) -> int:
        left = await self.db.fetchval(
            "SELECT COUNT(*) FROM recovery_code WHERE request_id=$1", request_id
        )
        return int(left or 0)

    # --- internals -----------------------------------------------------------------------

    def _matching_step(
        self, request_id: str, encrypted: str, digits: str, last_step: int
    ) -> int | None:
        """The newest step within the window, beyond `last_step`, whose code is `digits`."""
        try:
            secret = self.box.decrypt(encrypted)
        except TamperedSecret:
            log.warning("TOTP seed of request %s cannot be decrypted; refusing", request_id)
            return None
        totp = pyotp.TOTP(secret, interval=STEP_SECONDS)
        current = int(self.now() // STEP_SECONDS)
        matched = None
        for step in range(current - WINDOW_STEPS, current + WINDOW_STEPS + 1):
            # Compare every candidate so the answer's timing does not reveal which step hit.
            if (
                step >= 0
                and hmac.compare_digest(totp.generate_otp(step), digits)
                and step > last_step
            ):
                matched = step
        # The newest match: claiming it also burns the older steps the same code could match.
        return matched
