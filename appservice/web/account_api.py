"""JSON handlers for login, second factor, reset and settings (the user-manager seed's API)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from gatekeeper.appservice.domain.accounts import Accounts, LoginStatus, MatrixOutcome
from gatekeeper.appservice.domain.registration_request import State
from gatekeeper.appservice.storage.personal_data import personal_data
from gatekeeper.appservice.storage.sessions import Session, Sessions
from gatekeeper.appservice.web.common import ApiError, flag_field, json_body, text_field
from gatekeeper.appservice.web.security import (
    ACCOUNT_KEY,
    CSRF_TOKEN,
    DEVICE_TOKEN,
    LOGIN_TOKEN,
    SESSION_KEY,
    SUDO_TOKEN,
    Cookies,
    Csrf,
)


def personal_data_file(data: dict[str, Any]) -> web.Response:
    """The download: a JSON file the browser saves rather than shows."""
    return web.Response(
        text=json.dumps(data, indent=2, ensure_ascii=False),
        content_type="application/json",
        headers={
            "Content-Disposition": 'attachment; filename="gatekeeper-data.json"',
            "Cache-Control": "no-store",
        },
    )


def client_address(request: web.Request) -> str:
    return request.remote or "unknown"


class AccountApi:
    def __init__(
        self,
        accounts: Accounts,
        sessions: Sessions,
        cookies: Cookies,
        csrf: Csrf,
    ) -> None:
        self.accounts = accounts
        self.sessions = sessions
        self.cookies = cookies
        self.csrf = csrf

    async def csrf_token(self, request: web.Request) -> web.Response:
        """`GET /api/csrf` → `{"csrfToken": "…"}`, also set as the CSRF cookie."""
        token = self.csrf.new_token(request.get(SESSION_KEY))
        response = web.json_response({"csrfToken": token})
        self.cookies.set(response, CSRF_TOKEN, token)
        return response

    async def login(self, request: web.Request) -> web.Response:
        """`{"email", "password"}` → `{"status": "logged-in" | "second-factor-required" |
        "invalid-credentials"}`

        `email` takes what people log in with: the email address, the user name (`ann`) or
        the Matrix ID (`@ann:example.org`). Failed tries count against the account
        whichever was typed, and an unknown one is answered like a wrong password."""
        body = await json_body(request)
        result = await self.accounts.login(
            text_field(body, "email"),
            text_field(body, "password"),
            client_address(request),
            self.cookies.get(request, DEVICE_TOKEN),
        )
        response = web.json_response({"status": result.status.value})
        if result.status is LoginStatus.LOGGED_IN:
            self.cookies.start_session(response, result, self.csrf)
        return response

    async def login_with_second_factor(self, request: web.Request) -> web.Response:
        """`{"email", "password", "secondFactor", "rememberDevice"}` →
        `{"loggedIn": bool, "status", "timeoutUntil"?: ISO time}`

        `email` as for login. `secondFactor` is the 6-digit code of the authenticator app or
        one of the recovery codes (each works once). `status` is `logged-in`,
        `invalid-credentials`, or `code-just-used`: the password and the code were right,
        but that code was accepted a moment ago (a code works once): send the app's next
        one. `timeoutUntil`: the account is locked until then after too many failures."""
        body = await json_body(request)
        result = await self.accounts.login_with_second_factor(
            text_field(body, "email"),
            text_field(body, "password"),
            str(body.get("secondFactor") or ""),
            flag_field(body, "rememberDevice"),
            client_address(request),
        )
        answer: dict[str, Any] = {
            "loggedIn": result.status is LoginStatus.LOGGED_IN,
            "status": result.status.value,
        }
        if result.timeout_until_ms is not None:
            answer["timeoutUntil"] = datetime.fromtimestamp(
                result.timeout_until_ms / 1000, UTC
            ).isoformat()
        response = web.json_response(answer)
        if result.status is LoginStatus.LOGGED_IN:
            self.cookies.start_session(response, result, self.csrf)
        return response

    async def logout(self, request: web.Request) -> web.Response:
        """`{"forgetDevice": bool}` → `{}`; the server-side session is deleted."""
        # body_exists, not can_read_body: the receive deadline has read the body already.
        body = await json_body(request) if request.body_exists else {}
        session = request.get(SESSION_KEY)
        if session is not None:
            await self.sessions.end(session)
        response = web.json_response({})
        for cookie in (LOGIN_TOKEN, SUDO_TOKEN):
            self.cookies.clear(response, cookie)
        if flag_field(body, "forgetDevice"):
            await self.sessions.forget_device(self.cookies.get(request, DEVICE_TOKEN))
            self.cookies.clear(response, DEVICE_TOKEN)
        self.cookies.set(response, CSRF_TOKEN, self.csrf.new_token(None))
        return response

    async def request_password_reset(self, request: web.Request) -> web.Response:
        """`{"email"}` → `{}`, the same whether or not the address is known."""
        body = await json_body(request)
        await self.accounts.request_password_reset(
            text_field(body, "email"), client_address(request)
        )
        return web.json_response({})

    async def reset_password(self, request: web.Request) -> web.Response:
        """`{"token", "newPassword", "email"?}` → `{"status": "success" | "invalid-token" |
        "matrix-unchanged", "message"?}`. It never logs anyone in. The token alone names
        the account; `email` is optional, and if sent must be the account's address."""
        body = await json_body(request)
        outcome = await self.accounts.reset_password(
            text_field(body, "email") if "email" in body else None,
            text_field(body, "token"),
            text_field(body, "newPassword"),
        )
        if outcome is None:
            return web.json_response({"status": "invalid-token"})
        return web.json_response(self._password_answer(outcome))

    def _password_answer(self, outcome: MatrixOutcome) -> dict[str, str]:
        if outcome is MatrixOutcome.UNCHANGED:
            return self._matrix_unchanged("matrix.password_unchanged")
        return {"status": "success"}

    def _matrix_unchanged(self, key: str, **params: str) -> dict[str, str]:
        """Changed here but not on Matrix: said plainly, in the API's language (English)."""
        text = self.accounts.mail.catalogue.text("en", key, **params)
        return {"status": "matrix-unchanged", "message": text}

    async def user_info(self, request: web.Request) -> web.Response:
        """`GET /api/user-info` → `{roles, emailVerified, language, status, userId?}`;
        `{}` without a session."""
        session = request.get(SESSION_KEY)
        account = session.account if session else None
        if account is None:
            return web.json_response({})
        active = account.state is State.ACTIVE
        info: dict[str, Any] = {
            "roles": ["user"] if active else ["applicant"],
            "emailVerified": account.email_verified,
            "language": account.language,
            "email": account.email,
            "status": account.state.value,
            "userName": account.localpart,
        }
        if active:
            info["userId"] = account.matrix_user_id
        return web.json_response(info)

    # --- settings (session + verified email) ---------------------------------------------

    async def set_language(self, request: web.Request) -> web.Response:
        """`{"language": "de"}` → `{}`"""
        body = await json_body(request)
        await self.accounts.set_language(request[ACCOUNT_KEY], text_field(body, "language"))
        return web.json_response({})

    async def sudo(self, request: web.Request) -> web.Response:
        """`{"password"}` → `{"success": bool}`; success sets SUDO_TOKEN for a few minutes."""
        body = await json_body(request)
        session: Session = request[SESSION_KEY]
        token = await self.accounts.sudo(
            request[ACCOUNT_KEY], session, text_field(body, "password")
        )
        response = web.json_response({"success": token is not None})
        if token is not None:
            self.cookies.set(response, SUDO_TOKEN, token, int(self.sessions.sudo_ms / 1000))
        return response

    async def confirm_email_change(self, request: web.Request) -> web.Response:
        """`{"token"}` → `{"status": "no-change-in-progress" | "invalid-token" |
        "new-email-confirmed" | "matrix-unchanged", "email", "message"?}`"""
        body = await json_body(request)
        status, email = await self.accounts.confirm_email_change(
            request[ACCOUNT_KEY], text_field(body, "token")
        )
        if status == "matrix-unchanged":
            return web.json_response(
                {**self._matrix_unchanged("matrix.email_unchanged", email=email), "email": email}
            )
        return web.json_response({"status": status, "email": email})

    async def generate_temporary_2fa(self, request: web.Request) -> web.Response:
        """`{"restart"?: bool}` → `{"secret", "otpauthUri", "qrCodeSvg"}`; active only once
        confirmed.

        While an enrolment waits for its confirming code, this answers the same secret
        again (an app may have scanned it already); `"restart": true` makes a new one."""
        body = await json_body(request) if request.body_exists else {}
        enrolment = await self.accounts.start_2fa(
            request[ACCOUNT_KEY], restart=flag_field(body, "restart")
        )
        return web.json_response(
            {
                "secret": enrolment.secret,
                "otpauthUri": enrolment.otpauth_uri,
                "qrCodeSvg": enrolment.qr_svg,
            }
        )

    # --- sensitive (also SUDO_TOKEN) -----------------------------------------------------

    async def change_email(self, request: web.Request) -> web.Response:
        """`{"newEmail"}` → `{}`; a link goes to the new address."""
        body = await json_body(request)
        await self.accounts.change_email(request[ACCOUNT_KEY], text_field(body, "newEmail"))
        return web.json_response({})

    async def change_password(self, request: web.Request) -> web.Response:
        """`{"newPassword"}` → `{"status": "success" | "matrix-unchanged", "message"?}`;
        every other session and remembered device ends."""
        body = await json_body(request)
        outcome = await self.accounts.change_password(
            request[ACCOUNT_KEY], request[SESSION_KEY], text_field(body, "newPassword")
        )
        return web.json_response(self._password_answer(outcome))

    async def second_factor(self, request: web.Request) -> web.Response:
        """`{"enable": true, "secondFactor": "123456"}` or `{"enable": false}` →
        `{"enabled", "recoveryCodes"?}`

        Turning it on answers the recovery codes, once: each logs in once instead of a code
        of the app. A wrong code leaves the enrolment waiting, with the same secret."""
        body = await json_body(request)
        account, session = request[ACCOUNT_KEY], request[SESSION_KEY]
        if flag_field(body, "enable"):
            codes = await self.accounts.enable_2fa(
                account, session, str(body.get("secondFactor") or "")
            )
            if codes is None:
                raise ApiError(400, "GK_WRONG_CODE", "That code is not right.", "secondFactor")
            return web.json_response({"enabled": True, "recoveryCodes": codes})
        await self.accounts.disable_2fa(account, session)
        return web.json_response({"enabled": False})

    async def personal_data(self, request: web.Request) -> web.Response:
        """`GET` → a JSON file of everything Gatekeeper keeps about the account holder
        (docs/privacy.md), without secrets."""
        account = request[ACCOUNT_KEY]
        return personal_data_file(await personal_data(self.accounts.store.db, account))

    async def recovery_codes(self, request: web.Request) -> web.Response:
        """`{}` → `{"recoveryCodes": […]}`: a new set, shown once; the old codes stop
        working. Answers 409 `GK_2FA_OFF` while two-factor login is off."""
        codes = await self.accounts.new_recovery_codes(request[ACCOUNT_KEY])
        if codes is None:
            raise ApiError(
                409, "GK_2FA_OFF", "Two-factor login is off: there is nothing to recover."
            )
        return web.json_response({"recoveryCodes": codes})
