"""Hostile bodies get a plain 4xx: no traceback, no echo of what the attacker chose."""

from __future__ import annotations

import asyncio
import logging

import pytest

from gatekeeper.appservice.runtime.program import Gatekeeper
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


# --- requests that arrive too slowly, or never ------------------------------------------

RECEIVE_SECONDS = 1.0
# The answer to a slow request comes at the deadline; this much later is already a failure.
SLACK_SECONDS = 2.0


@pytest.fixture
async def strict(start_gatekeeper: StartGatekeeper) -> Gatekeeper:
    return await start_gatekeeper(web={"receive_timeout_seconds": RECEIVE_SECONDS})


async def open_raw(gatekeeper: Gatekeeper) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", gatekeeper.config.web.port)


async def json_head(gatekeeper: Gatekeeper, content_length: int) -> bytes:
    """A sign-up's head with a valid CSRF cookie and header, so its body is read."""
    async with WebClient(gatekeeper) as client:
        await client.get("/api/csrf")
        csrf = client.cookie("CSRF-Token") or ""
    return (
        "POST /api/auth/sign-up HTTP/1.1\r\n"
        f"Host: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Cookie: CSRF-Token={csrf}\r\nX-CSRF-Token: {csrf}\r\n"
        f"Content-Length: {content_length}\r\n\r\n"
    ).encode()


FORM_HEAD = (
    "POST /sign-up HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {length}\r\n\r\n"
)


async def answer_status(reader: asyncio.StreamReader, within: float) -> int:
    status_line = await asyncio.wait_for(reader.readline(), within)
    return int(status_line.split()[1])


@pytest.mark.parametrize("kind", ["json", "form"])
async def test_a_huge_content_length_is_refused_at_once(strict: Gatekeeper, kind: str) -> None:
    length = 10**12
    head = await json_head(strict, length) if kind == "json" else FORM_HEAD.format(length=length)
    reader, writer = await open_raw(strict)
    try:
        writer.write(head if isinstance(head, bytes) else head.encode())
        # Well before the receive deadline: nothing needs to arrive to know it is too big.
        assert await answer_status(reader, RECEIVE_SECONDS / 2) == 413
    finally:
        writer.close()


@pytest.mark.parametrize("kind", ["stalled", "trickled"])
async def test_a_body_that_does_not_arrive_in_time_gets_408(strict: Gatekeeper, kind: str) -> None:
    reader, writer = await open_raw(strict)
    try:
        writer.write(await json_head(strict, 100) + b'{"userName"')
        started = asyncio.get_running_loop().time()

        async def trickle() -> None:
            while kind == "trickled":
                writer.write(b" ")
                await asyncio.sleep(0.2)

        trickling = asyncio.create_task(trickle())
        try:
            status = await answer_status(reader, RECEIVE_SECONDS + SLACK_SECONDS)
        finally:
            trickling.cancel()
        assert status == 408
        assert asyncio.get_running_loop().time() - started >= RECEIVE_SECONDS * 0.9
    finally:
        writer.close()


async def test_a_slow_head_is_cut_off(strict: Gatekeeper) -> None:
    reader, writer = await open_raw(strict)
    started = asyncio.get_running_loop().time()
    try:
        writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")

        async def trickle() -> None:
            for _ in range(100):
                writer.write(b"X")
                await asyncio.sleep(0.2)

        trickling = asyncio.create_task(trickle())
        try:
            # aiohttp answers nothing: it closes the connection.
            assert await asyncio.wait_for(reader.read(), RECEIVE_SECONDS + SLACK_SECONDS) == b""
        finally:
            trickling.cancel()
        assert asyncio.get_running_loop().time() - started >= RECEIVE_SECONDS * 0.9
    finally:
        writer.close()


async def read_answer(reader: asyncio.StreamReader) -> int:
    """One whole answer off a kept-alive connection; its status."""
    status = await answer_status(reader, SLACK_SECONDS)
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        if name.lower() == "content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


async def test_prompt_requests_on_a_kept_alive_connection_are_served(strict: Gatekeeper) -> None:
    reader, writer = await open_raw(strict)
    try:
        for _ in range(3):
            writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert await read_answer(reader) == 200
            await asyncio.sleep(RECEIVE_SECONDS / 2)
    finally:
        writer.close()


@pytest.mark.parametrize("kind", ["json", "form"])
async def test_a_client_hanging_up_mid_body_leaves_no_traceback(
    strict: Gatekeeper, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    head = await json_head(strict, 100) if kind == "json" else FORM_HEAD.format(length=100)
    with caplog.at_level(logging.DEBUG, logger="gatekeeper"):
        reader, writer = await open_raw(strict)
        writer.write((head if isinstance(head, bytes) else head.encode()) + b"userName=a")
        await writer.drain()
        await asyncio.sleep(0.2)  # the handler is waiting for the rest
        writer.close()
        await asyncio.sleep(0.5)
        # The server still answers others.
        reader, writer = await open_raw(strict)
        writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert await read_answer(reader) == 200
        writer.close()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
