"""Cookies, CSRF and the access rules of the web API, as middlewares.

Access rules by path: /api/user/* needs a session (LOGIN_TOKEN), /api/user/settings/*
also a verified email, /api/user/settings/sensitive/* also a SUDO_TOKEN. CSRF: every
unsafe request carries the CSRF cookie's value in X-CSRF-Token (or the form field), but
for the admin API and the seed's /registrations/ (their header is their credential);
the token is HMAC-signed and bound to the session (or to "anonymous" before login).
"""

from __future__ import annotations

import asyncio
import hmac
import re
import secrets

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler, Middleware
from multidict import MultiDictProxy

from gatekeeper.appservice.config import Config
from gatekeeper.appservice.domain.accounts import LoginResult
from gatekeeper.appservice.domain.registration_request import RegistrationRequest
from gatekeeper.appservice.storage.sessions import Session, Sessions
from gatekeeper.appservice.web.common import (
    MAX_BODY_BYTES,
    ApiError,
    storable,
    too_large,
    unstorable_text,
)

# Cookie names (not secrets).
LOGIN_TOKEN = "LOGIN_TOKEN"  # noqa: S105
DEVICE_TOKEN = "DEVICE_TOKEN"  # noqa: S105
SUDO_TOKEN = "SUDO_TOKEN"  # noqa: S105
CSRF_TOKEN = "CSRF-Token"  # noqa: S105
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
# The seed's registration API (web/seed_api.py): its clients send no cookies and no CSRF
# token, and it reads no session: the Authorization header alone opens it. Anything under
# its prefix answers JSON, as under /api/.
SEED_PREFIX = "/registrations/"
SEED_PATHS = re.compile(r"/registrations/(?:[^/]+/)?")


def is_seed_path(path: str) -> bool:
    return SEED_PATHS.fullmatch(path) is not None


ANONYMOUS = "anonymous"

SESSION_KEY = web.RequestKey("session", Session)
ACCOUNT_KEY = web.RequestKey("account", RegistrationRequest)

# Reachable without a session: the mail link is how an applicant first proves their address.
OPEN_USER_PATHS = ("/api/user/confirm-email", "/api/user/re-trigger-confirmation-email")


class Cookies:
    """Names and flags per our security rules (docs/architecture.md): __Host- over https,
    bare names on loopback http."""

    def __init__(self, config: Config) -> None:
        self.secure = config.web.secure
        self.prefix = "__Host-" if self.secure else ""
        self.device_max_age = int(config.web.remember_device_days * 86400)
        self.session_max_age = int(config.web.session_max_hours * 3600)

    def name(self, base: str) -> str:
        return self.prefix + base

    def get(self, request: web.Request, base: str) -> str | None:
        """The cookie's value; one that is not clean text is none we set."""
        value = request.cookies.get(self.name(base))
        return value if value and storable(value) else None

    def set(
        self, response: web.StreamResponse, base: str, value: str, max_age: int | None = None
    ) -> None:
        response.set_cookie(
            self.name(base),
            value,
            max_age=max_age,
            path="/",
            secure=self.secure,
            httponly=base != CSRF_TOKEN,  # scripts must read the CSRF token to send it back
            samesite="Lax",
        )

    def start_session(self, response: web.StreamResponse, result: LoginResult, csrf: Csrf) -> None:
        """After a login: the session cookie, a CSRF token bound to it, maybe the device."""
        assert result.login_token is not None
        assert result.session is not None
        self.set(response, LOGIN_TOKEN, result.login_token, self.session_max_age)
        self.set(response, CSRF_TOKEN, csrf.new_token(result.session))
        if result.device_token:
            self.set(response, DEVICE_TOKEN, result.device_token, self.device_max_age)

    def clear(self, response: web.StreamResponse, base: str) -> None:
        response.del_cookie(self.name(base), path="/", secure=self.secure, samesite="Lax")


class Csrf:
    def __init__(self, key: bytes) -> None:
        self.key = key

    @staticmethod
    def binding(session: Session | None) -> str:
        return session.csrf_secret if session else ANONYMOUS

    def _sign(self, nonce: str, binding: str) -> str:
        return hmac.digest(self.key, f"{nonce}|{binding}".encode(), "sha256").hex()

    def new_token(self, session: Session | None) -> str:
        nonce = secrets.token_urlsafe(16)
        return f"{nonce}.{self._sign(nonce, self.binding(session))}"

    def valid(self, token: str, session: Session | None) -> bool:
        nonce, _, signature = token.partition(".")
        if not nonce or not signature:
            return False
        return hmac.compare_digest(signature, self._sign(nonce, self.binding(session)))


async def submitted_csrf_token(request: web.Request) -> str:
    header = request.headers.get(CSRF_HEADER)
    if header is not None:
        return header if storable(header) else ""
    if is_form(request):
        value = (await form_fields(request)).get(CSRF_FIELD)
        return value if isinstance(value, str) and storable(value) else ""
    return ""


def is_form(request: web.Request) -> bool:
    return request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data")


async def form_fields(
    request: web.Request,
) -> MultiDictProxy[str | bytes | bytearray | web.FileField]:
    try:
        return await request.post()
    except ValueError:  # no or a wrong multipart boundary, text not in its charset
        raise ApiError(400, "GK_NOT_FORM", "The body is not a readable form.") from None


def receive_deadline(seconds: float) -> Middleware:
    """A body must arrive whole within `seconds` of its request's head, or the answer is 408
    (aiohttp bounds the head itself: its keep-alive timeout, set in program.py). Read here
    once, the body stays cached for the handler; one declared too large is refused unread."""

    @web.middleware
    async def receive_in_time(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.body_exists:
            if (request.content_length or 0) > MAX_BODY_BYTES:
                raise too_large()
            try:
                async with asyncio.timeout(seconds):
                    await _receive_body(request)
            except TimeoutError:
                raise ApiError(
                    408, "GK_TOO_SLOW", f"The request did not arrive within {seconds:g} s."
                ) from None
            except web.HTTPRequestEntityTooLarge:  # chunked, so its size was not declared
                raise too_large() from None
            except (ConnectionError, HttpProcessingError):
                # The client hung up or broke off mid-body: nobody waits for an answer.
                raise ApiError(
                    400, "GK_INCOMPLETE", "The body ended before it was whole."
                ) from None
        return await handler(request)

    return receive_in_time


async def _receive_body(request: web.Request) -> None:
    if request.content_type == "multipart/form-data":
        await form_fields(request)  # parts are read from the stream, not from read()'s copy
    else:
        await request.read()


async def refuse_unstorable_text(request: web.Request) -> None:
    """Text no handler could keep or look up (see `storable`) is refused before any is
    given it: the address's path and query, and a form's fields (JSON: `json_body`)."""
    texts = [request.path, *request.query.values()]
    if request.method not in SAFE_METHODS and is_form(request):
        texts += [
            value for value in (await form_fields(request)).values() if isinstance(value, str)
        ]
    if not all(storable(text) for text in texts):
        raise unstorable_text()


def security_middleware(cookies: Cookies, csrf: Csrf, sessions: Sessions) -> Middleware:
    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        await refuse_unstorable_text(request)
        login_token = cookies.get(request, LOGIN_TOKEN)
        session = await sessions.find(login_token) if login_token else None
        if session is not None:
            request[SESSION_KEY] = session
        path = request.path
        if (
            request.method not in SAFE_METHODS
            and not path.startswith("/api/admin/")
            and not is_seed_path(path)
        ):
            cookie = cookies.get(request, CSRF_TOKEN) or ""
            given = await submitted_csrf_token(request)
            # Empty equals empty is a failure; the token must be ours and this session's.
            if not (
                cookie
                and hmac.compare_digest(cookie.encode(), given.encode())
                and csrf.valid(cookie, session)
            ):
                raise ApiError(403, "GK_CSRF", "Missing or wrong CSRF token; reload the page.")
        if path.startswith("/api/user/") and path not in OPEN_USER_PATHS:
            if session is None:
                raise ApiError(401, "GK_NOT_LOGGED_IN", "Log in first.")
            # Read with the session, in the same query.
            account = session.account
            if account is None:
                raise ApiError(401, "GK_NOT_LOGGED_IN", "Log in first.")
            request[ACCOUNT_KEY] = account
            if path.startswith("/api/user/settings/") and not account.email_verified:
                raise ApiError(403, "GK_EMAIL_NOT_VERIFIED", "Confirm your email first.")
            if path.startswith("/api/user/settings/sensitive/") and not sessions.has_sudo(
                session, cookies.get(request, SUDO_TOKEN)
            ):
                raise ApiError(403, "GK_SUDO_REQUIRED", "Enter your password again first.")
        return await handler(request)

    return check
