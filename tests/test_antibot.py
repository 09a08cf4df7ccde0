"""The sign-up bot checks: ALTCHA proof of work (with replay refusal) and the honeypot."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import altcha
import pytest

from appservice.antibot import CHALLENGE_TTL, HONEYPOT_FIELD, AntiBot
from appservice.config import AntibotConfig

KEY = "test-hmac-key-not-secret"
MAX_NUMBER = 1000


def antibot(pow_on: bool = True, honeypot: bool = False) -> AntiBot:
    config = AntibotConfig(
        proof_of_work=pow_on, proof_of_work_max_number=MAX_NUMBER, honeypot=honeypot
    )
    return AntiBot(config, KEY)


def solve(challenge: dict[str, Any], **changes: Any) -> str:
    """What the widget posts: base64 JSON of the challenge with the number found."""
    solution = altcha.solve_challenge_v1(
        challenge["challenge"], challenge["salt"], challenge["algorithm"], challenge["maxNumber"]
    )
    assert solution is not None
    payload = {
        "algorithm": challenge["algorithm"],
        "challenge": challenge["challenge"],
        "number": solution.number,
        "salt": challenge["salt"],
        "signature": challenge["signature"],
        "took": 12,
    }
    payload.update(changes)
    return encode(payload)


def encode(value: Any) -> str:
    return base64.b64encode(json.dumps(value).encode()).decode()


def test_challenge_has_the_widget_fields_and_expires_in_twenty_minutes() -> None:
    challenge = antibot().challenge()
    assert set(challenge) == {"algorithm", "challenge", "maxNumber", "salt", "signature"}
    assert challenge["algorithm"] == "SHA-256"
    assert challenge["maxNumber"] == MAX_NUMBER
    json.dumps(challenge)
    expires = int(challenge["salt"].split("expires=")[1].rstrip("&"))
    assert abs(expires - (time.time() + CHALLENGE_TTL.total_seconds())) < 5


def test_pow_refuses_a_body_without_a_solution() -> None:
    assert not antibot().verify({})
    assert not antibot().verify({"userName": "alice"})


def test_pow_accepts_a_solved_challenge_once() -> None:
    checks = antibot()
    payload = solve(checks.challenge())
    assert checks.verify({"altcha": payload})
    assert not checks.verify({"altcha": payload})


def test_pow_accepts_each_fresh_challenge() -> None:
    checks = antibot()
    for _ in range(3):
        assert checks.verify({"altcha": solve(checks.challenge())})


def test_pow_refuses_a_tampered_solution() -> None:
    checks = antibot()
    challenge = checks.challenge()
    good = json.loads(base64.b64decode(solve(challenge)))
    assert not checks.verify({"altcha": encode({**good, "number": good["number"] + 1})})
    assert not checks.verify({"altcha": encode({**good, "signature": "0" * 64})})
    assert not checks.verify({"altcha": encode({**good, "salt": good["salt"] + "x"})})
    # The untouched solution still passes: the refusals above did not use it up.
    assert checks.verify({"altcha": encode(good)})


def test_pow_refuses_a_challenge_signed_with_another_key() -> None:
    other = AntiBot(AntibotConfig(proof_of_work=True, proof_of_work_max_number=MAX_NUMBER), "x")
    assert not antibot().verify({"altcha": solve(other.challenge())})


def test_pow_refuses_an_expired_challenge() -> None:
    expired = altcha.create_challenge_v1(
        algorithm="SHA-256",
        max_number=MAX_NUMBER,
        hmac_key=KEY,
        expires=datetime.now(UTC) - timedelta(seconds=1),
    ).to_dict()
    assert not antibot().verify({"altcha": solve(expired)})


def test_pow_refuses_a_challenge_that_outlives_the_ttl() -> None:
    # Correctly signed, but it would outlive the replay memory: never issued by us.
    for expires in (datetime.now(UTC) + CHALLENGE_TTL * 3, None):
        challenge = altcha.create_challenge_v1(
            algorithm="SHA-256", max_number=MAX_NUMBER, hmac_key=KEY, expires=expires
        ).to_dict()
        assert not antibot().verify({"altcha": solve(challenge)})


def test_pow_refuses_a_solution_once_time_has_passed(monkeypatch: pytest.MonkeyPatch) -> None:
    checks = antibot()
    payload = solve(checks.challenge())
    later = time.time() + CHALLENGE_TTL.total_seconds() + 1
    monkeypatch.setattr(time, "time", lambda: later)
    assert not checks.verify({"altcha": payload})


@pytest.mark.parametrize(
    "value",
    [
        "",
        None,
        42,
        ["x"],
        "not-base64",
        "%%%%",
        "aGVsbG8=",  # base64 of "hello", not JSON
        base64.b64encode(b"\xff\xfe").decode(),
        encode(None),
        encode(7),
        encode("text"),
        encode([1, 2]),
        encode({}),
        encode({"algorithm": "SHA-256"}),
        encode({"algorithm": "SHA-256", "challenge": 1, "number": "x", "salt": [], "signature": 2}),
        encode({"algorithm": "MD5", "challenge": "a", "number": 1, "salt": "b", "signature": "c"}),
        encode({"algorithm": ["SHA-256"], "challenge": "a", "number": 1, "salt": "b"}),
        encode({"algorithm": "SHA-256", "challenge": "a", "number": True, "salt": "b?e=1&"}),
        encode({"algorithm": "SHA-256", "challenge": "a", "number": 1, "salt": "b?expires=x&"}),
        encode("[" * 5000),
        "A" * 100_000,
    ],
)
def test_pow_refuses_garbage_without_raising(value: Any) -> None:
    assert not antibot().verify({"altcha": value})


def test_honeypot_refuses_a_filled_field() -> None:
    checks = antibot(pow_on=False, honeypot=True)
    assert not checks.verify({HONEYPOT_FIELD: "http://spam"})
    assert not checks.verify({"website": " "})


def test_honeypot_accepts_an_empty_or_absent_field() -> None:
    checks = antibot(pow_on=False, honeypot=True)
    assert checks.verify({"website": ""})
    assert checks.verify({})


def test_both_checks_together() -> None:
    checks = antibot(pow_on=True, honeypot=True)
    challenge = checks.challenge()
    assert not checks.verify({"website": "http://spam", "altcha": solve(challenge)})
    assert checks.verify({"website": "", "altcha": solve(challenge)})


def test_both_off_accepts_anything() -> None:
    checks = antibot(pow_on=False, honeypot=False)
    assert checks.verify({"website": "http://spam"})
    assert checks.verify({"altcha": "garbage"})
    assert checks.verify({})


def test_pow_needs_an_hmac_key() -> None:
    with pytest.raises(ValueError, match="HMAC key"):
        AntiBot(AntibotConfig(proof_of_work=True), "")
    AntiBot(AntibotConfig(proof_of_work=False), "")


def test_replay_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("appservice.antibot.REPLAY_CAPACITY", 2)
    checks = antibot()
    payloads = [solve(checks.challenge()) for _ in range(3)]
    for payload in payloads:
        assert checks.verify({"altcha": payload})
    assert len(checks._used) == 2
    # The oldest was dropped to make room; the newest are still refused.
    assert not checks.verify({"altcha": payloads[2]})
