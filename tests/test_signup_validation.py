"""Bad sign-ups get a 4xx naming the field, and leave nothing behind."""

from __future__ import annotations

import aiohttp
import pytest

from harness.matrix_user import MatrixUser
from tests.conftest import MailCatcher, StartGatekeeper
from tests.flows import api, new_applicant, sign_up, web_url


async def nothing_written(gatekeeper: object) -> None:
    db = gatekeeper.db  # type: ignore[attr-defined]
    for table in ("registration_request", "registration_audit", "email_token", "mail_outbox"):
        assert await db.fetchval(f"SELECT COUNT(*) FROM {table}") == 0, table


CASES = [
    ({"userName": "alice"}, "userName", "is already taken"),  # a Synapse user (fixture)
    ({"userName": "gatekeeper"}, "userName", "is reserved"),
    ({"userName": "administrator"}, "userName", "is reserved"),
    ({"userName": "Ann Smith!"}, "userName", "may only contain a-z, 0-9 and . _ = - / +"),
    ({"userName": "a" * 250}, "userName", "is too long"),
    ({"userName": ""}, "userName", "is required"),
    ({"email": "not-an-address"}, "email", "is not a valid email address"),
    ({"email": 42}, "email", "must be a string"),
    ({"password": "short"}, "password", "must be at least 8 characters"),
    ({"password": "password1"}, "password", "is too common; choose another"),
    ({"password": "x" * 5000}, "password", "must be at most 4096 bytes"),
    ({"language": "xx"}, "language", "must be one of en, de"),
]


@pytest.mark.parametrize(("change", "field", "message"), CASES)
async def test_bad_field_is_named_and_nothing_is_written(
    start_gatekeeper: StartGatekeeper,
    alice: MatrixUser,  # exists on Synapse, so the name "alice" is taken
    smtp: MailCatcher,
    change: dict[str, object],
    field: str,
    message: str,
) -> None:
    gatekeeper = await start_gatekeeper()
    applicant = new_applicant()

    status, body = await sign_up(gatekeeper, applicant, **change)

    assert status == 422
    assert body["errcode"] == "GK_INVALID_FIELD"
    assert body["field"] == field
    assert body["fields"] == {field: message}
    await nothing_written(gatekeeper)
    assert smtp.messages == []


async def test_every_bad_field_at_once(start_gatekeeper: StartGatekeeper) -> None:
    gatekeeper = await start_gatekeeper(registration={"require_reason": True})
    status, body = await api(gatekeeper, "POST", "/api/auth/sign-up", {"language": "de"})
    assert status == 422
    assert set(body["fields"]) == {"userName", "email", "password", "reason"}
    await nothing_written(gatekeeper)


async def test_name_of_a_live_request_is_taken(start_gatekeeper: StartGatekeeper) -> None:
    gatekeeper = await start_gatekeeper()
    first = new_applicant()
    assert (await sign_up(gatekeeper, first))[0] == 201
    status, body = await sign_up(gatekeeper, new_applicant(), userName=first.localpart)
    assert (status, body["fields"]) == (422, {"userName": "is already taken"})
    assert await gatekeeper.db.fetchval("SELECT COUNT(*) FROM registration_request") == 1


async def test_a_taken_name_is_told_with_the_other_fields(
    start_gatekeeper: StartGatekeeper, alice: MatrixUser
) -> None:
    gatekeeper = await start_gatekeeper()
    status, body = await sign_up(gatekeeper, new_applicant(), userName="alice", password="short")
    assert (status, body["fields"]) == (
        422,
        {"userName": "is already taken", "password": "must be at least 8 characters"},
    )
    await nothing_written(gatekeeper)


async def test_not_json_and_oversized_bodies(start_gatekeeper: StartGatekeeper) -> None:
    gatekeeper = await start_gatekeeper()
    assert (await api(gatekeeper, "POST", "/api/auth/sign-up", ["a", "list"]))[0] == 400
    status, body = await api(
        gatekeeper, "POST", "/api/auth/sign-up", {"password": "x" * (70 * 1024)}
    )
    assert (status, body["errcode"]) == (413, "GK_TOO_LARGE")
    await nothing_written(gatekeeper)


async def test_admin_api_needs_its_token(start_gatekeeper: StartGatekeeper) -> None:
    gatekeeper = await start_gatekeeper()
    url = web_url(gatekeeper) + "/api/admin/registrations"
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as response:
            assert response.status == 401
        async with session.get(url, headers={"Authorization": "Bearer wrong"}) as response:
            assert response.status == 403
            assert (await response.json())["errcode"] == "GK_FORBIDDEN"
    assert await api(gatekeeper, "GET", "/api/admin/registrations", admin=True) == (
        200,
        {"registrations": []},
    )


async def test_sign_ups_per_address_are_limited(start_gatekeeper: StartGatekeeper) -> None:
    gatekeeper = await start_gatekeeper(security={"signups_per_hour": 2})
    for _ in range(2):
        assert (await sign_up(gatekeeper, new_applicant()))[0] == 201
    status, body = await sign_up(gatekeeper, new_applicant())
    assert (status, body["errcode"]) == (429, "GK_RATE_LIMITED")
    assert await gatekeeper.db.fetchval("SELECT COUNT(*) FROM registration_request") == 2
