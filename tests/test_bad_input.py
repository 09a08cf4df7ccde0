"""Hostile bodies get a plain 4xx: no traceback, no echo of what the attacker chose."""

from __future__ import annotations

import logging

import pytest

from appservice.program import Gatekeeper
from tests.conftest import StartGatekeeper
from tests.flows import WebClient, new_applicant


@pytest.fixture
async def gatekeeper(start_gatekeeper: StartGatekeeper) -> Gatekeeper:
    return await start_gatekeeper()


async def post_raw(gatekeeper: Gatekeeper, path: str, body: str) -> tuple[int, str]:
    """POST `body` as it is, with a valid CSRF token; the status and the answer's text."""
    async with WebClient(gatekeeper) as client:
        await client.get("/api/csrf")
        async with client.session.post(
            client.base + path,
            data=body.encode("utf-8", "surrogatepass"),
            headers={
                "Content-Type": "application/json",
                "X-CSRF-Token": client.cookie("CSRF-Token") or "",
            },
        ) as response:
            return response.status, await response.text()


@pytest.mark.parametrize("depth", [30_000, 990])
async def test_deeply_nested_json_is_a_400_without_a_traceback(
    gatekeeper: Gatekeeper, caplog: pytest.LogCaptureFixture, depth: int
) -> None:
    body = '{"email": ' + "[" * depth + "]" * depth + "}"
    assert len(body) < 64 * 1024
    with caplog.at_level(logging.DEBUG, logger="gatekeeper"):
        for path in ("/api/user/re-trigger-confirmation-email", "/api/auth/sign-up"):
            status, text = await post_raw(gatekeeper, path, body)
            assert (status, text) == (
                400,
                '{"errcode": "GK_NOT_JSON", "error": "The body must be a JSON object'
                ' nested at most 32 levels deep."}',
            ), path
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]


async def test_nesting_within_the_limit_is_judged_by_field(gatekeeper: Gatekeeper) -> None:
    body = '{"email": ' + "[" * 31 + "]" * 31 + "}"
    status, text = await post_raw(gatekeeper, "/api/user/re-trigger-confirmation-email", body)
    assert status == 422
    assert '"field": "email"' in text


HOSTILE_KEY = "<script>alert(1)</script>"


async def test_an_unknown_key_is_never_echoed(gatekeeper: Gatekeeper) -> None:
    applicant = new_applicant()
    fields = (
        f'"userName": "{applicant.localpart}", "email": "{applicant.email}",'
        f' "password": "{applicant.password}"'
    )
    for value in ('"\\u0000"', '"\\ud800"', '{"x": "\\u0000"}', '["\\u0000"]'):
        status, text = await post_raw(
            gatekeeper, "/api/auth/sign-up", f'{{{fields}, "{HOSTILE_KEY}": {value}}}'
        )
        assert (status, text) == (
            400,
            '{"errcode": "GK_BAD_TEXT", "error": "The request holds a NUL character or'
            ' broken Unicode."}',
        ), value
    # A key that is itself unstorable is refused the same way, and not repeated either.
    status, text = await post_raw(gatekeeper, "/api/auth/sign-up", f'{{{fields}, "\\u0000": 1}}')
    assert (status, "GK_BAD_TEXT" in text) == (400, True)
    assert await gatekeeper.db.fetchval("SELECT COUNT(*) FROM registration_request") == 0


async def test_a_known_field_with_unstorable_text_is_named(gatekeeper: Gatekeeper) -> None:
    status, text = await post_raw(
        gatekeeper,
        "/api/user/re-trigger-confirmation-email",
        f'{{"email": "a\\u0000@example.org", "{HOSTILE_KEY}": "fine"}}',
    )
    assert status == 422
    assert text == (
        '{"errcode": "GK_INVALID_FIELD", "error": "email must be text without NUL characters'
        ' or broken Unicode", "field": "email", "fields": {"email": "must be text without NUL'
        ' characters or broken Unicode"}}'
    )
