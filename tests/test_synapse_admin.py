"""SynapseAdmin against the session's real Synapse, in shared-secret and admin-token mode."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr
from ruamel.yaml import YAML

from gatekeeper.appservice.config import HomeserverConfig
from gatekeeper.appservice.homeserver.account_backend import (
    AccountTaken,
    Availability,
    HomeserverUnavailable,
    NewAccount,
    ProvisioningRefused,
)
from gatekeeper.appservice.homeserver.synapse_admin import SynapseAdmin, _json_object
from harness.net import free_port
from tests.conftest import SERVER_NAME, Homeserver

MODES = ["shared_secret", "admin_token"]


def fresh_localpart(prefix: str = "gk") -> str:
    return f"{prefix}-{secrets.token_hex(6)}"


def fresh_password() -> str:
    return secrets.token_urlsafe(16)


def as_token(synapse: Homeserver) -> str:
    return str(YAML(typ="safe").load(synapse.config_file.read_text())["appservice"]["as_token"])


@pytest.fixture(scope="session")
async def admin_token(synapse: Homeserver) -> str:
    answer = await synapse.server.register_user(fresh_localpart("gk-admin"), "x" * 20, admin=True)
    return str(answer["access_token"])


def homeserver_config(synapse: Homeserver, mode: str, admin_token: str) -> HomeserverConfig:
    if mode == "admin_token":
        return HomeserverConfig(
            address=synapse.url, domain=SERVER_NAME, admin_token=SecretStr(admin_token)
        )
    return HomeserverConfig(
        address=synapse.url,
        domain=SERVER_NAME,
        registration_shared_secret=SecretStr(synapse.server.shared_secret),
    )


@asynccontextmanager
async def started(config: HomeserverConfig, token: str = "unused") -> AsyncIterator[SynapseAdmin]:
    client = SynapseAdmin(config, token)
    await client.start()
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture(params=MODES)
async def client(
    request: pytest.FixtureRequest, synapse: Homeserver, admin_token: str
) -> AsyncIterator[SynapseAdmin]:
    async with started(
        homeserver_config(synapse, request.param, admin_token), as_token(synapse)
    ) as client:
        yield client


@pytest.fixture
async def shared_secret_client(synapse: Homeserver) -> AsyncIterator[SynapseAdmin]:
    async with started(homeserver_config(synapse, "shared_secret", ""), as_token(synapse)) as c:
        yield c


@pytest.fixture
async def admin_client(synapse: Homeserver, admin_token: str) -> AsyncIterator[SynapseAdmin]:
    async with started(homeserver_config(synapse, "admin_token", admin_token)) as c:
        yield c


async def call(
    synapse: Homeserver, method: str, path: str, token: str, body: Any = None
) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        session.request(
            method,
            synapse.url + path,
            json=body,
            headers={"Authorization": f"Bearer {token}"},
        ) as response,
    ):
        return response.status, await response.json()


def quoted(value: str) -> str:
    return quote(value, safe="")


# --- usernames -----------------------------------------------------------------------------


async def test_a_fresh_name_is_available(client: SynapseAdmin) -> None:
    assert await client.username_available(fresh_localpart()) is Availability.AVAILABLE


async def test_an_existing_user_is_taken(client: SynapseAdmin, synapse: Homeserver) -> None:
    localpart = fresh_localpart()
    await synapse.server.register_user(localpart, fresh_password())
    assert await client.username_available(localpart) is Availability.TAKEN


async def test_a_user_without_display_name_is_taken(
    client: SynapseAdmin, synapse: Homeserver
) -> None:
    localpart = fresh_localpart()
    user_id = synapse.user_id(localpart)
    answer = await synapse.server.register_user(localpart, fresh_password())
    path = f"/_matrix/client/v3/profile/{quoted(user_id)}"
    status, _ = await call(
        synapse, "PUT", path + "/displayname", answer["access_token"], {"displayname": ""}
    )
    assert status == 200
    # Why the fallback asks for the display name field: the whole profile is now a 404.
    status, body = await call(synapse, "GET", path, answer["access_token"])
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
    assert await client.username_available(localpart) is Availability.TAKEN


async def test_names_synapse_would_refuse_are_invalid(client: SynapseAdmin) -> None:
    assert await client.username_available("UPPER!") is Availability.INVALID
    assert await client.username_available("Upper") is Availability.INVALID
    assert await client.username_available("12345") is Availability.INVALID


async def test_the_bots_name_is_reserved(client: SynapseAdmin) -> None:
    # Synapse checks the appservice's exclusive namespace before whether the user exists,
    # so the admin API says M_EXCLUSIVE; without it, the bot is recognised by whoami.
    assert await client.username_available("gatekeeper") is Availability.RESERVED


async def test_registration_is_disabled_on_the_test_synapse(synapse: Homeserver) -> None:
    """The premise of the fallback: the client API's check refuses everyone, appservices too."""
    path = "/_matrix/client/v3/register/available?username=whatever"
    status, body = await call(synapse, "GET", path, as_token(synapse))
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")


# --- creating accounts: shared secret ------------------------------------------------------


async def test_shared_secret_creates_an_account_once(
    shared_secret_client: SynapseAdmin, synapse: Homeserver, admin_token: str
) -> None:
    client = shared_secret_client
    localpart, password = fresh_localpart(), fresh_password()
    user_id = await client.create_account(
        NewAccount(localpart, password, "Applicant", None, approved_at_ms=0)
    )
    assert user_id == synapse.user_id(localpart)
    assert await client.login_works(user_id, password)
    assert not await client.login_works(user_id, "not the password")

    # A retry whose first answer was lost: the account is recognised as ours.
    assert (
        await client.create_account(
            NewAccount(localpart, password, "Applicant", None, approved_at_ms=0)
        )
        == user_id
    )
    status, body = await call(
        synapse, "GET", f"/_synapse/admin/v2/users?name={localpart}", admin_token
    )
    assert status == 200
    assert [user["name"] for user in body["users"]] == [user_id]
    # The password checks logged themselves out; registration made no device either.
    status, body = await call(
        synapse, "GET", f"/_synapse/admin/v2/users/{quoted(user_id)}/devices", admin_token
    )
    assert (status, body["total"]) == (200, 0)
    status, body = await call(
        synapse, "GET", f"/_matrix/client/v3/profile/{quoted(user_id)}/displayname", admin_token
    )
    assert body == {"displayname": "Applicant"}

    with pytest.raises(AccountTaken) as raised:
        await client.create_account(
            NewAccount(localpart, "someone else's password", None, None, approved_at_ms=0)
        )
    assert raised.value.errcode == "M_USER_IN_USE"


async def test_a_wrong_shared_secret_is_refused_without_showing_secrets(
    synapse: Homeserver,
) -> None:
    secret, password = "wrong-" + secrets.token_hex(8), fresh_password()
    config = HomeserverConfig(
        address=synapse.url, domain=SERVER_NAME, registration_shared_secret=SecretStr(secret)
    )
    async with started(config) as client:
        with pytest.raises(ProvisioningRefused) as raised:
            await client.create_account(
                NewAccount(fresh_localpart(), password, None, None, approved_at_ms=0)
            )
    assert raised.value.status == 403
    assert "registration_shared_secret" in str(raised.value)
    assert secret not in str(raised.value)
    assert password not in str(raised.value)


async def test_without_any_secret_accounts_cannot_be_made(synapse: Homeserver) -> None:
    config = HomeserverConfig(address=synapse.url, domain=SERVER_NAME)
    async with started(config) as client:
        with pytest.raises(ProvisioningRefused) as raised:
            await client.create_account(
                NewAccount(fresh_localpart(), fresh_password(), None, None, approved_at_ms=0)
            )
        assert raised.value.errcode == "GK_NOT_CONFIGURED"
        assert "homeserver.registration_shared_secret" in str(raised.value)
        assert "homeserver.admin_token" in str(raised.value)
        for needs_admin in (
            lambda: client.set_password(synapse.user_id("alice"), fresh_password(), False),
            lambda: client.join_room(synapse.user_id("alice"), "#somewhere:gatekeeper.test"),
        ):
            with pytest.raises(ProvisioningRefused) as raised:
                await needs_admin()
            assert raised.value.errcode == "GK_NOT_CONFIGURED"


async def test_shared_secret_alone_changes_passwords_and_emails(
    shared_secret_client: SynapseAdmin, synapse: Homeserver, admin_token: str
) -> None:
    """Through Gatekeeper's own admin user, registered with the shared secret."""
    client = shared_secret_client
    localpart, password, changed = fresh_localpart(), fresh_password(), fresh_password()
    user_id = await client.create_account(
        NewAccount(localpart, password, None, None, approved_at_ms=0)
    )
    await client.set_password(user_id, changed, logout_devices=False)
    assert await client.login_works(user_id, changed)
    assert not await client.login_works(user_id, password)
    await client.set_email(user_id, f"{localpart}@example.org")
    status, body = await call(
        synapse, "GET", f"/_synapse/admin/v2/users/{quoted(user_id)}", admin_token
    )
    assert [t["address"] for t in body["threepids"]] == [f"{localpart}@example.org"]
    status, body = await call(
        synapse, "GET", f"/_synapse/admin/v2/users/{quoted(client.admin_user_id)}", admin_token
    )
    assert (status, body["admin"]) == (200, True)


async def test_the_admin_users_name_is_reserved(client: SynapseAdmin) -> None:
    assert await client.username_available("gatekeeper-admin") is Availability.RESERVED


async def test_an_admin_user_that_is_not_ours_is_refused_plainly(synapse: Homeserver) -> None:
    """Someone else holds the name: its password is not the one the shared secret gives."""
    taken = fresh_localpart("not-our-admin")
    await synapse.server.register_user(taken, "someone else's password 1")
    config = HomeserverConfig(
        address=synapse.url,
        domain=SERVER_NAME,
        registration_shared_secret=SecretStr(synapse.server.shared_secret),
        admin_user=taken,
    )
    async with started(config) as client:
        with pytest.raises(ProvisioningRefused) as raised:
            await client.set_password(synapse.user_id("alice"), fresh_password(), False)
        assert raised.value.errcode == "GK_ADMIN_USER"
        assert "homeserver.admin_user" in str(raised.value)
        for secret in (synapse.server.shared_secret, client.admin_user_password()):
            assert secret not in str(raised.value)


# --- creating accounts: admin token --------------------------------------------------------


async def test_admin_api_sets_display_name_and_email(
    admin_client: SynapseAdmin, synapse: Homeserver, admin_token: str
) -> None:
    localpart, password = fresh_localpart(), fresh_password()
    email = f"{localpart}@example.org"
    user_id = await admin_client.create_account(
        NewAccount(localpart, password, "Ada Applicant", email, approved_at_ms=0)
    )
    assert user_id == synapse.user_id(localpart)
    assert await admin_client.login_works(user_id, password)

    status, body = await call(
        synapse, "GET", f"/_matrix/client/v3/profile/{quoted(user_id)}/displayname", admin_token
    )
    assert (status, body) == (200, {"displayname": "Ada Applicant"})
    status, body = await call(
        synapse, "GET", f"/_synapse/admin/v2/users/{quoted(user_id)}", admin_token
    )
    assert status == 200
    assert [(t["medium"], t["address"]) for t in body["threepids"]] == [("email", email)]
    assert body["admin"] is False
    status, body = await call(
        synapse, "GET", f"/_synapse/admin/v2/users/{quoted(user_id)}/devices", admin_token
    )
    assert (status, body["total"]) == (200, 0)


async def test_admin_api_retry_never_resets_a_changed_password(
    admin_client: SynapseAdmin, synapse: Homeserver
) -> None:
    localpart, password, changed = fresh_localpart(), fresh_password(), fresh_password()
    user_id = await admin_client.create_account(
        NewAccount(localpart, password, None, None, approved_at_ms=0)
    )
    # A retry before anything changed is recognised as ours.
    assert (
        await admin_client.create_account(
            NewAccount(localpart, password, None, None, approved_at_ms=0)
        )
        == user_id
    )

    await admin_client.set_password(user_id, changed, logout_devices=True)
    with pytest.raises(AccountTaken):
        await admin_client.create_account(
            NewAccount(localpart, password, None, None, approved_at_ms=0)
        )
    assert await admin_client.login_works(user_id, changed)
    assert not await admin_client.login_works(user_id, password)


async def test_join_room_with_the_admin_api(
    admin_client: SynapseAdmin, synapse: Homeserver, admin_token: str
) -> None:
    status, body = await call(
        synapse, "POST", "/_matrix/client/v3/createRoom", admin_token, {"preset": "public_chat"}
    )
    assert status == 200
    room_id = body["room_id"]
    user_id = await admin_client.create_account(
        NewAccount(fresh_localpart(), fresh_password(), None, None, approved_at_ms=0)
    )
    await admin_client.join_room(user_id, room_id)
    status, body = await call(
        synapse, "GET", f"/_matrix/client/v3/rooms/{quoted(room_id)}/joined_members", admin_token
    )
    assert status == 200
    assert user_id in body["joined"]


async def test_shared_secret_alone_joins_public_rooms_and_invited_users(
    shared_secret_client: SynapseAdmin, synapse: Homeserver, admin_token: str
) -> None:
    """Gatekeeper's own admin user is in none of these rooms: where the admin API's join
    cannot invite, the user joins itself, which leaves it no device."""
    client = shared_secret_client
    rooms: dict[str, list[str]] = {}
    for preset in ("public_chat", "private_chat", "private_chat"):
        status, body = await call(
            synapse, "POST", "/_matrix/client/v3/createRoom", admin_token, {"preset": preset}
        )
        assert status == 200
        rooms.setdefault(preset, []).append(body["room_id"])
    (public,), (invited, closed) = rooms["public_chat"], rooms["private_chat"]
    user_id = await client.create_account(
        NewAccount(fresh_localpart(), fresh_password(), None, None, approved_at_ms=0)
    )
    path = f"/_matrix/client/v3/rooms/{quoted(invited)}/invite"
    assert (await call(synapse, "POST", path, admin_token, {"user_id": user_id}))[0] == 200

    await client.join_room(user_id, public)
    await client.join_room(user_id, invited)
    with pytest.raises(ProvisioningRefused) as refused:
        await client.join_room(user_id, closed)
    assert refused.value.status == 403

    for room, member in ((public, True), (invited, True), (closed, False)):
        path = f"/_matrix/client/v3/rooms/{quoted(room)}/joined_members"
        status, body = await call(synapse, "GET", path, admin_token)
        assert (status, user_id in body["joined"]) == (200, member)
    path = f"/_synapse/admin/v2/users/{quoted(user_id)}/devices"
    assert (await call(synapse, "GET", path, admin_token))[1]["devices"] == []


# --- homeservers that do not answer --------------------------------------------------------


def config_at(address: str, request_timeout: float = 5.0) -> HomeserverConfig:
    return HomeserverConfig(
        address=address,
        domain=SERVER_NAME,
        registration_shared_secret=SecretStr("s3cret-" + secrets.token_hex(8)),
        request_timeout=request_timeout,
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def fake_homeserver(handler: Handler) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_an_unreachable_homeserver_is_unavailable() -> None:
    config = config_at(f"http://127.0.0.1:{free_port()}")
    async with started(config) as client:
        with pytest.raises(HomeserverUnavailable):
            await client.username_available(fresh_localpart())
        with pytest.raises(HomeserverUnavailable) as raised:
            await client.create_account(
                NewAccount(fresh_localpart(), fresh_password(), None, None, approved_at_ms=0)
            )
    secret = config.registration_shared_secret
    assert secret is not None
    assert secret.get_secret_value() not in str(raised.value)


async def test_a_hanging_homeserver_times_out_quickly() -> None:
    release = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await asyncio.wait_for(release.wait(), 10)
        return web.json_response({})

    async with fake_homeserver(hang) as address, started(config_at(address, 0.5)) as client:
        try:
            for attempt in (
                lambda: client.username_available(fresh_localpart()),
                lambda: client.create_account(
                    NewAccount(fresh_localpart(), fresh_password(), None, None, approved_at_ms=0)
                ),
            ):
                began = time.monotonic()
                with pytest.raises(HomeserverUnavailable, match=r"no answer within 0\.5 s"):
                    await attempt()
                assert time.monotonic() - began < 3
        finally:
            release.set()


@pytest.mark.parametrize(
    ("status", "body", "retry_after"),
    [
        (502, None, None),
        (503, {"errcode": "M_UNKNOWN"}, None),
        (429, {"errcode": "M_LIMIT_EXCEEDED", "retry_after_ms": 1500}, 1.5),
    ],
)
async def test_server_errors_and_rate_limits_are_retriable(
    status: int, body: dict[str, Any] | None, retry_after: float | None
) -> None:
    async def answer(request: web.Request) -> web.Response:
        if body is None:
            return web.Response(status=status, text="<html>Bad Gateway</html>")
        return web.json_response(body, status=status)

    async with fake_homeserver(answer) as address, started(config_at(address)) as client:
        with pytest.raises(HomeserverUnavailable, match=f"HTTP {status}") as raised:
            await client.create_account(
                NewAccount(fresh_localpart(), fresh_password(), None, None, approved_at_ms=0)
            )
    assert raised.value.retry_after == retry_after


def test_an_answer_nested_too_deep_is_not_json() -> None:
    """A homeserver address that answers absurdly nested JSON is read as "not JSON"."""
    assert _json_object("[" * 100_000 + "]" * 100_000) is None
    assert _json_object('{"errcode": "M_UNKNOWN"}') == {"errcode": "M_UNKNOWN"}
