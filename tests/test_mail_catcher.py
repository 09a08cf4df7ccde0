"""The aiosmtpd fixture that later flows read their mail from."""

from __future__ import annotations

from email.message import EmailMessage

import aiosmtplib

from tests.conftest import MailCatcher


async def test_captures_a_real_smtp_delivery(smtp: MailCatcher) -> None:
    message = EmailMessage()
    message["From"] = "gatekeeper@example.org"
    message["To"] = "ann@example.org"
    message["Subject"] = "Confirm your email"
    message.set_content("Open https://example.org/confirm?token=abc to confirm. Grüße!")

    await aiosmtplib.send(message, hostname="127.0.0.1", port=smtp.port)

    received = await smtp.wait_for("ann@example.org")
    assert received["Subject"] == "Confirm your email"
    assert "token=abc" in received.get_content()
    assert "Grüße" in received.get_content()
