"""A stand-in for matrix-authentication-service (MAS): its OAuth 2.0 token endpoint and the
part of its admin API that Gatekeeper uses, kept in memory, for tests.

No MAS can run here (it ships as a Rust binary and a container image only), so the stand-in
holds itself to MAS's published OpenAPI document, harness/mas/admin-api.json: every request
to /api/admin/v1/ is validated against it with openapi-core (path, method, bearer token,
path and query parameters, body), and one that MAS would refuse gets the answer MAS gives,
in MAS's order of checks (read from its handlers: token, then path, query, body):

- unknown path 404, known path with another method 405;
- no or a malformed `Authorization` header 400; an unknown, expired or revoked token, or
  one without the `urn:mas:admin` scope, 401;
- a path or query parameter against the document 400;
- a body that is not JSON 400, not sent as JSON 415, against its schema 422 (axum's Json
  extractor, as plain text);
- values MAS checks itself: an invalid username, email address or a weak password, 400.

Those go into `refused`. Answers that depend on the data (no such user 404, already exists
409, session already finished 400) are MAS's ordinary answers and are only in `calls`.
Every answer the stand-in gives is validated against the document as well. What MAS would
accept but silently ignore (a body field or query parameter the document does not have: a
typo in a filter would make MAS list everything) goes into `problems`, with anything the
stand-in itself got wrong; a test should end with both lists empty.

Faults: `fail_next(operation, ...)` answers the next calls of an operation (an operationId
of the document, or "token") with 503 or another status; `drop_answers(operation)` carries
the next call out, then drops the connection before the answer, as in a crash between
"made in MAS" and "recorded by Gatekeeper". `expire_tokens()` makes every issued token
expired, to test renewal.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import ipaddress
import json
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlencode

from aiohttp import web
from jsonschema_path import SchemaPath
from openapi_core import Config, OpenAPI
from openapi_core.datatypes import RequestParameters
from openapi_core.deserializing.media_types.exceptions import MediaTypeDeserializeError
from openapi_core.security.exceptions import SecurityProviderError
from openapi_core.security.factories import SecurityProviderFactory
from openapi_core.security.providers import BaseProvider
from openapi_core.templating.media_types.exceptions import MediaTypeNotFound
from openapi_core.templating.paths.exceptions import OperationNotFound, PathError
from openapi_core.templating.paths.finders import APICallPathFinder
from openapi_core.validation.request.exceptions import (
    MissingRequiredRequestBody,
    ParameterValidationError,
    RequestBodyValidationError,
    SecurityValidationError,
)

SPEC_FILE = Path(__file__).parent / "mas" / "admin-api.json"
ADMIN_PREFIX = "/api/admin/v1/"
ADMIN_SCOPE = "urn:mas:admin"
TOKEN_OPERATION = "token"  # noqa: S105 (an operation name)
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# MAS's rule for new usernames (admin/v1/users/add.rs).
_USERNAME_RE = re.compile(r"^[a-z0-9=_\-./+]{1,255}$")
# MAS parses addresses with lettre; this is the shape it requires, not all of its rules.
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s.][^@\s]*$")
# MAS scores passwords with zxcvbn (minimum_complexity 3 by default); the stand-in's rule
# is only a length, enough to tell whether a client asked to skip the check.
_MIN_PASSWORD_LENGTH = 8
_DEFAULT_PAGE_SIZE = 10
_PAGINATION = ("page[before]", "page[after]", "page[first]", "page[last]", "count")
_SESSION_KINDS = {
    # list and finish operations, resource type, name in MAS's messages
    "compat-sessions": ("listCompatSessions", "finishCompatSession", "Compatibility session"),
    "oauth2-sessions": ("listOAuth2Sessions", "finishOAuth2Session", "OAuth 2.0 session"),
    "user-sessions": ("listUserSessions", "finishUserSession", "User session"),
}


def new_ulid(at: datetime | None = None) -> str:
    """A ULID: 48 bits of milliseconds, 80 random bits, in Crockford's base 32."""
    ms = int((at or _now()).timestamp() * 1000)
    value = (ms << 80) | secrets.randbits(80)
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -5, -5))


def rfc3339(moment: datetime) -> str:
    """As MAS writes dates (chrono's RFC 3339, in UTC)."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _now() -> datetime:
    return datetime.now(UTC)


def _optional_date(moment: datetime | None) -> str | None:
    return None if moment is None else rfc3339(moment)


@functools.cache
def load_spec() -> dict[str, Any]:
    spec: dict[str, Any] = json.loads(SPEC_FILE.read_text())
    # The published document gives its server variable `"description": null`, which
    # OpenAPI 3.1's schema forbids; openapi-core checks the document and would refuse it
    # whole. Only that is dropped, in memory; the file stays as published.
    for server in spec.get("servers", []):
        for variable in server.get("variables", {}).values():
            if "description" in variable and variable["description"] is None:
                del variable["description"]
    # Its security requirements name a scheme `bearer`, but the scheme is defined as `token`
    # (`type: http, scheme: bearer`); openapi-core takes an undefined scheme as satisfied,
    # which would let a request without a token through. Each such name is pointed at the
    # defined scheme of that HTTP scheme.
    schemes = spec["components"]["securitySchemes"]
    by_http_scheme = {
        scheme.get("scheme"): name
        for name, scheme in schemes.items()
        if scheme.get("type") == "http"
    }
    for requirements in [spec.get("security", [])] + [
        operation.get("security", [])
        for path in spec["paths"].values()
        for operation in path.values()
    ]:
        for requirement in requirements:
            for name in [name for name in requirement if name not in schemes]:
                requirement[by_http_scheme[name]] = requirement.pop(name)
    return spec


class _BearerProvider(BaseProvider):
    """MAS's `oauth2` scheme, which openapi-core does not check: its client-credentials
    token arrives as a bearer token, like the `bearer` scheme's."""

    def __call__(self, parameters: RequestParameters) -> Any:
        scheme, _, token = str(parameters.header.get("Authorization", "")).partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise SecurityProviderError("no bearer token")
        return token.strip()


class _SecurityProviders(SecurityProviderFactory):
    def create(self, scheme: SchemaPath) -> Any:
        if (scheme / "type").read_str() == "oauth2":
            return _BearerProvider(scheme)
        return super().create(scheme)


def _openapi(forbid_unknown_fields: bool) -> OpenAPI:
    config = Config(
        security_provider_factory=_SecurityProviders(),
        # Formats of MAS's document that jsonschema does not know.
        extra_format_validators={"uint": _is_uint, "ip": _is_ip},
        extra_format_unmarshallers={"uint": int},
        additional_properties_default_policy="forbid" if forbid_unknown_fields else "allow",
    )
    return OpenAPI.from_dict(load_spec(), config=config)


@functools.cache
def _validators() -> tuple[OpenAPI, OpenAPI]:
    """As MAS reads requests (unknown fields ignored), and strict (unknown fields flagged)."""
    return _openapi(False), _openapi(True)


class _SpecRequest:
    """openapi-core's Request protocol over an aiohttp request. The path is the raw one, so
    that a username holding "/" (sent as %2F) stays one path segment, as in MAS's router."""

    def __init__(self, request: web.Request, body: bytes | None) -> None:
        self.host_url = f"{request.url.scheme}://{request.url.host}:{request.url.port}"
        self.path = request.rel_url.raw_path
        self.method = request.method.lower()
        self.body = body
        self.content_type = request.content_type if body is not None else ""
        self.parameters = RequestParameters(
            query=request.query, header=request.headers, cookie=request.cookies
        )


class _SpecResponse:
    def __init__(self, status: int, data: bytes, content_type: str) -> None:
        self.status_code = status
        self.data = data
        self.content_type = content_type
        self.headers: dict[str, str] = {}


@dataclass
class MasUser:
    id: str
    username: str
    created_at: datetime
    locked_at: datetime | None = None
    deactivated_at: datetime | None = None
    admin: bool = False
    legacy_guest: bool = False
    displayname: str | None = None
    # The last password set, in the clear so that tests can read it (MAS keeps a hash).
    password: str | None = None
    passwords_set: int = 0
    # What the last deactivation asked of the homeserver.
    erase_requested: bool | None = None

    def attributes(self) -> dict[str, Any]:
        return {
            "username": self.username,
            "created_at": rfc3339(self.created_at),
            "locked_at": _optional_date(self.locked_at),
            "deactivated_at": _optional_date(self.deactivated_at),
            "admin": self.admin,
            "legacy_guest": self.legacy_guest,
        }


@dataclass
class MasEmail:
    id: str
    user_id: str
    email: str
    created_at: datetime

    def attributes(self) -> dict[str, Any]:
        return {
            "created_at": rfc3339(self.created_at),
            "user_id": self.user_id,
            "email": self.email,
        }


@dataclass
class MasSession:
    id: str
    kind: str  # "compat-sessions", "oauth2-sessions" or "user-sessions"
    user_id: str
    created_at: datetime
    finished_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.finished_at is None

    def attributes(self) -> dict[str, Any]:
        common = {
            "user_id": self.user_id,
            "created_at": rfc3339(self.created_at),
            "finished_at": _optional_date(self.finished_at),
            "user_agent": None,
            "last_active_at": None,
            "last_active_ip": None,
        }
        if self.kind == "compat-sessions":
            device = self.id[-10:]
            return {
                **common,
                "device_id": device,
                "user_session_id": None,
                "redirect_uri": None,
                "human_name": None,
            }
        if self.kind == "oauth2-sessions":
            return {
                **common,
                "user_session_id": None,
                "client_id": "01J00000000000000000000000",
                "scope": f"urn:matrix:client:api:* urn:matrix:client:device:{self.id[-10:]}",
                "human_name": None,
            }
        return common


@dataclass(frozen=True)
class Call:
    method: str
    path: str  # as sent, without the query
    operation: str | None  # the document's operationId, "token", None if unknown
    status: int  # 0: the connection was dropped before the answer


@dataclass(frozen=True)
class Refusal:
    method: str
    path: str
    status: int
    reason: str


@dataclass
class _Token:
    scope: frozenset[str]
    expires_at: float  # time.monotonic()


@dataclass
class _Fault:
    remaining: int
    status: int | None  # None: carry the call out, then drop the connection
    retry_after: int | None = None


class _Answer(Exception):
    """An answer other than success: `refusal` if MAS would refuse the request whatever its
    data; `early` for MAS's refusals before its handlers run (router, token, extractors),
    which the document leaves out, and which are plain text where axum makes them."""

    def __init__(
        self, status: int, title: str, *, refusal: bool = False, early: bool = False
    ) -> None:
        super().__init__(title)
        self.status = status
        self.title = title
        self.refusal = refusal or early
        self.early = early


@dataclass
class _Context:
    """One validated admin-API request, for its handler."""

    path: dict[str, str]
    query: Mapping[str, str]
    body: Any
    raw_path: str


Handler = Callable[[_Context], tuple[int, dict[str, Any] | None]]


class MasStandin:
    """`async with MasStandin.running(client_id="...", client_secret="...") as mas:` then
    point MasConfig.url at `mas.url`."""

    def __init__(
        self,
        client_id: str,
        client_secret: str,
        *,
        admin_client: bool = True,
        token_ttl: int = 300,
        password_login: bool = True,
        reserved_usernames: frozenset[str] = frozenset(),
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.admin_client = admin_client  # listed in policy.data.admin_clients
        self.token_ttl = token_ttl
        self.password_login = password_login  # passwords.enabled
        self.reserved_usernames = reserved_usernames  # names the homeserver says are taken
        self.calls: list[Call] = []
        self.refused: list[Refusal] = []
        self.problems: list[str] = []
        self.token_requests = 0
        self._users: dict[str, MasUser] = {}  # by ID
        self._emails: dict[str, MasEmail] = {}
        self._sessions: dict[str, MasSession] = {}
        self._tokens: dict[str, _Token] = {}
        self._faults: dict[str, _Fault] = {}
        self._spec = load_spec()
        self._api, self._strict_api = _validators()
        self._finder = APICallPathFinder(self._api.spec)
        self._runner: web.AppRunner | None = None
        self._port = 0
        self._handlers: dict[str, Handler] = {
            "getUserByUsername": self._get_user_by_username,
            "getUser": self._get_user,
            "createUser": self._create_user,
            "setUserPassword": self._set_password,
            "lockUser": self._lock,
            "unlockUser": self._unlock,
            "deactivateUser": self._deactivate,
            "reactivateUser": self._reactivate,
            "listUserEmails": self._list_emails,
            "addUserEmail": self._add_email,
            "getUserEmail": self._get_email,
            "deleteUserEmail": self._delete_email,
        }
        for kind, (list_operation, finish_operation, _name) in _SESSION_KINDS.items():
            self._handlers[list_operation] = functools.partial(self._list_sessions, kind)
            self._handlers[finish_operation] = functools.partial(self._finish_session, kind)

    # --- running ---------------------------------------------------------------------------

    @classmethod
    @asynccontextmanager
    async def running(
        cls, client_id: str, client_secret: str, **options: Any
    ) -> AsyncIterator[MasStandin]:
        mas = cls(client_id, client_secret, **options)
        await mas.start()
        try:
            yield mas
        finally:
            await mas.stop()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/oauth2/token", self._token_endpoint)
        app.router.add_route("*", ADMIN_PREFIX + "{tail:.*}", self._admin_endpoint)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    @property
    def url(self) -> str:
        assert self._port, "start() first"
        return f"http://127.0.0.1:{self._port}"

    # --- what tests set up and read --------------------------------------------------------

    @property
    def users(self) -> dict[str, MasUser]:
        """Every user, by username."""
        return {user.username: user for user in self._users.values()}

    def add_user(
        self, username: str, *, created_at: datetime | None = None, password: str | None = None
    ) -> MasUser:
        """A user made elsewhere (MAS's own sign-up, an admin), e.g. long ago."""
        created = created_at or _now()
        user = MasUser(new_ulid(created), username, created, password=password)
        self._users[user.id] = user
        return user

    def emails_of(self, username: str) -> list[str]:
        user = self.users[username]
        return [email.email for email in self._sorted(self._emails) if email.user_id == user.id]

    def add_email(self, username: str, email: str) -> MasEmail:
        entry = MasEmail(new_ulid(), self.users[username].id, email, _now())
        self._emails[entry.id] = entry
        return entry

    def add_session(self, username: str, kind: str) -> MasSession:
        """A login of the user: kind is "compat-sessions", "oauth2-sessions" or
        "user-sessions"."""
        if kind not in _SESSION_KINDS:
            raise ValueError(f"unknown session kind {kind!r}")
        session = MasSession(new_ulid(), kind, self.users[username].id, _now())
        self._sessions[session.id] = session
        return session

    def active_sessions(self, username: str) -> list[MasSession]:
        user_id = self.users[username].id
        return [s for s in self._sessions.values() if s.user_id == user_id and s.active]

    def operations(self) -> list[str | None]:
        return [call.operation for call in self.calls]

    def expire_tokens(self) -> None:
        """Every token issued so far is expired from now on (MAS answers 401)."""
        for token in self._tokens.values():
            token.expires_at = 0.0

    def fail_next(
        self, operation: str, times: int = 1, *, status: int = 503, retry_after: int | None = None
    ) -> None:
        """Answer the next `times` calls of `operation` with `status`, doing nothing."""
        self._faults[self._operation(operation)] = _Fault(times, status, retry_after)

    def drop_answers(self, operation: str, times: int = 1) -> None:
        """Carry out the next `times` calls of `operation`, then drop the connection."""
        self._faults[self._operation(operation)] = _Fault(times, None)

    def _operation(self, name: str) -> str:
        known = {TOKEN_OPERATION} | {
            operation["operationId"]
            for path in self._spec["paths"].values()
            for operation in path.values()
        }
        if name not in known:
            raise ValueError(f"{name!r} is no operationId of MAS's admin API, nor 'token'")
        return name

    def _fault(self, operation: str | None) -> _Fault | None:
        fault = self._faults.get(operation or "")
        if fault is None or fault.remaining <= 0:
            return None
        fault.remaining -= 1
        return fault

    # --- the token endpoint ----------------------------------------------------------------

    async def _token_endpoint(self, request: web.Request) -> web.StreamResponse:
        fault = self._fault(TOKEN_OPERATION)
        if fault is not None and fault.status is not None:
            return self._fault_answer(request, TOKEN_OPERATION, fault)
        form = await request.post()
        status, body = self._token_answer(request, form)
        self.calls.append(Call(request.method, request.path, TOKEN_OPERATION, status))
        if status != 200:
            reason = f"{body['error']}: {body.get('error_description', '')}"
            self.refused.append(Refusal(request.method, request.path, status, reason))
        if fault is not None:
            return self._drop(request)
        return web.json_response(body, status=status)

    def _token_answer(self, request: web.Request, form: Mapping[str, Any]) -> tuple[int, Any]:
        credentials = _basic_credentials(request.headers.get("Authorization"))
        if credentials is None or not (
            secrets.compare_digest(credentials[0], self.client_id)
            and secrets.compare_digest(credentials[1], self.client_secret)
        ):
            return 401, _oauth_error("invalid_client", "Client authentication failed.")
        grant_type = form.get("grant_type")
        if not isinstance(grant_type, str):
            return 400, _oauth_error("invalid_request", "The request is missing a parameter.")
        if grant_type != "client_credentials":
            return 400, _oauth_error("unsupported_grant_type", f"{grant_type!r} not supported.")
        scope = frozenset(str(form.get("scope", "")).split())
        if ADMIN_SCOPE in scope and not self.admin_client:
            return 403, _oauth_error("invalid_scope", f"scope '{ADMIN_SCOPE}' not allowed")
        token = "mat_" + secrets.token_urlsafe(24)
        self._tokens[token] = _Token(scope, time.monotonic() + self.token_ttl)
        self.token_requests += 1
        body: dict[str, Any] = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": self.token_ttl,
        }
        if scope:
            body["scope"] = " ".join(sorted(scope))
        return 200, body

    # --- the admin API ---------------------------------------------------------------------

    async def _admin_endpoint(self, request: web.Request) -> web.StreamResponse:
        raw_body = await request.read()
        spec_request = _SpecRequest(request, raw_body or None)
        operation, path_params = self._find(spec_request)
        fault = self._fault(operation)
        if fault is not None and fault.status is not None:
            return self._fault_answer(request, operation, fault)
        try:
            context = self._validate(request, spec_request, path_params, raw_body)
            if operation is None or operation not in self._handlers:
                self.problems.append(f"{request.method} {request.path}: not in the stand-in")
                raise _Answer(501, "Not implemented by the stand-in", early=True)
            status, payload = self._handlers[operation](context)
        except _Answer as answer:
            if answer.refusal:
                refusal = Refusal(request.method, request.path, answer.status, answer.title)
                self.refused.append(refusal)
            self.calls.append(Call(request.method, request.path, operation, answer.status))
            if answer.early and answer.status in (404, 405, 415, 422, 501):
                # The router's and axum's own answers: plain text, not MAS's JSON errors.
                return web.Response(status=answer.status, text=answer.title)
            if answer.early:
                return web.json_response(
                    {"errors": [{"title": answer.title}]}, status=answer.status
                )
            status, payload = answer.status, {"errors": [{"title": answer.title}]}
        else:
            self.calls.append(Call(request.method, request.path, operation, status))
        data = b"" if payload is None else json.dumps(payload).encode()
        content_type = "application/json" if payload is not None else ""
        self._check_answer(request, spec_request, status, data, content_type)
        if fault is not None:
            return self._drop(request)
        return web.Response(status=status, body=data or None, content_type=content_type or None)

    def _find(self, spec_request: _SpecRequest) -> tuple[str | None, dict[str, str]]:
        try:
            found = self._finder.find(
                spec_request.method, spec_request.host_url + spec_request.path
            )
        except PathError:
            return None, {}
        operation = (found.operation / "operationId").read_str()
        variables = {name: unquote(value) for name, value in found.path_result.variables.items()}
        return operation, variables

    def _validate(
        self,
        request: web.Request,
        spec_request: _SpecRequest,
        path_params: dict[str, str],
        raw_body: bytes,
    ) -> _Context:
        """The request as MAS would take it, or the _Answer MAS would refuse it with."""
        errors = list(self._api.iter_request_errors(spec_request))
        for error in errors:
            if isinstance(error, OperationNotFound):
                raise _Answer(405, "Method Not Allowed", early=True)
            if isinstance(error, PathError):
                raise _Answer(404, "Not Found", early=True)
        for error in errors:
            if isinstance(error, SecurityValidationError):
                header = "Authorization" in request.headers
                title = "Invalid authorization header" if header else "Missing authorization header"
                raise _Answer(400, title, early=True)
        self._check_token(request)
        for error in errors:
            if isinstance(error, ParameterValidationError):
                where = "path" if error.location == "path" else "query"
                title = "Invalid ULID in path" if where == "path" else "Invalid query parameters"
                raise _Answer(400, f"{title}: {error.name}: {_cause(error)}", early=True)
        body: Any = None
        for error in errors:
            if isinstance(error, MissingRequiredRequestBody) or isinstance(
                error.__cause__, MediaTypeNotFound
            ):
                raise _Answer(
                    415, "Expected request with `Content-Type: application/json`", early=True
                )
            if isinstance(error.__cause__, MediaTypeDeserializeError):
                raise _Answer(400, "Failed to parse the request body as JSON", early=True)
            if isinstance(error, RequestBodyValidationError) and not _only_formats(error):
                # serde checks types and required fields; formats (email) MAS checks later.
                raise _Answer(
                    422,
                    f"Failed to deserialize the JSON body into the target type: {_cause(error)}",
                    early=True,
                )
        if raw_body:
            try:
                body = json.loads(raw_body)
            except ValueError:
                body = None  # an operation without a body: MAS does not read it either
        self._note_ignored(request, spec_request, errors)
        return _Context(path_params, request.query, body, request.rel_url.raw_path)

    def _check_token(self, request: web.Request) -> None:
        header = request.headers.get("Authorization")
        if header is None:
            raise _Answer(400, "Missing authorization header", early=True)
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _Answer(400, "Invalid authorization header", early=True)
        entry = self._tokens.get(token.strip())
        if entry is None:
            raise _Answer(401, "Unknown access token", early=True)
        if time.monotonic() >= entry.expires_at:
            raise _Answer(401, "Access token expired", early=True)
        if ADMIN_SCOPE not in entry.scope:
            raise _Answer(401, "Missing urn:mas:admin scope", early=True)

    def _note_ignored(
        self, request: web.Request, spec_request: _SpecRequest, errors: list[Exception]
    ) -> None:
        """What MAS would accept and ignore: body fields and query parameters the document
        does not have."""
        if not errors:
            strict = list(self._strict_api.iter_request_errors(spec_request))
            for error in strict:
                if isinstance(error, RequestBodyValidationError):
                    self.problems.append(
                        f"{request.method} {request.path}: body fields MAS ignores: {_cause(error)}"
                    )
        known = self._parameter_names(spec_request)
        unknown = sorted(set(request.query) - known)
        if unknown:
            self.problems.append(
                f"{request.method} {request.path}: query parameters MAS ignores: {unknown}"
            )

    def _parameter_names(self, spec_request: _SpecRequest) -> set[str]:
        found = self._finder.find(spec_request.method, spec_request.host_url + spec_request.path)
        parameters: SchemaPath = found.operation.get("parameters", SchemaPath.from_dict({}))
        return {str((parameter / "name").read_str()) for parameter in parameters}

    def _check_answer(
        self,
        request: web.Request,
        spec_request: _SpecRequest,
        status: int,
        data: bytes,
        content_type: str,
    ) -> None:
        response = _SpecResponse(status, data, content_type)
        for error in self._api.iter_response_errors(spec_request, response):
            self.problems.append(
                f"{request.method} {request.path}: the stand-in's HTTP {status} answer is not "
                f"MAS's: {type(error).__name__}: {_cause(error)}"
            )

    def _fault_answer(
        self, request: web.Request, operation: str | None, fault: _Fault
    ) -> web.StreamResponse:
        assert fault.status is not None
        self.calls.append(Call(request.method, request.path, operation, fault.status))
        headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
        return web.Response(status=fault.status, text="injected fault", headers=headers)

    def _drop(self, request: web.Request) -> web.StreamResponse:
        # The call was carried out; its answer never leaves.
        self.calls[-1] = dataclasses.replace(self.calls[-1], status=0)
        if request.transport is not None:
            request.transport.close()
        return web.Response(status=204)

    # --- handlers --------------------------------------------------------------------------

    def _sorted(self, items: Mapping[str, Any]) -> list[Any]:
        return [items[key] for key in sorted(items)]

    def _user(self, user_id: str) -> MasUser:
        user = self._users.get(user_id)
        if user is None:
            raise _Answer(404, f"User ID {user_id} not found")
        return user

    def _user_response(self, user: MasUser, self_link: str) -> dict[str, Any]:
        return {
            "data": _resource("user", user.id, user.attributes(), f"{ADMIN_PREFIX}users/{user.id}"),
            "links": {"self": self_link},
        }

    def _get_user_by_username(self, context: _Context) -> tuple[int, dict[str, Any] | None]:
        username = context.path["username"]
        user = self.users.get(username)
        if user is None:
            raise _Answer(404, f"User with username {json.dumps(username)} not found")
        return 200, self._user_response(user, f"{ADMIN_PREFIX}users/by-username/{username}")

    def _get_user(self, context: _Context) -> tuple[int, dict[str, Any] | None]:
        user = self._user(context.path["id"])
        return 200, self._user_response(user, f"{ADMIN_PREFIX}users/{user.id}")

    def _create_user(self, context: _Context) -> tuple[int, dict[str, Any] | None]:
        username = context.body["username"]
        if username in self.users:
            raise _Answer(409, "User already exists")
        if not _USERNAME_RE.match(username) or username.startswith("_"):
            raise _Answer(400, "Username is not valid", refusal=True)
        if username in self.reserved_usernames and not context.body.get("skip_homeserver_check"):
            raise _Answer(409, "Username is reserved by the homeserver")
        user = self.add_user(username)
        user.displayname = context.body.get("displayname")
        return 201, self._user_response(user, f"{ADMIN_PREFIX}users/{user.id}")

    def _set_password(self, context: _Context) -> tuple[int, dict[str, Any] | None]:
        if not self.password_login:
            raise _Answer(403, "Password auth is disabled")
        user = self._user(context.path["id"])
        password = context.body["password"]
        if not context.body.get("skip_password_check") and len(password) < _MIN_PASSWORD_LENGTH:
            raise _Answer(400, "Password is too weak", refusal=True)
        user.password = password
        user.passwords_set += 1
        return 204, None

    def _lock(self, context: _Context) -> tuple[int, dict[str, Any] | None]:
        user = self._user(context.path["id"])
        user.locked_at = user.locked_at or _now()
        return 200, self._user_response(user, f"{ADMIN_PREFIX}users/{user.id}/lock")

    def _unlock(self, context: _Context) -> tuple[int, dict[str, Any] | None]:
        user = self._user(context.path["id"])
        user.locked_at = None
        return 200, self._user_response(user, f"{ADMIN_PREFIX}users/{user.id}/unlock")

    def _deactivate(self, context: _Context) -> tuple[int, dict[str, Any] | None]:
        user = self._user(context.path["id"])
        skip_erase = bool((context.body or {}).get("skip_erase", False))
        user.deactivated_at = user.deactivated_at or _now()
        user.erase_requested = not skip_erase
        # "This invalidates any existing session."
        for session in self._sessions.values():
            if session.user_id == user.id and session.active:
                session.finished_at = _now()
        return 200, self._user_response(user, f"{ADMIN_PREFIX}users/{user.id}/deactivate")

    def _reactivate(self, context: _Context) -> tuple[int, dict[str, Any] | None]:
        user = self._user(context.path["id"])
        user.deactivated_at = None
        return 200, self._user_response(user, f"{ADMIN_PREFIX}users/{user.id}/reactivate")

    def _email_resource(self, email: MasEmail) -> dict[str, Any]:
        self_link = f"{ADMIN_PREFIX}user-emails/{email.id}"
        return _resource("user-email", email.id, email.attributes(), self_link)

    def _list_emails(self, context: _Context) -> tuple[int, dict[str, Any] | None]:
        user_filter = context.query.get("filter[user]")
        if user_filter is not None:
            self._user(user_filter)
        email_filter = context.query.get("filter[email]")
        items = [
            email
            for email in self._sorted(self._emails)
            if (user_filter is None or email.user_id == user_filter)
            and (email_filter is None or email.email == email_filter)
        ]
        return 200, self._page(context, items, self._email_resource)

    def _add_email(self, context: _Context) -> tuple[int, dict[str, Any] | None]:
        user = self._user(context.body["user_id"])
        address = context.body["email"]
        if not _EMAIL_RE.match(address):
            raise _Answer(400, f"Email {json.dumps(address)} is not valid", refusal=True)
        if any(email.email == address for email in self._emails.values()):
            raise _Answer(409, f"User email {json.dumps(address)} already in use")
        email = MasEmail(new_ulid(), user.id, address, _now())
        self._emails[email.id] = email
        return 201, {"data": self._email_resource(email), "links": {"self": context.raw_path}}

    def _get_email(self, context: _Context) -> tuple[int, dict[str, Any] | None]:
        email = self._emails.get(context.path["id"])
        if email is None:
            raise _Answer(404, f"User email ID {context.path['id']} not found")
        return 200, {"data": self._email_resource(email), "links": {"self": context.raw_path}}

    def _delete_email(self, context: _Context) -> tuple[int, dict[str, Any] | None]:
        if self._emails.pop(context.path["id"], None) is None:
            raise _Answer(404, f"User email ID {context.path['id']} not found")
        return 204, None

    def _session_resource(self, session: MasSession) -> dict[str, Any]:
        kind = session.kind
        self_link = f"{ADMIN_PREFIX}{kind}/{session.id}"
        return _resource(kind[:-1], session.id, session.attributes(), self_link)

    def _list_sessions(self, kind: str, context: _Context) -> tuple[int, dict[str, Any] | None]:
        supported = {*_PAGINATION, "filter[user]", "filter[status]"}
        for name in set(context.query) - supported:
            self.problems.append(f"GET {context.raw_path}: the stand-in ignores {name}")
        user_filter = context.query.get("filter[user]")
        if user_filter is not None:
            self._user(user_filter)
        status = context.query.get("filter[status]")
        items = [
            session
            for session in self._sorted(self._sessions)
            if session.kind == kind
            and (user_filter is None or session.user_id == user_filter)
            and (status is None or (status == "active") == session.active)
        ]
        return 200, self._page(context, items, self._session_resource)

    def _finish_session(self, kind: str, context: _Context) -> tuple[int, dict[str, Any] | None]:
        name = _SESSION_KINDS[kind][2]
        session = self._sessions.get(context.path["id"])
        if session is None or session.kind != kind:
            raise _Answer(404, f"{name} with ID {context.path['id']} not found")
        if not session.active:
            raise _Answer(400, f"{name} with ID {session.id} is already finished")
        session.finished_at = _now()
        return 200, {"data": self._session_resource(session), "links": {"self": context.raw_path}}

    def _page(
        self, context: _Context, items: list[Any], render: Callable[[Any], dict[str, Any]]
    ) -> dict[str, Any]:
        """One page as MAS pages: by ID, `page[after]`/`page[before]` as cursors."""
        query = context.query
        if "page[first]" in query and "page[last]" in query:
            raise _Answer(
                400,
                "Cannot specify both `page[first]` and `page[last]` parameters",
                early=True,
            )
        after, before = query.get("page[after]"), query.get("page[before]")
        window = [
            item
            for item in items
            if (after is None or item.id > after) and (before is None or item.id < before)
        ]
        if "page[last]" in query:
            page = window[-int(query["page[last]"]) :]
            has_more = len(window) > len(page)
        else:
            page = window[: int(query.get("page[first]", _DEFAULT_PAGE_SIZE))]
            has_more = len(window) > len(page)
        base = context.raw_path
        filters = {k: v for k, v in query.items() if k.startswith("filter[")}
        size = query.get("page[first]") or query.get("page[last]") or str(_DEFAULT_PAGE_SIZE)
        links: dict[str, Any] = {
            "self": f"{base}?{urlencode(dict(query))}" if query else base,
            "first": f"{base}?{urlencode({**filters, 'page[first]': size})}",
            "last": f"{base}?{urlencode({**filters, 'page[last]': size})}",
        }
        if has_more and page and "page[last]" not in query:
            links["next"] = (
                f"{base}?{urlencode({**filters, 'page[after]': page[-1].id, 'page[first]': size})}"
            )
        count = query.get("count", "true")
        answer: dict[str, Any] = {"links": links}
        if count != "false":
            answer["meta"] = {"count": len(items)}
        if count != "only":
            answer["data"] = [
                {**render(item), "meta": {"page": {"cursor": item.id}}} for item in page
            ]
        return answer


def _is_uint(value: object) -> bool:
    # A format only speaks of values of its kind; the type is checked apart.
    return not isinstance(value, int) or value >= 0


def _is_ip(value: object) -> bool:
    if not isinstance(value, str):
        return True
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _resource(kind: str, resource_id: str, attributes: dict[str, Any], link: str) -> dict[str, Any]:
    return {"type": kind, "id": resource_id, "attributes": attributes, "links": {"self": link}}


def _oauth_error(code: str, description: str) -> dict[str, str]:
    return {"error": code, "error_description": description}


def _basic_credentials(header: str | None) -> tuple[str, str] | None:
    """client_secret_basic as MAS reads it: base64 of id:secret, not form-decoded."""
    if header is None or header[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, colon, secret = decoded.partition(":")
    return (client_id, secret) if colon else None


def _cause(error: BaseException) -> str:
    """openapi-core's error with what it found, e.g. "'username' is a required property"."""
    cause = error.__cause__
    schema_errors = getattr(cause, "schema_errors", None)
    if schema_errors:
        return "; ".join(getattr(e, "message", str(e)) for e in schema_errors)
    return str(cause or error)


def _only_formats(error: BaseException) -> bool:
    """Whether every schema error is a `format` one (which serde does not check)."""
    schema_errors = getattr(error.__cause__, "schema_errors", None) or ()
    return bool(schema_errors) and all(
        getattr(e, "validator", None) == "format" for e in schema_errors
    )
