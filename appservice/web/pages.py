"""Server-rendered pages for people with a browser, over the same services as the JSON API.

They work without JavaScript: plain forms carrying the CSRF field. Every response gets
the security headers; pages render in the person's language.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import jinja2
from aiohttp import web
from aiohttp.typedefs import Handler
from yarl import URL

from gatekeeper.appservice.config import AntibotConfig, Config
from gatekeeper.appservice.domain.account_deletion import AccountDeletion
from gatekeeper.appservice.domain.accounts import Accounts, LoginStatus, MatrixOutcome
from gatekeeper.appservice.domain.captcha import PROVIDERS
from gatekeeper.appservice.domain.errors import (
    FieldErrors,
    InviteInvalid,
    SignUpRefused,
    SignUpsClosed,
)
from gatekeeper.appservice.domain.i18n import Catalogue
from gatekeeper.appservice.domain.registration_request import RegistrationRequest, State
from gatekeeper.appservice.domain.registrations import Outcome, Registrations
from gatekeeper.appservice.domain.signup import SignUps
from gatekeeper.appservice.storage.mail_tokens import (
    CONFIRM_PURPOSE,
    RESET_PURPOSE,
    STATUS_PURPOSE,
    MailTokens,
)
from gatekeeper.appservice.storage.personal_data import personal_data
from gatekeeper.appservice.storage.ratelimit import MAIL_PER_RECIPIENT, RateLimited
from gatekeeper.appservice.storage.registration_store import RegistrationStore
from gatekeeper.appservice.storage.retention import is_erased
from gatekeeper.appservice.storage.sessions import Session, Sessions
from gatekeeper.appservice.storage.totp import Enrolment
from gatekeeper.appservice.web.account_api import personal_data_file
from gatekeeper.appservice.web.common import ApiError
from gatekeeper.appservice.web.security import (
    CSRF_TOKEN,
    DEVICE_TOKEN,
    LOGIN_TOKEN,
    SEED_PREFIX,
    SESSION_KEY,
    SUDO_TOKEN,
    Cookies,
    Csrf,
)
from gatekeeper.appservice.web.shells import Shells, marker

log = logging.getLogger("gatekeeper.pages")

NONCE_KEY = web.RequestKey("style_nonce", str)
LANGUAGE_COOKIE = "lang"


def security_headers(
    secure: bool, antibot: AntibotConfig
) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    # The proof-of-work widget is a script file of ours with a worker file of ours, and it
    # fetches its challenge from us; a third-party CAPTCHA adds its provider's origins.
    # With neither, pages need no script at all.
    provider = PROVIDERS.get(antibot.captcha)
    scripts = ""
    if antibot.proof_of_work or provider:
        others = f" {provider.origins}" if provider else ""
        scripts = f"script-src 'self'{others}; worker-src 'self'; connect-src 'self'{others}; " + (
            f"frame-src {provider.origins}; " if provider else ""
        )

    async def add(request: web.Request, response: web.StreamResponse) -> None:
        nonce = request.get(NONCE_KEY)
        style = f"'self' 'nonce-{nonce}'" if nonce else "'self'"
        response.headers["Content-Security-Policy"] = (
            f"default-src 'none'; {scripts}style-src {style}; img-src 'self' data: https:; "
            "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        )
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        if secure:
            response.headers["Strict-Transport-Security"] = "max-age=31536000"

    return add


class Pages:
    def __init__(
        self,
        config: Config,
        catalogue: Catalogue,
        registrations: Registrations,
        store: RegistrationStore,
        tokens: MailTokens,
        signups: SignUps,
        accounts: Accounts,
        sessions: Sessions,
        cookies: Cookies,
        csrf: Csrf,
        deletion: AccountDeletion,
    ) -> None:
        self.deletion = deletion
        self.config = config
        self.catalogue = catalogue
        self.registrations = registrations
        self.store = store
        self.tokens = tokens
        self.signups = signups
        self.accounts = accounts
        self.sessions = sessions
        self.cookies = cookies
        self.csrf = csrf
        self.languages = [
            (code, catalogue.text(code, "page.language_name"))
            for code in config.registration.languages
        ]
        self.server = config.web.homeserver_name or config.homeserver.domain
        self._offered = frozenset(code for code, _ in self.languages)
        self._lang_queries = [
            (code, name, URL.build(query={"lang": code}).raw_query_string)
            for code, name in self.languages
        ]
        self._no_name = {
            code: catalogue.text(code, "request.no_name_yet", domain=config.homeserver.domain)
            for code in self._offered
        }
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader("gatekeeper.appservice.web", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            # The templates ship with the package: no stat() per render to see if they changed.
            auto_reload=False,
        )
        self.shells = Shells(self.env)

    # --- rendering ---------------------------------------------------------------------

    def _shared_context(self, lang: str, title_key: str) -> dict[str, Any]:
        """What every template is given besides its own context, in language `lang`."""

        def t(key: str, **params: str) -> str:
            return self.catalogue.text(lang, key, **params)

        return {
            "t": t,
            "lang": lang,
            "languages": self.languages,
            "language_links": [
                (code, name, marker(f"link{index}"))
                for index, (code, name) in enumerate(self.languages)
            ],
            "title": t(title_key, server=self.server),
            "server": self.server,
            "domain": self.config.homeserver.domain,
            "homeserver_url": self.config.homeserver.client_url,
            "accent": self.config.web.accent_colour,
            "logo_url": self.config.web.logo_url,
            "support_contact": self.config.web.support_contact,
            "terms_url": self.config.web.terms_url,
        }

    def language(self, request: web.Request, account_language: str | None = None) -> str:
        """?lang=, then the account's setting, then the cookie, then Accept-Language."""
        offered = self._offered
        for choice in (
            request.query.get("lang"),
            account_language,
            request.cookies.get(LANGUAGE_COOKIE),
        ):
            if choice in offered:
                return str(choice)
        for part in request.headers.get("Accept-Language", "").split(","):
            code = part.split(";")[0].strip().lower().split("-")[0]
            if code in offered:
                return code
        return self.languages[0][0]

    def translate_errors(self, language: str, errors: dict[str, str]) -> dict[str, str]:
        return {
            field: self.catalogue.field_error(language, field, message)
            for field, message in errors.items()
        }

    def user_id(self, found: RegistrationRequest, language: str) -> str:
        """The request's Matrix ID, or (named after approval) what stands for it."""
        domain = self.config.homeserver.domain
        no_name = self._no_name.get(language) or self.catalogue.text(
            language, "request.no_name_yet", domain=domain
        )
        return found.shown_user_id(domain, no_name)

    def language_links(self, request: web.Request) -> list[tuple[str, str, str]]:
        """Each language's code, name and link to this page in it: only `lang` changes, so
        a link's token (confirm, status, reset) stays. A page that answers a form of a
        POST-only path (/login/second-factor, /settings/2fa/enable) links to the page the
        form belongs to: a GET of its own path would be a 405."""
        url = request.rel_url
        if request.method != "GET":
            url = url.with_path(_page_of(request.path, _get_paths(request.app)))
        if not url.raw_query_string:  # most pages: the path and ?lang=, built once per language
            path = url.raw_path
            return [(code, name, f"{path}?{query}") for code, name, query in self._lang_queries]
        return [(code, name, str(url.update_query(lang=code))) for code, name in self.languages]

    def render(
        self,
        request: web.Request,
        template: str,
        title_key: str,
        *,
        status: int = 200,
        language: str | None = None,
        fill: Mapping[str, str] | None = None,
        keep: bool = False,
        **context: Any,
    ) -> web.Response:
        """The page of `template` in the person's language (or `language`). With `keep`,
        the page is rendered once for its `context` and kept (see shells.py): `context`
        must then hold nothing secret, and `fill` the values of this request that the
        template only prints, such as a link's token."""
        fill = fill or {}
        lang = language or self.language(request)
        session = request.get(SESSION_KEY)
        csrf_token = self.cookies.get(request, CSRF_TOKEN) or ""
        fresh_csrf = not (csrf_token and self.csrf.valid(csrf_token, session))
        if fresh_csrf:
            csrf_token = self.csrf.new_token(session)
        nonce = secrets.token_urlsafe(12)
        request[NONCE_KEY] = nonce
        links = self.language_links(request)
        html = self.shells.render(
            template,
            ((lang, title_key), lambda: self._shared_context(lang, title_key)),
            context,
            {
                "style_nonce": nonce,
                "csrf_token": csrf_token,
                **{f"link{index}": href for index, (_, _, href) in enumerate(links)},
                **fill,
            },
            keep,
        )
        response = web.Response(text=html, content_type="text/html", status=status)
        # Pages may carry one-time material (a TOTP key); never keep them in caches.
        response.headers["Cache-Control"] = "no-store"
        if fresh_csrf:
            self.cookies.set(response, CSRF_TOKEN, csrf_token)
        if request.query.get("lang") == lang:
            response.set_cookie(LANGUAGE_COOKIE, lang, path="/", samesite="Lax", max_age=31536000)
        return response

    def message(
        self,
        request: web.Request,
        title_key: str,
        *paragraphs: str,
        status: int = 200,
        **context: Any,
    ) -> web.Response:
        return self.render(
            request,
            "message.html",
            title_key,
            status=status,
            paragraphs=paragraphs,
            link=context.pop("link", None),
            **context,
        )

    @web.middleware
    async def errors_as_pages(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Pages answer with pages: a refused request or a crash is explained, never a trace."""
        if request.path.startswith(("/api/", "/static/", SEED_PREFIX)):
            return await handler(request)
        try:
            return await handler(request)
        except ApiError as error:
            return self.message(request, "page.error_title", error.message, status=error.status)
        except RateLimited as limited:
            return self.message(
                request,
                "page.error_title",
                self.catalogue.text(
                    self.language(request),
                    "page.second_factor.locked",
                    time=f"{limited.retry_after} s",
                ),
                status=429,
            )
        except web.HTTPException as error:
            if error.status == 404:
                return self.message(
                    request,
                    "page.error_title",
                    self.catalogue.text(self.language(request), "page.not_found"),
                    status=404,
                )
            raise
        except Exception:
            reference = secrets.token_hex(4)
            log.exception("Page %s failed (reference %s)", request.path, reference)
            return self.message(
                request,
                "page.error_title",
                self.catalogue.text(self.language(request), "page.error_body", reference=reference),
                status=500,
            )

    # --- sign-up and the request's status ------------------------------------------------

    async def _sign_up_page(
        self,
        request: web.Request,
        form: dict[str, str],
        errors: dict[str, str] | None = None,
        status: int = 200,
        message: str = "",
        kind: str = "error",
        keep: bool = False,
    ) -> web.Response:
        """The sign-up form; `keep` only for the empty one (a form sent back holds a password)."""
        invite = form.get("invite", "")
        closed = None if invite else await self.signups.gate.closed_reason()
        return self.render(
            request,
            "sign_up.html",
            "page.signup.title",
            status=status,
            keep=keep,
            form=form,
            errors=errors or {},
            invite=invite,
            closed=closed,
            message=message,
            kind=kind,
            require_reason=self.config.registration.require_reason,
            ask_password=not self.config.registration.password_after_approval,
            antibot_pow=self.config.antibot.proof_of_work,
            antibot_honeypot=self.config.antibot.honeypot,
            captcha=PROVIDERS.get(self.config.antibot.captcha),
            captcha_site_key=self.config.antibot.captcha_site_key,
        )

    async def sign_up_form(self, request: web.Request) -> web.Response:
        invite = request.query.get("invite", "")
        # An invite code is a credential of sorts: its page is not kept.
        return await self._sign_up_page(request, {"invite": invite}, keep=not invite)

    async def sign_up(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items() if k != "csrf_token"}
        lang = self.language(request)
        t = self.catalogue.text
        try:
            created = await self.signups.sign_up({**form, "language": lang}, request.remote or "")
        except FieldErrors as error:
            errors = self.translate_errors(lang, error.errors)
            return await self._sign_up_page(request, form, errors, 422)
        except SignUpRefused:
            message = t(lang, "page.refused")
            return await self._sign_up_page(request, form, status=403, message=message)
        except InviteInvalid:
            message = t(lang, "page.invite_invalid")
            form = {**form, "invite": ""}
            return await self._sign_up_page(request, form, status=403, message=message)
        except SignUpsClosed:
            return await self._sign_up_page(request, form, status=403)
        if created.state is State.UNVERIFIED:
            return self._check_email_page(
                request,
                {
                    "email": created.email,
                    "token": created.status_token,
                    **{k: form.get(k, "") for k in ("userName", "reason", "invite")},
                },
            )
        return self.message(request, "page.status.title", t(lang, "page.status.pending"))

    def _check_email_page(
        self, request: web.Request, fields: dict[str, str], message: str = ""
    ) -> web.Response:
        """After sign-up: where the link went, and the ways on from here. `fields` are the
        hidden ones its buttons send back: the address to resend to, and for starting
        again, the status token and what to fill in again (never the password)."""
        return self.render(
            request,
            "check_email.html",
            "page.check_email.title",
            fields=fields,
            message=message,
        )

    async def resend_confirmation(self, request: web.Request) -> web.Response:
        form = await request.post()
        fields = {
            k: str(form.get(k, "")) for k in ("email", "token", "userName", "reason", "invite")
        }
        await self.signups.resend_confirmation(fields["email"], request.remote or "")
        minutes = int(MAIL_PER_RECIPIENT.window_seconds // 60)
        message = self.catalogue.text(
            self.language(request),
            "page.check_email.resent",
            email=fields["email"],
            minutes=minutes,
        )
        return self._check_email_page(request, fields, message)

    async def start_over(self, request: web.Request) -> web.Response:
        """Withdraw the request of the page after sign-up (the address may be mistyped, and
        the request holds the name), then the sign-up form again, without the address."""
        form = await request.post()
        found = await self.tokens.request_for_token(str(form.get("token", "")), STATUS_PURPOSE)
        if found is not None:
            await self.registrations.withdraw(found.id)
        again = {k: str(form.get(k, "")) for k in ("userName", "reason", "invite")}
        message = self.catalogue.text(self.language(request), "page.check_email.start_over")
        return await self._sign_up_page(request, again, message=message, kind="info")

    def _token_form(self, request: web.Request, page: str, action: str) -> web.Response:
        """A page whose button posts the link's token: opening a link changes nothing."""
        return self.render(
            request,
            "token_form.html",
            f"page.{page}.title",
            token=request.query.get("token", ""),
            action=action,
            message="",
            kind="info",
            submit=self.catalogue.text(self.language(request), f"page.{page}.submit"),
        )

    async def confirm_form(self, request: web.Request) -> web.Response:
        """Whose request and which address a click confirms; the click is what confirms,
        since mail scanners open links."""
        token = request.query.get("token", "")
        found = await self.tokens.request_for_token(token, CONFIRM_PURPOSE)
        if found is None or found.state is not State.UNVERIFIED:
            # Used, or confirmed by a later mail's link, or withdrawn: say so, no button.
            used = await self.tokens.request_for_token(token, CONFIRM_PURPOSE, used=True)
            return self._confirmed(request, found or used)
        lang = self.language(request, found.language)
        return self.render(
            request,
            "confirm_email.html",
            "page.confirm.title",
            language=lang,
            fill={"token": token, "user_id": self.user_id(found, lang), "email": found.email},
            keep=True,
        )

    async def confirm(self, request: web.Request) -> web.Response:
        token = str((await request.post()).get("token", ""))
        result = await self.registrations.confirm_email(token)
        if result.outcome is Outcome.CHANGED and result.request is not None:
            status = await self.signups.status_token(result.request.id)
            return self._confirmed(request, result.request, "page.confirm.done", status)
        return self._confirmed(request, result.request)

    def _confirmed(
        self,
        request: web.Request,
        found: RegistrationRequest | None,
        key: str = "",
        status_token: str = "",
    ) -> web.Response:
        """Where a confirmation stands: `key` (by default already confirmed, or closed
        unconfirmed), the request's status, and a link to the status page when there is a
        fresh token for it (else the confirmation mail has one)."""
        if found is None:
            lang = self.language(request)
            text = self.catalogue.text(lang, "page.confirm.invalid")
            return self.message(request, "page.confirm.title", text, status=404)
        lang = self.language(request, found.language)
        key = key or ("page.confirm.already" if found.email_verified else "page.confirm.closed")
        link = None
        if status_token:
            link = (
                f"/status?token={status_token}",
                self.catalogue.text(lang, "page.confirm.status"),
            )
        return self.message(
            request,
            "page.confirm.title",
            self.catalogue.text(lang, key),
            self.catalogue.text(lang, f"page.status.{found.state.value}"),
            language=lang,
            link=link,
        )

    async def status(self, request: web.Request) -> web.Response:
        token = request.query.get("token", "")
        found = await self.tokens.request_for_token(token, STATUS_PURPOSE)
        if found is None:
            lang = self.language(request)
            return self.message(
                request,
                "page.status.title",
                self.catalogue.text(lang, "page.confirm.invalid"),
                status=404,
            )
        lang = self.language(request, found.language)
        # A withdrawn request's data is erased at once (retention.py): no name to show.
        erased = is_erased(found)
        return self.render(
            request,
            "status.html",
            "page.status.title",
            language=lang,
            fill={"token": token, "user_id": "" if erased else self.user_id(found, lang)},
            keep=True,
            message=self.catalogue.text(lang, "page.status.erased") if erased else "",
            erased=erased,
            state=found.state.value,
            can_withdraw=found.state in (State.UNVERIFIED, State.PENDING),
        )

    async def withdraw(self, request: web.Request) -> web.StreamResponse:
        token = str((await request.post()).get("token", ""))
        found = await self.tokens.request_for_token(token, STATUS_PURPOSE)
        if found is not None:
            await self.registrations.withdraw(found.id)
        raise web.HTTPSeeOther(f"/status?token={token}")

    # --- login -------------------------------------------------------------------------

    async def login_form(self, request: web.Request) -> web.StreamResponse:
        if request.get(SESSION_KEY) is not None:
            raise web.HTTPSeeOther("/settings")
        return self.render(
            request, "login.html", "page.login.title", keep=True, form={}, message=""
        )

    async def login(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        # The field keeps its old name; it takes the email, the user name or the Matrix ID.
        identifier, password = str(form.get("email", "")), str(form.get("password", ""))
        result = await self.accounts.login(
            identifier, password, request.remote or "", self.cookies.get(request, DEVICE_TOKEN)
        )
        if result.status is LoginStatus.SECOND_FACTOR_REQUIRED:
            return self._second_factor_form(request, result.ticket, "")
        if result.status is LoginStatus.LOGGED_IN:
            response = redirect("/settings")
            self.cookies.start_session(response, result, self.csrf)
            return response
        return self._login_form(request, identifier, "page.login.invalid")

    def _login_form(
        self, request: web.Request, identifier: str, key: str, **params: str
    ) -> web.Response:
        return self.render(
            request,
            "login.html",
            "page.login.title",
            status=401,
            form={"email": identifier},
            message=self.catalogue.text(self.language(request), key, **params),
        )

    def _second_factor_form(
        self, request: web.Request, ticket: str | None, message: str, status: int = 200
    ) -> web.Response:
        """The code form: its ticket stands for the password, which never comes back."""
        return self.render(
            request,
            "second_factor.html",
            "page.second_factor.title",
            status=status,
            ticket=ticket,
            message=message,
        )

    async def second_factor(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        # The recovery form sends recoveryCode; the main form the app's code.
        code = str(form.get("recoveryCode") or form.get("secondFactor") or "")
        result = await self.accounts.login_with_ticket(
            str(form.get("ticket", "")),
            code,
            form.get("rememberDevice") == "on",
            request.remote or "",
        )
        if result.status is LoginStatus.LOGGED_IN:
            response = redirect("/settings")
            self.cookies.start_session(response, result, self.csrf)
            return response
        if result.timeout_until_ms is not None:
            until = datetime.fromtimestamp(result.timeout_until_ms / 1000, UTC).strftime(
                "%H:%M UTC"
            )
            return self._login_form(request, "", "page.second_factor.locked", time=until)
        if result.ticket is None:
            return self._login_form(request, "", "page.second_factor.expired")
        key = (
            "page.second_factor.just_used"
            if result.status is LoginStatus.CODE_JUST_USED
            else "page.second_factor.wrong"
        )
        message = self.catalogue.text(self.language(request), key)
        return self._second_factor_form(request, result.ticket, message, status=401)

    async def logout(self, request: web.Request) -> web.StreamResponse:
        session = request.get(SESSION_KEY)
        if session is not None:
            await self.sessions.end(session)
        response = redirect("/login")
        for cookie in (LOGIN_TOKEN, SUDO_TOKEN, CSRF_TOKEN):
            self.cookies.clear(response, cookie)
        return response

    async def forgot_form(self, request: web.Request) -> web.Response:
        return self.render(request, "forgot.html", "page.forgot.title", keep=True, message="")

    async def forgot(self, request: web.Request) -> web.Response:
        email = str((await request.post()).get("email", "")).strip()
        await self.accounts.request_password_reset(email, request.remote or "")
        lang = self.language(request)
        return self.render(
            request,
            "forgot.html",
            "page.forgot.title",
            message=self.catalogue.text(lang, "page.forgot.sent", email=email),
        )

    async def _reset_page(
        self, request: web.Request, token: str, errors: dict[str, str] | None = None
    ) -> web.Response:
        """The new-password form for the account the link's token names (the token alone
        identifies it: no address to type), or why the link is of no use."""
        found = await self.tokens.request_for_token(token, RESET_PURPOSE)
        lang = self.language(request, found.language if found else None)
        return self.render(
            request,
            "reset.html",
            "page.reset.title",
            status=400 if found is None else 422 if errors else 200,
            language=lang,
            token=token if found else "",
            user_id=self.user_id(found, lang) if found else "",
            errors=self.translate_errors(lang, errors or {}),
            message="" if found else self.catalogue.text(lang, "page.reset.invalid"),
        )

    async def reset_form(self, request: web.Request) -> web.Response:
        return await self._reset_page(request, request.query.get("token", ""))

    async def reset(self, request: web.Request) -> web.Response:
        form = await request.post()
        token = str(form.get("token", ""))
        lang = self.language(request)
        try:
            outcome = await self.accounts.reset_password(
                None, token, str(form.get("newPassword", ""))
            )
        except FieldErrors as error:
            return await self._reset_page(request, token, error.errors)
        if outcome is None:
            return await self._reset_page(request, "")
        done = (
            "matrix.password_unchanged" if outcome is MatrixOutcome.UNCHANGED else "page.reset.done"
        )
        return self.message(
            request,
            "page.reset.title",
            self.catalogue.text(lang, done),
            link=("/login", self.catalogue.text(lang, "page.login.title")),
        )

    # --- settings (logged in) -----------------------------------------------------------

    async def _account(self, request: web.Request) -> tuple[Session, RegistrationRequest]:
        session = request.get(SESSION_KEY)
        account = await self.store.get(session.request_id) if session else None
        if session is None or account is None:
            raise web.HTTPSeeOther("/login")
        return session, account

    async def settings(
        self,
        request: web.Request,
        *,
        message_key: str = "",
        kind: str = "info",
        errors: dict[str, str] | None = None,
        enrolment: Enrolment | None = None,
        recovery_codes: list[str] | None = None,
        status: int = 200,
        **params: str,
    ) -> web.Response:
        session, account = await self._account(request)
        lang = self.language(request, account.language)
        tfa_enabled = await self.accounts.totp.is_enabled(account.id)
        return self.render(
            request,
            "settings.html",
            "page.settings.title",
            status=status,
            language=lang,
            email=account.email,
            state=account.state.value,
            account_language=account.language,
            user_id=self.user_id(account, lang),
            sudo=self.sessions.has_sudo(session, self.cookies.get(request, SUDO_TOKEN)),
            tfa_enabled=tfa_enabled,
            recovery_left=await self.accounts.totp.recovery_codes_left(account.id)
            if tfa_enabled
            else 0,
            recovery_codes=recovery_codes,
            # MAS's own account pages, if the operator prefers them for these changes.
            account_url=self.config.homeserver.mas.account_url
            if self.config.homeserver.mas
            else None,
            enrolment=enrolment,
            errors=self.translate_errors(lang, errors or {}),
            message=self.catalogue.text(lang, message_key, **params) if message_key else "",
            kind=kind,
        )

    async def settings_page(self, request: web.Request) -> web.Response:
        return await self.settings(request)

    async def set_language(self, request: web.Request) -> web.StreamResponse:
        _, account = await self._account(request)
        language = str((await request.post()).get("language", ""))
        await self.accounts.set_language(account, language)
        response = redirect("/settings")
        response.set_cookie(LANGUAGE_COOKIE, language, path="/", samesite="Lax", max_age=31536000)
        return response

    async def sudo(self, request: web.Request) -> web.StreamResponse:
        session, account = await self._account(request)
        token = await self.accounts.sudo(
            account, session, str((await request.post()).get("password", ""))
        )
        if token is None:
            return await self.settings(
                request, message_key="page.settings.sudo_wrong", kind="error", status=401
            )
        response = redirect("/settings")
        self.cookies.set(response, SUDO_TOKEN, token, int(self.sessions.sudo_ms / 1000))
        return response

    def _needs_sudo(self, request: web.Request, session: Any) -> None:
        if not self.sessions.has_sudo(session, self.cookies.get(request, SUDO_TOKEN)):
            raise web.HTTPSeeOther("/settings")

    async def change_email(self, request: web.Request) -> web.Response:
        session, account = await self._account(request)
        self._needs_sudo(request, session)
        new_email = str((await request.post()).get("newEmail", ""))
        try:
            await self.accounts.change_email(account, new_email)
        except FieldErrors as error:
            return await self.settings(request, errors=error.errors, status=422)
        return await self.settings(request, message_key="page.settings.email_sent", email=new_email)

    async def change_password(self, request: web.Request) -> web.Response:
        session, account = await self._account(request)
        self._needs_sudo(request, session)
        try:
            outcome = await self.accounts.change_password(
                account, session, str((await request.post()).get("newPassword", ""))
            )
        except FieldErrors as error:
            return await self.settings(request, errors=error.errors, status=422)
        if outcome is MatrixOutcome.UNCHANGED:
            return await self.settings(
                request, message_key="matrix.password_unchanged", kind="error"
            )
        return await self.settings(request, message_key="page.settings.password_done")

    async def start_2fa(self, request: web.Request) -> web.Response:
        session, account = await self._account(request)
        self._needs_sudo(request, session)
        restart = (await request.post()).get("restart") == "on"
        enrolment = await self.accounts.start_2fa(account, restart=restart)
        return await self.settings(request, enrolment=enrolment)

    async def enable_2fa(self, request: web.Request) -> web.Response:
        session, account = await self._account(request)
        self._needs_sudo(request, session)
        code = str((await request.post()).get("secondFactor", ""))
        codes = await self.accounts.enable_2fa(account, session, code)
        if codes is None:
            # The same key again: the app that scanned it keeps giving the right codes.
            return await self.settings(
                request,
                message_key="page.second_factor.wrong",
                kind="error",
                enrolment=await self.accounts.pending_2fa(account),
                status=422,
            )
        return await self.settings(
            request, message_key="page.settings.tfa_enabled", recovery_codes=codes
        )

    async def new_recovery_codes(self, request: web.Request) -> web.Response:
        session, account = await self._account(request)
        self._needs_sudo(request, session)
        codes = await self.accounts.new_recovery_codes(account)
        if codes is None:
            return await self.settings(request, message_key="page.settings.tfa_off", kind="error")
        return await self.settings(
            request, message_key="page.settings.recovery_replaced", recovery_codes=codes
        )

    async def disable_2fa(self, request: web.Request) -> web.Response:
        session, account = await self._account(request)
        self._needs_sudo(request, session)
        await self.accounts.disable_2fa(account, session)
        return await self.settings(request, message_key="page.settings.tfa_disabled")

    async def personal_data(self, request: web.Request) -> web.Response:
        session, account = await self._account(request)
        self._needs_sudo(request, session)
        return personal_data_file(await personal_data(self.store.db, account))

    async def ask_to_delete_account(self, request: web.Request) -> web.Response:
        session, account = await self._account(request)
        self._needs_sudo(request, session)
        await self.deletion.ask(account)
        return await self.settings(
            request, message_key="page.settings.delete_sent", email=account.email
        )

    async def delete_account_form(self, request: web.Request) -> web.Response:
        return self._token_form(request, "delete_account", "/delete-account")

    async def delete_account(self, request: web.Request) -> web.Response:
        """No login needed: the mail's link is the proof, as for a password reset."""
        deleted = await self.deletion.confirm(str((await request.post()).get("token", "")))
        key = "page.delete_account.done" if deleted else "page.delete_account.invalid"
        return self.message(
            request,
            "page.delete_account.title",
            self.catalogue.text(self.language(request), key),
            status=200 if deleted else 400,
        )

    async def email_change_form(self, request: web.Request) -> web.Response:
        await self._account(request)
        return self._token_form(request, "email_change", "/confirm-email-change")

    async def confirm_email_change(self, request: web.Request) -> web.Response:
        _, account = await self._account(request)
        token = str((await request.post()).get("token", ""))
        status, email = await self.accounts.confirm_email_change(account, token)
        lang = self.language(request, account.language)
        key = {
            "new-email-confirmed": "page.email_change.done",
            "matrix-unchanged": "matrix.email_unchanged",
        }.get(status, "page.email_change.invalid")
        return self.message(
            request, "page.email_change.title", self.catalogue.text(lang, key, email=email)
        )

    async def home(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPSeeOther("/sign-up")


def redirect(location: str) -> web.Response:
    """A 303 that can carry cookies (a returned HTTPException is deprecated in aiohttp)."""
    return web.Response(status=303, headers={"Location": location})


def _get_paths(app: web.Application) -> frozenset[str]:
    return frozenset(
        route.resource.canonical
        for route in app.router.routes()
        if route.method == "GET" and route.resource is not None
    )


def _page_of(path: str, pages: frozenset[str]) -> str:
    """The nearest page a person can open at `path` or above it: /settings for
    /settings/2fa/enable, /login for /login/second-factor."""
    while path not in pages and path.count("/") > 1:
        path = path.rsplit("/", 1)[0]
    return path if path in pages else "/"
