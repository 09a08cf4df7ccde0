"""The mail outbox against a real SMTP server, on SQLite and PostgreSQL; the mail texts."""

from __future__ import annotations

import asyncio
import logging
import secrets

import pytest
from cryptography.fernet import Fernet
from mautrix.util.async_db import Database
from pydantic import SecretStr

from gatekeeper.appservice.config import SecurityConfig, SmtpConfig
from gatekeeper.appservice.domain.i18n import Catalogue, CatalogueError, _read, placeholders
from gatekeeper.appservice.runtime.mailer import Mailer
from gatekeeper.appservice.storage.crypto import SecretBox
from gatekeeper.appservice.storage.database import transaction
from gatekeeper.appservice.timeutil import now_ms
from harness.net import free_port
from tests.conftest import MailCatcher

FROM = "Gatekeeper <gatekeeper@example.org>"


class Boom(Exception):
    pass


@pytest.fixture
def box() -> SecretBox:
    return SecretBox(SecurityConfig(encryption_keys=[SecretStr(Fernet.generate_key().decode())]))


def smtp_config(port: int, **overrides: float) -> SmtpConfig:
    values = {"retry_initial_seconds": 0.2, "retry_max_seconds": 1.0, "timeout": 5.0}
    values.update(overrides)
    return SmtpConfig(hostname="127.0.0.1", port=port, from_address=FROM, **values)


def confirm_link() -> str:
    return f"https://signup.example.org/confirm?token={secrets.token_urlsafe(32)}"


async def outbox(db: Database) -> list[dict[str, object]]:
    rows = await db.fetch("SELECT * FROM mail_outbox ORDER BY created_at")
    return [dict(row) for row in rows]


def mails_to(smtp: MailCatcher, address: str) -> list[str]:
    return [str(m["Subject"]) for m in smtp.messages if address in str(m["To"])]


async def test_mail_queued_in_a_transaction_is_sent_and_its_body_erased(
    db: Database, box: SecretBox, smtp: MailCatcher
) -> None:
    mailer = Mailer(smtp_config(smtp.port), db, box)
    link = confirm_link()
    body = f"Grüße! Please open {link} to confirm."

    async with transaction(db) as conn:
        await mailer.enqueue(conn, "ann@example.org", "Confirm your address", body)

    [queued] = await outbox(db)
    assert link not in str(queued["body"])
    assert box.decrypt(str(queued["body"])) == body
    assert queued["sent_at"] is None
    assert await mailer.pending_count() == 1

    assert await mailer.send_due() == 1

    received = await smtp.wait_for("ann@example.org")
    assert received["Subject"] == "Confirm your address"
    assert received["To"] == "ann@example.org"
    assert received["From"] == FROM
    assert received["Message-ID"].endswith("@example.org>")
    assert received["Date"]
    assert received.get_content().strip() == body
    [sent] = await outbox(db)
    assert isinstance(sent["sent_at"], int)
    assert sent["sent_at"] >= int(str(queued["created_at"]))
    assert sent["body"] == ""
    assert await mailer.pending_count() == 0
    assert await mailer.send_due() == 0
    assert len(smtp.messages) == 1


async def test_mail_of_a_rolled_back_transaction_is_never_sent(
    db: Database, box: SecretBox, smtp: MailCatcher
) -> None:
    mailer = Mailer(smtp_config(smtp.port), db, box)

    async def sign_up_that_fails() -> None:
        async with transaction(db) as conn:
            await mailer.enqueue(conn, "ann@example.org", "Confirm", confirm_link())
            raise Boom

    with pytest.raises(Boom):
        await sign_up_that_fails()

    assert await outbox(db) == []
    assert await mailer.send_due() == 0
    assert smtp.messages == []


async def test_mail_waits_out_an_smtp_outage_and_is_sent_once(
    db: Database, box: SecretBox, smtp: MailCatcher, caplog: pytest.LogCaptureFixture
) -> None:
    down = Mailer(smtp_config(free_port()), db, box)
    link = confirm_link()
    await down.enqueue(db, "bob@example.org", "Welcome", f"Your link: {link}")

    before = now_ms()
    with caplog.at_level(logging.WARNING, logger="gatekeeper.mailer"):
        assert await down.send_due() == 0

    [failed] = await outbox(db)
    assert failed["attempts"] == 1
    assert failed["sent_at"] is None
    assert failed["last_error"]
    assert link not in str(failed["last_error"])
    next_attempt_at = int(str(failed["next_attempt_at"]))
    assert before + 150 <= next_attempt_at <= now_ms() + 200
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings
    assert not any(link in w or "bob@example.org" in w for w in warnings)

    # The same outbox, now with a working server: the retry goes out once it is due.
    up = Mailer(smtp_config(smtp.port), db, box)
    await asyncio.sleep(max(next_attempt_at - now_ms(), 0) / 1000 + 0.05)
    assert await up.send_due() == 1
    assert await up.send_due() == 0
    assert await down.send_due() == 0
    assert mails_to(smtp, "bob@example.org") == ["Welcome"]
    assert link in (await smtp.wait_for("bob@example.org")).get_content()
    [sent] = await outbox(db)
    assert sent["sent_at"] is not None
    assert sent["attempts"] == 1


async def test_a_mail_that_fails_does_not_hold_up_the_others(
    db: Database, box: SecretBox, smtp: MailCatcher
) -> None:
    mailer = Mailer(smtp_config(smtp.port), db, box)
    # A header with a line break cannot be sent; the mail after it still goes out.
    await mailer.enqueue(db, "eve@example.org\nBcc: all@example.org", "Bad", "x")
    await mailer.enqueue(db, "dan@example.org", "Good", "y")

    assert await mailer.send_due() == 1

    assert mails_to(smtp, "dan@example.org") == ["Good"]
    assert len(smtp.messages) == 1
    rows = {row["subject"]: row for row in await outbox(db)}
    bad, good = rows["Bad"], rows["Good"]
    assert (bad["attempts"], bad["sent_at"]) == (1, None)
    assert good["sent_at"] is not None
    assert await mailer.pending_count() == 1


async def test_retries_back_off_exponentially_up_to_the_cap(db: Database, box: SecretBox) -> None:
    down = Mailer(
        smtp_config(free_port(), retry_initial_seconds=60.0, retry_max_seconds=90.0), db, box
    )
    await down.enqueue(db, "bob@example.org", "Welcome", "hello")

    delays = []
    for _ in range(3):
        before = now_ms()
        assert await down.send_due() == 0
        # Not due yet: a second round leaves it alone.
        assert await down.send_due() == 0
        [row] = await outbox(db)
        delays.append((int(str(row["next_attempt_at"])) - before) / 1000)
        await db.execute("UPDATE mail_outbox SET next_attempt_at = 0")

    [row] = await outbox(db)
    assert row["attempts"] == 3
    assert delays[0] == pytest.approx(60, abs=5)
    assert delays[1] == pytest.approx(90, abs=5)
    assert delays[2] == pytest.approx(90, abs=5)


async def test_background_task_sends_without_being_asked(
    db: Database, box: SecretBox, smtp: MailCatcher
) -> None:
    mailer = Mailer(smtp_config(smtp.port), db, box)
    await mailer.start()
    try:
        # Let the task go idle first: the mail must wake it, well before its 30 s look.
        await asyncio.sleep(0.3)
        async with transaction(db) as conn:
            await mailer.enqueue(conn, "cat@example.org", "Hello", "Hi Cat")
        mailer.wake()
        received = await smtp.wait_for("cat@example.org", timeout=10)
    finally:
        await asyncio.wait_for(mailer.stop(), timeout=5)

    assert received.get_content().strip() == "Hi Cat"
    assert await mailer.pending_count() == 0
    assert len(smtp.messages) == 1


# --- the catalogue -----------------------------------------------------------------------

MAIL_PARAMS = {
    "mail.confirm_email": {
        "user_id": "@ann:example.org",
        "confirm_link": "https://signup.example.org/confirm?token=abc",
        "status_link": "https://signup.example.org/status?token=def",
        "hours": "1",
        "button": "Yes, confirm my address",
    },
    "mail.welcome": {"user_id": "@ann:example.org", "homeserver_url": "https://example.org"},
    "mail.rejected": {"user_id": "@ann:example.org", "reason": "spam"},
}


def test_catalogue_ships_english_and_german() -> None:
    assert {"en", "de"} <= set(Catalogue().languages)


def test_german_differs_and_unknown_languages_fall_back_to_english() -> None:
    catalogue = Catalogue()
    params = MAIL_PARAMS["mail.welcome"]

    english = catalogue.text("en", "mail.welcome.subject", **params)
    german = catalogue.text("de", "mail.welcome.subject", **params)

    assert german != english
    assert "@ann:example.org" in german
    assert catalogue.text("xx", "mail.welcome.subject", **params) == english
    assert catalogue.text("de-AT", "mail.welcome.subject", **params) == german
    assert catalogue.text("en", "mail.rejected.no_reason") == "no reason given"
    with pytest.raises(KeyError):
        catalogue.text("de", "no.such.key")


def test_every_english_key_is_translated_with_the_same_placeholders() -> None:
    catalogue = Catalogue()
    for language in catalogue.languages:
        assert catalogue.keys(language) == catalogue.keys("en"), language
        for key in catalogue.keys("en"):
            assert placeholders(catalogue.template(language, key)) == placeholders(
                catalogue.template("en", key)
            ), f"{language}: {key}"


@pytest.mark.parametrize("language", ["en", "de"])
@pytest.mark.parametrize("mail", sorted(MAIL_PARAMS))
def test_every_mail_renders_with_its_parameters(language: str, mail: str) -> None:
    catalogue = Catalogue()
    params = MAIL_PARAMS[mail]

    subject = catalogue.text(language, f"{mail}.subject", **params)
    body = catalogue.text(language, f"{mail}.body", **params)

    assert subject.strip() == subject
    assert "\n" not in subject
    for value in params.values():
        assert value in subject + body


@pytest.mark.parametrize(
    ("language", "one", "two"), [("en", "1 hour", "2 hours"), ("de", "1 Stunde", "2 Stunden")]
)
def test_a_count_takes_its_plural_form(language: str, one: str, two: str) -> None:
    catalogue = Catalogue()
    counted = 0
    for key in catalogue.keys(language):
        template = catalogue.template(language, key)
        assert "(s)" not in template, key
        assert "(n)" not in template, key
        if "hours" not in placeholders(template):
            continue
        params: dict[str, str | int] = {name: "x" for name in placeholders(template)}
        once = " ".join(catalogue.text(language, key, **{**params, "hours": 1}).split())
        twice = " ".join(catalogue.text(language, key, **{**params, "hours": "2"}).split())
        assert one in once, key
        assert two not in once, key
        assert two in twice, key
        counted += 1
    assert counted >= 5  # the confirmation, welcome, reset, email change and in-use mails


def test_a_plural_needs_exactly_two_forms() -> None:
    with pytest.raises(CatalogueError, match=r"xx\.yaml: mail\.x: \{hours:Stunde\} must be"):
        _read("xx.yaml", 'mail.x: "{hours} {hours:Stunde}"')
    with pytest.raises(CatalogueError, match=r"xx\.yaml: mail\.x: "):
        _read("xx.yaml", 'mail.x: "{hours"')
