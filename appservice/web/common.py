"""What every web handler shares: the error type and reading a JSON body's fields."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gatekeeper.appservice.domain.errors import FieldErrors
from gatekeeper.appservice.web.openapi import body_schema

MAX_BODY_BYTES = 64 * 1024
# Every body of the API is a flat object; deeper ones are refused before they are walked.
MAX_JSON_NESTING = 32


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


def too_large() -> ApiError:
    return ApiError(413, "GK_TOO_LARGE", f"The body is larger than {MAX_BODY_BYTES} bytes.")


def too_deep() -> ApiError:
    return ApiError(
        400,
        "GK_NOT_JSON",
        f"The body must be a JSON object nested at most {MAX_JSON_NESTING} levels deep.",
    )


def unstorable_text() -> ApiError:
    """Bad text (see `storable`) where naming the place would repeat what the client chose."""
    return ApiError(400, "GK_BAD_TEXT", "The request holds a NUL character or broken Unicode.")


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


def _nesting_and_storable(value: Any) -> tuple[int, bool]:
    """How deep `value` nests, and whether all its text (keys too) is storable; walked
    without recursion, so no body can exhaust the stack."""
    deepest, storable_so_far = 0, True
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, str):
            storable_so_far = storable_so_far and storable(item)
        elif isinstance(item, list | dict):
            deepest = max(deepest, depth + 1)
            if deepest > MAX_JSON_NESTING:
                return deepest, storable_so_far
            children = [*item, *item.values()] if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)
    return deepest, storable_so_far


def known_fields(request: web.Request) -> frozenset[str]:
    """The body fields this endpoint takes, as its OpenAPI document lists them."""
    resource = request.match_info.route.resource
    schema = body_schema(request.method, resource.canonical if resource else "") or {}
    return frozenset(schema.get("properties", {}))


async def json_body(request: web.Request) -> dict[str, Any]:
    """The body's JSON object. Bad text in a field the endpoint knows is named (422); bad
    text anywhere else is refused without repeating a key the client chose (400)."""
    try:
        body = await request.json()
    except web.HTTPRequestEntityTooLarge:
        raise too_large() from None
    except ValueError:
        raise ApiError(400, "GK_NOT_JSON", "The body must be a JSON object.") from None
    except RecursionError:  # json's parser recurses once per level
        raise too_deep() from None
    if not isinstance(body, dict):
        raise ApiError(400, "GK_NOT_JSON", "The body must be a JSON object.")
    known = known_fields(request)
    refused: dict[str, str] = {}
    for key, value in body.items():
        depth, ok = _nesting_and_storable(value)
        if depth >= MAX_JSON_NESTING:  # the body's object is one level more
            raise too_deep()
        if key in known and not ok:
            refused[key] = "must be text without NUL characters or broken Unicode"
        elif not (ok and storable(key)):
            raise unstorable_text()
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
