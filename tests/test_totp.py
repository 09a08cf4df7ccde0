"""TOTP second factor on both backends: encrypted seeds, confirmed enrolment, every code once."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import pyotp
import pytest
from cryptography.fernet import Fernet
from mautrix.util.async_db import Database
from pydantic import SecretStr

from gatekeeper.appservice.config import SecurityConfig
from gatekeeper.appservice.domain.registration_request import NewRequest
from gatekeeper.appservice.domain.registrations import Registrations
from gatekeeper.appservice.storage.crypto import SecretBox
from gatekeeper.appservice.storage.registration_store import RegistrationStore
from gatekeeper.appservice.storage.totp import TotpStore

ISSUER = "Gatekeeper Test"
ACCOUNT = "@alice:gatekeeper.test"
# Ten seconds into a step: every code below is unambiguous about its step.
T0 = 30 * 56_666_667 + 10
LATER = T0 + 600  # well past the enrolment's step, so verify tests start clean


class Clock:
    def __init__(self, at: float) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at


@dataclass
class Setup:
    store: TotpStore
    clock: Clock
    request_id: str
    db: Database


def code(secret: str, at: float) -> str:
    return pyotp.TOTP(secret).at(at)


@pytest.fixture
async def setup(db: Database) -> Setup:
    request = await Registrations(RegistrationStore(db)).create(
        NewRequest(
            localpart="alice",
            email="alice@example.org",
            language="en",
            reason="testing",
            password_hash="x",
            password_encrypted="x",
        ),
        confirmed=True,
    )
    box = SecretBox(SecurityConfig(encryption_keys=[SecretStr(Fernet.generate_key().decode())]))
    clock = Clock(T0)
    return Setup(TotpStore(db, box, ISSUER, now=clock), clock, request.id, db)


async def enabled(s: Setup) -> str:
    """Enrol and confirm at T0, then move the clock to LATER; the active secret."""
    s.clock.at = T0
    enrolment = await s.store.start_enrolment(s.request_id, ACCOUNT)
    assert await s.store.confirm_enrolment(s.request_id, code(enrolment.secret, T0))
    s.clock.at = LATER
    return enrolment.secret


async def test_seed_is_long_and_encrypted_at_rest(setup: Setup) -> None:
    enrolment = await setup.store.start_enrolment(setup.request_id, ACCOUNT)
    assert len(enrolment.secret) * 5 >= 160
    row = await setup.db.fetchrow("SELECT * FROM totp WHERE request_id=$1", setup.request_id)
    assert row is not None
    assert all(enrolment.secret not in str(value) for value in dict(row).values())
    assert await setup.store.confirm_enrolment(setup.request_id, code(enrolment.secret, T0))
    row = await setup.db.fetchrow("SELECT * FROM totp WHERE request_id=$1", setup.request_id)
    assert row is not None
    assert row["secret_encrypted"] is not None
    assert all(enrolment.secret not in str(value) for value in dict(row).values())


async def test_seeds_differ(setup: Setup) -> None:
    first = await setup.store.start_enrolment(setup.request_id, ACCOUNT)
    second = await setup.store.start_enrolment(setup.request_id, ACCOUNT)
    assert first.secret != second.secret


async def test_enrolment_needs_a_confirming_code(setup: Setup) -> None:
    store, rid = setup.store, setup.request_id
    enrolment = await store.start_enrolment(rid, ACCOUNT)
    assert not await store.is_enabled(rid)
    assert not await store.verify(rid, code(enrolment.secret, T0))
    right = code(enrolment.secret, T0)
    wrong = f"{(int(right) + 1) % 1_000_000:06d}"
    assert not await store.confirm_enrolment(rid, wrong)
    assert not await store.is_enabled(rid)
    assert await store.confirm_enrolment(rid, right)
    assert await store.is_enabled(rid)
    # The confirming code has been used: it does not also pass as a login code.
    assert not await store.verify(rid, right)
    assert not await store.confirm_enrolment(rid, right)


async def test_abandoned_re_enrolment_keeps_the_old_seed(setup: Setup) -> None:
    old = await enabled(setup)
    new = await setup.store.start_enrolment(setup.request_id, ACCOUNT)
    assert new.secret != old
    # Not confirmed: the new seed's codes do not work, the old seed's still do.
    assert not await setup.store.verify(setup.request_id, code(new.secret, LATER))
    assert await setup.store.verify(setup.request_id, code(old, LATER))
    assert await setup.store.is_enabled(setup.request_id)


async def test_confirmed_re_enrolment_replaces_the_seed(setup: Setup) -> None:
    old = await enabled(setup)
    new = await setup.store.start_enrolment(setup.request_id, ACCOUNT)
    assert await setup.store.confirm_enrolment(setup.request_id, code(new.secret, LATER))
    setup.clock.at = LATER + 60
    assert not await setup.store.verify(setup.request_id, code(old, LATER + 60))
    assert await setup.store.verify(setup.request_id, code(new.secret, LATER + 60))


async def test_window_is_one_step_either_side(setup: Setup) -> None:
    secret = await enabled(setup)
    rid = setup.request_id
    # Out of the window first: these must fail on time alone, not because of last_step.
    assert not await setup.store.verify(rid, code(secret, LATER - 60))
    assert not await setup.store.verify(rid, code(secret, LATER + 60))
    assert await setup.store.verify(rid, code(secret, LATER - 30))
    assert await setup.store.verify(rid, code(secret, LATER + 30))


async def test_current_step_works(setup: Setup) -> None:
    secret = await enabled(setup)
    assert await setup.store.verify(setup.request_id, code(secret, LATER))


async def test_a_code_works_once_and_steps_only_grow(setup: Setup) -> None:
    secret = await enabled(setup)
    rid = setup.request_id
    assert await setup.store.verify(rid, code(secret, LATER))
    assert not await setup.store.verify(rid, code(secret, LATER))
    assert await setup.store.verify(rid, code(secret, LATER + 30))
    # An older step's code, though still inside the window, is refused after a newer one.
    assert not await setup.store.verify(rid, code(secret, LATER))
    assert not await setup.store.verify(rid, code(secret, LATER - 30))


async def test_concurrent_submissions_of_one_code_succeed_once(setup: Setup) -> None:
    secret = await enabled(setup)
    valid = code(secret, LATER)
    results = await asyncio.gather(*(setup.store.verify(setup.request_id, valid) for _ in range(8)))
    assert results.count(True) == 1


@pytest.mark.parametrize("bad", ["12345", "abcdef", "1234567", "", "   ", "12345a", "١٢٣٤٥٦"])
async def test_malformed_codes_fail(setup: Setup, bad: str) -> None:
    await enabled(setup)
    assert not await setup.store.verify(setup.request_id, bad)


async def test_spaces_in_a_code_are_ignored(setup: Setup) -> None:
    secret = await enabled(setup)
    valid = code(secret, LATER)
    assert await setup.store.verify(setup.request_id, f" {valid[:3]} {valid[3:]} ")


async def test_no_seed_no_pass(setup: Setup) -> None:
    assert not await setup.store.verify(setup.request_id, "123456")
    assert not await setup.store.confirm_enrolment(setup.request_id, "123456")
    assert not await setup.store.is_enabled(setup.request_id)


async def test_disable_removes_the_factor(setup: Setup) -> None:
    secret = await enabled(setup)
    await setup.store.disable(setup.request_id)
    assert not await setup.store.is_enabled(setup.request_id)
    assert not await setup.store.verify(setup.request_id, code(secret, LATER))


async def test_enrolment_uri_and_qr(setup: Setup) -> None:
    enrolment = await setup.store.start_enrolment(setup.request_id, ACCOUNT)
    parsed = pyotp.parse_uri(enrolment.otpauth_uri)
    assert enrolment.otpauth_uri.startswith("otpauth://totp/")
    assert "secret=" in enrolment.otpauth_uri
    assert parsed.issuer == ISSUER
    assert parsed.name == ACCOUNT
    assert parsed.secret == enrolment.secret
    assert enrolment.qr_svg.startswith("<svg")
    assert "<?xml" not in enrolment.qr_svg


async def test_tampered_seed_fails_closed(setup: Setup, caplog: pytest.LogCaptureFixture) -> None:
    secret = await enabled(setup)
    stored = await setup.db.fetchval(
        "SELECT secret_encrypted FROM totp WHERE request_id=$1", setup.request_id
    )
    flipped = "A" if stored[-6] != "A" else "B"
    await setup.db.execute(
        "UPDATE totp SET secret_encrypted=$2 WHERE request_id=$1",
        setup.request_id,
        stored[:-6] + flipped + stored[-5:],
    )
    valid = code(secret, LATER)
    with caplog.at_level(logging.WARNING, logger="gatekeeper.totp"):
        assert not await setup.store.verify(setup.request_id, valid)
    assert any(r.levelno == logging.WARNING for r in caplog.records)
    assert secret not in caplog.text
    assert valid not in caplog.text
