"""TOTP second factor on both backends: encrypted seeds, confirmed enrolment, every code once."""

from __future__ import annotations

import asyncio
import logging
import re
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


async def test_a_wrong_code_keeps_the_pending_seed(setup: Setup) -> None:
    store, rid = setup.store, setup.request_id
    shown = await store.start_enrolment(rid, ACCOUNT)
    right = code(shown.secret, T0)
    assert not await store.confirm_enrolment(rid, f"{(int(right) + 1) % 1_000_000:06d}")
    # The same key, QR code and all: the app that scanned it keeps giving valid codes.
    assert await store.pending_enrolment(rid, ACCOUNT) == shown
    assert await store.confirm_enrolment(rid, right)
    assert await store.pending_enrolment(rid, ACCOUNT) is None


async def test_just_used_names_a_code_accepted_a_moment_ago(setup: Setup) -> None:
    store, rid = setup.store, setup.request_id
    enrolment = await store.start_enrolment(rid, ACCOUNT)
    confirming = code(enrolment.secret, T0)
    assert not await store.just_used(rid, confirming)  # not on yet
    assert await store.confirm_enrolment(rid, confirming)
    # The enrolment's code, typed again at login in the same 30 s: refused, and told apart.
    assert not await store.verify(rid, confirming)
    assert await store.just_used(rid, confirming)
    wrong = f"{(int(confirming) + 1) % 1_000_000:06d}"
    assert not await store.just_used(rid, wrong)
    assert not await store.just_used(rid, "abc")
    following = code(enrolment.secret, T0 + 30)
    assert not await store.just_used(rid, following)
    assert await store.verify(rid, following)
    assert await store.just_used(rid, following)
    setup.clock.at = T0 + 120  # out of the window: an old code is just wrong
    assert not await store.just_used(rid, following)


async def test_recovery_codes_work_once_and_only_their_hashes_are_kept(setup: Setup) -> None:
    store, rid = setup.store, setup.request_id
    await enabled(setup)
    codes = await store.new_recovery_codes(rid)
    assert len(codes) == len(set(codes)) == 10
    assert all(re.fullmatch(r"[a-z2-9]{4}(-[a-z2-9]{4}){3}", c) for c in codes)
    stored = [dict(r) for r in await setup.db.fetch("SELECT * FROM recovery_code")]
    assert len(stored) == 10
    assert not any(c in str(row) or c.replace("-", "") in str(row) for c in codes for row in stored)
    assert await store.recovery_codes_left(rid) == 10
    # As typed: any case, spaces for dashes.
    assert await store.use_recovery_code(rid, f" {codes[0].upper().replace('-', ' ')} ")
    assert not await store.use_recovery_code(rid, codes[0])
    assert await store.recovery_codes_left(rid) == 9
    assert not await store.use_recovery_code(rid, "aaaa-bbbb-cccc-dddd")
    results = await asyncio.gather(*(store.use_recovery_code(rid, codes[1]) for _ in range(6)))
    assert results.count(True) == 1


async def test_new_recovery_codes_replace_the_old_and_disable_ends_them(setup: Setup) -> None:
    store, rid = setup.store, setup.request_id
    await enabled(setup)
    old = await store.new_recovery_codes(rid)
    new = await store.new_recovery_codes(rid)
    assert not set(old) & set(new)
    assert not await store.use_recovery_code(rid, old[0])
    assert await store.disable(rid)
    assert not await store.use_recovery_code(rid, new[0])
    assert await store.recovery_codes_left(rid) == 0
    assert not await store.disable(rid)  # nothing was on any more
