"""What every web handler shares: the error type and reading a JSON body's fields."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from appservice.signup import FieldErrors

MAX_BODY_BYTES = 64 * 1024


class ApiError(Exception):
    """An answer other than success; a middleware turns it into the JSON error body."""

    def __init__(
        self,
        status: int,
        errcode: str,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.errcode = errcode
        self.message = message
        self.field = field
        self.headers = headers or {}


def storable(text: str) -> bool:
    """Whether `text` can be kept and compared: PostgreSQL refuses NUL characters, and
    unpaired surrogates (JSON allows "\\ud800"; aiohttp decodes stray bytes to them) are
    not UTF-8, so neither database nor hash takes them."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _all_storable(value: Any) -> bool:
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, list):
        return all(_all_storable(item) for item in value)
    if isinstance(value, dict):
        return all(_all_storable(item) for item in value.values())
    return True


async def json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(
            413, "GK_TOO_LARGE", f"The body is larger than {MAX_BODY_BYTES} bytes."
        ) from None
    except ValueError:
        raise ApiError(400, "GK_NOT_JSON", "The body must be a JSON object.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "GK_NOT_JSON", "The body must be a JSON object.")
    refused = {
        field: "must be text without NUL characters or broken Unicode"
        for field, value in body.items()
        if not _all_storable(value)
    }
    if refused:
        raise FieldErrors(refused)
    return body


def text_field(body: dict[str, Any], field: str) -> str:
    value = body.get(field)
    if not isinstance(value, str) or not value:
        raise FieldErrors({field: "is required"})
    return value


def flag_field(body: dict[str, Any], field: str) -> bool:
    value = body.get(field, False)
    if not isinstance(value, bool):
        raise FieldErrors({field: "must be true or false"})
    return value
