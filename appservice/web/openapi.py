"""The OpenAPI document of /api, built from the registered routes and their docstrings.

Request schemas carry the constraints the handlers check (so a fuzzer's valid data gets
past validation), and each success answer has its schema (so a client, or schemathesis,
can tell when an answer changes shape).
"""

from __future__ import annotations

import inspect
from typing import Any

from aiohttp import web

from gatekeeper.appservice.domain.antibot import MAX_PAYLOAD_CHARS, PAYLOAD_FIELD
from gatekeeper.appservice.domain.i18n import Catalogue
from gatekeeper.appservice.domain.passwords import MAX_BYTES, MIN_LENGTH
from gatekeeper.appservice.domain.registration_request import State
from gatekeeper.appservice.domain.signup import MAX_REASON_CHARS
from gatekeeper.appservice.matrix_ids import (
    LOCALPART_CHARS,
    MAX_USER_ID_BYTES,
    max_localpart_bytes,
)

TEXT = {"type": "string"}
FLAG = {"type": "boolean"}
EMAIL = {"type": "string", "format": "email"}
NEW_PASSWORD = {"type": "string", "minLength": MIN_LENGTH, "maxLength": MAX_BYTES}
LANGUAGE = {"type": "string", "enum": Catalogue().languages}
TIME = {"type": "string", "format": "date-time"}
STATE = {"type": "string", "enum": [state.value for state in State]}
# An authenticator app's code, or a recovery code (storage/totp.py: four groups of four).
SECOND_FACTOR = {"type": "string", "pattern": "^([0-9]{6}|[a-z2-9]{4}(-[a-z2-9]{4}){3})$"}
# Who decided, as the admin API's caller names them (app.api_actor checks it): a Matrix user
# ID or a short name. It goes into the audit and the room's notice: no spaces, no markup.
ACTOR_PATTERN = rf"^(@[{LOCALPART_CHARS}]+:[A-Za-z0-9.:\[\]-]+|[A-Za-z0-9._-]{{1,64}})$"
ACTOR = {"type": "string", "maxLength": MAX_USER_ID_BYTES, "pattern": ACTOR_PATTERN}


def _object(required: tuple[str, ...] = (), **properties: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    return schema


def _one_of(*values: str) -> dict[str, Any]:
    return {"type": "string", "enum": list(values)}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "nullable": True}


REQUEST_BODIES: dict[str, dict[str, Any]] = {
    "/api/auth/sign-up": _object(
        ("userName", "email", "password"),
        # Its maxLength depends on the server name: see _with_user_name_limit().
        userName={"type": "string", "pattern": rf"^[{LOCALPART_CHARS}]+$", "minLength": 1},
        email=EMAIL,
        password=NEW_PASSWORD,
        language=LANGUAGE,
        reason={"type": "string", "maxLength": MAX_REASON_CHARS},
        invite=TEXT,
        # Required under antibot.proof_of_work: see _request_body().
        altcha={
            "type": "string",
            "maxLength": MAX_PAYLOAD_CHARS,
            "description": "With antibot.proof_of_work: the solution of a challenge from "
            "GET /api/antibot/challenge, base64 of the JSON {algorithm, challenge, number, "
            "salt, signature}.",
        },
    ),
    "/api/user/confirm-email": _object(("token",), token=TEXT),
    "/api/user/re-trigger-confirmation-email": _object(("email",), email=EMAIL),
    "/api/registration/withdraw": _object(("token",), token=TEXT),
    # `email` is what people log in with: the email address, user name or Matrix ID.
    "/api/auth/login": _object(("email", "password"), email=TEXT, password=TEXT),
    "/api/auth/login-with-second-factor": _object(
        ("email", "password", "secondFactor"),
        email=TEXT,
        password=TEXT,
        secondFactor=SECOND_FACTOR,
        rememberDevice=FLAG,
    ),
    "/api/auth/logout": _object(forgetDevice=FLAG),
    "/api/auth/request-password-reset": _object(("email",), email=EMAIL),
    # The token names the account; an email, if sent, must be its address (older clients).
    "/api/auth/reset-password": _object(
        ("token", "newPassword"), email=EMAIL, token=TEXT, newPassword=NEW_PASSWORD
    ),
    "/api/user/settings/language": _object(("language",), language=LANGUAGE),
    "/api/user/settings/sudo": _object(("password",), password=TEXT),
    "/api/user/settings/confirm-email-change": _object(("token",), token=TEXT),
    "/api/user/settings/generate-temporary-2fa": _object(restart=FLAG),
    "/api/user/settings/sensitive/change-email": _object(("newEmail",), newEmail=EMAIL),
    "/api/user/settings/sensitive/change-password": _object(
        ("newPassword",), newPassword=NEW_PASSWORD
    ),
    "/api/user/settings/sensitive/2fa": _object(
        ("enable",), enable=FLAG, secondFactor={"type": "string", "pattern": "^[0-9]{6}$"}
    ),
    "/api/user/settings/sensitive/recovery-codes": _object(),
    "/api/admin/registrations/{id}/approve": _object(actor=ACTOR),
    "/api/admin/registrations/{id}/reject": _object(reason=TEXT, actor=ACTOR),
    "/api/admin/users/{user_id}/suspend": _object(reason=TEXT),
    "/api/admin/users/{user_id}/unsuspend": _object(reason=TEXT),
    "/api/admin/users/{user_id}/deactivate": _object(erase=FLAG, reason=TEXT),
    # The seed's registration API (web/seed_api.py); one path takes two bodies, by method.
    "/registrations/": _object(("email",), email=EMAIL),
    "PUT /registrations/{rid}/": _object(("status",), status=_one_of("approved", "rejected")),
    "PATCH /registrations/{rid}/": _object(
        ("matrix_status", "username"),
        matrix_status=_one_of("processing"),
        username={"type": "string", "pattern": rf"^[{LOCALPART_CHARS}]+$", "minLength": 1},
        email=EMAIL,
    ),
}


def body_schema(method: str, path: str) -> dict[str, Any] | None:
    """The JSON body an operation takes: its method's own, else its path's."""
    return REQUEST_BODIES.get(f"{method} {path}", REQUEST_BODIES.get(path))


QUERY_PARAMETERS: dict[str, list[dict[str, Any]]] = {
    "/api/registration/status": [
        {"name": "token", "in": "query", "required": True, "schema": TEXT}
    ],
    "/api/admin/registrations": [
        {
            "name": "state",
            "in": "query",
            "description": "Only requests in this state; without it, only pending ones.",
            "schema": {**STATE, "default": State.PENDING.value},
        },
        {
            "name": "limit",
            "in": "query",
            "description": "At most this many (capped at 500).",
            "schema": {"type": "integer", "minimum": 0, "default": 50},
        },
        {
            "name": "offset",
            "in": "query",
            "schema": {"type": "integer", "minimum": 0, "default": 0},
        },
    ],
}

REGISTRATION = _object(
    ("id", "userName", "userId", "email", "language", "state", "createdAt"),
    id=TEXT,
    # Null while the request has no name: one from /registrations/ is named after approval.
    userName=_nullable(TEXT),
    userId=_nullable(TEXT),
    email=TEXT,
    language=TEXT,
    reason=_nullable(TEXT),
    state=STATE,
    status=TEXT,
    matrixStatus=TEXT,
    createdAt=TIME,
    decidedBy=_nullable(TEXT),
    decidedAt=_nullable(TIME),
    decisionReason=_nullable(TEXT),
    provisionAttempts={"type": "integer", "minimum": 0},
    lastError=_nullable(TEXT),
)
HISTORY_ENTRY = _object(
    ("at", "to"),
    at=TIME,
    actor=_nullable(TEXT),
    to=TEXT,
    reason=_nullable(TEXT),
    **{"from": _nullable(TEXT)},
)
DECISION = _object(
    ("outcome", "registration"),
    outcome=_one_of("changed", "already"),
    registration={"$ref": "#/components/schemas/Registration"},
)
MODERATED = _object(
    ("userId", "action"),
    userId=TEXT,
    action=_one_of("suspend", "unsuspend", "deactivate"),
    registrationId=_nullable(TEXT),
)
MODERATION_ENTRY = _object(
    ("at", "actor", "action", "outcome"),
    at=TIME,
    actor=TEXT,
    action=_one_of("suspend", "unsuspend", "deactivate"),
    erase=FLAG,
    reason=_nullable(TEXT),
    outcome=_one_of("done", "failed"),
    error=_nullable(TEXT),
)
WHOIS = _object(
    ("userId",),
    userId=TEXT,
    # allOf: a $ref's sibling keys (nullable) would be ignored.
    registration=_nullable({"allOf": [{"$ref": "#/components/schemas/Registration"}]}),
    twoFactor=_nullable(FLAG),
    status=_nullable(_object(exists=FLAG, suspended=FLAG, deactivated=FLAG)),
    statusProblem=_nullable(TEXT),
    lastAction=_nullable(MODERATION_ENTRY),
    moderationRefused=_nullable(TEXT),
)
EMPTY = _object()
# The seed's registration: the manager sees no personal data (username, email null), and
# the password is there once, in the answer that made the account.
SEED_REGISTRATION = _object(
    ("rid", "username", "email", "password", "created", "modified", "status", "matrix_status"),
    rid=TEXT,
    username=_nullable(TEXT),
    email=_nullable(TEXT),
    password=_nullable(TEXT),
    created=TIME,
    modified=TIME,
    status=_one_of("pending", "approved", "rejected"),
    matrix_status=_one_of("pending", "processing", "success", "failed"),
)
RECOVERY_CODES = {"type": "array", "items": TEXT}

# The success answer of each path: its status and body schema.
RESPONSES: dict[str, tuple[int, dict[str, Any] | None]] = {
    "/api/csrf": (200, _object(("csrfToken",), csrfToken=TEXT)),
    "/api/auth/login": (
        200,
        _object(
            ("status",),
            status=_one_of("logged-in", "second-factor-required", "invalid-credentials"),
        ),
    ),
    "/api/auth/login-with-second-factor": (
        200,
        _object(
            ("loggedIn", "status"),
            loggedIn=FLAG,
            status=_one_of("logged-in", "invalid-credentials", "code-just-used"),
            timeoutUntil=TIME,
        ),
    ),
    "/api/auth/logout": (200, EMPTY),
    "/api/auth/request-password-reset": (200, EMPTY),
    "/api/auth/reset-password": (
        200,
        _object(
            ("status",),
            status=_one_of("success", "invalid-token", "matrix-unchanged"),
            message=TEXT,
        ),
    ),
    # Without a session the object is empty, hence nothing is required.
    "/api/user-info": (
        200,
        _object(
            roles={"type": "array", "items": _one_of("user", "applicant")},
            emailVerified=FLAG,
            language=TEXT,
            email=TEXT,
            status=STATE,
            userName=TEXT,
            userId=TEXT,
        ),
    ),
    "/api/user/settings/language": (200, EMPTY),
    "/api/user/settings/sudo": (200, _object(("success",), success=FLAG)),
    "/api/user/settings/confirm-email-change": (
        200,
        _object(
            ("status", "email"),
            status=_one_of(
                "no-change-in-progress", "invalid-token", "new-email-confirmed", "matrix-unchanged"
            ),
            email=TEXT,
            message=TEXT,
        ),
    ),
    "/api/user/settings/generate-temporary-2fa": (
        200,
        _object(
            ("secret", "otpauthUri", "qrCodeSvg"), secret=TEXT, otpauthUri=TEXT, qrCodeSvg=TEXT
        ),
    ),
    "/api/user/settings/sensitive/change-email": (200, EMPTY),
    "/api/user/settings/sensitive/change-password": (
        200,
        _object(("status",), status=_one_of("success", "matrix-unchanged"), message=TEXT),
    ),
    "/api/user/settings/sensitive/2fa": (
        200,
        _object(("enabled",), enabled=FLAG, recoveryCodes=RECOVERY_CODES),
    ),
    "/api/user/settings/sensitive/recovery-codes": (
        200,
        _object(("recoveryCodes",), recoveryCodes=RECOVERY_CODES),
    ),
    "/api/auth/sign-up": (201, _object(("status", "userId"), status=STATE, userId=TEXT)),
    "/api/user/confirm-email": (
        200,
        _object(
            ("status",), status=_one_of("newly-confirmed", "already-confirmed", "invalid-token")
        ),
    ),
    "/api/user/re-trigger-confirmation-email": (200, _object(("sent",), sent=FLAG)),
    "/api/registration/status": (
        200,
        _object(("status", "userId", "email"), status=STATE, userId=TEXT, email=TEXT),
    ),
    "/api/registration/withdraw": (200, _object(("status",), status=_one_of("withdrawn"))),
    "/api/antibot/challenge": (
        200,
        _object(
            ("algorithm", "challenge", "maxNumber", "salt", "signature"),
            algorithm=TEXT,
            challenge=TEXT,
            maxNumber={"type": "integer"},
            salt=TEXT,
            signature=TEXT,
        ),
    ),
    "/api/admin/registrations": (
        200,
        _object(
            ("registrations",),
            registrations={"type": "array", "items": {"$ref": "#/components/schemas/Registration"}},
        ),
    ),
    "/api/admin/registrations/{id}": (
        200,
        {
            "allOf": [
                {"$ref": "#/components/schemas/Registration"},
                _object(("history",), history={"type": "array", "items": HISTORY_ENTRY}),
            ]
        },
    ),
    "/api/admin/registrations/{id}/approve": (200, DECISION),
    "/api/admin/registrations/{id}/reject": (200, DECISION),
    "/api/admin/users/{user_id}": (200, WHOIS),
    "/api/admin/users/{user_id}/suspend": (200, MODERATED),
    "/api/admin/users/{user_id}/unsuspend": (200, MODERATED),
    "/api/admin/users/{user_id}/deactivate": (200, MODERATED),
    "/registrations/": (
        201,
        {"allOf": [SEED_REGISTRATION, _object(("token",), token=TEXT)]},
    ),
    "GET /registrations/{rid}/": (200, SEED_REGISTRATION),
    "PUT /registrations/{rid}/": (200, SEED_REGISTRATION),
    "PATCH /registrations/{rid}/": (200, SEED_REGISTRATION),
    "DELETE /registrations/{rid}/": (204, None),  # HTTP gives a 204 no body
}

ERROR = _object(
    ("errcode", "error"), errcode=TEXT, error=TEXT, field=TEXT, fields={"type": "object"}
)


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _with_user_name_limit(schema: dict[str, Any], domain: str) -> dict[str, Any]:
    """The body schema, with `userName` as long as a user ID on `domain` allows."""
    properties = schema.get("properties", {})
    if "userName" not in properties:
        return schema
    limited = {**properties["userName"], "maxLength": max_localpart_bytes(domain)}
    return {**schema, "properties": {**properties, "userName": limited}}


def _without_password(schema: dict[str, Any]) -> dict[str, Any]:
    """The sign-up body when the password is chosen after approval: none is taken."""
    properties = {k: v for k, v in schema.get("properties", {}).items() if k != "password"}
    required = [k for k in schema.get("required", []) if k != "password"]
    return {**schema, "properties": properties, "required": required}


def _operation(
    method: str,
    path: str,
    handler: Any,
    domain: str,
    password_after_approval: bool,
    proof_of_work: bool,
) -> dict[str, Any]:
    doc = inspect.getdoc(handler) or ""
    summary, _, description = doc.partition("\n\n")
    # An undescribed route still answers JSON, just of no documented shape.
    status, success = RESPONSES.get(f"{method} {path}", RESPONSES.get(path, (200, {})))
    error = {"$ref": "#/components/schemas/Error"}
    operation: dict[str, Any] = {
        "summary": summary.replace("\n", " "),
        "responses": {
            str(status): (
                {"description": "Success"} if success is None else _json("Success", success)
            ),
            "4XX": _json("The JSON error body", error),
            # Moderation passes the homeserver's refusal on (a wrong admin token, say).
            **(
                {"502": _json("The homeserver refused: nothing changed", error)}
                if path.startswith("/api/admin/users/")
                else {}
            ),
            # Any handler that needs the homeserver says so when it is not answering.
            "503": _json("The homeserver is not answering", error),
        },
    }
    if description:
        operation["description"] = description
    parameters = list(QUERY_PARAMETERS.get(path, []))
    if "{id}" in path:
        parameters.append({"name": "id", "in": "path", "required": True, "schema": TEXT})
    if "{rid}" in path:
        parameters.append({"name": "rid", "in": "path", "required": True, "schema": TEXT})
    if "{user_id}" in path:
        # A full user ID (@ann:domain) or the bare localpart (ann).
        parameters.append({"name": "user_id", "in": "path", "required": True, "schema": TEXT})
    if parameters:
        operation["parameters"] = parameters
    schema = body_schema(method, path)
    if method == "POST" or schema is not None:
        operation["requestBody"] = {
            "required": schema is not None and "required" in schema,
            "content": {
                "application/json": {
                    "schema": _request_body(
                        method, path, domain, password_after_approval, proof_of_work
                    )
                }
            },
        }
    if path.startswith("/api/admin/"):
        operation["security"] = [{"adminToken": []}]
    elif path.startswith("/registrations/{rid}/"):
        operation["security"] = [{"registrationToken": []}]
    elif path.startswith("/registrations/"):
        operation["security"] = []  # anyone may ask; no cookie, no CSRF token
    elif method == "POST":
        operation["security"] = [{"csrfToken": []}]
    return operation


def _request_body(
    method: str, path: str, domain: str, password_after_approval: bool, proof_of_work: bool
) -> dict[str, Any]:
    schema = _with_user_name_limit(body_schema(method, path) or _object(), domain)
    if path != "/api/auth/sign-up":
        return schema
    if password_after_approval:
        schema = _without_password(schema)
    if proof_of_work:
        schema = {**schema, "required": [*schema.get("required", []), PAYLOAD_FIELD]}
    return schema


def openapi_document(
    app: web.Application,
    domain: str,
    password_after_approval: bool = False,
    proof_of_work: bool = False,
) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        if not path or not path.startswith(("/api/", "/registrations/")) or route.method == "HEAD":
            continue
        paths.setdefault(path, {})[route.method.lower()] = _operation(
            route.method, path, route.handler, domain, password_after_approval, proof_of_work
        )
    return {
        "openapi": "3.0.3",
        "info": {"title": f"Gatekeeper for {domain}", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": {"Error": ERROR, "Registration": REGISTRATION},
            "securitySchemes": {
                "adminToken": {"type": "http", "scheme": "bearer"},
                # HTTP Basic rid:token, with the manager's token (web.admin_api_token) or
                # the requester's own (/registrations/ only).
                "registrationToken": {"type": "http", "scheme": "basic"},
                "csrfToken": {"type": "apiKey", "in": "header", "name": "X-CSRF-Token"},
            },
        },
    }
