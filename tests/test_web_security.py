"""Security rules of the web API: CSRF, cookies, access rules, brute force, enumeration."""

from __future__ import annotations

import asyncio
import re
from http.cookies import SimpleCookie

import aiohttp
import argon2
import pytest

from gatekeeper.appservice.domain.accounts import lockout_name
from gatekeeper.appservice.runtime.program import Gatekeeper
from gatekeeper.appservice.storage.ratelimit import Lockout
from gatekeeper.appservice.storage.sessions import Sessions, token_hash
from tests.conftest import StartGatekeeper
from tests.flows import WebClient, active_account, logged_in, new_applicant, web_url

NO_CONFIRMATION = {"require_email_confirmation": False}

SESSION_PATHS = [
    ("GET", "/api/user-info"),  # answers {} rather than 401: the seed's contract
    ("POST", "/api/user/settings/language"),
    ("POST", "/api/user/settings/sudo"),
    ("POST", "/api/user/settings/confirm-email-change"),
    ("POST", "/api/user/settings/generate-temporary-2fa"),
    ("POST", "/api/user/settings/sensitive/change-email"),
    ("POST", "/api/user/settings/sensitive/change-password"),
    ("POST", "/api/user/settings/sensitive/2fa"),
]
SENSITIVE_PATHS = [p for m, p in SESSION_PATHS if "/sensitive/" in p]


@pytest.fixture
async def gatekeeper(start_gatekeeper: StartGatekeeper) -> Gatekeeper:
    return await start_gatekeeper(registration=NO_CONFIRMATION)


async def test_every_user_endpoint_needs_a_session(gatekeeper: Gatekeeper) -> None:
    async with WebClient(gatekeeper) as client:
        for method, path in SESSION_PATHS:
            status, body = await client.request(method, path, {})
            if path == "/api/user-info":
                assert (status, body) == (200, {})
            else:
                assert (status, body["errcode"]) == (401, "GK_NOT_LOGGED_IN"), path


async def test_sensitive_endpoints_need_sudo_bound_to_the_session(
    gatekeeper: Gatekeeper,
) -> None:
    jay = await active_account(gatekeeper, "jay")
    async with (
        await logged_in(gatekeeper, jay) as first,
        await logged_in(gatekeeper, jay) as second,
    ):
        for path in SENSITIVE_PATHS:
            status, body = await first.post(path, {})
            assert (status, body["errcode"]) == (403, "GK_SUDO_REQUIRED"), path
        assert (await first.post("/api/user/settings/sudo", {"password": jay.password}))[1] == {
            "success": True
        }
        sudo = first.cookie("SUDO_TOKEN")
        assert sudo
        # Another session presenting the first one's SUDO_TOKEN gets nothing from it.
        second.session.cookie_jar.update_cookies(
            {"SUDO_TOKEN": sudo}, aiohttp.client.URL(second.base)
        )
        assert (await second.post(SENSITIVE_PATHS[0], {"newEmail": "x@example.org"}))[0] == 403
        # Sudo lasts at most ten minutes.
        assert (await first.post(SENSITIVE_PATHS[1], {"newPassword": "short"}))[0] == 422
        await gatekeeper.db.execute("UPDATE web_session SET sudo_until = 0")
        assert (await first.post(SENSITIVE_PATHS[1], {"newPassword": "short"}))[0] == 403


async def test_settings_need_a_verified_email(gatekeeper: Gatekeeper) -> None:
    # Logging in needs a verified email, so make a session for an unverified one directly.
    applicant = new_applicant("kit")
    async with WebClient(gatekeeper) as client:
        await client.post(
            "/api/auth/sign-up",
            {
                "userName": applicant.localpart,
                "email": applicant.email,
                "password": applicant.password,
            },
        )
        request = (await gatekeeper.store.search(applicant.localpart))[0]
        await gatekeeper.db.execute(
            "UPDATE registration_request SET email_verified=$2 WHERE id=$1", request.id, False
        )
        token, _ = await Sessions(gatekeeper.db, gatekeeper.config.web).create(request.id)
        client.session.cookie_jar.update_cookies(
            {"LOGIN_TOKEN": token}, aiohttp.client.URL(client.base)
        )
        await client.get("/api/csrf")
        status, body = await client.post("/api/user/settings/language", {"language": "de"})
        assert (status, body["errcode"]) == (403, "GK_EMAIL_NOT_VERIFIED")


@pytest.mark.parametrize("case", ["missing", "empty", "mismatched", "forged", "other session"])
async def test_csrf_is_required_on_unsafe_requests(gatekeeper: Gatekeeper, case: str) -> None:
    lee = await active_account(gatekeeper, "lee")
    async with (
        await logged_in(gatekeeper, lee) as client,
        await logged_in(gatekeeper, lee) as other,
    ):
        cookie = client.cookie("CSRF-Token") or ""
        nonce = cookie.split(".")[0]
        headers = {
            "missing": {},
            "empty": {"X-CSRF-Token": ""},
            "mismatched": {"X-CSRF-Token": cookie + "x"},
            "forged": {"X-CSRF-Token": f"{nonce}.{'0' * 64}"},
            "other session": {"X-CSRF-Token": other.cookie("CSRF-Token") or ""},
        }[case]
        if case in ("forged", "other session"):  # cookie and header agree, but are not ours
            client.session.cookie_jar.update_cookies(
                {"CSRF-Token": headers["X-CSRF-Token"]}, aiohttp.client.URL(client.base)
            )
        async with client.session.post(
            client.base + "/api/user/settings/language",
            json={"language": "de"},
            headers={"X-CSRF-Token": "", **headers} if case != "missing" else {},
        ) as response:
            assert response.status == 403
            assert (await response.json())["errcode"] == "GK_CSRF"
        # Sign-up and login forms are covered too.
        async with client.session.post(
            client.base + "/api/auth/login",
            json={"email": lee.email, "password": lee.password},
            headers=headers,
        ) as response:
            assert response.status == 403


async def test_get_never_changes_state(gatekeeper: Gatekeeper) -> None:
    url = web_url(gatekeeper) + "/api/auth/sign-up"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 405


async def test_cookie_names_and_flags_on_loopback_http(gatekeeper: Gatekeeper) -> None:
    mo = await active_account(gatekeeper, "mo")
    async with WebClient(gatekeeper) as client:
        await client.get("/api/csrf")
        async with client.session.post(
            client.base + "/api/auth/login-with-second-factor",
            json={"email": mo.email, "password": mo.password, "rememberDevice": True},
            headers={"X-CSRF-Token": client.cookie("CSRF-Token") or ""},
        ) as response:
            assert (await response.json())["loggedIn"] is False  # no 2FA enrolled: refused
        async with client.session.post(
            client.base + "/api/auth/login",
            json={"email": mo.email, "password": mo.password},
            headers={"X-CSRF-Token": client.cookie("CSRF-Token") or ""},
        ) as response:
            cookies = SimpleCookie()
            for header in response.headers.getall("Set-Cookie"):
                cookies.load(header)
    assert set(cookies) == {"LOGIN_TOKEN", "CSRF-Token"}
    for name, morsel in cookies.items():
        assert morsel["path"] == "/"
        assert morsel["domain"] == ""
        assert morsel["samesite"] == "Lax"
        assert bool(morsel["httponly"]) is (name != "CSRF-Token")
    assert len(cookies["LOGIN_TOKEN"].value) >= 22  # ≥ 128 bits of URL-safe base64
    stored = await gatekeeper.db.fetchval("SELECT token_hash FROM web_session")
    assert stored == token_hash(cookies["LOGIN_TOKEN"].value)  # only the hash is kept


async def test_cookie_names_over_https(start_gatekeeper: StartGatekeeper) -> None:
    gatekeeper = await start_gatekeeper(web={"public_base_url": "https://gk.example.org"})
    async with (
        aiohttp.ClientSession() as session,
        session.get(web_url(gatekeeper) + "/api/csrf") as response,
    ):
        header = response.headers["Set-Cookie"]
    assert header.startswith("__Host-CSRF-Token=")
    assert "Secure" in header
    assert "Domain" not in header
    assert "Path=/" in header


async def test_logout_deletes_the_session_and_login_makes_a_new_token(
    gatekeeper: Gatekeeper,
) -> None:
    ned = await active_account(gatekeeper, "ned")
    client = await logged_in(gatekeeper, ned)
    first = client.cookie("LOGIN_TOKEN")
    await client.post("/api/auth/logout", {})
    assert await gatekeeper.db.fetchval("SELECT COUNT(*) FROM web_session") == 0
    client.session.cookie_jar.update_cookies(
        {"LOGIN_TOKEN": first}, aiohttp.client.URL(client.base)
    )
    assert await client.get("/api/user-info") == (200, {})
    await client.post("/api/auth/login", {"email": ned.email, "password": ned.password})
    assert client.cookie("LOGIN_TOKEN") not in (None, first)
    await client.session.close()


async def test_idle_and_old_sessions_end(gatekeeper: Gatekeeper) -> None:
    oz = await active_account(gatekeeper, "oz")
    async with await logged_in(gatekeeper, oz) as client:
        await gatekeeper.db.execute("UPDATE web_session SET last_seen_at = last_seen_at - 1860000")
        assert await client.get("/api/user-info") == (200, {})  # 31 minutes idle
    async with await logged_in(gatekeeper, oz) as client:
        await gatekeeper.db.execute("UPDATE web_session SET created_at = created_at - 43260000")
        assert await client.get("/api/user-info") == (200, {})  # 12 hours and a minute old


async def test_bad_logins_per_address_get_429(start_gatekeeper: StartGatekeeper) -> None:
    gatekeeper = await start_gatekeeper(
        registration=NO_CONFIRMATION, security={"login_attempts_per_minute": 5}
    )
    async with WebClient(gatekeeper) as client:
        body = {"email": "nobody@example.org", "password": "wrong password"}
        for _ in range(5):
            assert (await client.post("/api/auth/login", body))[0] == 200
        status, answer = await client.post("/api/auth/login", body)
        assert (status, answer["errcode"]) == (429, "GK_RATE_LIMITED")
        retry_after = int(client.last_headers["Retry-After"])
        assert retry_after >= 1
        assert retry_after <= 60


async def test_fifty_concurrent_bad_logins_count_fifty(start_gatekeeper: StartGatekeeper) -> None:
    gatekeeper = await start_gatekeeper(
        registration=NO_CONFIRMATION,
        security={"login_attempts_per_minute": 1000, "lockout_failures": 1000},
    )
    pat = await active_account(gatekeeper, "pat")
    async with WebClient(gatekeeper) as client:
        await client.get("/api/csrf")
        # Every name of the account counts on one counter: switching names dodges nothing.
        spellings = [
            pat.email,
            pat.email.upper(),
            f" {pat.email.title()} ",
            pat.localpart,
            pat.localpart.upper(),
            pat.user_id,
        ]
        answers = await asyncio.gather(
            *(
                client.post(
                    "/api/auth/login",
                    {"email": spellings[i % len(spellings)], "password": f"no{i}"},
                )
                for i in range(50)
            )
        )
    assert all(a == (200, {"status": "invalid-credentials"}) for a in answers)
    account = (await gatekeeper.store.search(pat.localpart))[0]
    assert await Lockout(gatekeeper.db).failures(lockout_name(account)) == 50


async def test_locked_account_refuses_even_the_right_password(
    start_gatekeeper: StartGatekeeper,
) -> None:
    gatekeeper = await start_gatekeeper(
        registration=NO_CONFIRMATION, security={"lockout_failures": 3}
    )
    quin = await active_account(gatekeeper, "quin")
    async with WebClient(gatekeeper) as client:
        for _ in range(3):
            await client.post("/api/auth/login", {"email": quin.email, "password": "wrong one!"})
        right = await client.post(
            "/api/auth/login", {"email": quin.email, "password": quin.password}
        )
        wrong = await client.post(
            "/api/auth/login", {"email": quin.email, "password": "wrong one!"}
        )
    assert right == wrong == (200, {"status": "invalid-credentials"})


async def test_no_enumeration_by_answer(gatekeeper: Gatekeeper) -> None:
    rae = await active_account(gatekeeper, "rae")
    async with WebClient(gatekeeper) as client:
        unknown = await client.post(
            "/api/auth/login", {"email": "nobody@example.org", "password": "some password"}
        )
        wrong = await client.post(
            "/api/auth/login", {"email": rae.email, "password": "some password"}
        )
        assert unknown == wrong == (200, {"status": "invalid-credentials"})
        unknown = await client.post("/api/auth/request-password-reset", {"email": "no@example.org"})
        known = await client.post("/api/auth/request-password-reset", {"email": rae.email})
        assert unknown == known == (200, {})


async def test_weak_stored_hash_is_upgraded_at_login(gatekeeper: Gatekeeper) -> None:
    sam = await active_account(gatekeeper, "sam")
    weak = argon2.PasswordHasher(memory_cost=8192, time_cost=1, parallelism=1).hash(sam.password)
    await gatekeeper.db.execute("UPDATE registration_request SET password_hash=$1", weak)
    client = await logged_in(gatekeeper, sam)
    await client.session.close()
    stored = await gatekeeper.db.fetchval("SELECT password_hash FROM registration_request")
    memory, rounds, lanes = map(int, re.findall(r"m=(\d+),t=(\d+),p=(\d+)", stored)[0])
    assert stored.startswith("$argon2id$")
    assert (memory >= 19456, rounds >= 2, lanes >= 1) == (True, True, True)


async def test_links_in_mails_ignore_the_host_header(gatekeeper: Gatekeeper, smtp: object) -> None:
    tia = await active_account(gatekeeper, "tia")
    async with WebClient(gatekeeper) as client:
        await client.get("/api/csrf")
        async with client.session.post(
            client.base + "/api/auth/request-password-reset",
            json={"email": tia.email},
            headers={"Host": "evil.example", "X-CSRF-Token": client.cookie("CSRF-Token") or ""},
        ) as response:
            assert response.status == 200
    mail = await smtp.wait_for(tia.email, "reset")  # type: ignore[attr-defined]
    assert "evil.example" not in mail.get_content()
    assert f"{gatekeeper.config.web.public_base_url}/reset-password?token=" in mail.get_content()


async def test_openapi_document_lists_every_endpoint(gatekeeper: Gatekeeper) -> None:
    async with WebClient(gatekeeper) as client:
        status, document = await client.get("/api/openapi.json")
    assert status == 200
    assert document["openapi"].startswith("3.")
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in gatekeeper.web_runner.app.router.routes()
        if route.method != "HEAD" and route.resource.canonical.startswith("/api/")
    }
    listed = {(m, p) for p, ops in document["paths"].items() for m in ops}
    assert served - {("get", "/api/openapi.json")} <= listed
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            assert operation["summary"], (method, path)
            if method == "post":
                assert "requestBody" in operation, path


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_sign_up_limits_see_the_client_behind_a_trusted_proxy(
    start_gatekeeper: StartGatekeeper,
) -> None:
    async def sign_up_from(gatekeeper: Gatekeeper, forwarded: str) -> int:
        applicant = new_applicant("via")
        body = {
            "userName": applicant.localpart,
            "email": applicant.email,
            "password": applicant.password,
        }
        async with WebClient(gatekeeper) as client:
            status, _ = await client.request(
                "POST", "/api/auth/sign-up", body, {"X-Forwarded-For": forwarded}
            )
        return status

    one_an_hour = {"signups_per_hour": 1}
    behind_proxy = await start_gatekeeper(
        registration=NO_CONFIRMATION,
        security=one_an_hour,
        web={"trusted_proxies": ["127.0.0.0/8"]},
    )
    # The proxy appends the address it saw; whatever the client claimed before it is ignored.
    assert await sign_up_from(behind_proxy, "203.0.113.7") == 201
    assert await sign_up_from(behind_proxy, "203.0.113.7, 198.51.100.2") == 201
    assert await sign_up_from(behind_proxy, "198.51.100.2, 203.0.113.7") == 429
    await behind_proxy.stop()

    untrusting = await start_gatekeeper(registration=NO_CONFIRMATION, security=one_an_hour)
    assert await sign_up_from(untrusting, "192.0.2.1") == 201
    assert await sign_up_from(untrusting, "192.0.2.2") == 429
