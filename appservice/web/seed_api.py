"""The other seed's registration API, `/registrations/`, for clients written for it.

It authenticates by the `Authorization` header alone (HTTP Basic `rid:token`, the manager's
or the requester's token): no cookie, no CSRF token, and a cookie session is not enough
(appservice/web/security.py exempts these paths from CSRF, nothing more). The rules are
appservice/domain/seed_registrations.py's.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from gatekeeper.appservice.domain.errors import SignUpRefused, SignUpsClosed
from gatekeeper.appservice.domain.registration_request import RegistrationRequest, State
from gatekeeper.appservice.domain.registrations import Outcome
from gatekeeper.appservice.domain.seed_registrations import (
    SEED_STATUS,
    Caller,
    SeedRegistrations,
    WrongState,
)
from gatekeeper.appservice.timeutil import now_ms
from gatekeeper.appservice.web.common import ApiError, json_body, text_field

CHALLENGE = {"WWW-Authenticate": 'Basic realm="registrations"'}


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def minimal_view(request: RegistrationRequest) -> dict[str, Any]:
    """What the manager sees: the states and dates, no personal data."""
    return _view(request.id, request.created_at, request.updated_at, request.state)


def _view(rid: str, created: int, modified: int, state: State) -> dict[str, Any]:
    status, matrix_status = SEED_STATUS[state]
    return {
        "rid": rid,
        "username": None,
        "email": None,
        "password": None,
        "created": _iso(created),
        "modified": _iso(modified),
        "status": status,
        "matrix_status": matrix_status,
    }


def full_view(request: RegistrationRequest, password: str | None = None) -> dict[str, Any]:
    """What the requester sees; `password` only in the one answer that made the account."""
    return {
        **minimal_view(request),
        "username": request.localpart or "",
        "email": request.email,
        "password": password,
    }


class SeedApi:
    def __init__(self, seeds: SeedRegistrations) -> None:
        self.seeds = seeds

    async def _authorized(self, request: web.Request) -> tuple[RegistrationRequest, Caller]:
        header = request.headers.get("Authorization", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic" or not encoded:
            raise ApiError(
                401, "GK_UNAUTHORIZED", "Missing Basic credentials (rid:token).", headers=CHALLENGE
            )
        try:
            rid, colon, token = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise ApiError(
                401,
                "GK_UNAUTHORIZED",
                "The Basic credentials are not base64 of rid:token.",
                headers=CHALLENGE,
            ) from None
        if not colon or rid != request.match_info["rid"]:
            raise ApiError(403, "GK_FORBIDDEN", "These credentials are not for this registration.")
        caller = await self.seeds.caller(rid, token)
        if caller is None:
            raise ApiError(403, "GK_FORBIDDEN", "Wrong token.")
        # Only the manager's token can get this far for a registration that does not exist.
        found = await self.seeds.find(rid)
        if found is None:
            raise ApiError(404, "GK_NOT_FOUND", "No such registration.")
        return found, caller

    async def _as_user(self, request: web.Request) -> RegistrationRequest:
        found, caller = await self._authorized(request)
        if caller is not Caller.USER:
            raise ApiError(403, "GK_FORBIDDEN", "Only the requester's token may do this.")
        return found

    async def create(self, request: web.Request) -> web.Response:
        """Ask for an account with an email alone (the seed's registration API).

        `{"email": "ann@example.org"}` → 201 with `rid` and `token` (the requester's,
        shown only here) and the registration (`status: "pending"`). The usual
        confirmation mail goes out; the user name is chosen after approval (PATCH).
        """
        email = text_field(await json_body(request), "email")
        try:
            created = await self.seeds.create(email, request.remote or "")
        except SignUpsClosed as closed:
            raise ApiError(403, "GK_SIGNUPS_CLOSED", f"Sign-ups are paused: {closed}") from None
        except SignUpRefused:
            raise ApiError(403, "GK_SIGNUP_REFUSED", "This sign-up was not accepted.") from None
        if created.request is not None:
            view = full_view(created.request, "")
        else:
            # The email is someone else's: the answer looks the same, nothing was stored.
            now = now_ms()
            view = {
                **_view(created.rid, now, now, State.PENDING),
                "username": "",
                "email": created.email,
                "password": "",
            }
        return web.json_response({**view, "token": created.token}, status=201)

    async def show(self, request: web.Request) -> web.Response:
        """A registration: the whole of it with the requester's token, its states and
        dates with the manager's (HTTP Basic `rid:token`)."""
        found, caller = await self._authorized(request)
        if caller is Caller.MANAGER:
            return web.json_response(minimal_view(found))
        return web.json_response(full_view(found))

    async def decide(self, request: web.Request) -> web.Response:
        """The manager approves or rejects: `{"status": "approved" | "rejected"}`.

        Seen in the admin room like any decision; the applicant gets the usual mail."""
        found, caller = await self._authorized(request)
        if caller is not Caller.MANAGER:
            raise ApiError(403, "GK_FORBIDDEN", "Only the manager's token may decide.")
        result = await self.seeds.decide(found.id, (await json_body(request)).get("status"))
        if result.outcome is Outcome.REFUSED and result.request is not None:
            raise ApiError(
                409,
                "GK_WRONG_STATE",
                f"The registration is {result.request.state}: it cannot be decided.",
            )
        return web.json_response(minimal_view(result.request or found))

    async def name(self, request: web.Request) -> web.Response:
        """Once approved, the requester chooses the user name and the account is made:
        `{"matrix_status": "processing", "username": "ann", "email": "ann@example.org"}`.

        The answer carries the account's generated password, this once (it is never
        stored); `matrix_status` is then `success`, or `failed`."""
        found = await self._as_user(request)
        body = await json_body(request)
        if body.get("matrix_status") != "processing":
            raise ApiError(
                422, "GK_INVALID_FIELD", "matrix_status must be processing", "matrix_status"
            )
        email = body.get("email")
        if email is not None and not isinstance(email, str):
            raise ApiError(422, "GK_INVALID_FIELD", "email must be a string", "email")
        username = text_field(body, "username")
        try:
            named, password = await self.seeds.name_and_create(
                found, username, email, request.remote or ""
            )
        except SignUpRefused:
            raise ApiError(403, "GK_SIGNUP_REFUSED", "This sign-up was not accepted.") from None
        except WrongState as wrong:
            raise ApiError(
                409,
                "GK_WRONG_STATE",
                f"The registration is {wrong.request.state}: its name is chosen once,"
                " after approval.",
            ) from None
        return web.json_response(full_view(named, password))

    async def withdraw(self, request: web.Request) -> web.Response:
        """The requester withdraws the registration: its personal data is erased. 204."""
        found = await self._as_user(request)
        try:
            await self.seeds.withdraw_and_erase(found)
        except WrongState as wrong:
            raise ApiError(
                409,
                "GK_WRONG_STATE",
                f"The registration is {wrong.request.state}: it cannot be withdrawn.",
            ) from None
        return web.Response(status=204)
