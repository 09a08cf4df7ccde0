"""MasAdmin against the stand-in MAS (harness/mas_standin.py), which holds every admin-API
request to MAS's published OpenAPI document and refuses what MAS would refuse."""

from __future__ import annotations

import asyncio
import base64
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr

from gatekeeper.appservice.config import HomeserverConfig, MasConfig
from gatekeeper.appservice.homeserver.account_backend import (
    AccountStatus,
    AccountTaken,
    Availability,
    HomeserverUnavailable,
    NewAccount,
    ProvisioningRefused,
)
from gatekeeper.appservice.homeserver.mas_admin import MasAdmin
from gatekeeper.appservice.timeutil import now_ms
from harness.mas_standin import MasStandin, Refusal

DOMAIN = "example.org"
CLIENT_ID = "01JGATEKEEPER0000000000000"
CLIENT_SECRET = "s3cret-" + secrets.token_hex(8)
API = "/api/admin/v1"


def fresh_localpart(prefix: str = "gk") -> str:
    return f"{prefix}-{secrets.token_hex(6)}"


def config(mas_url: str, client_secret: str = CLIENT_SECRET) -> HomeserverConfig:
    return HomeserverConfig(
        address="http://127.0.0.1:9",  # Synapse: not used with MAS
        domain=DOMAIN,
        request_timeout=5.0,
        mas=MasConfig(url=mas_url, client_id=CLIENT_ID, client_secret=SecretStr(client_secret)),
    )


@asynccontextmanager
async def started(homeserver: HomeserverConfig) -> AsyncIterator[MasAdmin]:
    assert homeserver.mas is not None
    client = MasAdmin(homeserver, homeserver.mas)
    await client.start()
    try:
        yield client
    finally:
        await client.close()


@asynccontextmanager
async def standin(**options: Any) -> AsyncIterator[MasStandin]:
    async with MasStandin.running(CLIENT_ID, CLIENT_SECRET, **options) as mas:
        yield mas
        # Nothing MAS would silently ignore was sent, and the stand-in answered as MAS.
        assert mas.problems == []


@pytest.fixture
async def mas() -> AsyncIterator[MasStandin]:
    async with standin() as mas:
        yield mas


@pytest.fixture
async def client(mas: MasStandin) -> AsyncIterator[MasAdmin]:
    async with started(config(mas.url)) as client:
        yield client


def account(
    localpart: str,
    password: str | None = None,
    email: str | None = None,
    approved_at_ms: int | None = None,
) -> NewAccount:
    return NewAccount(
        localpart,
        password,
        "Applicant",
        email,
        approved_at_ms=now_ms() if approved_at_ms is None else approved_at_ms,
    )


async def raw(
    mas: MasStandin,
    method: str,
    path: str,
    *,
    token: str | None = None,
    json: Any = None,
    data: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, str]:
    all_headers = dict(headers or {})
    if token is not None:
        all_headers["Authorization"] = f"Bearer {token}"
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        session.request(
            method, mas.url + path, json=json, data=data, headers=all_headers
        ) as response,
    ):
        return response.status, await response.text()


def basic(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


async def admin_token(mas: MasStandin, secret: str = CLIENT_SECRET) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        session.post(
            mas.url + "/oauth2/token",
            data={"grant_type": "client_credentials", "scope": "urn:mas:admin"},
            headers={"Authorization": basic(CLIENT_ID, secret)},
        ) as response,
    ):
        return response.status, await response.json()


# --- the stand-in holds requests to MAS's document -----------------------------------------


async def test_the_standin_refuses_what_mas_would_refuse(mas: MasStandin) -> None:
    status, body = await admin_token(mas)
    assert status == 200
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "urn:mas:admin"
    token = body["access_token"]
    users = f"{API}/users"
    as_json = {"Content-Type": "application/json"}
    attempts: list[tuple[str, str, dict[str, Any], int]] = [
        # (method, path, request, the status MAS gives)
        ("POST", users, {"json": {"username": "alice"}, "token": None}, 400),  # no token
        ("POST", users, {"json": {"username": "alice"}, "token": "mat_unknown"}, 401),
        ("POST", users, {"json": {}}, 422),  # username is required
        ("POST", users, {"json": {"username": 3}}, 422),
        ("POST", users, {"json": {"username": "a", "skip_homeserver_check": "yes"}}, 422),
        ("POST", users, {"data": b"{not json", "headers": as_json}, 400),
        ("POST", users, {"data": b"username=alice"}, 415),
        ("POST", users, {"json": {"username": "Not Valid"}}, 400),
        ("POST", f"{API}/users/not-a-ulid/lock", {}, 400),
        ("GET", f"{API}/user-emails?filter[user]=nope", {}, 400),
        ("GET", f"{API}/user-emails?page[first]=0", {}, 400),
        ("POST", f"{API}/user-emails", {"json": {"user_id": "x", "email": "a@b.org"}}, 422),
        ("PUT", users, {"json": {"username": "alice"}}, 405),
        ("GET", f"{API}/no-such-thing", {}, 404),
    ]
    for method, path, request, expected in attempts:
        options = {"token": token, **request}
        status, text = await raw(mas, method, path, **options)
        assert status == expected, (method, path, request, text)
    assert [refusal.status for refusal in mas.refused] == [status for *_, status in attempts]
    assert mas.refused[0] == Refusal("POST", users, 400, "Missing authorization header")
    assert "'username' is a required property" in mas.refused[2].reason
    assert mas.users == {}
    # And the same token works for a request that is right.
    status, _ = await raw(mas, "POST", users, json={"username": "alice"}, token=token)
    assert status == 201
    assert list(mas.users) == ["alice"]


async def test_the_standin_flags_what_mas_would_ignore(mas: MasStandin) -> None:
    # MAS's request types do not deny unknown fields: it would answer 201 and ignore the
    # misspelt flag. The stand-in answers the same, and names the field in `problems`.
    _, body = await admin_token(mas)
    token = body["access_token"]
    body = {"username": "bob", "skip_homeserver_chek": True}
    status, _ = await raw(mas, "POST", f"{API}/users", json=body, token=token)
    assert status == 201
    status, _ = await raw(mas, "GET", f"{API}/user-emails?filter[users]=x", token=token)
    assert status == 200
    assert len(mas.problems) == 2
    assert "skip_homeserver_chek" in mas.problems[0]
    assert "filter[users]" in mas.problems[1]
    assert mas.refused == []
    mas.problems.clear()


async def test_the_token_endpoint_refuses_bad_clients(mas: MasStandin) -> None:
    status, body = await admin_token(mas, secret="wrong")
    assert (status, body["error"]) == (401, "invalid_client")
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            mas.url + "/oauth2/token",
            data={"grant_type": "password", "scope": "urn:mas:admin"},
            headers={"Authorization": basic(CLIENT_ID, CLIENT_SECRET)},
        ) as response,
    ):
        assert response.status == 400
        assert (await response.json())["error"] == "unsupported_grant_type"
    assert [refusal.status for refusal in mas.refused] == [401, 400]
    assert mas.token_requests == 0


# --- usernames -----------------------------------------------------------------------------


async def test_usernames_taken_available_and_invalid(mas: MasStandin, client: MasAdmin) -> None:
    taken = fresh_localpart()
    mas.add_user(taken)
    assert await client.username_available(taken) is Availability.TAKEN
    assert await client.username_available(fresh_localpart()) is Availability.AVAILABLE
    assert await client.username_available("with/slash") is Availability.AVAILABLE
    for invalid in ("Upper", "white space", "_underscore", "x" * 250, ""):
        assert await client.username_available(invalid) is Availability.INVALID
    assert client.user_id("alice") == "@alice:example.org"
    assert mas.refused == []


# --- creating accounts ---------------------------------------------------------------------


async def test_create_with_password_and_email(mas: MasStandin, client: MasAdmin) -> None:
    localpart = fresh_localpart()
    # Shorter than MAS's complexity check allows: Gatekeeper's own rules have applied.
    password = "short"
    user_id = await client.create_account(account(localpart, password, "new@example.org"))
    assert user_id == f"@{localpart}:{DOMAIN}"
    user = mas.users[localpart]
    assert (user.password, user.passwords_set) == (password, 1)
    assert user.displayname == "Applicant"
    assert mas.emails_of(localpart) == ["new@example.org"]
    assert mas.operations() == [
        "token",
        "getUserByUsername",
        "createUser",
        "setUserPassword",
        "addUserEmail",
    ]
    assert mas.refused == []


async def test_create_without_password(mas: MasStandin, client: MasAdmin) -> None:
    localpart = fresh_localpart()
    await client.create_account(account(localpart))
    assert mas.users[localpart].password is None
    assert "setUserPassword" not in mas.operations()
    assert mas.emails_of(localpart) == []
    assert mas.refused == []


async def test_a_name_with_a_slash(mas: MasStandin, client: MasAdmin) -> None:
    localpart = f"team/{fresh_localpart()}"
    await client.create_account(account(localpart, "pass-word-1"))
    assert mas.users[localpart].password == "pass-word-1"
    assert await client.username_available(localpart) is Availability.TAKEN
    assert mas.refused == []


async def test_a_lost_answer_is_adopted_on_retry(mas: MasStandin, client: MasAdmin) -> None:
    localpart = fresh_localpart()
    new = account(localpart, "pass-word-1", "lost@example.org")
    mas.drop_answers("createUser")
    with pytest.raises(HomeserverUnavailable, match="creating"):
        await client.create_account(new)
    # Made in MAS, but Gatekeeper never heard; nor were the password and email set.
    assert mas.users[localpart].password is None
    assert await client.create_account(new) == f"@{localpart}:{DOMAIN}"
    assert [user for user in mas.users if user == localpart] == [localpart]
    assert mas.users[localpart].password == "pass-word-1"
    assert mas.emails_of(localpart) == ["lost@example.org"]
    assert mas.operations().count("createUser") == 1
    assert mas.refused == []


async def test_a_lost_email_answer_converges(mas: MasStandin, client: MasAdmin) -> None:
    localpart = fresh_localpart()
    new = account(localpart, "pass-word-1", "twice@example.org")
    mas.drop_answers("addUserEmail")
    with pytest.raises(HomeserverUnavailable):
        await client.create_account(new)
    await client.create_account(new)  # MAS says 409 for the address: it is this user's
    assert mas.emails_of(localpart) == ["twice@example.org"]
    assert mas.refused == []


async def test_an_older_user_is_someone_elses(mas: MasStandin, client: MasAdmin) -> None:
    localpart = fresh_localpart()
    mas.add_user(localpart, created_at=datetime.now(UTC) - timedelta(days=1), password="theirs")
    with pytest.raises(AccountTaken) as caught:
        await client.create_account(account(localpart, "mine-mine-mine"))
    assert caught.value.errcode == "M_USER_IN_USE"
    assert mas.users[localpart].password == "theirs"
    assert "setUserPassword" not in mas.operations()
    assert mas.refused == []


async def test_an_address_of_another_user_is_refused(mas: MasStandin, client: MasAdmin) -> None:
    other = fresh_localpart()
    mas.add_user(other)
    mas.add_email(other, "shared@example.org")
    with pytest.raises(ProvisioningRefused) as caught:
        await client.create_account(account(fresh_localpart(), None, "shared@example.org"))
    assert caught.value.errcode == "M_THREEPID_IN_USE"
    assert mas.emails_of(other) == ["shared@example.org"]
    assert mas.refused == []


async def test_a_name_the_homeserver_reserves_is_taken() -> None:
    async with standin(reserved_usernames=frozenset({"appservice-user"})) as mas:
        async with started(config(mas.url)) as client:
            with pytest.raises(AccountTaken, match="reserved by the homeserver"):
                await client.create_account(account("appservice-user"))
        assert mas.users == {}
        assert mas.refused == []


# --- the admin token -----------------------------------------------------------------------


async def test_the_token_is_renewed_before_it_expires() -> None:
    async with standin(token_ttl=1) as mas, started(config(mas.url)) as client:
        await client.username_available(fresh_localpart())
        await asyncio.sleep(1.0)
        await client.username_available(fresh_localpart())
        assert mas.token_requests == 2
        assert mas.refused == []


async def test_a_401_gets_a_new_token_and_one_retry(mas: MasStandin, client: MasAdmin) -> None:
    await client.username_available(fresh_localpart())
    mas.expire_tokens()  # as if MAS had restarted with a shorter lifetime, or revoked it
    taken = fresh_localpart()
    mas.add_user(taken)
    assert await client.username_available(taken) is Availability.TAKEN
    assert mas.token_requests == 2
    assert [(r.status, r.reason) for r in mas.refused] == [(401, "Access token expired")]


async def test_a_wrong_client_secret_is_a_clear_refusal(mas: MasStandin) -> None:
    wrong = "wrong-" + secrets.token_hex(8)
    async with started(config(mas.url, client_secret=wrong)) as client:
        with pytest.raises(ProvisioningRefused) as caught:
            await client.username_available(fresh_localpart())
    error = caught.value
    assert (error.errcode, error.status) == ("GK_MAS_CLIENT", 401)
    message = str(error)
    assert "homeserver.mas.client_id" in message
    assert "policy.data.admin_clients" in message
    assert "invalid_client" in message
    assert wrong not in message
    assert CLIENT_SECRET not in message
    assert [refusal.status for refusal in mas.refused] == [401]


async def test_a_client_that_is_no_admin_client_is_refused() -> None:
    async with standin(admin_client=False) as mas, started(config(mas.url)) as client:
        with pytest.raises(ProvisioningRefused) as caught:
            await client.create_account(account(fresh_localpart()))
        assert (caught.value.errcode, caught.value.status) == ("GK_MAS_CLIENT", 403)
        assert "scope 'urn:mas:admin' not allowed" in str(caught.value)
        assert CLIENT_SECRET not in str(caught.value)
        assert mas.users == {}


# --- MAS unavailable -----------------------------------------------------------------------


async def test_503_and_429_are_retry_later(mas: MasStandin, client: MasAdmin) -> None:
    mas.fail_next("getUserByUsername", status=503, retry_after=7)
    with pytest.raises(HomeserverUnavailable, match="HTTP 503") as caught:
        await client.username_available(fresh_localpart())
    assert caught.value.retry_after == 7
    mas.fail_next("token", status=429)
    mas.expire_tokens()
    with pytest.raises(HomeserverUnavailable, match="HTTP 429"):
        await client.create_account(account(fresh_localpart()))
    # Then MAS is back.
    localpart = fresh_localpart()
    await client.create_account(account(localpart))
    assert localpart in mas.users
    assert all(refusal.status == 401 for refusal in mas.refused)


async def test_mas_down_is_retry_later() -> None:
    async with standin() as mas:
        url = mas.url
    async with started(config(url)) as client:
        with pytest.raises(HomeserverUnavailable, match="getting an admin token"):
            await client.username_available(fresh_localpart())


# --- changing accounts ---------------------------------------------------------------------


async def test_set_password(mas: MasStandin, client: MasAdmin) -> None:
    localpart = fresh_localpart()
    user_id = await client.create_account(account(localpart, "first-password"))
    session = mas.add_session(localpart, "compat-sessions")
    await client.set_password(user_id, "second-password", logout_devices=False)
    assert (mas.users[localpart].password, mas.users[localpart].passwords_set) == (
        "second-password",
        2,
    )
    assert mas.active_sessions(localpart) == [session]
    assert mas.refused == []


async def test_set_password_logs_out_everywhere(mas: MasStandin, client: MasAdmin) -> None:
    localpart, other = fresh_localpart(), fresh_localpart()
    user_id = await client.create_account(account(localpart, "first-password"))
    mas.add_user(other)
    theirs = mas.add_session(other, "compat-sessions")
    finished = mas.add_session(localpart, "oauth2-sessions")
    finished.finished_at = datetime.now(UTC)
    # More than a page of them (MasAdmin asks for 100 at a time).
    for _ in range(101):
        mas.add_session(localpart, "compat-sessions")
    mas.add_session(localpart, "oauth2-sessions")
    mas.add_session(localpart, "user-sessions")
    await client.set_password(user_id, "second-password", logout_devices=True)
    assert mas.users[localpart].password == "second-password"
    assert mas.active_sessions(localpart) == []
    assert mas.active_sessions(other) == [theirs]
    assert mas.operations().count("finishCompatSession") == 101
    assert "finishOAuth2Session" in mas.operations()
    assert "finishUserSession" in mas.operations()
    assert mas.refused == []


async def test_set_password_of_no_such_user(mas: MasStandin, client: MasAdmin) -> None:
    with pytest.raises(ProvisioningRefused) as caught:
        await client.set_password(f"@nobody:{DOMAIN}", "pass-word-1", logout_devices=False)
    assert caught.value.errcode == "M_NOT_FOUND"
    with pytest.raises(ProvisioningRefused, match=r"not a user of example\.org"):
        await client.set_password("@someone:elsewhere.org", "pass-word-1", logout_devices=False)
    assert mas.refused == []


async def test_set_email_replaces_the_old_address(mas: MasStandin, client: MasAdmin) -> None:
    localpart = fresh_localpart()
    user_id = await client.create_account(account(localpart, None, "old@example.org"))
    mas.add_email(localpart, "older@example.org")
    await client.set_email(user_id, "new@example.org")
    assert mas.emails_of(localpart) == ["new@example.org"]
    await client.set_email(user_id, "new@example.org")  # safe to repeat
    assert mas.emails_of(localpart) == ["new@example.org"]
    assert mas.refused == []


async def test_join_room_is_not_for_mas(client: MasAdmin) -> None:
    assert client.can_join_users is False
    with pytest.raises(ProvisioningRefused) as caught:
        await client.join_room(f"@someone:{DOMAIN}", "#welcome:example.org")
    assert caught.value.errcode == "GK_NOT_CONFIGURED"


async def test_lock_unlock_deactivate_and_status(mas: MasStandin, client: MasAdmin) -> None:
    localpart, other = fresh_localpart(), fresh_localpart()
    user_id = await client.create_account(account(localpart, "pass-word-1"))
    other_id = await client.create_account(account(other))
    assert await client.account_status(f"@nobody:{DOMAIN}") == AccountStatus(exists=False)
    assert await client.account_status(user_id) == AccountStatus(exists=True)

    await client.set_suspended(user_id, True)
    assert mas.users[localpart].locked_at is not None
    assert await client.account_status(user_id) == AccountStatus(exists=True, suspended=True)
    await client.set_suspended(user_id, False)
    assert mas.users[localpart].locked_at is None
    assert await client.account_status(user_id) == AccountStatus(exists=True)

    session = mas.add_session(localpart, "compat-sessions")
    await client.deactivate(user_id, erase=True)
    assert mas.users[localpart].erase_requested is True
    assert session.finished_at is not None
    assert await client.account_status(user_id) == AccountStatus(exists=True, deactivated=True)
    await client.deactivate(other_id, erase=False)
    assert mas.users[other].erase_requested is False
    assert mas.refused == []
