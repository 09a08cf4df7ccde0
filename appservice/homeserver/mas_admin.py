"""The account backend for a Synapse that delegates its accounts to matrix-authentication-
service (MAS): MAS's admin API, with an OAuth 2.0 client-credentials token.

Users are made in MAS, which provisions them on Synapse itself; Synapse's own registration
and admin endpoints for accounts are off once MAS is on. Every answer becomes a value or
one of the three exceptions of `account_backend`, as in `synapse_admin`.

The client (homeserver.mas.client_id/client_secret) must be listed in MAS's
`policy.data.admin_clients` to get the `urn:mas:admin` scope.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import aiohttp

from gatekeeper.appservice.config import HomeserverConfig, MasConfig
from gatekeeper.appservice.homeserver.account_backend import (
    AccountStatus,
    AccountTaken,
    Availability,
    HomeserverUnavailable,
    NewAccount,
    ProvisioningRefused,
)
from gatekeeper.appservice.homeserver.synapse_admin import SecretStore
from gatekeeper.appservice.matrix_ids import LOCALPART_RE, user_id, user_id_fits

log = logging.getLogger("gatekeeper.mas")

API = "/api/admin/v1"
ADMIN_SCOPE = "urn:mas:admin"
CLIENT_ERRCODE = "GK_MAS_CLIENT"
REFUSED_ERRCODE = "GK_MAS_REFUSED"
NOT_CONFIGURED = "GK_NOT_CONFIGURED"
# MAS answers without expires_in are not expected; its default access-token lifetime.
_DEFAULT_TOKEN_SECONDS = 300.0
# A token is renewed this long before it expires, so a call never carries one that lapses
# on the way (at most a tenth of its lifetime, for very short ones).
_RENEW_EARLY_SECONDS = 30.0
# Sessions listed per page when logging a user out everywhere (MAS's default is 10).
_PAGE_SIZE = 100
# A user with more sessions than this is surely not a person; stop rather than loop on.
_MAX_PAGES = 50
# The sessions that log a user in: Matrix clients with a login token (compat), with MAS's
# OAuth 2.0 (oauth2), and MAS's own web pages (user). Personal sessions are tokens an admin
# issued and are left alone.
_SESSION_KINDS = ("compat-sessions", "oauth2-sessions", "user-sessions")
_RFC3339 = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class _Answer:
    status: int
    body: dict[str, Any]
    text: str

    def detail(self, *secrets: str | None) -> str:
        """MAS's error text: the titles of its `errors`, or OAuth 2.0's `error` and
        `error_description`, else the body's text (axum's own rejections are plain text)."""
        errors = self.body.get("errors")
        if isinstance(errors, list):
            titles = [e.get("title") for e in errors if isinstance(e, dict)]
            text = ": ".join(t for t in titles if isinstance(t, str))
        elif isinstance(self.body.get("error"), str):
            description = self.body.get("error_description")
            text = self.body["error"] + (f": {description}" if isinstance(description, str) else "")
        else:
            text = self.text.strip()
        # MAS's texts name values it was sent; a password must not reach a log that way.
        for secret in secrets:
            if secret:
                text = text.replace(secret, "…")
        return " ".join(text.split())[:200]

    def refused(
        self,
        what: str,
        errcode: str = REFUSED_ERRCODE,
        error_class: type[ProvisioningRefused] = ProvisioningRefused,
        secret: str | None = None,
    ) -> ProvisioningRefused:
        detail = self.detail(secret)
        message = f"{what}: HTTP {self.status}" + (f": {detail}" if detail else "")
        return error_class(errcode, message, self.status)


def _path_part(value: str) -> str:
    return quote(value, safe="")


class MasAdmin:
    """One HTTP session to MAS; `start` before use, `close` after."""

    def __init__(
        self,
        config: HomeserverConfig,
        mas: MasConfig,
        secret_store: SecretStore | None = None,
    ) -> None:
        self.config = config
        self.mas = mas
        # The admin token is kept in memory only, not in the secret store: it lives minutes
        # (MAS's default is 5), a new one costs one request, and a stored one would mostly
        # be found expired after a restart. Each worker process holds its own.
        self._timeout = aiohttp.ClientTimeout(total=config.request_timeout)
        self._session: aiohttp.ClientSession | None = None
        self._token: str | None = None
        self._token_renew_at = 0.0
        self._token_lock = asyncio.Lock()

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def user_id(self, localpart: str) -> str:
        return user_id(localpart, self.config.domain)

    @property
    def can_join_users(self) -> bool:
        # MAS's admin API has no room membership; the bot invites newcomers instead.
        return False

    # --- usernames -------------------------------------------------------------------------

    def _valid_localpart(self, localpart: str) -> bool:
        # MAS's own rule for new users (admin/v1/users/add.rs): Synapse's characters, no
        # leading "_"; plus the length of the whole user ID.
        return (
            bool(LOCALPART_RE.match(localpart))
            and not localpart.startswith("_")
            and user_id_fits(localpart, self.config.domain)
        )

    async def username_available(self, localpart: str) -> Availability:
        if not self._valid_localpart(localpart):
            return Availability.INVALID
        user = await self._find_user(localpart, f"checking the username {localpart!r}")
        return Availability.AVAILABLE if user is None else Availability.TAKEN

    # --- accounts --------------------------------------------------------------------------

    async def create_account(self, account: NewAccount) -> str:
        """Create the account, or adopt the one an earlier attempt made; return its user ID.

        An existing user is ours if MAS made it at or after the approval: the name was held
        for the request from sign-up on, and an answer lost in a crash leaves exactly that.
        Adoption goes on with the password and email steps, so a crash anywhere between
        them converges on the next try."""
        localpart = account.localpart
        user_id = self.user_id(localpart)
        if not self._valid_localpart(localpart):
            raise ProvisioningRefused(
                "M_INVALID_USERNAME", f"{localpart!r} is not a username MAS accepts"
            )
        user = await self._find_user(localpart, f"looking up {user_id}")
        if user is None:
            user = await self._add_user(account, user_id)
        else:
            self._adopt_if_ours(user_id, account, user)
        mas_id = _resource_id(user, f"looking up {user_id}")
        if account.password is not None:
            await self._set_password(mas_id, user_id, account.password)
        if account.email:
            await self._add_email(mas_id, user_id, account.email)
        return user_id

    async def _add_user(self, account: NewAccount, user_id: str) -> dict[str, Any]:
        what = f"creating {user_id}"
        body: dict[str, Any] = {"username": account.localpart}
        if account.displayname is not None:
            body["displayname"] = account.displayname
        answer = await self._call("POST", f"{API}/users", what=what, json_body=body)
        if answer.status == 201:
            log.info("Created %s in MAS", user_id)
            return _data(answer, what)
        if answer.status == 409:
            # "User already exists" (made since the look-up: ours or not, as any existing
            # user), or "Username is reserved by the homeserver" (an appservice's namespace,
            # or a Synapse user MAS does not know): taken either way.
            user = await self._find_user(account.localpart, f"looking up {user_id}")
            if user is not None:
                self._adopt_if_ours(user_id, account, user)
                return user
            raise answer.refused(what, "M_USER_IN_USE", AccountTaken)
        if answer.status == 400:
            raise answer.refused(what, "M_INVALID_USERNAME")
        raise answer.refused(what)

    def _adopt_if_ours(self, user_id: str, account: NewAccount, user: dict[str, Any]) -> None:
        created_ms = _rfc3339_ms(_attributes(user).get("created_at"))
        # An unreadable date never counts as ours. Both clocks are assumed to agree (MAS
        # dates the user, Gatekeeper the approval), as with Synapse's creation_ts.
        if created_ms is None or created_ms < account.approved_at_ms:
            raise AccountTaken(
                "M_USER_IN_USE", f"{user_id} already exists in MAS and was made before approval"
            )
        log.info("%s already exists in MAS and was made by an earlier attempt: adopted", user_id)

    async def set_password(self, user_id: str, password: str, logout_devices: bool) -> None:
        mas_id = await self._mas_id(user_id)
        await self._set_password(mas_id, user_id, password)
        if logout_devices:
            await self._finish_sessions(mas_id, user_id)

    async def _set_password(self, mas_id: str, user_id: str, password: str) -> None:
        what = f"setting the password of {user_id}"
        # Gatekeeper applied its own password rules at sign-up or reset; MAS's complexity
        # check, configured apart, could refuse an account that is already approved.
        answer = await self._call(
            "POST",
            f"{API}/users/{_path_part(mas_id)}/set-password",
            what=what,
            json_body={"password": password, "skip_password_check": True},
        )
        if answer.status == 204:
            return
        if answer.status == 403:
            raise ProvisioningRefused(
                "GK_MAS_PASSWORDS",
                f"{what}: HTTP 403: MAS has password login off (passwords.enabled); turn it "
                "on, or let people set their password in MAS",
                403,
            )
        raise answer.refused(what, secret=password)

    async def _finish_sessions(self, mas_id: str, user_id: str) -> None:
        """Log the user out everywhere: finish every active session MAS holds for them.
        (MAS's set-password leaves sessions alone; finishing a compat or OAuth 2.0 session
        also removes its device from Synapse.)"""
        for kind in _SESSION_KINDS:
            what = f"logging {user_id} out ({kind})"
            async for session in self._list(
                f"{API}/{kind}", {"filter[user]": mas_id, "filter[status]": "active"}, what
            ):
                session_id = _resource_id(session, what)
                answer = await self._call(
                    "POST", f"{API}/{kind}/{_path_part(session_id)}/finish", what=what
                )
                # 400: finished meanwhile (by the user, or another worker); 404: gone.
                if answer.status not in (200, 400, 404):
                    raise answer.refused(what)

    async def set_email(self, user_id: str, email: str) -> None:
        """Add the new address, then delete the others: a retry after a crash in between
        finds the new one there and deletes what is left."""
        mas_id = await self._mas_id(user_id)
        await self._add_email(mas_id, user_id, email)
        what = f"removing the old email addresses of {user_id}"
        old = [
            item
            async for item in self._list(f"{API}/user-emails", {"filter[user]": mas_id}, what)
            if str(_attributes(item).get("email", "")).lower() != email.lower()
        ]
        for item in old:
            answer = await self._call(
                "DELETE", f"{API}/user-emails/{_path_part(_resource_id(item, what))}", what=what
            )
            if answer.status not in (204, 404):  # 404: deleted meanwhile
                raise answer.refused(what)

    async def _add_email(self, mas_id: str, user_id: str, email: str) -> None:
        what = f"adding an email address to {user_id}"
        answer = await self._call(
            "POST", f"{API}/user-emails", what=what, json_body={"user_id": mas_id, "email": email}
        )
        if answer.status == 201:
            return
        if answer.status == 409:
            # MAS answers 409 for an address in use by anyone, this user included.
            what_owner = f"finding who has the email address of {user_id}"
            async for item in self._list(
                f"{API}/user-emails", {"filter[email]": email}, what_owner
            ):
                if _attributes(item).get("user_id") == mas_id:
                    return
            raise ProvisioningRefused(
                "M_THREEPID_IN_USE", f"{what}: HTTP 409: another MAS user has this address", 409
            )
        raise answer.refused(what)

    async def join_room(self, user_id: str, room_id_or_alias: str) -> None:
        raise ProvisioningRefused(
            NOT_CONFIGURED,
            f"joining {user_id} to {room_id_or_alias}: MAS cannot join users to rooms; the "
            "bot invites them instead",
        )

    async def set_suspended(self, user_id: str, suspended: bool) -> None:
        mas_id = await self._mas_id(user_id)
        action = "lock" if suspended else "unlock"
        what = f"{'locking' if suspended else 'unlocking'} {user_id}"
        answer = await self._call("POST", f"{API}/users/{_path_part(mas_id)}/{action}", what=what)
        if answer.status != 200:
            raise answer.refused(what)

    async def deactivate(self, user_id: str, erase: bool) -> None:
        mas_id = await self._mas_id(user_id)
        what = f"deactivating {user_id}"
        # MAS asks Synapse to erase unless told to skip it; say which, whatever its default.
        answer = await self._call(
            "POST",
            f"{API}/users/{_path_part(mas_id)}/deactivate",
            what=what,
            json_body={"skip_erase": not erase},
        )
        if answer.status != 200:
            raise answer.refused(what)

    async def account_status(self, user_id: str) -> AccountStatus:
        user = await self._find_user(self._localpart(user_id), f"looking up {user_id}")
        if user is None:
            return AccountStatus(exists=False)
        attributes = _attributes(user)
        return AccountStatus(
            exists=True,
            suspended=attributes.get("locked_at") is not None,
            deactivated=attributes.get("deactivated_at") is not None,
        )

    # --- users -----------------------------------------------------------------------------

    def _localpart(self, user_id: str) -> str:
        suffix = f":{self.config.domain}"
        if not (user_id.startswith("@") and user_id.endswith(suffix)):
            raise ProvisioningRefused(
                "M_INVALID_PARAM", f"{user_id} is not a user of {self.config.domain}"
            )
        return user_id[1 : -len(suffix)]

    async def _find_user(self, localpart: str, what: str) -> dict[str, Any] | None:
        """MAS's user resource for a username, None if there is none."""
        answer = await self._call(
            "GET", f"{API}/users/by-username/{_path_part(localpart)}", what=what
        )
        if answer.status == 404:
            return None
        if answer.status != 200:
            raise answer.refused(what)
        return _data(answer, what)

    async def _mas_id(self, user_id: str) -> str:
        what = f"looking up {user_id}"
        user = await self._find_user(self._localpart(user_id), what)
        if user is None:
            raise ProvisioningRefused("M_NOT_FOUND", f"{what}: MAS has no such user", 404)
        return _resource_id(user, what)

    async def _list(
        self, path: str, filters: dict[str, str], what: str
    ) -> AsyncIterator[dict[str, Any]]:
        """Every item of a paginated list, page after page by the last item's ID."""
        params = {**filters, "page[first]": str(_PAGE_SIZE)}
        for _ in range(_MAX_PAGES):
            answer = await self._call("GET", path, what=what, params=params)
            if answer.status != 200:
                raise answer.refused(what)
            items = answer.body.get("data")
            if not isinstance(items, list):
                raise _not_mas(what, answer.status)
            for item in items:
                if not isinstance(item, dict):
                    raise _not_mas(what, answer.status)
                yield item
            links = answer.body.get("links")
            if not items or not isinstance(links, dict) or not links.get("next"):
                return
            params = {**params, "page[after]": _resource_id(items[-1], what)}
        log.warning("%s: stopped after %d pages of %d", what, _MAX_PAGES, _PAGE_SIZE)

    # --- the admin token -------------------------------------------------------------------

    async def _admin_token(self, stale: str | None = None) -> str:
        """The current admin token, or a new one when it is (nearly) expired or is `stale`:
        one MAS has just answered 401 to."""
        async with self._token_lock:
            token = self._token
            if token is None or token == stale or time.monotonic() >= self._token_renew_at:
                token = await self._new_admin_token()
            return token

    async def _new_admin_token(self) -> str:
        what = "getting an admin token from MAS (client credentials)"
        answer = await self._request(
            "POST",
            "/oauth2/token",
            what=what,
            form={"grant_type": "client_credentials", "scope": ADMIN_SCOPE},
            basic=(self.mas.client_id, self.mas.client_secret.get_secret_value()),
        )
        secret = self.mas.client_secret.get_secret_value()
        if answer.status in (400, 401, 403):
            # invalid_client (id or secret wrong), unauthorized_client (no client_credentials
            # grant), invalid_scope (not an admin client).
            raise ProvisioningRefused(
                CLIENT_ERRCODE,
                f"{what}: HTTP {answer.status}: {answer.detail(secret) or 'refused'}; check "
                "homeserver.mas.client_id and client_secret, and that MAS lists the client in "
                "policy.data.admin_clients with the client_credentials grant",
                answer.status,
            )
        token = answer.body.get("access_token")
        if answer.status != 200 or not isinstance(token, str) or not token:
            raise _not_mas(what, answer.status)
        expires_in = answer.body.get("expires_in")
        lifetime = (
            float(expires_in)
            if isinstance(expires_in, int | float) and not isinstance(expires_in, bool)
            else _DEFAULT_TOKEN_SECONDS
        )
        self._token = token
        self._token_renew_at = (
            time.monotonic() + lifetime - min(_RENEW_EARLY_SECONDS, lifetime / 10)
        )
        log.info("Got an admin token from MAS, valid for %g s", lifetime)
        return token

    # --- HTTP ------------------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        *,
        what: str,
        params: dict[str, str] | None = None,
        json_body: dict[str, Any] | None = None,
    ) -> _Answer:
        """One admin-API call; a 401 (token expired or revoked) gets a new token and one
        more try."""
        token = await self._admin_token()
        answer = await self._request(
            method, path, what=what, token=token, params=params, json_body=json_body
        )
        if answer.status != 401:
            return answer
        token = await self._admin_token(stale=token)
        answer = await self._request(
            method, path, what=what, token=token, params=params, json_body=json_body
        )
        if answer.status == 401:
            raise ProvisioningRefused(
                CLIENT_ERRCODE,
                f"{what}: HTTP 401 with a new admin token: {answer.detail() or 'refused'}; "
                "check that MAS lists homeserver.mas.client_id in policy.data.admin_clients",
                401,
            )
        return answer

    async def _request(
        self,
        method: str,
        path: str,
        *,
        what: str,
        token: str | None = None,
        params: dict[str, str] | None = None,
        json_body: dict[str, Any] | None = None,
        form: dict[str, str] | None = None,
        basic: tuple[str, str] | None = None,
    ) -> _Answer:
        """One request; 2xx-4xx come back as answers, everything worth retrying is raised.
        `token` is sent as a bearer token, `basic` (client ID and secret) as HTTP Basic
        (client_secret_basic: MAS does not form-decode them, so neither is encoded)."""
        if self._session is None:
            raise RuntimeError("MasAdmin.start() was not called")
        headers = {}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        elif basic is not None:
            credentials = base64.b64encode(":".join(basic).encode()).decode()
            headers["Authorization"] = f"Basic {credentials}"
        try:
            async with self._session.request(
                method,
                self.mas.url + path,
                params=params,
                json=json_body,
                data=form,
                headers=headers,
                timeout=self._timeout,
                # A redirect could carry the token or the client secret elsewhere.
                allow_redirects=False,
            ) as response:
                status = response.status
                text = await response.text(errors="replace")
                retry_after_header = response.headers.get("Retry-After")
        except TimeoutError:
            raise HomeserverUnavailable(
                f"{what}: MAS gave no answer within {self.config.request_timeout:g} s"
            ) from None
        except aiohttp.ClientError as error:
            # Chained to nothing: aiohttp errors may hold the request's headers (the token).
            raise HomeserverUnavailable(f"{what}: {type(error).__name__}: {error}") from None
        parsed = _json_object(text)
        log.debug("%s %s → HTTP %d", method, path, status)
        answer = _Answer(status, parsed if parsed is not None else {}, text)
        if status == 429 or status >= 500:
            detail = answer.detail()
            raise HomeserverUnavailable(
                f"{what}: MAS answered HTTP {status}" + (f": {detail}" if detail else ""),
                retry_after=_retry_after(retry_after_header),
            )
        if 300 <= status < 400:
            raise ProvisioningRefused(
                "GK_REDIRECT",
                f"{what}: HTTP {status} redirect; set homeserver.mas.url to MAS itself",
                status,
            )
        if 200 <= status < 300 and status != 204 and parsed is None:
            raise _not_mas(what, status)
        return answer


def _not_mas(what: str, status: int) -> ProvisioningRefused:
    return ProvisioningRefused(
        "GK_NOT_MAS",
        f"{what}: HTTP {status} without the expected JSON; is homeserver.mas.url MAS?",
        status,
    )


def _data(answer: _Answer, what: str) -> dict[str, Any]:
    data = answer.body.get("data")
    if not isinstance(data, dict):
        raise _not_mas(what, answer.status)
    return data


def _resource_id(resource: dict[str, Any], what: str) -> str:
    resource_id = resource.get("id")
    if not isinstance(resource_id, str) or not resource_id:
        raise ProvisioningRefused("GK_NOT_MAS", f"{what}: a resource without an ID; is it MAS?")
    return resource_id


def _attributes(resource: dict[str, Any]) -> dict[str, Any]:
    attributes = resource.get("attributes")
    return attributes if isinstance(attributes, dict) else {}


def _rfc3339_ms(value: object) -> int | None:
    """Milliseconds since the epoch of an RFC 3339 date, None if it is not one. Fractions
    are cut to microseconds, as Python's parser wants them."""
    if not isinstance(value, str):
        return None
    match = _RFC3339.match(value)
    if match is None:
        return None
    date, clock, fraction, zone = match.groups()
    fraction = (fraction or "")[:7]
    zone = "+00:00" if zone in ("Z", "z") else zone
    try:
        moment = datetime.fromisoformat(f"{date}T{clock}{fraction}{zone}")
    except ValueError:
        return None
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _retry_after(header: str | None) -> float | None:
    if header is not None and header.strip().isdigit():
        return float(header.strip())
    return None
