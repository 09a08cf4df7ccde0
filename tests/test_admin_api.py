"""The admin REST API for scripts: what a listing without `state` holds, and who decided."""

from __future__ import annotations

from harness.matrix_user import MatrixUser
from tests.conftest import StartGatekeeper
from tests.flows import (
    api,
    is_edit_of,
    is_notice_for,
    new_applicant,
    request_id_of,
    sign_up,
    started_with_room,
)

NO_CONFIRMATION = {"require_email_confirmation": False}


async def test_a_listing_without_state_holds_the_pending_requests_only_as_documented(
    start_gatekeeper: StartGatekeeper,
) -> None:
    gatekeeper = await start_gatekeeper(registration=NO_CONFIRMATION)
    waiting, turned_down = new_applicant("wait"), new_applicant("nope")
    for applicant in (waiting, turned_down):
        assert (await sign_up(gatekeeper, applicant))[0] == 201
    rejected_id = await request_id_of(gatekeeper, turned_down)
    status, _ = await api(
        gatekeeper, "POST", f"/api/admin/registrations/{rejected_id}/reject", admin=True
    )
    assert status == 200

    _, listing = await api(gatekeeper, "GET", "/api/admin/registrations", admin=True)
    assert [r["userName"] for r in listing["registrations"]] == [waiting.localpart]
    _, listing = await api(gatekeeper, "GET", "/api/admin/registrations?state=rejected", admin=True)
    assert [r["userName"] for r in listing["registrations"]] == [turned_down.localpart]

    _, document = await api(gatekeeper, "GET", "/api/openapi.json")
    operation = document["paths"]["/api/admin/registrations"]["get"]
    state = next(p for p in operation["parameters"] if p["name"] == "state")
    assert state["schema"]["default"] == "pending"
    assert "only pending" in state["description"]
    assert "without `state`, only `pending` requests" in operation["description"]


async def test_a_rest_approval_names_the_actor_in_the_notice_and_the_audit(
    start_gatekeeper: StartGatekeeper, alice: MatrixUser
) -> None:
    gatekeeper, room_id = await started_with_room(
        start_gatekeeper, alice, registration=NO_CONFIRMATION
    )
    ann = new_applicant("ann")
    assert (await sign_up(gatekeeper, ann))[0] == 201
    notice = await alice.wait_for(is_notice_for(room_id, ann))
    request_id = await request_id_of(gatekeeper, ann)
    path = f"/api/admin/registrations/{request_id}/approve"

    # A name that could pass for more than a name is refused, and decides nothing.
    for bad in ("bob smith", "<b>bob</b>", "bob\n", "x" * 65, 42, ""):
        status, body = await api(gatekeeper, "POST", path, {"actor": bad}, admin=True)
        assert (status, body["field"]) == (422, "actor"), bad
    _, shown = await api(gatekeeper, "GET", f"/api/admin/registrations/{request_id}", admin=True)
    assert shown["state"] == "pending"

    status, body = await api(gatekeeper, "POST", path, {"actor": "@bob:example.org"}, admin=True)
    assert (status, body["outcome"]) == (200, "changed")
    assert body["registration"]["decidedBy"] == "admin-api (@bob:example.org)"

    await alice.wait_for(is_edit_of(notice["event_id"], "Approved by admin-api (@bob:example.org)"))
    actor = await gatekeeper.db.fetchval(
        "SELECT actor FROM registration_audit WHERE request_id=$1 AND to_state=$2",
        request_id,
        "approved",
    )
    assert actor == "admin-api (@bob:example.org)"


async def test_a_rest_rejection_takes_a_short_name_and_without_one_stays_admin_api(
    start_gatekeeper: StartGatekeeper,
) -> None:
    gatekeeper = await start_gatekeeper(registration=NO_CONFIRMATION)
    named, unnamed = new_applicant("named"), new_applicant("unnamed")
    for applicant in (named, unnamed):
        assert (await sign_up(gatekeeper, applicant))[0] == 201

    named_id = await request_id_of(gatekeeper, named)
    status, body = await api(
        gatekeeper,
        "POST",
        f"/api/admin/registrations/{named_id}/reject",
        {"reason": "spam", "actor": "ops-script"},
        admin=True,
    )
    assert (status, body["registration"]["decidedBy"]) == (200, "admin-api (ops-script)")
    unnamed_id = await request_id_of(gatekeeper, unnamed)
    status, body = await api(
        gatekeeper, "POST", f"/api/admin/registrations/{unnamed_id}/reject", admin=True
    )
    assert (status, body["registration"]["decidedBy"]) == (200, "admin-api")

    _, shown = await api(gatekeeper, "GET", f"/api/admin/registrations/{named_id}", admin=True)
    assert [(h["to"], h["actor"]) for h in shown["history"]][-1] == (
        "rejected",
        "admin-api (ops-script)",
    )
    _, document = await api(gatekeeper, "GET", "/api/openapi.json")
    for action in ("approve", "reject"):
        body_schema = document["paths"][f"/api/admin/registrations/{{id}}/{action}"]["post"][
            "requestBody"
        ]["content"]["application/json"]["schema"]
        assert body_schema["properties"]["actor"]["type"] == "string"
