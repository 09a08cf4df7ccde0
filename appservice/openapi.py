"""The OpenAPI document of /api, built from the registered routes and their docstrings."""

from __future__ import annotations

import inspect
from typing import Any

from aiohttp import web

TEXT = {"type": "string"}
FLAG = {"type": "boolean"}


def _object(required: tuple[str, ...] = (), **properties: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    return schema


REQUEST_BODIES: dict[str, dict[str, Any]] = {
    "/api/auth/sign-up": _object(
        ("userName", "email", "password"),
        userName=TEXT,
        email=TEXT,
        password=TEXT,
        language=TEXT,
        reason=TEXT,
    ),
    "/api/user/confirm-email": _object(("token",), token=TEXT),
    "/api/user/re-trigger-confirmation-email": _object(("email",), email=TEXT),
    "/api/registration/withdraw": _object(("token",), token=TEXT),
    "/api/auth/login": _object(("email", "password"), email=TEXT, password=TEXT),
    "/api/auth/login-with-second-factor": _object(
        ("email", "password", "secondFactor"),
        email=TEXT,
        password=TEXT,
        secondFactor=TEXT,
        rememberDevice=FLAG,
    ),
    "/api/auth/logout": _object(forgetDevice=FLAG),
    "/api/auth/request-password-reset": _object(("email",), email=TEXT),
    "/api/auth/reset-password": _object(
        ("email", "token", "newPassword"), email=TEXT, token=TEXT, newPassword=TEXT
    ),
    "/api/user/settings/language": _object(("language",), language=TEXT),
    "/api/user/settings/sudo": _object(("password",), password=TEXT),
    "/api/user/settings/confirm-email-change": _object(("token",), token=TEXT),
    "/api/user/settings/generate-temporary-2fa": _object(),
    "/api/user/settings/sensitive/change-email": _object(("newEmail",), newEmail=TEXT),
    "/api/user/settings/sensitive/change-password": _object(("newPassword",), newPassword=TEXT),
    "/api/user/settings/sensitive/2fa": _object(("enable",), enable=FLAG, secondFactor=TEXT),
    "/api/admin/registrations/{id}/approve": _object(),
    "/api/admin/registrations/{id}/reject": _object(reason=TEXT),
}

QUERY_PARAMETERS: dict[str, list[dict[str, Any]]] = {
    "/api/registration/status": [
        {"name": "token", "in": "query", "required": True, "schema": TEXT}
    ],
    "/api/admin/registrations": [
        {"name": "state", "in": "query", "schema": TEXT},
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 0}},
        {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0}},
    ],
}

ERROR = _object(
    ("errcode", "error"), errcode=TEXT, error=TEXT, field=TEXT, fields={"type": "object"}
)


def _operation(method: str, path: str, handler: Any) -> dict[str, Any]:
    doc = inspect.getdoc(handler) or ""
    summary, _, description = doc.partition("\n\n")
    operation: dict[str, Any] = {
        "summary": summary.replace("\n", " "),
        "responses": {
            "2XX": {"description": "Success", "content": {"application/json": {"schema": {}}}},
            "4XX": {
                "description": "The JSON error body",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            },
        },
    }
    if description:
        operation["description"] = description
    parameters = list(QUERY_PARAMETERS.get(path, []))
    if "{id}" in path:
        parameters.append({"name": "id", "in": "path", "required": True, "schema": TEXT})
    if parameters:
        operation["parameters"] = parameters
    if method == "POST":
        operation["requestBody"] = {
            "required": path in REQUEST_BODIES and "required" in REQUEST_BODIES[path],
            "content": {"application/json": {"schema": REQUEST_BODIES.get(path, _object())}},
        }
    if path.startswith("/api/admin/"):
        operation["security"] = [{"adminToken": []}]
    elif method == "POST":
        operation["security"] = [{"csrfToken": []}]
    return operation


def openapi_document(app: web.Application, title: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        if not path or not path.startswith("/api/") or route.method == "HEAD":
            continue
        paths.setdefault(path, {})[route.method.lower()] = _operation(
            route.method, path, route.handler
        )
    return {
        "openapi": "3.0.3",
        "info": {"title": title, "version": "1"},
        "paths": paths,
        "components": {
            "schemas": {"Error": ERROR},
            "securitySchemes": {
                "adminToken": {"type": "http", "scheme": "bearer"},
                "csrfToken": {"type": "apiKey", "in": "header", "name": "X-CSRF-Token"},
            },
        },
    }
