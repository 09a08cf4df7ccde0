"""Admin power tools from the room: invites, blocks, pausing, the daily cap, stats, audit."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from gatekeeper.appservice.runtime.program import Gatekeeper
from harness.matrix_user import MatrixUser, wait_until
from harness.net import free_port
from tests.conftest import MailCatcher, StartGatekeeper
from tests.flows import (
    BOT,
    admin_room,
    api,
    is_notice_for,
    link_token,
    new_applicant,
    request_id_of,
    sign_up,
    started_with_room,
    wait_for_state,
    web_url,
)
from tests.test_antibot import solve

REFUSED = (403, "GK_SIGNUP_REFUSED")


async def invite_token(alice: MatrixUser, room_id: str, args: str) -> tuple[str, str]:
    answer = await alice.reply_to(room_id, f"!invite {args}", BOT)
    match = re.search(r"^Invite (\w+) .*sign-up\?invite=([A-Za-z0-9_-]+)$", answer)
    assert match, answer
    return match.group(1), match.group(2)


async def test_invite_with_two_uses(
    start_gatekeeper: StartGatekeeper, alice: MatrixUser, smtp: MailCatcher
) -> None:
    gatekeeper, room_id = await started_with_room(start_gatekeeper, alice)
    invite_id, token = await invite_token(alice, room_id, "--uses 2 --note choir friends")
    assert "choir friends" in await alice.reply_to(room_id, "!invites", BOT)

    for _ in range(2):
        guest = new_applicant("guest")
        assert (await sign_up(gatekeeper, guest, invite=token))[0] == 201
        mail = await smtp.wait_for(guest.email, "confirm")  # email is still confirmed
        await api(
            gatekeeper,
            "POST",
            "/api/user/confirm-email",
            {"token": link_token(mail, "confirm-email")},
        )
        request_id = await request_id_of(gatekeeper, guest)
        await wait_for_state(gatekeeper, request_id, "active")  # no admin decided
        notice = await alice.wait_for(is_notice_for(room_id, guest))
        assert f"invite {invite_id}" in notice["content"]["body"]

    third = new_applicant("third")
    status, body = await sign_up(gatekeeper, third, invite=token)
    assert (status, body["errcode"]) == (403, "GK_INVITE_INVALID")
    assert smtp.to(third.email) == []
    assert await alice.reply_to(room_id, "!invites", BOT) == "No invites are open."


async def test_expired_and_revoked_invites_are_refused_before_any_mail(
    start_gatekeeper: StartGatekeeper, alice: MatrixUser, smtp: MailCatcher
) -> None:
    gatekeeper, room_id = await started_with_room(start_gatekeeper, alice)
    _, expiring = await invite_token(alice, room_id, "--expires 1h")
    await gatekeeper.db.execute("UPDATE invite SET expires_at = 1")
    revoked_id, revoked = await invite_token(alice, room_id, "--uses 5")
    assert await alice.reply_to(room_id, f"!revoke {revoked_id}", BOT) == (
        f"Invite {revoked_id} is revoked."
    )
    for token in (expiring, revoked, "made-up-token"):
        applicant = new_applicant()
        status, body = await sign_up(gatekeeper, applicant, invite=token)
        assert (status, body["errcode"]) == (403, "GK_INVITE_INVALID")
        assert smtp.to(applicant.email) == []
    assert await gatekeeper.db.fetchval("SELECT COUNT(*) FROM registration_request") == 0


@pytest.mark.parametrize(
    ("block", "blocked", "allowed"),
    [
        ("email-domain spam.example", {"email": "x@mail.spam.example"}, {}),
        ("email bad@example.org", {"email": "bad@example.org"}, {}),
        ("ip 127.0.0.1", {}, None),
        ("ip 10.0.0.0/8", None, {}),
        ("username spam*", {"userName": "spammer1"}, {"userName": "notspam"}),
        ("username /^bot[0-9]+$/", {"userName": "bot42"}, {"userName": "robot42"}),
    ],
)
async def test_each_block_kind(
    start_gatekeeper: StartGatekeeper,
    alice: MatrixUser,
    block: str,
    blocked: dict[str, str] | None,
    allowed: dict[str, str] | None,
) -> None:
    gatekeeper, room_id = await started_with_room(
        start_gatekeeper, alice, registration={"require_email_confirmation": False}
    )
    answer = await alice.reply_to(room_id, f"!block {block}", BOT)
    assert answer.startswith("Block ")
    if blocked is not None:
        status, body = await sign_up(gatekeeper, new_applicant(), **blocked)
        assert (status, body["errcode"]) == REFUSED
        assert body["error"] == "This sign-up was not accepted."  # the same for every kind
        note = await alice.wait_for(
            # This room's: another test's room may still get a note about its refusals.
            lambda e: (
                e["room_id"] == room_id
                and e["sender"] == BOT
                and "Refused a sign-up" in e["content"].get("body", "")
            )
        )
        assert block.split()[0] in note["content"]["body"]
    if allowed is not None:
        applicant = new_applicant()
        extra = {
            k: v + applicant.localpart[-4:] if k == "userName" else v for k, v in allowed.items()
        }
        assert (await sign_up(gatekeeper, applicant, **extra))[0] == 201


async def test_expired_block_no_longer_applies(
    start_gatekeeper: StartGatekeeper, alice: MatrixUser
) -> None:
    gatekeeper, room_id = await started_with_room(
        start_gatekeeper, alice, registration={"require_email_confirmation": False}
    )
    await alice.reply_to(room_id, "!block email-domain example.org --expires 1h", BOT)
    assert (await sign_up(gatekeeper, new_applicant()))[1]["errcode"] == "GK_SIGNUP_REFUSED"
    await gatekeeper.db.execute("UPDATE signup_block SET expires_at = 1")

    # Changed behind the process's back, as another process would: learnt within a second.
    async def accepted() -> bool:
        return (await sign_up(gatekeeper, new_applicant()))[0] == 201

    await wait_until(accepted, timeout=1)
    assert await alice.reply_to(room_id, "!blocks", BOT) == "No blocks are in force."


async def test_config_domain_lists(start_gatekeeper: StartGatekeeper) -> None:
    gatekeeper = await start_gatekeeper(
        registration={"allowed_email_domains": ["example.org"], "tell_room_about_blocked": False}
    )
    assert (await sign_up(gatekeeper, new_applicant(), email="a@other.example"))[1][
        "errcode"
    ] == "GK_SIGNUP_REFUSED"
    assert (await sign_up(gatekeeper, new_applicant()))[0] == 201


async def test_close_and_open(start_gatekeeper: StartGatekeeper, alice: MatrixUser) -> None:
    gatekeeper, room_id = await started_with_room(start_gatekeeper, alice)
    await alice.reply_to(room_id, "!close too many spammers today", BOT)

    status, body = await sign_up(gatekeeper, new_applicant())
    assert (status, body["errcode"]) == (403, "GK_SIGNUPS_CLOSED")
    assert "too many spammers today" in body["error"]
    url = web_url(gatekeeper) + "/sign-up"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        page = await response.text()
    assert "Sign-ups are paused. too many spammers today" in page
    assert '<form method="post" action="/sign-up"' not in page

    assert await alice.reply_to(room_id, "!open", BOT) == "Sign-ups are open."
    assert (await sign_up(gatekeeper, new_applicant()))[0] == 201


async def test_daily_cap_closes_sign_ups(
    start_gatekeeper: StartGatekeeper, alice: MatrixUser
) -> None:
    gatekeeper = await start_gatekeeper(registration={"daily_cap": 2})
    await admin_room(gatekeeper, alice)  # to read the room
    assert (await sign_up(gatekeeper, new_applicant()))[0] == 201
    assert (await sign_up(gatekeeper, new_applicant()))[0] == 201
    status, body = await sign_up(gatekeeper, new_applicant())
    assert (status, body["errcode"]) == (403, "GK_SIGNUPS_CLOSED")
    await alice.wait_for(
        lambda e: (
            e["sender"] == BOT
            and "the daily cap of 2 sign-ups is reached" in e["content"].get("body", "")
        )
    )


async def test_stats_and_audit(start_gatekeeper: StartGatekeeper, alice: MatrixUser) -> None:
    gatekeeper, room_id = await started_with_room(
        start_gatekeeper, alice, registration={"require_email_confirmation": False}
    )
    vic, wes = new_applicant("vic"), new_applicant("wes")
    await sign_up(gatekeeper, vic)
    await sign_up(gatekeeper, wes)
    vic_id, wes_id = await request_id_of(gatekeeper, vic), await request_id_of(gatekeeper, wes)
    await alice.reply_to(room_id, f"!approve {vic_id}", BOT)
    await alice.reply_to(room_id, f"!reject {wes_id} not today", BOT)
    await alice.reply_to(room_id, "!block username evil*", BOT)
    await wait_for_state(gatekeeper, vic_id, "active")

    stats = await alice.reply_to(room_id, "!stats", BOT)
    assert "This week: 2 requests (1 active, 1 rejected)" in stats
    assert f"approvals by: {alice.user_id} 1" in stats
    audit = await alice.reply_to(room_id, "!audit 10", BOT)
    assert "block" in audit
    assert "evil*" in audit
    assert f"{wes_id}: pending → rejected (not today)" in audit
    assert f"{vic_id}: pending → approved" in audit


async def test_non_admins_cannot_use_the_power_tools(
    gatekeeper_with_mallory: tuple[Gatekeeper, str], mallory: MatrixUser
) -> None:
    gatekeeper, room_id = gatekeeper_with_mallory
    for command in (
        "!invite",
        "!invites",
        "!revoke abc",
        "!block ip 1.2.3.4",
        "!blocks",
        "!unblock abc",
        "!close",
        "!open",
        "!stats",
        "!audit",
    ):
        answer = await mallory.reply_to(room_id, command, BOT)
        assert answer == "Sorry, only Gatekeeper admins can give me commands.", command
    assert await gatekeeper.db.fetchval("SELECT COUNT(*) FROM admin_audit") == 0


@pytest.fixture
async def gatekeeper_with_mallory(
    start_gatekeeper: StartGatekeeper, alice: MatrixUser, mallory: MatrixUser
) -> tuple[Gatekeeper, str]:
    gatekeeper, room_id = await started_with_room(start_gatekeeper, alice)
    await alice.api.invite_user(room_id, mallory.user_id)
    await mallory.wait_for_invite(room_id)
    await mallory.api.join_room_by_id(room_id)
    return gatekeeper, room_id


async def test_proof_of_work_and_honeypot(start_gatekeeper: StartGatekeeper) -> None:
    gatekeeper = await start_gatekeeper(
        antibot={"proof_of_work": True, "proof_of_work_max_number": 2000, "honeypot": True}
    )
    # The missing or wrong solution is named: any client must solve one, nothing to hide.
    status, body = await sign_up(gatekeeper, new_applicant())
    assert (status, body["errcode"], body["field"]) == (422, "GK_INVALID_FIELD", "altcha")
    assert body["fields"] == {
        "altcha": "is required: solve a challenge from GET /api/antibot/challenge and send "
        "its solution"
    }

    status, challenge = await api(gatekeeper, "GET", "/api/antibot/challenge")
    assert status == 200
    solved = solve(challenge)
    assert (await sign_up(gatekeeper, new_applicant(), altcha=solved))[0] == 201
    # A solution works once; a filled honeypot is refused even with a fresh solution.
    status, body = await sign_up(gatekeeper, new_applicant(), altcha=solved)
    assert (status, body["field"]) == (422, "altcha")
    assert body["error"].startswith("altcha is not a valid solution (wrong, expired or already")
    _, challenge = await api(gatekeeper, "GET", "/api/antibot/challenge")
    status, body = await sign_up(
        gatekeeper, new_applicant(), altcha=solve(challenge), website="http://spam.example"
    )
    assert (status, body["errcode"]) == REFUSED
    assert "field" not in body
    assert await gatekeeper.db.fetchval("SELECT COUNT(*) FROM registration_request") == 1

    # The served OpenAPI document asks for the solution, and says what it is.
    _, document = await api(gatekeeper, "GET", "/api/openapi.json")
    schema = document["paths"]["/api/auth/sign-up"]["post"]["requestBody"]["content"][
        "application/json"
    ]["schema"]
    assert "altcha" in schema["required"]
    assert "GET /api/antibot/challenge" in schema["properties"]["altcha"]["description"]
    assert "`altcha`" in document["paths"]["/api/auth/sign-up"]["post"]["description"]


@pytest.fixture
async def fake_siteverify() -> AsyncIterator[str]:
    """Stands in for the CAPTCHA provider (we cannot reach it): accepts the answer 'good'."""
    seen: list[dict[str, str]] = []

    async def siteverify(request: web.Request) -> web.Response:
        form = dict(await request.post())
        seen.append({k: str(v) for k, v in form.items()})
        ok = form.get("secret") == "provider-secret" and form.get("response") == "good"
        return web.json_response({"success": ok})

    app = web.Application()
    app.router.add_post("/siteverify", siteverify)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}/siteverify"
    await runner.cleanup()


async def test_third_party_captcha(start_gatekeeper: StartGatekeeper, fake_siteverify: str) -> None:
    gatekeeper = await start_gatekeeper(
        antibot={
            "captcha": "turnstile",
            "captcha_site_key": "site-key-1",
            "captcha_secret": "provider-secret",
            "captcha_verify_url": fake_siteverify,
        }
    )
    assert (await sign_up(gatekeeper, new_applicant()))[1]["errcode"] == REFUSED[1]
    bad = {"cf-turnstile-response": "bad"}
    assert (await sign_up(gatekeeper, new_applicant(), **bad))[1]["errcode"] == REFUSED[1]
    good = {"cf-turnstile-response": "good"}
    assert (await sign_up(gatekeeper, new_applicant(), **good))[0] == 201
    url = web_url(gatekeeper) + "/sign-up"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        page = await response.text()
        policy = response.headers["Content-Security-Policy"]
    assert 'class="cf-turnstile" data-sitekey="site-key-1"' in page
    assert "https://challenges.cloudflare.com" in policy
