"""Sign-up → admin room → account on Synapse, end to end on real peers."""

from __future__ import annotations

import asyncio

from mautrix.types import RoomID

from gatekeeper.appservice.runtime.program import Gatekeeper
from harness.matrix_user import Event, MatrixUser, wait_until
from tests.conftest import Homeserver, MailCatcher, StartGatekeeper
from tests.flows import (
    BOT,
    Applicant,
    api,
    can_log_in,
    confirmed_applicant,
    is_edit_of,
    is_notice_for,
    link_token,
    new_applicant,
    request_id_of,
    sign_up,
    started_with_room,
    wait_for_state,
)

NO_CONFIRMATION = {"require_email_confirmation": False}


async def noticed_request(
    gatekeeper: Gatekeeper, admin: MatrixUser, room_id: RoomID, prefix: str
) -> tuple[Applicant, Event, str]:
    """A new applicant signs up; returns them, the notice `admin` got, and their request's ID."""
    applicant = new_applicant(prefix)
    await sign_up(gatekeeper, applicant)
    notice = await admin.wait_for(is_notice_for(room_id, applicant))
    return applicant, notice, await request_id_of(gatekeeper, applicant)


async def test_happy_path_with_reaction(
    start_gatekeeper: StartGatekeeper,
    alice: MatrixUser,
    smtp: MailCatcher,
    synapse: Homeserver,
) -> None:
    gatekeeper, room_id = await started_with_room(start_gatekeeper, alice)
    ann = new_applicant()

    status, body = await sign_up(gatekeeper, ann, reason="Alice's friend from the choir")
    assert (status, body) == (201, {"status": "unverified", "userId": ann.user_id})

    mail = await smtp.wait_for(ann.email, "Confirm")
    token = link_token(mail, "confirm-email")
    assert await api(gatekeeper, "POST", "/api/user/confirm-email", {"token": token}) == (
        200,
        {"status": "newly-confirmed"},
    )
    assert await api(gatekeeper, "POST", "/api/user/confirm-email", {"token": token}) == (
        200,
        {"status": "already-confirmed"},
    )

    notice = await alice.wait_for(is_notice_for(room_id, ann))
    text = notice["content"]["body"]
    assert "Alice's friend from the choir" in text
    assert "a***@example.org" in text  # masked by default
    assert ann.email not in text

    await alice.api.react(room_id, notice["event_id"], "✅")

    await wait_until(lambda: can_log_in(synapse.url, ann), timeout=30)
    edit = await alice.wait_for(is_edit_of(notice["event_id"], f"account {ann.user_id} created"))
    assert f"Approved by {alice.user_id}" in edit["content"]["m.new_content"]["body"]
    welcome = await smtp.wait_for(ann.email, "approved")
    assert ann.user_id in welcome.get_content()
    assert synapse.url in welcome.get_content()

    rows = await gatekeeper.db.fetch("SELECT password_encrypted FROM registration_request")
    assert [row["password_encrypted"] for row in rows] == [None]
    unsent = await gatekeeper.db.fetch("SELECT body FROM mail_outbox WHERE body <> ''")
    assert unsent == []


async def test_approve_and_reject_by_command(
    start_gatekeeper: StartGatekeeper,
    alice: MatrixUser,
    smtp: MailCatcher,
    synapse: Homeserver,
) -> None:
    gatekeeper, room_id = await started_with_room(
        start_gatekeeper, alice, registration=NO_CONFIRMATION
    )
    bea, cal = new_applicant("bea"), new_applicant("cal")
    assert (await sign_up(gatekeeper, bea))[0] == 201
    assert (await sign_up(gatekeeper, cal))[0] == 201
    bea_notice = await alice.wait_for(is_notice_for(room_id, bea))
    cal_notice = await alice.wait_for(is_notice_for(room_id, cal))
    bea_id, cal_id = await request_id_of(gatekeeper, bea), await request_id_of(gatekeeper, cal)

    pending = await alice.reply_to(room_id, "!pending", BOT)
    assert "2 in all" in pending
    assert bea_id in pending
    assert cal_id in pending

    assert await alice.reply_to(room_id, f"!approve {bea_id}", BOT) == (
        f"Approved {bea_id} ({bea.user_id})."
    )
    assert await alice.reply_to(room_id, f"!reject {cal_id} spam, sorry", BOT) == (
        f"Rejected {cal_id} ({cal.user_id})."
    )

    await wait_until(lambda: can_log_in(synapse.url, bea), timeout=30)
    await alice.wait_for(is_edit_of(bea_notice["event_id"], "created"))
    await alice.wait_for(is_edit_of(cal_notice["event_id"], f"Rejected by {alice.user_id}: spam"))
    rejection = await smtp.wait_for(cal.email, "spam, sorry")
    assert cal.user_id in rejection.get_content()
    assert not await can_log_in(synapse.url, cal)
    assert (await gatekeeper.accounts.username_available(cal.localpart)).name == "AVAILABLE"

    shown = await alice.reply_to(room_id, f"!show {cal_id}", BOT)
    assert f"pending → rejected by {alice.user_id} (spam, sorry)" in shown
    found = await alice.reply_to(room_id, f"!search {bea.localpart}", BOT)
    assert bea_id in found
    assert "active" in found


async def test_non_admin_changes_nothing(
    start_gatekeeper: StartGatekeeper, alice: MatrixUser, mallory: MatrixUser
) -> None:
    gatekeeper, room_id = await started_with_room(
        start_gatekeeper, alice, registration=NO_CONFIRMATION
    )
    await alice.api.invite_user(room_id, mallory.user_id)
    await mallory.wait_for_invite(room_id)
    await mallory.api.join_room_by_id(room_id)
    _, notice, request_id = await noticed_request(gatekeeper, mallory, room_id, "dan")

    await mallory.api.react(room_id, notice["event_id"], "✅")
    refusal = await mallory.reply_to(room_id, f"!approve {request_id}", BOT)
    assert refusal == "Sorry, only Gatekeeper admins can give me commands."
    # The bot handles events in order: once this answer is in, the reaction was seen too.
    await alice.reply_to(room_id, "!help", BOT)

    assert (await gatekeeper.store.get(request_id)).state == "pending"


async def test_double_approval_makes_one_account_and_no_repeated_edit(
    start_gatekeeper: StartGatekeeper, alice: MatrixUser, smtp: MailCatcher, synapse: Homeserver
) -> None:
    gatekeeper, room_id = await started_with_room(
        start_gatekeeper, alice, registration=NO_CONFIRMATION
    )
    eve, notice, request_id = await noticed_request(gatekeeper, alice, room_id, "eve")

    await asyncio.gather(
        alice.api.react(room_id, notice["event_id"], "✅"),
        alice.say(room_id, f"!approve {request_id}"),
        api(gatekeeper, "POST", f"/api/admin/registrations/{request_id}/approve", admin=True),
    )
    await wait_for_state(gatekeeper, request_id, "active")
    await alice.wait_for(is_edit_of(notice["event_id"], "created"))
    await alice.reply_to(room_id, "!help", BOT)  # everything before it has been seen

    history = await gatekeeper.store.history(request_id)
    assert [e.to_state for e in history].count("approved") == 1
    assert [e.to_state for e in history].count("active") == 1
    edits = [
        e["content"]["m.new_content"]["body"]
        for e in alice.timeline
        if e["content"].get("m.relates_to", {}).get("event_id") == notice["event_id"]
        and e["content"]["m.relates_to"].get("rel_type") == "m.replace"
    ]
    assert len(edits) == len(set(edits))
    assert len(smtp.to(eve.email)) == 1  # one welcome mail


async def test_expired_and_withdrawn_cannot_be_approved(
    start_gatekeeper: StartGatekeeper, alice: MatrixUser, smtp: MailCatcher
) -> None:
    gatekeeper, room_id = await started_with_room(start_gatekeeper, alice)
    fay, mail = await confirmed_applicant(gatekeeper, smtp, "fay")
    notice = await alice.wait_for(is_notice_for(room_id, fay))
    status_token = link_token(mail, "status")
    assert (await api(gatekeeper, "GET", f"/api/registration/status?token={status_token}"))[1][
        "status"
    ] == "pending"

    # Before withdrawing: that erases the name it is found by.
    request_id = await request_id_of(gatekeeper, fay)
    assert await api(gatekeeper, "POST", "/api/registration/withdraw", {"token": status_token}) == (
        200,
        {"status": "withdrawn"},
    )
    await alice.wait_for(is_edit_of(notice["event_id"], "Withdrawn by the applicant"))
    assert await alice.reply_to(room_id, f"!approve {request_id}", BOT) == (
        f"{request_id} cannot be approved: it is withdrawn."
    )


async def test_requests_expire(start_gatekeeper: StartGatekeeper, alice: MatrixUser) -> None:
    # 2 seconds to live
    gatekeeper, room_id = await started_with_room(
        start_gatekeeper,
        alice,
        registration={"require_email_confirmation": False, "request_ttl_hours": 2 / 3600},
    )
    _, notice, request_id = await noticed_request(gatekeeper, alice, room_id, "gus")

    await wait_for_state(gatekeeper, request_id, "expired")
    await alice.wait_for(is_edit_of(notice["event_id"], "Expired"))
    assert await alice.reply_to(room_id, f"!approve {request_id}", BOT) == (
        f"{request_id} cannot be approved: it is expired."
    )


async def test_mail_waits_for_smtp(start_gatekeeper: StartGatekeeper, smtp: MailCatcher) -> None:
    gatekeeper = await start_gatekeeper()
    smtp.go_down()
    hal = new_applicant("hal")
    assert (await sign_up(gatekeeper, hal))[0] == 201
    await wait_until(
        lambda: gatekeeper.db.fetchval("SELECT attempts FROM mail_outbox WHERE attempts > 0")
    )
    smtp.come_back()
    mail = await smtp.wait_for(hal.email, "Confirm")
    assert link_token(mail, "confirm-email")
    await asyncio.sleep(1.5)  # past the longest retry: a second delivery would be here now
    assert len(smtp.to(hal.email)) == 1


async def test_a_notice_sent_but_not_recorded_is_not_posted_twice(
    start_gatekeeper: StartGatekeeper, alice: MatrixUser
) -> None:
    gatekeeper, room_id = await started_with_room(
        start_gatekeeper, alice, registration=NO_CONFIRMATION
    )
    ann, notice, request_id = await noticed_request(gatekeeper, alice, room_id, "ann")
    # As if recording the notice had failed after Synapse took it: it is sent again.
    await gatekeeper.db.execute(
        "UPDATE registration_request SET notice_event_id = NULL, notice_state = NULL WHERE id = $1",
        request_id,
    )
    bob = new_applicant("bob")
    await sign_up(gatekeeper, bob)  # wakes the notice worker
    await alice.wait_for(is_notice_for(room_id, bob))
    await alice.reply_to(room_id, "!help", BOT)  # everything sent before has arrived

    assert not [event for event in alice.timeline if is_notice_for(room_id, ann)(event)]
    recorded = await gatekeeper.db.fetchval(
        "SELECT notice_event_id FROM registration_request WHERE id = $1", request_id
    )
    assert recorded == notice["event_id"]
