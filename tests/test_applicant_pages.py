"""The applicant's pages and mails in a real Chromium: the language switch keeps the link,
the confirm page says what a click confirms, problems are sentences told all at once,
"Check your email" has ways on, and the reset page needs only its link."""

from __future__ import annotations

from typing import Any

from gatekeeper.appservice.domain.registration_request import State
from gatekeeper.appservice.runtime.program import Gatekeeper
from harness.matrix_user import MatrixUser, wait_until
from tests.conftest import Homeserver, MailCatcher, StartGatekeeper
from tests.flows import (
    Applicant,
    api,
    can_log_in,
    link_token,
    new_applicant,
    pass_time,
    request_id_of,
    sign_up,
    wait_for_state,
    web_url,
)
from tests.test_pages import link

FIVE_MINUTES_AND_A_BIT_MS = 6 * 60 * 1000


def flat(text: str | None) -> str:
    """Text with its line breaks and runs of spaces as single spaces."""
    return " ".join((text or "").split())


async def states_of(gatekeeper: Gatekeeper, applicant: Applicant) -> dict[str, State]:
    """Each request for the applicant's name, by its address."""
    return {r.email: r.state for r in await gatekeeper.store.search(applicant.localpart)}


async def fill_sign_up(page: Any, base: str, applicant: Applicant, email: str) -> None:
    await page.goto(f"{base}/sign-up")
    await page.fill("#userName", applicant.localpart)
    await page.fill("#email", email)
    await page.fill("#password", applicant.password)
    await page.fill("#reason", "A friend told me")
    await page.click("button[type=submit]")


async def test_switching_language_keeps_the_link_token(
    start_gatekeeper: StartGatekeeper, page: Any, smtp: MailCatcher
) -> None:
    gatekeeper = await start_gatekeeper()
    ann = new_applicant("ann")
    assert (await sign_up(gatekeeper, ann))[0] == 201
    mail = await smtp.wait_for(ann.email, "confirm")

    await page.goto(link(mail, "confirm-email"))
    assert await page.text_content("h1") == "Confirm your email address"
    await page.click("text=Deutsch")
    assert await page.text_content("h1") == "E-Mail-Adresse bestätigen"
    assert ann.user_id in (await page.text_content("#what") or "")
    assert await page.text_content("button[type=submit]") == "Ja, meine Adresse bestätigen"

    await page.goto(link(mail, "status"))  # in the request's language, English
    assert await page.text_content("#state") == "Waiting for you to confirm your email address."
    await page.click("text=Deutsch")
    assert await page.text_content("#user-id") == ann.user_id
    assert await page.text_content("#state") == (
        "Wartet darauf, dass Sie Ihre E-Mail-Adresse bestätigen."
    )
    await page.click("text=English")
    assert await page.text_content("#state") == "Waiting for you to confirm your email address."

    # Whatever the parameters, only lang changes.
    await page.goto(f"{web_url(gatekeeper)}/sign-up?invite=abc&lang=en")
    assert await page.get_attribute("a[hreflang=de]", "href") == "/sign-up?invite=abc&lang=de"


async def test_the_confirm_page_says_what_a_click_confirms(
    start_gatekeeper: StartGatekeeper, page: Any, smtp: MailCatcher
) -> None:
    gatekeeper = await start_gatekeeper()
    ann = new_applicant("ann")
    await sign_up(gatekeeper, ann)
    mail = await smtp.wait_for(ann.email, "confirm")
    text = flat(mail.get_content())
    assert 'press the button "Yes, confirm my address" on the page it shows' in text
    assert "Opening the link alone confirms nothing" in text
    assert "The link is valid for 1 hour." in text

    await page.goto(link(mail, "confirm-email"))
    assert await page.text_content("#what") == (
        f"Someone – hopefully you – asked for the Matrix account {ann.user_id}"
        f" with the email address {ann.email}."
    )
    assert "some mail programs open links by themselves" in flat(await page.text_content("main"))
    # Opening the page, as a mail scanner would, confirmed nothing.
    assert await states_of(gatekeeper, ann) == {ann.email: State.UNVERIFIED}

    await page.click("button[type=submit]")
    main = flat(await page.text_content("main"))
    assert "Thank you, your address is confirmed." in main
    assert "Pending: the admins have not decided yet." in main
    await page.click("text=See your request")
    assert await page.get_attribute("#state", "data-state") == "pending"
    assert await page.text_content("#user-id") == ann.user_id

    await page.goto(link(mail, "confirm-email"))  # the mail's link again
    assert "This address is already confirmed." in flat(await page.text_content("main"))
    assert await page.locator("main button").count() == 0

    bea = new_applicant("bea")
    await sign_up(gatekeeper, bea, language="de")
    german_mail = await smtp.wait_for(bea.email, "bestätigen")
    german = flat(german_mail.get_content())
    assert "den Knopf „Ja, meine Adresse bestätigen“" in german
    assert "Das Öffnen des Links allein bestätigt nichts" in german
    assert "Der Link ist 1 Stunde gültig." in german
    await page.goto(link(german_mail, "confirm-email"))  # in the request's language
    assert await page.text_content("#what") == (
        f"Jemand – hoffentlich Sie – hat das Matrix-Konto {bea.user_id}"
        f" mit der E-Mail-Adresse {bea.email} beantragt."
    )


async def test_each_link_shows_its_own_request(
    start_gatekeeper: StartGatekeeper, page: Any, smtp: MailCatcher
) -> None:
    """Pages are kept once rendered (web/shells.py): one opened after another's must show
    its own account, address and token, never the previous one's."""
    gatekeeper = await start_gatekeeper()
    ann, cat = new_applicant("ann"), new_applicant("cat")
    mails = {}
    for applicant in (ann, cat):
        await sign_up(gatekeeper, applicant)
        mails[applicant.email] = await smtp.wait_for(applicant.email, "confirm")
    for applicant in (ann, cat, ann):
        mail = mails[applicant.email]
        await page.goto(link(mail, "confirm-email"))
        assert await page.text_content("#what") == (
            f"Someone – hopefully you – asked for the Matrix account {applicant.user_id}"
            f" with the email address {applicant.email}."
        )
        token = link_token(mail, "confirm-email")
        assert await page.get_attribute("input[name=token]", "value") == token

    await page.click("button[type=submit]")  # ann confirms; her status page follows
    await page.click("text=See your request")
    assert await page.text_content("#user-id") == ann.user_id
    await page.goto(link(mails[cat.email], "confirm-email"))
    await page.click("button[type=submit]")
    await page.click("text=See your request")
    assert await page.text_content("#user-id") == cat.user_id
    assert await page.get_attribute("input[name=token]", "value") == page.url.split("token=")[1]


async def test_every_field_problem_is_told_at_once_in_sentences(
    start_gatekeeper: StartGatekeeper, browser: Any, alice: MatrixUser
) -> None:
    gatekeeper = await start_gatekeeper()
    expected = {
        "en-GB": {
            "userName": "This username is already taken. Please choose another one.",
            "email": "Please enter your email address.",
            "password": (
                "The password must be at least 8 characters long. A few words make a good one."
            ),
        },
        "de-DE": {
            "userName": "Dieser Benutzername ist schon vergeben. Bitte wählen Sie einen anderen.",
            "email": "Bitte geben Sie Ihre E-Mail-Adresse ein.",
            "password": (
                "Das Passwort muss mindestens 8 Zeichen lang sein."
                " Ein paar Wörter ergeben ein gutes."
            ),
        },
    }
    for locale, sentences in expected.items():
        context = await browser.new_context(locale=locale)
        page = await context.new_page()
        try:
            await page.goto(f"{web_url(gatekeeper)}/sign-up")
            await page.fill("#userName", "alice")  # a Synapse user: taken
            await page.fill("#password", "short")
            await page.click("button[type=submit]")
            for field, sentence in sentences.items():
                assert await page.text_content(f"#{field}-error") == sentence, locale
        finally:
            await context.close()
    assert await gatekeeper.db.fetchval("SELECT COUNT(*) FROM registration_request") == 0


async def test_check_your_email_offers_a_resend_and_starting_again(
    start_gatekeeper: StartGatekeeper, page: Any, smtp: MailCatcher
) -> None:
    gatekeeper = await start_gatekeeper()
    base = web_url(gatekeeper)
    ann = new_applicant("ann")
    typo = "x" + ann.email
    await fill_sign_up(page, base, ann, typo)
    assert await page.text_content("h1") == "Check your email"
    typo_mail = await smtp.wait_for(typo, "confirm")

    # Right after sign-up nothing more goes out, and the page says why none may come.
    await page.click("text=Send the link again")
    assert f"a new link is on its way to {typo}. We send at most one every 5 minutes" in flat(
        await page.text_content(".notice")
    )
    await pass_time(gatekeeper, FIVE_MINUTES_AND_A_BIT_MS)
    await page.click("text=Send the link again")

    async def sent_again() -> bool:
        return len(smtp.to(typo)) == 2

    await wait_until(sent_again, timeout=20)
    # The answer to a POST-only form links its languages to the form's own page (a GET of
    # /sign-up/resend would be a 405).
    assert await page.get_attribute("a[hreflang=de]", "href") == "/sign-up?lang=de"

    # The typo's request holds the name; starting again withdraws it.
    await page.click("text=Wrong address? Start again")
    assert (await page.text_content(".notice")) == (
        "Enter the right email address, then send the form again."
    )
    assert await page.input_value("#userName") == ann.localpart
    assert await page.input_value("#reason") == "A friend told me"
    assert await page.input_value("#email") == ""
    await page.fill("#email", ann.email)
    await page.fill("#password", ann.password)
    await page.click("button[type=submit]")
    assert await page.text_content("h1") == "Check your email"
    await smtp.wait_for(ann.email, "confirm")
    # The typo's request is withdrawn, and erased with it: only the new one has the name.
    assert await states_of(gatekeeper, ann) == {ann.email: State.UNVERIFIED}
    # Whoever owns the mistyped address can no longer confirm it, and is told why.
    await page.goto(link(typo_mail, "confirm-email"))
    main = flat(await page.text_content("main"))
    assert "This request can no longer be confirmed." in main
    assert "Withdrawn by you." in main
    assert await page.locator("main button").count() == 0


async def test_check_your_email_is_the_same_for_an_address_in_use(
    start_gatekeeper: StartGatekeeper, browser: Any, smtp: MailCatcher
) -> None:
    """Its buttons tell nobody whether the address belonged to someone (in German too)."""
    gatekeeper = await start_gatekeeper()
    holder = new_applicant("holder")
    assert (await sign_up(gatekeeper, holder))[0] == 201
    context = await browser.new_context(locale="de-DE")
    page = await context.new_page()
    try:
        ann = new_applicant("ann")
        await fill_sign_up(page, web_url(gatekeeper), ann, holder.email)
        assert await page.text_content("h1") == "Sehen Sie in Ihre E-Mails"
        assert len(await page.input_value("input[name=token]")) == 43
        await page.click("text=Link noch einmal schicken")
        assert "Wir schicken höchstens einen alle 5 Minuten" in flat(
            await page.text_content(".notice")
        )
        await page.click("text=Falsche Adresse? Neu beginnen")
        assert await page.text_content(".notice") == (
            "Geben Sie die richtige E-Mail-Adresse ein und senden Sie das Formular erneut ab."
        )
        assert await page.input_value("#userName") == ann.localpart
    finally:
        await context.close()
    # The holder's request is untouched, and none was made for ann.
    assert await states_of(gatekeeper, holder) == {holder.email: State.UNVERIFIED}
    assert await states_of(gatekeeper, ann) == {}


async def test_forgot_leads_back_to_login(start_gatekeeper: StartGatekeeper, browser: Any) -> None:
    gatekeeper = await start_gatekeeper()
    for locale, back, title in (
        ("en-GB", "Back to log in", "Log in"),
        ("de-DE", "Zurück zur Anmeldung", "Anmelden"),
    ):
        context = await browser.new_context(locale=locale)
        page = await context.new_page()
        try:
            await page.goto(f"{web_url(gatekeeper)}/forgot-password")
            await page.click(f"text={back}")
            assert await page.text_content("h1") == title
        finally:
            await context.close()


async def test_the_welcome_link_sets_a_password_without_typing_the_address(
    start_gatekeeper: StartGatekeeper, page: Any, smtp: MailCatcher, synapse: Homeserver
) -> None:
    """The reset page, reached from registration.password: after_approval's welcome."""
    gatekeeper = await start_gatekeeper(
        registration={"password": "after_approval", "require_email_confirmation": False}
    )
    ann = new_applicant("ann")
    body = {"userName": ann.localpart, "email": ann.email, "language": "en"}
    assert (await api(gatekeeper, "POST", "/api/auth/sign-up", body))[0] == 201
    request_id = await request_id_of(gatekeeper, ann)
    await api(gatekeeper, "POST", f"/api/admin/registrations/{request_id}/approve", admin=True)
    await wait_for_state(gatekeeper, request_id, "active")
    welcome = await smtp.wait_for(ann.email, "choose its password")
    assert "the link works once, for 1 hour" in flat(welcome.get_content())

    await page.goto(link(welcome, "reset-password"))
    assert await page.text_content("#account") == f"For the Matrix account {ann.user_id}."
    assert await page.locator("#email").count() == 0
    await page.fill("#newPassword", "password1")
    await page.click("button[type=submit]")
    assert (await page.text_content("#newPassword-error") or "").startswith(
        "This password is on a list of common passwords"
    )
    await page.fill("#newPassword", ann.password)
    await page.click("button[type=submit]")
    assert "password is changed" in (await page.text_content("main") or "")
    assert await can_log_in(synapse.url, ann)

    await page.goto(link(welcome, "reset-password"))  # used: said at once, no form
    assert "This link is not valid (any more)." in (await page.text_content("main") or "")
    assert await page.locator("#newPassword").count() == 0


async def test_the_reset_api_needs_no_email_but_checks_one_sent(
    start_gatekeeper: StartGatekeeper, smtp: MailCatcher
) -> None:
    gatekeeper = await start_gatekeeper(registration={"require_email_confirmation": False})
    ann = new_applicant("ann")
    assert (await sign_up(gatekeeper, ann))[0] == 201

    async def reset_token() -> str:
        smtp.messages.clear()
        await api(gatekeeper, "POST", "/api/auth/request-password-reset", {"email": ann.email})
        return link_token(await smtp.wait_for(ann.email, "reset"), "reset-password")

    wrong = {"email": "someone@example.org", "token": await reset_token(), "newPassword": "x" * 9}
    assert await api(gatekeeper, "POST", "/api/auth/reset-password", wrong) == (
        200,
        {"status": "invalid-token"},
    )
    await pass_time(gatekeeper, FIVE_MINUTES_AND_A_BIT_MS)
    alone = {"token": await reset_token(), "newPassword": "a new passphrase 77"}
    assert await api(gatekeeper, "POST", "/api/auth/reset-password", alone) == (
        200,
        {"status": "success"},
    )
