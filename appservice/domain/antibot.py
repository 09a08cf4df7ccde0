"""Bot checks for the sign-up form: a self-hosted ALTCHA proof of work and a honeypot field.

Challenges are issued and verified here with an HMAC key; no third party is contacted.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TypeGuard

import altcha
from altcha.v1 import AlgoType
from mautrix.util.async_db import Database

from gatekeeper.appservice.config import AntibotConfig
from gatekeeper.appservice.domain.errors import ProofOfWorkFailed, SignUpRefused

# The browser side is the vendored ALTCHA widget 2.3.0 (npm "altcha", dist_external build):
# appservice/static/altcha.min.js, altcha-worker.js and altcha.css. Widget 2.x speaks the
# v1 challenge format (algorithm, challenge, maxNumber, salt, signature), hence the *_v1
# functions of the server library; widget 3.x speaks only the newer v2 format.
WIDGET_VERSION: Final = "2.3.0"

HONEYPOT_FIELD: Final = "website"
PAYLOAD_FIELD: Final = "altcha"
CHALLENGE_TTL: Final = timedelta(minutes=20)

# What the API says of the `altcha` field when the proof of work fails.
POW_MISSING: Final = (
    "is required: solve a challenge from GET /api/antibot/challenge and send its solution"
)
POW_INVALID: Final = (
    "is not a valid solution (wrong, expired or already used): solve a new challenge"
)

ALGORITHM: Final[AlgoType] = "SHA-256"
# A genuine payload is about 350 characters; anything far larger is not worth decoding.
MAX_PAYLOAD_CHARS: Final = 2048


class AntiBot:
    def __init__(self, config: AntibotConfig, hmac_key: str, db: Database) -> None:
        if config.proof_of_work and not hmac_key:
            raise ValueError("the proof of work needs an HMAC key")
        self.config = config
        self._hmac_key = hmac_key
        # Solutions already used, shared by every worker process (migration 007).
        self._db = db

    def challenge(self) -> dict[str, Any]:
        """A fresh challenge for the widget, refused by verify() once CHALLENGE_TTL is over."""
        # altcha's keyword overload of create_challenge forgets its parameters' defaults.
        issued: altcha.ChallengeV1 = altcha.create_challenge_v1(  # type: ignore[call-overload]
            algorithm=ALGORITHM,
            max_number=self.config.proof_of_work_max_number,
            hmac_key=self._hmac_key,
            expires=datetime.now(UTC) + CHALLENGE_TTL,
        )
        return issued.to_dict()

    def check_honeypot(self, body: Mapping[str, Any]) -> None:
        """Raise SignUpRefused (the one neutral refusal) if the honeypot is on and filled in:
        no database, so it comes before anything that costs."""
        if self.config.honeypot and body.get(HONEYPOT_FIELD) not in (None, ""):
            raise SignUpRefused("the honeypot field was filled in")

    async def check_proof_of_work(self, body: Mapping[str, Any]) -> None:
        """Raise ProofOfWorkFailed, which says why, if the proof of work is on and the body's
        solution is missing, wrong, expired or used (it is recorded as used if not)."""
        if not self.config.proof_of_work:
            return
        encoded = body.get(PAYLOAD_FIELD)
        if encoded is None or encoded == "":
            raise ProofOfWorkFailed(POW_MISSING)
        if not await self._verify_solution(encoded):
            raise ProofOfWorkFailed(POW_INVALID)

    async def _verify_solution(self, encoded: object) -> bool:
        payload = _decode(encoded)
        if payload is None:
            return False
        _, expires, _ = payload.parse_salt()
        now = time.time()
        # Only challenges like ours, whose expiry is at most the TTL away (a minute of slack
        # for the clock), so no solution outlives its row in the table of used ones.
        if expires is None or not now < expires <= now + CHALLENGE_TTL.total_seconds() + 60:
            return False
        verified, _ = altcha.verify_solution_v1(payload, self._hmac_key, check_expires=True)
        return verified and await self._first_use(payload.signature, expires, now)

    async def _first_use(self, signature: str, expires: float, now: float) -> bool:
        """Record the solution; False if a sign-up (through any process) already used it."""
        await self._db.execute("DELETE FROM altcha_solution WHERE expires_at < $1", int(now))
        claimed = await self._db.fetchval(
            "INSERT INTO altcha_solution (signature, expires_at) VALUES ($1, $2)"
            " ON CONFLICT (signature) DO NOTHING RETURNING signature",
            signature,
            int(expires) + 1,
        )
        return claimed is not None


def _is_text(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and bool(value)


def _decode(encoded: object) -> altcha.PayloadV1 | None:
    """The widget's base64 JSON payload, or None unless every field has the right type."""
    if not isinstance(encoded, str) or not encoded or len(encoded) > MAX_PAYLOAD_CHARS:
        return None
    try:
        data = json.loads(base64.b64decode(encoded, validate=True))
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or data.get("algorithm") != ALGORITHM:
        return None
    number = data.get("number")
    challenge, salt, signature = (data.get(key) for key in ("challenge", "salt", "signature"))
    # bool is an int to Python but not a number to the widget.
    if type(number) is not int or number < 0:
        return None
    if not (_is_text(challenge) and _is_text(salt) and _is_text(signature)):
        return None
    return altcha.PayloadV1(ALGORITHM, challenge, number, salt, signature)
