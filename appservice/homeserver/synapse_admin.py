"""The client that checks usernames and creates accounts on Synapse.

It speaks the admin API with an admin token, else shared-secret registration, and turns
every answer into a value or into one of three exceptions: retry later, refused, taken.

Changing a password or an email needs the admin API. Without a configured admin token,
the shared secret (which can make server admins anyway) registers Gatekeeper's own admin
user, `homeserver.admin_user`; its token is kept encrypted and renewed when Synapse
answers 401.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp

from gatekeeper.appservice.config import HomeserverConfig
from gatekeeper.appservice.homeserver.account_backend import (
    AccountStatus,
    AccountTaken,
    Availability,
    HomeserverUnavailable,
    NewAccount,
    ProvisioningRefused,
)
from gatekeeper.appservice.matrix_ids import LOCALPART_RE, user_id, user_id_fits

log = logging.getLogger("gatekeeper.synapse")

NOT_CONFIGURED = "GK_NOT_CONFIGURED"
# Synapse's own rules for new localparts (RegistrationHandler.check_username), besides
# the grammar and length in appservice/matrix_ids.py: guests' names are all digits.
_GUEST_LOCALPART_RE = re.compile(r"^\d+$")
_DEVICE_NAME = "Gatekeeper password check"
# One device for every login of the admin user, so that renewals do not pile devices up.
_ADMIN_DEVICE_ID = "GATEKEEPER_ADMIN"
_ADMIN_DEVICE_NAME = "Gatekeeper (password and email changes)"
ADMIN_TOKEN_STATE_KEY = "synapse_admin_token"  # noqa: S105 (a key name)
# How long a token for joining a room as a new user may live (it is logged out at once).
_LOGIN_AS_MS = 60_000


_ERRCODE_AVAILABILITY = {
    "M_USER_IN_USE": Availability.TAKEN,
    "M_INVALID_USERNAME": Availability.INVALID,
    "M_EXCLUSIVE": Availability.RESERVED,
}


@dataclass(frozen=True)
class _Answer:
    status: int
    body: dict[str, Any]

    @property
    def errcode(self) -> str:
        return str(self.body.get("errcode", "M_UNKNOWN"))

    def refused(
        self, what: str, error_class: type[ProvisioningRefused] = ProvisioningRefused
    ) -> ProvisioningRefused:
        # Synapse's error texts never echo passwords or tokens; cap them all the same.
        detail = str(self.body.get("error", ""))[:200]
        message = f"{what}: HTTP {self.status} {self.errcode}" + (f": {detail}" if detail else "")
        return error_class(self.errcode, message, self.status)


def _path_part(value: str) -> str:
    return quote(value, safe="")


class SecretStore(Protocol):
    """Where the admin user's token is kept between restarts (encrypted: state.SealedState)."""

    async def get(self, key: str) -> str | None: ...

    async def set(self, key: str, value: str) -> None: ...


class SynapseAdmin:
    """One HTTP session to the homeserver; `start` before use, `close` after."""

    def __init__(
        self, config: HomeserverConfig, as_token: str, secret_store: SecretStore | None = None
    ) -> None:
        self.config = config
        self._as_token = as_token
        self._admin_token = (
            config.admin_token.get_secret_value() if config.admin_token is not None else None
        )
        self._shared_secret = (
            config.registration_shared_secret.get_secret_value()
            if config.registration_shared_secret is not None
            else None
        )
        self._timeout = aiohttp.ClientTimeout(total=config.request_timeout)
        self._session: aiohttp.ClientSession | None = None
        self._bot_user_id: str | None = None
        self._secret_store = secret_store
        self._admin_user_token: str | None = None
        self._own_admin_lock = asyncio.Lock()

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
    def admin_user_id(self) -> str:
        return self.user_id(self.config.admin_user)

    # --- usernames -------------------------------------------------------------------------

    async def username_available(self, localpart: str) -> Availability:
        if localpart == self.config.admin_user:
            # Gatekeeper's own admin user, whether or not it exists yet.
            return Availability.RESERVED
        if self._admin_token is not None:
            # Authoritative, whatever enable_registration or inhibit_user_in_use_error say.
            answer = await self._request(
                "GET",
                "/_synapse/admin/v1/username_available",
                token=self._admin_token,
                params={"username": localpart},
                what="checking a username (admin API)",
            )
            return self._availability(answer, "checking a username (admin API)")
        answer = await self._request(
            "GET",
            "/_matrix/client/v3/register/available",
            params={"username": localpart},
            what="checking a username",
        )
        if answer.status == 400:
            return self._availability(answer, "checking a username")
        if answer.status not in (200, 403):
            raise answer.refused("checking a username")
        # 403: registration is disabled (Synapse exempts nobody, appservices included).
        # 200 is no proof either: inhibit_user_in_use_error makes every name "available".
        if not self._valid_localpart(localpart):
            return Availability.INVALID
        if self.user_id(localpart) == await self._bot():
            return Availability.RESERVED
        return Availability.TAKEN if await self._exists(localpart) else Availability.AVAILABLE

    def _availability(self, answer: _Answer, what: str) -> Availability:
        if answer.status == 200:
            return Availability.AVAILABLE
        if answer.status == 400 and answer.errcode in _ERRCODE_AVAILABILITY:
            return _ERRCODE_AVAILABILITY[answer.errcode]
        raise answer.refused(what)

    def _valid_localpart(self, localpart: str) -> bool:
        # Leading "_" is only allowed by a Synapse option we cannot see; assume its default.
        return (
            bool(LOCALPART_RE.match(localpart))
            and not localpart.startswith("_")
            and not _GUEST_LOCALPART_RE.match(localpart)
            and user_id_fits(localpart, self.config.domain)
        )

    async def _bot(self) -> str:
        if self._bot_user_id is None:
            answer = await self._request(
                "GET",
                "/_matrix/client/v3/account/whoami",
                token=self._as_token,
                what="asking who the appservice is",
            )
            if answer.status != 200 or "user_id" not in answer.body:
                raise answer.refused("asking who the appservice is")
            self._bot_user_id = str(answer.body["user_id"])
        return self._bot_user_id

    async def _exists(self, localpart: str) -> bool:
        """Whether the user has a profile row, which Synapse creates for every local account.

        The display name field is asked for, not the whole profile: the whole profile is a 404
        for a user without display name and avatar, the field is then a 200 with `{}`.
        """
        user_id = self.user_id(localpart)
        what = f"looking up {user_id}"
        answer = await self._request(
            "GET",
            f"/_matrix/client/v3/profile/{_path_part(user_id)}/displayname",
            token=self._as_token,
            what=what,
        )
        if answer.status == 200:
            return True
        if answer.status == 404 and answer.errcode == "M_NOT_FOUND":
            return False
        raise answer.refused(what)

    # --- accounts --------------------------------------------------------------------------

    @property
    def can_join_users(self) -> bool:
        # The admin API's join needs a server admin: the configured one, or the admin user
        # that the shared secret makes for Gatekeeper.
        return self._admin_token is not None or self._shared_secret is not None

    async def create_account(self, account: NewAccount) -> str:
        """Create the account, or adopt the one an earlier attempt made; return its user ID.

        With a password, an existing account is ours if that password opens it. Without one
        (registration.password: after_approval), it is ours if it was made after the
        approval: the name was held for the request from sign-up on."""
        localpart = account.localpart
        # Synapse applies its other rules itself; this one keeps the user ID we compute
        # (and the shared-secret MAC, over the name as sent) equal to what Synapse stores.
        if not LOCALPART_RE.match(localpart):
            raise ProvisioningRefused(
                "M_INVALID_USERNAME", f"{localpart!r} is not a valid Matrix localpart"
            )
        if self._admin_token is not None:
            return await self._create_with_admin_api(account)
        if self._shared_secret is not None:
            return await self._create_with_shared_secret(account)
        raise self._not_configured("create accounts")

    async def _create_with_admin_api(self, account: NewAccount) -> str:
        assert self._admin_token is not None
        user_id = self.user_id(account.localpart)
        path = f"/_synapse/admin/v2/users/{_path_part(user_id)}"
        what = f"looking up {user_id} (admin API)"
        answer = await self._request("GET", path, token=self._admin_token, what=what)
        if answer.status == 200:
            return await self._adopt_if_ours(user_id, account, answer.body)
        if answer.status != 404 or answer.errcode != "M_NOT_FOUND":
            raise answer.refused(what)
        # The PUT is an upsert: it goes out only for a user that did not exist a moment ago,
        # so a retry never resets a password the user has changed since. Without a password
        # the account has none that works until the person sets one.
        body: dict[str, Any] = {}
        if account.password is not None:
            body["password"] = account.password
        if account.displayname is not None:
            body["displayname"] = account.displayname
        if account.email is not None:
            body["threepids"] = [{"medium": "email", "address": account.email}]
        what = f"creating {user_id} (admin API)"
        answer = await self._request(
            "PUT", path, token=self._admin_token, json_body=body, what=what
        )
        if answer.status == 201:
            log.info("Created %s with the admin API", user_id)
            return str(answer.body.get("name", user_id))
        if answer.status == 200:
            # Someone created it between our GET and PUT; ours by now either way.
            log.warning("%s appeared while it was being created", user_id)
            return user_id
        if answer.status == 400 and answer.errcode == "M_USER_IN_USE":
            # The same name in other letter case: Synapse matches names case-insensitively.
            raise answer.refused(what, AccountTaken)
        raise answer.refused(what)

    async def _create_with_shared_secret(self, account: NewAccount) -> str:
        user_id = self.user_id(account.localpart)
        what = f"registering {user_id} (shared secret)"
        # Shared-secret registration needs a password: without the applicant's, one that is
        # never kept and that nobody knows, which leaves the account without a usable one.
        password = account.password or secrets.token_urlsafe(32)
        # No device and access token: Gatekeeper never acts as the user.
        answer = await self._register_with_shared_secret(
            account.localpart, password, account.displayname, admin=False, what=what
        )
        if answer.status == 200:
            log.info("Created %s by shared-secret registration", user_id)
            return str(answer.body.get("user_id", user_id))
        if answer.status == 400 and answer.errcode == "M_USER_IN_USE":
            return await self._adopt_if_ours(user_id, account, None)
        raise answer.refused(what)

    async def _register_with_shared_secret(
        self, localpart: str, password: str, displayname: str | None, *, admin: bool, what: str
    ) -> _Answer:
        """`/_synapse/admin/v1/register`; an admin gets a device and token, a user none."""
        assert self._shared_secret is not None
        endpoint = "/_synapse/admin/v1/register"
        nonce_answer = await self._request("GET", endpoint, what="getting a registration nonce")
        if nonce_answer.status != 200 or "nonce" not in nonce_answer.body:
            raise nonce_answer.refused("getting a registration nonce")
        nonce = str(nonce_answer.body["nonce"])
        signed = "\x00".join((nonce, localpart, password, "admin" if admin else "notadmin"))
        mac = hmac.new(self._shared_secret.encode(), signed.encode(), hashlib.sha1).hexdigest()
        body: dict[str, Any] = {
            "nonce": nonce,
            "username": localpart,
            "password": password,
            "admin": admin,
            "mac": mac,
            "inhibit_login": not admin,
        }
        if displayname is not None:
            body["displayname"] = displayname
        answer = await self._request("POST", endpoint, json_body=body, what=what)
        if answer.status == 403:
            raise ProvisioningRefused(
                answer.errcode,
                f"{what}: HTTP 403 {answer.errcode}: Synapse rejected the MAC; check "
                "homeserver.registration_shared_secret",
                403,
            )
        return answer

    async def _adopt_if_ours(
        self, user_id: str, account: NewAccount, details: dict[str, Any] | None
    ) -> str:
        """An existing account is ours (made by an attempt whose answer was lost) if the
        applicant's password opens it, or, without one, if it was made after the approval."""
        if account.password is not None:
            ours = await self.login_works(user_id, account.password)
        else:
            if details is None:
                details = await self._user_details(user_id)
            ours = _created_ms(details) >= account.approved_at_ms
        if not ours:
            raise AccountTaken("M_USER_IN_USE", f"{user_id} already exists and is not ours")
        log.info("%s already exists and was made by an earlier attempt: adopted", user_id)
        return user_id

    async def _user_details(self, user_id: str) -> dict[str, Any]:
        """The admin API's view of an account (empty if there is none)."""
        what = f"looking up {user_id} (admin API)"
        token = await self._admin_token_for("look up accounts")
        path = f"/_synapse/admin/v2/users/{_path_part(user_id)}"
        answer = await self._request("GET", path, token=token, what=what)
        if answer.status == 401 and self._admin_token is None:
            token = await self._own_admin_token(stale=token)
            answer = await self._request("GET", path, token=token, what=what)
        if answer.status == 404:
            return {}
        if answer.status != 200:
            raise answer.refused(what)
        return answer.body

    async def login_works(self, user_id: str, password: str) -> bool:
        """Whether the password logs in; the session it opens is closed again at once."""
        body = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user_id},
            "password": password,
            "initial_device_display_name": _DEVICE_NAME,
        }
        what = f"checking the password of {user_id}"
        answer = await self._request("POST", "/_matrix/client/v3/login", json_body=body, what=what)
        if answer.status in (401, 403):
            # M_FORBIDDEN (wrong password or no such user), M_USER_DEACTIVATED, M_USER_LOCKED.
            return False
        if answer.status != 200 or "access_token" not in answer.body:
            raise answer.refused(what)
        await self._logout(user_id, str(answer.body["access_token"]), answer.body.get("device_id"))
        return True

    async def _logout(self, user_id: str, access_token: str, device_id: object) -> None:
        """Close the check's session; a device left behind would show in the user's list."""
        try:
            answer = await self._request(
                "POST",
                "/_matrix/client/v3/logout",
                token=access_token,
                json_body={},
                what=f"logging {user_id} out",
            )
            if answer.status == 200:
                return
            problem = f"HTTP {answer.status} {answer.errcode}"
        except HomeserverUnavailable as error:
            problem = str(error)
        if self._admin_token is not None and isinstance(device_id, str):
            answer = await self._request(
                "DELETE",
                f"/_synapse/admin/v2/users/{_path_part(user_id)}/devices/{_path_part(device_id)}",
                token=self._admin_token,
                what=f"deleting a device of {user_id}",
            )
            if answer.status == 200:
                return
        log.warning("Could not log out device %s of %s: %s", device_id, user_id, problem)

    async def set_password(self, user_id: str, password: str, logout_devices: bool) -> None:
        await self._admin_call(
            "set passwords",
            f"setting the password of {user_id}",
            "POST",
            f"/_synapse/admin/v1/reset_password/{_path_part(user_id)}",
            {"new_password": password, "logout_devices": logout_devices},
        )

    async def set_email(self, user_id: str, email: str) -> None:
        """Replace the account's email threepid (the PUT carries no password: safe to repeat)."""
        await self._admin_call(
            "update email addresses",
            f"setting the email of {user_id}",
            "PUT",
            f"/_synapse/admin/v2/users/{_path_part(user_id)}",
            {"threepids": [{"medium": "email", "address": email}]},
        )

    async def join_room(self, user_id: str, room_id_or_alias: str) -> None:
        """Join the user to the room, or ProvisioningRefused (403 if the room is not open
        to them). The admin API's join invites first where the room wants an invite, which
        only works if the admin is in the room and may invite; else the user joins
        itself, which works in a public room or with an invite someone else sent."""
        what = f"joining {user_id} to {room_id_or_alias}"
        try:
            await self._admin_call(
                "join users to rooms",
                what,
                "POST",
                f"/_synapse/admin/v1/join/{_path_part(room_id_or_alias)}",
                {"user_id": user_id},
            )
            return
        except ProvisioningRefused as refused:
            if refused.status != 403:
                raise
        await self._join_as(user_id, room_id_or_alias, what)

    async def _join_as(self, user_id: str, room_id_or_alias: str, what: str) -> None:
        """Join as the user, with a token of the admin API's "login as" (it makes no device)
        that lives a minute at most and is logged out at once."""
        login = await self._admin_call(
            "join users to rooms",
            f"logging in as {user_id} to join {room_id_or_alias}",
            "POST",
            f"/_synapse/admin/v1/users/{_path_part(user_id)}/login",
            {"valid_until_ms": int(time.time() * 1000) + _LOGIN_AS_MS},
        )
        token = str(login.get("access_token", ""))
        try:
            answer = await self._request(
                "POST",
                f"/_matrix/client/v3/join/{_path_part(room_id_or_alias)}",
                token=token,
                json_body={},
                what=f"{what} (as {user_id})",
            )
        finally:
            await self._logout(user_id, token, None)
        if answer.status != 200:
            raise answer.refused(f"{what} (as {user_id})")

    async def set_suspended(self, user_id: str, suspended: bool) -> None:
        await self._admin_call(
            "suspend accounts",
            f"{'suspending' if suspended else 'unsuspending'} {user_id}",
            "PUT",
            f"/_synapse/admin/v1/suspend/{_path_part(user_id)}",
            {"suspend": suspended},
        )

    async def deactivate(self, user_id: str, erase: bool) -> None:
        await self._admin_call(
            "deactivate accounts",
            f"deactivating {user_id}",
            "POST",
            f"/_synapse/admin/v1/deactivate/{_path_part(user_id)}",
            {"erase": erase},
        )

    async def account_status(self, user_id: str) -> AccountStatus:
        details = await self._user_details(user_id)
        if not details:
            return AccountStatus(exists=False)
        return AccountStatus(
            exists=True,
            suspended=bool(details.get("suspended")),
            deactivated=bool(details.get("deactivated")),
        )

    async def _admin_call(
        self, task: str, what: str, method: str, path: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        """One admin-API call that needs an admin's token and must answer 200; its answer."""
        token = await self._admin_token_for(task)
        answer = await self._request(method, path, token=token, json_body=body, what=what)
        if answer.status == 401 and self._admin_token is None:
            # Our admin user's session ended (logged out, device deleted): log in again.
            token = await self._own_admin_token(stale=token)
            answer = await self._request(method, path, token=token, json_body=body, what=what)
        if answer.status != 200:
            raise answer.refused(what)
        return answer.body

    async def _admin_token_for(self, task: str) -> str:
        """The configured admin token, else the token of Gatekeeper's own admin user."""
        if self._admin_token is not None:
            return self._admin_token
        if self._shared_secret is None:
            raise self._not_configured(task)
        return await self._own_admin_token()

    async def _own_admin_token(self, stale: str | None = None) -> str:
        """The admin user's token: remembered, else stored, else from a new login.

        `stale` is a token Synapse has just refused; it is never handed out again."""
        async with self._own_admin_lock:
            token = self._admin_user_token
            if token is None or token == stale:
                key = f"{ADMIN_TOKEN_STATE_KEY} {self.admin_user_id}"
                stored = await self._secret_store.get(key) if self._secret_store else None
                # Another worker may have logged in again already; else this one does.
                if stored is not None and stored != stale:
                    token = stored
                else:
                    token = await self._log_in_own_admin()
                    if self._secret_store is not None:
                        await self._secret_store.set(key, token)
                self._admin_user_token = token
            return token

    def admin_user_password(self) -> str:
        """The admin user's password, derived from the shared secret: nothing more to keep,
        and no weaker than that secret, which can make server admins anyway."""
        assert self._shared_secret is not None
        message = f"gatekeeper admin user\x00{self.admin_user_id}".encode()
        return hmac.new(self._shared_secret.encode(), message, hashlib.sha256).hexdigest()

    async def _log_in_own_admin(self) -> str:
        user_id = self.admin_user_id
        what = f"logging in as {user_id}"
        body = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user_id},
            "password": self.admin_user_password(),
            "device_id": _ADMIN_DEVICE_ID,
            "initial_device_display_name": _ADMIN_DEVICE_NAME,
        }
        answer = await self._request("POST", "/_matrix/client/v3/login", json_body=body, what=what)
        if answer.status == 200 and "access_token" in answer.body:
            return str(answer.body["access_token"])
        if answer.status != 403:
            raise answer.refused(what)
        # M_FORBIDDEN: no such user yet (or not ours, which registering finds out).
        what = f"registering {user_id}, Gatekeeper's server admin (shared secret)"
        answer = await self._register_with_shared_secret(
            self.config.admin_user,
            self.admin_user_password(),
            "Gatekeeper",
            admin=True,
            what=what,
        )
        if answer.status == 200 and "access_token" in answer.body:
            log.info("Registered %s as Gatekeeper's server admin", user_id)
            return str(answer.body["access_token"])
        if answer.status == 400 and answer.errcode == "M_USER_IN_USE":
            raise ProvisioningRefused(
                "GK_ADMIN_USER",
                f"{what}: {user_id} exists but does not open with the password derived from "
                "homeserver.registration_shared_secret; set homeserver.admin_user to an unused "
                "name, or set homeserver.admin_token",
                400,
            )
        raise answer.refused(what)

    def _not_configured(self, task: str) -> ProvisioningRefused:
        return ProvisioningRefused(
            NOT_CONFIGURED,
            f"to {task}, set homeserver.registration_shared_secret or homeserver.admin_token",
        )

    # --- HTTP ------------------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        what: str,
        token: str | None = None,
        params: dict[str, str] | None = None,
        json_body: dict[str, Any] | None = None,
    ) -> _Answer:
        """One call; 2xx-4xx come back as answers, everything worth retrying is raised."""
        if self._session is None:
            raise RuntimeError("SynapseAdmin.start() was not called")
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        try:
            async with self._session.request(
                method,
                self.config.address + path,
                params=params,
                json=json_body,
                headers=headers,
                timeout=self._timeout,
                # A redirect could carry the token elsewhere; the address must be the API itself.
                allow_redirects=False,
            ) as response:
                status = response.status
                text = await response.text(errors="replace")
                retry_after_header = response.headers.get("Retry-After")
        except TimeoutError:
            raise HomeserverUnavailable(
                f"{what}: no answer within {self.config.request_timeout:g} s"
            ) from None
        except aiohttp.ClientError as error:
            # Chained to nothing: aiohttp errors may hold the request's headers (the token).
            raise HomeserverUnavailable(f"{what}: {type(error).__name__}: {error}") from None
        parsed = _json_object(text)
        body = parsed if parsed is not None else {}
        log.debug("%s %s → HTTP %d", method, path.split("?")[0], status)
        if status == 429 or status >= 500:
            errcode = body.get("errcode", "")
            raise HomeserverUnavailable(
                f"{what}: HTTP {status}" + (f" {errcode}" if errcode else ""),
                retry_after=_retry_after(body, retry_after_header),
            )
        if 300 <= status < 400:
            raise ProvisioningRefused(
                "GK_REDIRECT",
                f"{what}: HTTP {status} redirect; set homeserver.address to the client API itself",
                status,
            )
        if 200 <= status < 300 and parsed is None:
            raise ProvisioningRefused(
                "GK_NOT_MATRIX",
                f"{what}: HTTP {status} without a JSON answer; is homeserver.address a homeserver?",
                status,
            )
        return _Answer(status, body)


def _created_ms(details: dict[str, Any]) -> int:
    """The account's creation time in ms (Synapse's admin API gives it in ms or, in older
    versions, in seconds); 0 if unknown, which never counts as ours."""
    created = details.get("creation_ts")
    if not isinstance(created, int):
        return 0
    return created * 1000 if created < 10**11 else created


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes
        return None
    return data if isinstance(data, dict) else None


def _retry_after(body: dict[str, Any], header: str | None) -> float | None:
    milliseconds = body.get("retry_after_ms")
    if isinstance(milliseconds, int | float) and not isinstance(milliseconds, bool):
        return float(milliseconds) / 1000
    if header is not None and header.strip().isdigit():
        return float(header.strip())
    return None
