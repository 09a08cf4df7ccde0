"""Bot checks for the sign-up form: a self-hosted ALTCHA proof of work and a honeypot field.

Challenges are issued and verified here with an HMAC key; no third party is contacted.
"""

from __future__ import annotations

import base64
import json
import time
from collections import OrderedDict
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import altcha
from altcha.v1 import AlgoType

from appservice.config import AntibotConfig

# The browser side is the vendored ALTCHA widget 2.3.0 (npm "altcha", dist_external build):
# appservice/static/altcha.min.js, altcha-worker.js and altcha.css. Widget 2.x speaks the
# v1 challenge format (algorithm, challenge, maxNumber, salt, signature), hence the *_v1
# functions of the server library; widget 3.x speaks only the newer v2 format.
WIDGET_VERSION: Final = "2.3.0"

HONEYPOT_FIELD: Final = "website"
PAYLOAD_FIELD: Final = "altcha"
CHALLENGE_TTL: Final = timedelta(minutes=20)
REPLAY_CAPACITY: Final = 10_000

ALGORITHM: Final[AlgoType] = "SHA-256"
# A genuine payload is about 350 characters; anything far larger is not worth decoding.
MAX_PAYLOAD_CHARS: Final = 2048


class AntiBot:
    def __init__(self, config: AntibotConfig, hmac_key: str) -> None:
        if config.proof_of_work and not hmac_key:
            raise ValueError("the proof of work needs an HMAC key")
        self.config = config
        self._hmac_key = hmac_key
        # Signatures of accepted solutions -> when their challenge expires (Unix seconds),
        # oldest first, so that each solution is good for one sign-up only.
        self._used: OrderedDict[str, float] = OrderedDict()

    def challenge(self) -> dict[str, Any]:
        """A fresh challenge for the widget, refused by verify() once CHALLENGE_TTL is over."""
        issued = altcha.create_challenge_v1(
            algorithm=ALGORITHM,
            max_number=self.config.proof_of_work_max_number,
            hmac_key=self._hmac_key,
            expires=datetime.now(UTC) + CHALLENGE_TTL,
        )
        return issued.to_dict()

    def verify(self, body: Mapping[str, Any]) -> bool:
        """Whether a sign-up body passes the enabled checks; malformed input fails them."""
        if self.config.honeypot and body.get(HONEYPOT_FIELD) not in (None, ""):
            return False
        if self.config.proof_of_work:
            return self._verify_solution(body.get(PAYLOAD_FIELD))
        return True

    def _verify_solution(self, encoded: object) -> bool:
        payload = _decode(encoded)
        if payload is None:
            return False
        _, expires, _ = payload.parse_salt()
        now = time.time()
        # Only challenges like ours, whose expiry is at most the TTL away (a minute of slack
        # for the clock), so no solution outlives its entry in the replay set.
        if expires is None or not now < expires <= now + CHALLENGE_TTL.total_seconds() + 60:
            return False
        verified, _ = altcha.verify_solution_v1(payload, self._hmac_key, check_expires=True)
        if not verified:
            return False
        self._forget_expired(now)
        if payload.signature in self._used:
            return False
        self._used[payload.signature] = expires
        while len(self._used) > REPLAY_CAPACITY:
            self._used.popitem(last=False)
        return True

    def _forget_expired(self, now: float) -> None:
        # Acceptance order is nearly expiry order; a straggler stays until the cap drops it.
        while self._used:
            signature, expires = next(iter(self._used.items()))
            if expires > now:
                break
            del self._used[signature]


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
    if not all(isinstance(text, str) and text for text in (challenge, salt, signature)):
        return None
    return altcha.PayloadV1(ALGORITHM, challenge, number, salt, signature)
