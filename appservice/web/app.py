"""The applicants' web endpoint: a JSON API under /api, with one error shape for every failure."""

from __future__ import annotations

import functools
import hmac
import ipaddress
import logging
import re
import secrets
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from gatekeeper.appservice.config import Config
from gatekeeper.appservice.domain.antibot import PAYLOAD_FIELD
from gatekeeper.appservice.domain.decisions import Decisions
from gatekeeper.appservice.domain.errors import (
    FieldErrors,
    InviteInvalid,
    ProofOfWorkFailed,
    SignUpRefused,
    SignUpsClosed,
)
from gatekeeper.appservice.domain.moderation import (
    Moderation,
    ModerationEntry,
    ModerationError,
    Problem,
    Target,
)
from gatekeeper.appservice.domain.registration_request import RegistrationRequest, State
from gatekeeper.appservice.domain.registrations import Outcome, Registrations, Result
from gatekeeper.appservice.domain.signup import SignUps
from gatekeeper.appservice.homeserver.account_backend import HomeserverUnavailable
from gatekeeper.appservice.matrix_ids import MAX_USER_ID_BYTES
from gatekeeper.appservice.runtime.monitoring import Monitoring
from gatekeeper.appservice.storage.database import DATABASE_UNAVAILABLE
from gatekeeper.appservice.storage.mail_tokens import STATUS_PURPOSE, MailTokens
from gatekeeper.appservice.storage.ratelimit import RateLimited
from gatekeeper.appservice.storage.registration_store import RegistrationStore
from gatekeeper.appservice.storage.retention import is_erased
from gatekeeper.appservice.web.account_api import AccountApi
from gatekeeper.appservice.web.common import MAX_BODY_BYTES, ApiError, json_body, text_field
from gatekeeper.appservice.web.openapi import ACTOR_PATTERN, openapi_document
from gatekeeper.appservice.web.pages import Pages, security_headers
from gatekeeper.appservice.web.security import receive_deadline
from gatekeeper.appservice.web.seed_api import SeedApi

log = logging.getLogger("gatekeeper.web")

# What a client is told to wait while PostgreSQL restarts (it usually takes seconds).
DATABASE_RETRY_AFTER_SECONDS = 5


def error_body(errcode: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"errcode": errcode, "error": message, **extra}


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as error:
        extra = {"field": error.field} if error.field else {}
        return web.json_response(
            error_body(error.errcode, error.message, **extra),
            status=error.status,
            headers=error.headers,
        )
    except RateLimited as limited:
        return web.json_response(
            error_body(
                "GK_RATE_LIMITED", f"Too many attempts; try again in {limited.retry_after} s."
            ),
            status=429,
            headers={"Retry-After": str(limited.retry_after)},
        )
    except FieldErrors as error:
        field, message = next(iter(error.errors.items()))
        return web.json_response(
            error_body("GK_INVALID_FIELD", f"{field} {message}", field=field, fields=error.errors),
            status=422,
        )
    except HomeserverUnavailable:
        return web.json_response(
            error_body(
                "GK_HOMESERVER_UNAVAILABLE", "The homeserver is not answering; try again soon."
            ),
            status=503,
        )
    except web.HTTPException as error:
        if error.status < 400:
            raise
        return web.json_response(
            error_body(f"GK_HTTP_{error.status}", error.reason), status=error.status
        )
    except DATABASE_UNAVAILABLE as error:
        log.warning("The database is unavailable on %s %s: %s", request.method, request.path, error)
        return web.json_response(
            error_body("GK_UNAVAILABLE", "Briefly unavailable; try again in a moment."),
            status=503,
            headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
        )
    except Exception:
        reference = secrets.token_hex(4)
        log.exception(
            "Unexpected error on %s %s (reference %s)", request.method, request.path, reference
        )
        return web.json_response(
            error_body("GK_INTERNAL", f"Something went wrong (reference {reference})."), status=500
        )


def iso(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC).isoformat()


class WebApi:
    def __init__(
        self,
        config: Config,
        registrations: Registrations,
        store: RegistrationStore,
        tokens: MailTokens,
        signups: SignUps,
        decisions: Decisions,
        moderation: Moderation,
    ) -> None:
        self.config = config
        self.registrations = registrations
        self.store = store
        self.tokens = tokens
        self.signups = signups
        self.decisions = decisions
        self.moderation = moderation

    def user_id(self, request: RegistrationRequest) -> str | None:
        return request.user_id(self.config.homeserver.domain)

    # --- applicants --------------------------------------------------------------------

    async def sign_up(self, request: web.Request) -> web.Response:
        """Ask for an account.

        `{"userName": "ann", "email": "ann@example.org", "password": "…", "language": "en",
        "reason": "…"}` → 201 `{"status": "unverified", "userId": "@ann:example.org"}`

        An email that belongs to a live request or account gets the very same answer, but
        nothing is stored: its owner gets a mail about the try instead. With
        `registration.password: after_approval` the body has no `password` (one sent is a
        422 on that field): the welcome mail's link sets it.

        With `antibot.proof_of_work` on, the body also needs `altcha`: the solution of a
        challenge from `GET /api/antibot/challenge`, as the ALTCHA widget sends it, base64
        of the JSON `{"algorithm", "challenge", "number", "salt", "signature"}` (the
        challenge's fields, with the `number` found). Each solution counts once, within 20
        minutes. Without one, or with a wrong one, the answer is a 422 on `altcha`.
        """
        try:
            created = await self.signups.sign_up(await json_body(request), request.remote or "")
        except ProofOfWorkFailed as failed:
            raise FieldErrors({PAYLOAD_FIELD: str(failed)}) from None
        except SignUpRefused:
            raise ApiError(403, "GK_SIGNUP_REFUSED", "This sign-up was not accepted.") from None
        except SignUpsClosed as closed:
            raise ApiError(403, "GK_SIGNUPS_CLOSED", f"Sign-ups are paused: {closed}") from None
        except InviteInvalid:
            raise ApiError(
                403, "GK_INVITE_INVALID", "This invite is not valid (any more).", "invite"
            ) from None
        return web.json_response(
            {
                "status": created.state.value,
                "userId": created.user_id(self.config.homeserver.domain),
            },
            status=201,
        )

    async def confirm_email(self, request: web.Request) -> web.Response:
        """`{"token": "…"}` → `{"status"}`: newly-confirmed, already-confirmed or invalid-token."""
        result = await self.registrations.confirm_email(
            text_field(await json_body(request), "token")
        )
        status = {
            Outcome.CHANGED: "newly-confirmed",
            Outcome.ALREADY: "already-confirmed",
        }.get(result.outcome, "invalid-token")
        return web.json_response({"status": status})

    async def resend_confirmation(self, request: web.Request) -> web.Response:
        """`{"email": "…"}` → `{"sent": true}`, whether or not a mail went out.

        At most one mail per address every 5 minutes, for its newest unconfirmed request;
        10 asks an hour per client address, then 429 with Retry-After."""
        await self.signups.resend_confirmation(
            text_field(await json_body(request), "email"), request.remote or ""
        )
        return web.json_response({"sent": True})

    async def _by_status_token(self, token: str) -> RegistrationRequest:
        found = await self.tokens.request_for_token(token, STATUS_PURPOSE)
        if found is None:
            raise ApiError(404, "GK_INVALID_TOKEN", "This link is not valid (any more).", "token")
        return found

    async def status(self, request: web.Request) -> web.Response:
        """`GET /api/registration/status?token=…` → `{"status": "pending", "userId": …}`"""
        found = await self._by_status_token(request.query.get("token", ""))
        if is_erased(found):
            # Withdrawn, and its data erased with it (retention.py): only the state is left.
            return web.json_response({"status": found.state.value, "userId": "", "email": ""})
        return web.json_response(
            {"status": found.state.value, "userId": self.user_id(found), "email": found.email}
        )

    async def withdraw(self, request: web.Request) -> web.Response:
        """`{"token": "…"}` (from the status link) → `{"status": "withdrawn"}`"""
        token = text_field(await json_body(request), "token")
        found = await self._by_status_token(token)
        result = await self.registrations.withdraw(found.id)
        if result.outcome is Outcome.REFUSED and result.request is not None:
            raise ApiError(
                409,
                "GK_WRONG_STATE",
                f"The request is {result.request.state} and cannot be withdrawn.",
            )
        return web.json_response({"status": State.WITHDRAWN.value})

    async def antibot_challenge(self, request: web.Request) -> web.Response:
        """A fresh proof-of-work challenge for the sign-up form's ALTCHA widget."""
        return web.json_response(
            self.signups.antibot.challenge(), headers={"Cache-Control": "no-store"}
        )

    # --- admin API for scripts ----------------------------------------------------------

    def _admin_json(self, request: RegistrationRequest) -> dict[str, Any]:
        return {
            "id": request.id,
            "userName": request.localpart,
            "userId": self.user_id(request),
            "email": request.email,
            "language": request.language,
            "reason": request.reason,
            "state": request.state.value,
            "status": request.status,
            "matrixStatus": request.matrix_status,
            "createdAt": iso(request.created_at),
            "decidedBy": request.decided_by,
            "decidedAt": iso(request.decided_at),
            "decisionReason": request.decision_reason,
            "provisionAttempts": request.provision_attempts,
            "lastError": request.last_error,
        }

    async def admin_list(self, request: web.Request) -> web.Response:
        """`GET /api/admin/registrations?state=pending&limit=50&offset=0` → `{"registrations"}`

        One state at a time, oldest first: without `state`, only `pending` requests (not
        every state). `limit` is 50 unless given, at most 500."""
        try:
            state = State(request.query.get("state", "pending"))
            limit = int(request.query.get("limit", "50"))
            offset = int(request.query.get("offset", "0"))
            # The databases take 64-bit counts only: a bigger one is a bad query, not a crash.
            if limit < 0 or not 0 <= offset < 2**63:
                raise ValueError
        except ValueError:
            raise ApiError(400, "GK_BAD_QUERY", "state, limit or offset is not valid") from None
        limit = min(limit, 500)
        found = await self.store.in_state(state, limit, offset)
        return web.json_response({"registrations": [self._admin_json(r) for r in found]})

    async def _admin_get(self, request: web.Request) -> RegistrationRequest:
        found = await self.store.get(request.match_info["id"])
        if found is None:
            raise ApiError(404, "GK_NOT_FOUND", "No such registration request.")
        return found

    async def admin_show(self, request: web.Request) -> web.Response:
        """`GET /api/admin/registrations/{id}` → the request with its `history`."""
        found = await self._admin_get(request)
        history = [
            {
                "at": iso(e.at),
                "actor": e.actor,
                "from": e.from_state,
                "to": e.to_state,
                "reason": e.reason,
            }
            for e in await self.store.history(found.id)
        ]
        return web.json_response({**self._admin_json(found), "history": history})

    def _decision(self, result: Result) -> web.Response:
        if result.request is None:
            raise ApiError(404, "GK_NOT_FOUND", "No such registration request.")
        if result.outcome is Outcome.REFUSED:
            raise ApiError(
                409,
                "GK_WRONG_STATE",
                f"The request is {result.request.state}: it cannot be decided.",
            )
        return web.json_response(
            {"outcome": result.outcome.value, "registration": self._admin_json(result.request)}
        )

    async def admin_approve(self, request: web.Request) -> web.Response:
        """`POST /api/admin/registrations/{id}/approve` `{"actor": "@bob:example.org"}` →
        `{"outcome": "changed" | "already", …}`

        The body is optional. `actor` names who decided (a Matrix user ID, or a short name
        of letters, digits and `. _ -`, at most 64): the audit and the room's notice then
        say `admin-api (@bob:example.org)` instead of `admin-api`."""
        found = await self._admin_get(request)
        body = await json_body(request) if request.body_exists else {}
        return self._decision(await self.decisions.approve(found.id, api_actor(body)))

    async def admin_reject(self, request: web.Request) -> web.Response:
        """`POST /api/admin/registrations/{id}/reject` `{"reason": "spam", "actor": "bob"}` →
        as approve."""
        found = await self._admin_get(request)
        # body_exists, not can_read_body: receive_deadline has read the body already.
        body = await json_body(request) if request.body_exists else {}
        reason = body.get("reason")
        if reason is not None and not isinstance(reason, str):
            raise FieldErrors({"reason": "must be a string"})
        return self._decision(await self.decisions.reject(found.id, api_actor(body), reason))

    # --- admin API: accounts after approval (appservice/domain/moderation.py) ----------

    async def _moderated(self, request: web.Request) -> tuple[Target, dict[str, Any]]:
        """The user of the path, if moderation may act on them, and the JSON body."""
        # body_exists, not can_read_body: receive_deadline has read the body already.
        body = await json_body(request) if request.body_exists else {}
        reason = body.get("reason")
        if reason is not None and not isinstance(reason, str):
            raise FieldErrors({"reason": "must be a string"})
        if not isinstance(body.get("erase", False), bool):
            raise FieldErrors({"erase": "must be true or false"})
        return await self.moderation.target(request.match_info["user_id"]), body

    async def admin_user(self, request: web.Request) -> web.Response:
        """`GET /api/admin/users/{user_id}` → what `!whois` says, as JSON.

        `user_id` is `@ann:domain` or the bare `ann`; any local user (it changes nothing).
        `status` is null when the homeserver did not answer (`statusProblem` says why)."""
        try:
            found = await self.moderation.whois(request.match_info["user_id"])
        except ModerationError as error:
            raise moderation_api_error(error) from None
        status = found.status
        return web.json_response(
            {
                "userId": found.user_id,
                "registration": self._admin_json(found.request) if found.request else None,
                "twoFactor": found.two_factor,
                "status": (
                    {
                        "exists": status.exists,
                        "suspended": status.suspended,
                        "deactivated": status.deactivated,
                    }
                    if status is not None
                    else None
                ),
                "statusProblem": found.status_problem,
                "lastAction": moderation_json(found.last_action) if found.last_action else None,
                "moderationRefused": found.refusal,
            }
        )

    def _moderation_done(self, target: Target, action: str) -> web.Response:
        return web.json_response(
            {
                "userId": target.user_id,
                "action": action,
                "registrationId": target.request.id if target.request else None,
            }
        )

    async def admin_suspend(self, request: web.Request) -> web.Response:
        """`POST /api/admin/users/{user_id}/suspend` `{"reason": "spam"}` → `{"userId", "action"}`

        Synapse's suspension: the account can still read, but not send. Accounts made
        through Gatekeeper only, unless `admin_room.moderate_all_local_users`; never the
        bot or the admins (403). 503 if the homeserver did not answer, 502 if it refused:
        nothing changed then."""
        try:
            target, body = await self._moderated(request)
            await self.moderation.suspend(target, "admin-api", body.get("reason"))
        except ModerationError as error:
            raise moderation_api_error(error) from None
        return self._moderation_done(target, "suspend")

    async def admin_unsuspend(self, request: web.Request) -> web.Response:
        """`POST /api/admin/users/{user_id}/unsuspend` → `{"userId", "action"}`; as suspend."""
        try:
            target, body = await self._moderated(request)
            await self.moderation.unsuspend(target, "admin-api", body.get("reason"))
        except ModerationError as error:
            raise moderation_api_error(error) from None
        return self._moderation_done(target, "unsuspend")

    async def admin_deactivate(self, request: web.Request) -> web.Response:
        """`POST /api/admin/users/{user_id}/deactivate` `{"erase": false, "reason": "…"}` →
        `{"userId", "action"}`

        For good, without the room's confirmation step (the call is explicit). `erase`
        also has the homeserver erase the user's data. A request the account came from
        becomes `deactivated`: its web sessions end, and its owner cannot log in any more."""
        try:
            target, body = await self._moderated(request)
            erase = body.get("erase", False)
            await self.moderation.deactivate(target, "admin-api", erase, body.get("reason"))
        except ModerationError as error:
            raise moderation_api_error(error) from None
        return self._moderation_done(target, "deactivate")


_ACTOR_RE = re.compile(ACTOR_PATTERN)


def api_actor(body: dict[str, Any]) -> str:
    """The audit's actor of an admin API call: `admin-api`, with the `actor` it names."""
    actor = body.get("actor")
    if actor is None:
        return "admin-api"
    if (
        not isinstance(actor, str)
        or len(actor.encode()) > MAX_USER_ID_BYTES
        or not _ACTOR_RE.fullmatch(actor)
    ):
        raise FieldErrors(
            {"actor": "must be a Matrix user ID or a short name (letters, digits, . _ -)"}
        )
    return f"admin-api ({actor})"


# How the admin API answers each reason a moderation changed nothing.
MODERATION_STATUS = {
    Problem.BAD_USER_ID: (400, "GK_BAD_USER_ID"),
    Problem.NOT_LOCAL: (400, "GK_NOT_LOCAL_USER"),
    Problem.PROTECTED: (403, "GK_PROTECTED_USER"),
    Problem.OUT_OF_SCOPE: (403, "GK_NOT_MODERATED"),
    Problem.NO_ACCOUNT: (404, "GK_NOT_FOUND"),
    Problem.DEACTIVATED: (409, "GK_WRONG_STATE"),
    Problem.REFUSED: (502, "GK_HOMESERVER_REFUSED"),
    Problem.UNAVAILABLE: (503, "GK_HOMESERVER_UNAVAILABLE"),
}


def moderation_api_error(error: ModerationError) -> ApiError:
    status, errcode = MODERATION_STATUS[error.problem]
    return ApiError(status, errcode, error.message)


def moderation_json(entry: ModerationEntry) -> dict[str, Any]:
    return {
        "at": iso(entry.at),
        "actor": entry.actor,
        "action": entry.action,
        "erase": entry.erase,
        "reason": entry.reason,
        "outcome": entry.outcome,
        "error": entry.error,
    }


def admin_token_middleware(config: Config) -> Middleware:
    token = config.web.admin_api_token

    @web.middleware
    async def check_admin_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/api/admin/"):
            return await handler(request)
        if token is None:
            raise ApiError(404, "GK_NOT_FOUND", "The admin API is off (web.admin_api_token).")
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            raise ApiError(401, "GK_UNAUTHORIZED", "Missing bearer token.")
        # A header may carry any byte; surrogateescape keeps a stray one comparable.
        given = header.removeprefix("Bearer ").encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(given, token.get_secret_value().encode()):
            raise ApiError(403, "GK_FORBIDDEN", "Wrong bearer token.")
        return await handler(request)

    return check_admin_token


def forwarded_for(trusted_proxies: list[str]) -> Middleware:
    """Behind trusted proxies, the client is the last X-Forwarded-For hop they did not add."""
    networks = [ipaddress.ip_network(entry, strict=False) for entry in trusted_proxies]

    # Parsing an address costs more than the rest of the middleware; the proxies' own few
    # addresses repeat on every request (bounded: the header's hops are the client's choice).
    @functools.lru_cache(maxsize=1024)
    def trusted(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.strip())
        except ValueError:
            return False
        return any(ip in network for network in networks)

    @web.middleware
    async def real_client(request: web.Request, handler: Handler) -> web.StreamResponse:
        header = request.headers.get("X-Forwarded-For")
        if header and request.remote and trusted(request.remote):
            hops = [hop.strip() for hop in header.split(",") if hop.strip()]
            client = next((hop for hop in reversed(hops) if not trusted(hop)), None)
            if client is not None:
                request = request.clone(remote=client)
        return await handler(request)

    return real_client


def create_web_app(
    api: WebApi,
    account_api: AccountApi,
    pages: Pages,
    security: Any,
    monitoring: Monitoring,
    seed_api: SeedApi,
) -> web.Application:
    app = web.Application(
        client_max_size=MAX_BODY_BYTES,
        middlewares=[
            forwarded_for(api.config.web.trusted_proxies),
            monitoring.measure,
            errors_as_json,
            admin_token_middleware(api.config),
            pages.errors_as_pages,
            receive_deadline(api.config.web.receive_timeout_seconds),
            security,
        ],
    )
    app.on_response_prepare.append(security_headers(api.config.web.secure, api.config.antibot))
    # Every route of the web endpoint, in one place.
    add = app.router
    # The account API (web/account_api.py): login, reset, settings.
    add.add_get("/api/csrf", account_api.csrf_token)
    add.add_post("/api/auth/login", account_api.login)
    add.add_post("/api/auth/login-with-second-factor", account_api.login_with_second_factor)
    add.add_post("/api/auth/logout", account_api.logout)
    add.add_post("/api/auth/request-password-reset", account_api.request_password_reset)
    add.add_post("/api/auth/reset-password", account_api.reset_password)
    add.add_get("/api/user-info", account_api.user_info)
    add.add_post("/api/user/settings/language", account_api.set_language)
    add.add_post("/api/user/settings/sudo", account_api.sudo)
    add.add_post("/api/user/settings/confirm-email-change", account_api.confirm_email_change)
    add.add_post("/api/user/settings/generate-temporary-2fa", account_api.generate_temporary_2fa)
    add.add_post("/api/user/settings/sensitive/change-email", account_api.change_email)
    add.add_post("/api/user/settings/sensitive/change-password", account_api.change_password)
    add.add_post("/api/user/settings/sensitive/2fa", account_api.second_factor)
    add.add_post("/api/user/settings/sensitive/recovery-codes", account_api.recovery_codes)
    add.add_get("/api/user/settings/sensitive/personal-data", account_api.personal_data)
    # The HTML pages (web/pages.py), which work without JavaScript.
    add.add_get("/", pages.home)
    add.add_get("/sign-up", pages.sign_up_form)
    add.add_post("/sign-up", pages.sign_up)
    add.add_post("/sign-up/resend", pages.resend_confirmation)
    add.add_post("/sign-up/start-over", pages.start_over)
    add.add_get("/confirm-email", pages.confirm_form)
    add.add_post("/confirm-email", pages.confirm)
    add.add_get("/status", pages.status)
    add.add_post("/status/withdraw", pages.withdraw)
    add.add_get("/login", pages.login_form)
    add.add_post("/login", pages.login)
    add.add_post("/login/second-factor", pages.second_factor)
    add.add_post("/logout", pages.logout)
    add.add_get("/forgot-password", pages.forgot_form)
    add.add_post("/forgot-password", pages.forgot)
    add.add_get("/reset-password", pages.reset_form)
    add.add_post("/reset-password", pages.reset)
    add.add_get("/settings", pages.settings_page)
    add.add_post("/settings/language", pages.set_language)
    add.add_post("/settings/sudo", pages.sudo)
    add.add_post("/settings/email", pages.change_email)
    add.add_post("/settings/password", pages.change_password)
    add.add_post("/settings/2fa/start", pages.start_2fa)
    add.add_post("/settings/2fa/enable", pages.enable_2fa)
    add.add_post("/settings/2fa/disable", pages.disable_2fa)
    add.add_post("/settings/2fa/recovery-codes", pages.new_recovery_codes)
    add.add_post("/settings/personal-data", pages.personal_data)
    add.add_post("/settings/delete-account", pages.ask_to_delete_account)
    add.add_get("/delete-account", pages.delete_account_form)
    add.add_post("/delete-account", pages.delete_account)
    add.add_get("/confirm-email-change", pages.email_change_form)
    add.add_post("/confirm-email-change", pages.confirm_email_change)
    add.add_static("/static", str(resources.files("gatekeeper.appservice.web") / "static"))
    # Sign-up, the request's status and the admin API (WebApi, above).
    add.add_post("/api/auth/sign-up", api.sign_up)
    add.add_post("/api/user/confirm-email", api.confirm_email)
    add.add_post("/api/user/re-trigger-confirmation-email", api.resend_confirmation)
    add.add_get("/api/registration/status", api.status)
    add.add_post("/api/registration/withdraw", api.withdraw)
    add.add_get("/api/admin/registrations", api.admin_list)
    add.add_get("/api/admin/registrations/{id}", api.admin_show)
    add.add_post("/api/admin/registrations/{id}/approve", api.admin_approve)
    add.add_post("/api/admin/registrations/{id}/reject", api.admin_reject)
    add.add_get("/api/admin/users/{user_id}", api.admin_user)
    add.add_post("/api/admin/users/{user_id}/suspend", api.admin_suspend)
    add.add_post("/api/admin/users/{user_id}/unsuspend", api.admin_unsuspend)
    add.add_post("/api/admin/users/{user_id}/deactivate", api.admin_deactivate)
    add.add_get("/api/antibot/challenge", api.antibot_challenge)
    # The other seed's registration API (web/seed_api.py), at the paths its clients use.
    add.add_post("/registrations/", seed_api.create)
    add.add_get("/registrations/{rid}/", seed_api.show)
    add.add_put("/registrations/{rid}/", seed_api.decide)
    add.add_patch("/registrations/{rid}/", seed_api.name)
    add.add_delete("/registrations/{rid}/", seed_api.withdraw)
    # For load balancers and container health checks; the metrics listener has it too.
    add.add_get("/health", monitoring.health)
    document = openapi_document(
        app,
        api.config.homeserver.domain,
        api.config.registration.password_after_approval,
        api.config.antibot.proof_of_work,
    )

    async def openapi(_: web.Request) -> web.Response:
        """The OpenAPI document of this API."""
        return web.json_response(document)

    add.add_get("/api/openapi.json", openapi)
    return app
