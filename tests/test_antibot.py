"""The sign-up bot checks: ALTCHA proof of work (with replay refusal) and the honeypot."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import altcha
import pytest
from mautrix.util.async_db import Database

from gatekeeper.appservice.config import AntibotConfig
from gatekeeper.appservice.domain.antibot import (
    CHALLENGE_TTL,
    HONEYPOT_FIELD,
    POW_INVALID,
    POW_MISSING,
    AntiBot,
)
from gatekeeper.appservice.domain.errors import ProofOfWorkFailed, SignUpRefused

KEY = "test-hmac-key-not-secret"
MAX_NUMBER = 1000


def antibot(db: Database, pow_on: bool = True, honeypot: bool = False) -> AntiBot:
    config = AntibotConfig(
        proof_of_work=pow_on, proof_of_work_max_number=MAX_NUMBER, honeypot=honeypot
    )
    return AntiBot(config, KEY, db)


async def check(checks: AntiBot, body: dict[str, Any]) -> None:
    """Both checks, in the sign-up's order."""
    checks.check_honeypot(body)
    await checks.check_proof_of_work(body)


async def passes(checks: AntiBot, body: dict[str, Any]) -> bool:
    try:
        await check(checks, body)
    except SignUpRefused:
        return False
    return True


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


async def test_challenge_has_the_widget_fields_and_expires_in_twenty_minutes(db: Database) -> None:
    challenge = antibot(db).challenge()
    assert set(challenge) == {"algorithm", "challenge", "maxNumber", "salt", "signature"}
    assert challenge["algorithm"] == "SHA-256"
    assert challenge["maxNumber"] == MAX_NUMBER
    json.dumps(challenge)
    expires = int(challenge["salt"].split("expires=")[1].rstrip("&"))
    assert abs(expires - (time.time() + CHALLENGE_TTL.total_seconds())) < 5


async def test_pow_refuses_a_body_without_a_solution(db: Database) -> None:
    assert not await passes(antibot(db), {})
    assert not await passes(antibot(db), {"userName": "alice"})


async def test_pow_says_whether_the_solution_is_missing_or_wrong(db: Database) -> None:
    checks = antibot(db, honeypot=True)
    for missing in ({}, {"altcha": ""}):
        with pytest.raises(ProofOfWorkFailed) as caught:
            await check(checks, missing)
        assert str(caught.value) == POW_MISSING
    payload = solve(checks.challenge())
    await check(checks, {"altcha": payload})
    for wrong in (payload, "garbage"):  # used up, or not a solution at all
        with pytest.raises(ProofOfWorkFailed) as caught:
            await check(checks, {"altcha": wrong})
        assert str(caught.value) == POW_INVALID
    # The honeypot stays a silent, neutral refusal: a bot must not learn what it tripped.
    with pytest.raises(SignUpRefused) as refused:
        await check(checks, {"website": "http://spam", "altcha": solve(checks.challenge())})
    assert not isinstance(refused.value, ProofOfWorkFailed)


async def test_pow_accepts_a_solved_challenge_once(db: Database) -> None:
    checks = antibot(db)
    payload = solve(checks.challenge())
    assert await passes(checks, {"altcha": payload})
    assert not await passes(checks, {"altcha": payload})


async def test_pow_accepts_each_fresh_challenge(db: Database) -> None:
    checks = antibot(db)
    for _ in range(3):
        assert await passes(checks, {"altcha": solve(checks.challenge())})


async def test_pow_refuses_a_tampered_solution(db: Database) -> None:
    checks = antibot(db)
    challenge = checks.challenge()
    good = json.loads(base64.b64decode(solve(challenge)))
    assert not await passes(checks, {"altcha": encode({**good, "number": good["number"] + 1})})
    assert not await passes(checks, {"altcha": encode({**good, "signature": "0" * 64})})
    assert not await passes(checks, {"altcha": encode({**good, "salt": good["salt"] + "x"})})
    # The untouched solution still passes: the refusals above did not use it up.
    assert await passes(checks, {"altcha": encode(good)})


async def test_pow_refuses_a_challenge_signed_with_another_key(db: Database) -> None:
    config = AntibotConfig(proof_of_work=True, proof_of_work_max_number=MAX_NUMBER)
    other = AntiBot(config, "x", db)
    assert not await passes(antibot(db), {"altcha": solve(other.challenge())})


async def test_pow_refuses_an_expired_challenge(db: Database) -> None:
    # altcha's keyword overload of create_challenge forgets its parameters' defaults.
    expired = altcha.create_challenge_v1(  # type: ignore[call-overload]
        algorithm="SHA-256",
        max_number=MAX_NUMBER,
        hmac_key=KEY,
        expires=datetime.now(UTC) - timedelta(seconds=1),
    ).to_dict()
    assert not await passes(antibot(db), {"altcha": solve(expired)})


async def test_pow_refuses_a_challenge_that_outlives_the_ttl(db: Database) -> None:
    # Correctly signed, but it would outlive the replay memory: never issued by us.
    for expires in (datetime.now(UTC) + CHALLENGE_TTL * 3, None):
        challenge = altcha.create_challenge_v1(  # type: ignore[call-overload]
            algorithm="SHA-256", max_number=MAX_NUMBER, hmac_key=KEY, expires=expires
        ).to_dict()
        assert not await passes(antibot(db), {"altcha": solve(challenge)})


async def test_pow_refuses_a_solution_once_time_has_passed(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks = antibot(db)
    payload = solve(checks.challenge())
    later = time.time() + CHALLENGE_TTL.total_seconds() + 1
    monkeypatch.setattr(time, "time", lambda: later)
    assert not await passes(checks, {"altcha": payload})


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
async def test_pow_refuses_garbage_without_raising(db: Database, value: Any) -> None:
    assert not await passes(antibot(db), {"altcha": value})


async def test_honeypot_refuses_a_filled_field(db: Database) -> None:
    checks = antibot(db, pow_on=False, honeypot=True)
    assert not await passes(checks, {HONEYPOT_FIELD: "http://spam"})
    assert not await passes(checks, {"website": " "})


async def test_honeypot_accepts_an_empty_or_absent_field(db: Database) -> None:
    checks = antibot(db, pow_on=False, honeypot=True)
    assert await passes(checks, {"website": ""})
    assert await passes(checks, {})


async def test_both_checks_together(db: Database) -> None:
    checks = antibot(db, pow_on=True, honeypot=True)
    challenge = checks.challenge()
    assert not await passes(checks, {"website": "http://spam", "altcha": solve(challenge)})
    assert await passes(checks, {"website": "", "altcha": solve(challenge)})


async def test_both_off_accepts_anything(db: Database) -> None:
    checks = antibot(db, pow_on=False, honeypot=False)
    assert await passes(checks, {"website": "http://spam"})
    assert await passes(checks, {"altcha": "garbage"})
    assert await passes(checks, {})


async def test_pow_needs_an_hmac_key(db: Database) -> None:
    with pytest.raises(ValueError, match="HMAC key"):
        AntiBot(AntibotConfig(proof_of_work=True), "", db)
    AntiBot(AntibotConfig(proof_of_work=False), "", db)


async def test_used_solutions_are_shared_and_forgotten_once_expired(db: Database) -> None:
    first, second = antibot(db), antibot(db)  # two worker processes on one database
    payload = solve(first.challenge())
    assert await passes(first, {"altcha": payload})
    assert not await passes(second, {"altcha": payload})

    # A solution whose challenge expired long ago is dropped at the next sign-up.
    await db.execute("INSERT INTO altcha_solution (signature, expires_at) VALUES ('old', 1)")
    assert await passes(second, {"altcha": solve(second.challenge())})
    assert await db.fetchval("SELECT COUNT(*) FROM altcha_solution WHERE signature = 'old'") == 0
    assert await db.fetchval("SELECT COUNT(*) FROM altcha_solution") == 2
