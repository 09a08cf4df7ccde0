"""Refusals cost no password hash and no homeserver call, and those this process already
knows of no database access either: a flood of them stays cheap."""

from __future__ import annotations

import asyncio
import contextvars
import math
import re
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import aiohttp
import pytest
from mautrix.util.async_db import Database

from gatekeeper.appservice.domain.passwords import PasswordHasher
from gatekeeper.appservice.runtime.program import Gatekeeper
from harness.matrix_user import MatrixUser
from tests.conftest import StartGatekeeper
from tests.flows import (
    BOT,
    WebClient,
    active_account,
    new_applicant,
    request_id_of,
    room_caught_up,
    sign_up,
    started_with_room,
    web_url,
)

NO_CONFIRMATION = {"require_email_confirmation": False}
# The two reads that refresh the gate's state in memory (gate.STATE_REFRESH_SECONDS).
GATE_STATE_READS = re.compile(r"FROM (bot_state|signup_block) WHERE")
FLOOD = 20

_inside_statement: contextvars.ContextVar[bool] = contextvars.ContextVar("inside", default=False)


def _for_the_web() -> bool:
    """Whether the running code serves a web request, or loads the gate's state for them:
    the await chain from a handler is the frame stack (the bot and the appservice
    listener, with their own statements, run meanwhile)."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        source = frame.f_code.co_filename
        if "/appservice/web/" in source or source.endswith("/appservice/domain/gate.py"):
            return True
        frame = frame.f_back
    return False


@dataclass
class Watch:
    """What a Gatekeeper did meanwhile for the web: its database statements (a connection
    taken for a transaction counts as one), password hashes, calls to the homeserver."""

    statements: list[str] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)
    homeserver_calls: list[str] = field(default_factory=list)

    def reset(self) -> None:
        self.statements.clear()
        self.hashes.clear()
        self.homeserver_calls.clear()

    @property
    def besides_gate_state(self) -> list[str]:
        return [s for s in self.statements if not GATE_STATE_READS.search(s)]

    def assert_cheap(self, most_gate_state_reads: int = 0) -> None:
        """No hash, no homeserver call, no statement but (at most so many of) the gate
        state's refreshing reads, which every process makes at most twice a second."""
        assert self.hashes == []
        assert self.homeserver_calls == []
        assert self.besides_gate_state == []
        assert len(self.statements) <= most_gate_state_reads


def _always() -> bool:
    return True


def count_statements(
    db: Database,
    statements: list[str],
    monkeypatch: pytest.MonkeyPatch,
    counts: Callable[[], bool] = _always,
) -> None:
    """Append to `statements` each statement `db` runs (while `counts()` says so)."""

    def counted(original: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def run(query: str, *args: Any, **kwargs: Any) -> Any:
            if counts():
                statements.append(query)
            token = _inside_statement.set(True)
            try:
                return await original(query, *args, **kwargs)
            finally:
                _inside_statement.reset(token)

        return run

    for name in ("execute", "executemany", "fetch", "fetchrow", "fetchval"):
        monkeypatch.setattr(db, name, counted(getattr(db, name)))
    acquire: Callable[..., Any] = db.acquire

    def connection(*args: Any, **kwargs: Any) -> Any:
        if not _inside_statement.get() and counts():
            statements.append("<a connection>")
        return acquire(*args, **kwargs)

    monkeypatch.setattr(db, "acquire", connection)


@pytest.fixture
def watch(monkeypatch: pytest.MonkeyPatch) -> Callable[[Gatekeeper], Watch]:
    """Watch a started Gatekeeper: its database, every password hasher, its account backend."""

    def start(gatekeeper: Gatekeeper) -> Watch:
        seen = Watch()
        count_statements(gatekeeper.db, seen.statements, monkeypatch, _for_the_web)
        for name in ("hash", "verify", "verify_dummy"):
            original = getattr(PasswordHasher, name)

            async def hashing(self: PasswordHasher, *args: Any, _o: Any = original) -> Any:
                seen.hashes.append(_o.__name__)
                return await _o(self, *args)

            monkeypatch.setattr(PasswordHasher, name, hashing)
        backend = gatekeeper.accounts
        for name in dir(backend):
            method = getattr(backend, name)
            if name.startswith("_") or not asyncio.iscoroutinefunction(method):
                continue

            async def calling(*args: Any, _m: Any = method, _n: str = name, **kwargs: Any) -> Any:
                seen.homeserver_calls.append(_n)
                return await _m(*args, **kwargs)

            monkeypatch.setattr(backend, name, calling)
        return seen

    return start


async def sign_ups(gatekeeper: Gatekeeper, count: int, **extra: Any) -> list[tuple[int, Any]]:
    return list(
        await asyncio.gather(*(sign_up(gatekeeper, new_applicant(), **extra) for _ in range(count)))
    )


async def sign_up_page(gatekeeper: Gatekeeper) -> str:
    url = web_url(gatekeeper) + "/sign-up"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return await response.text()


async def test_honeypot_refusal_touches_nothing(
    start_gatekeeper: StartGatekeeper, watch: Callable[[Gatekeeper], Watch]
) -> None:
    gatekeeper = await start_gatekeeper(antibot={"honeypot": True})
    seen = watch(gatekeeper)
    answers = await sign_ups(gatekeeper, FLOOD, website="http://spam.example")
    assert all((status, body["errcode"]) == (403, "GK_SIGNUP_REFUSED") for status, body in answers)
    seen.assert_cheap()


async def test_closed_gate_refusal_reads_nothing_per_request(
    start_gatekeeper: StartGatekeeper, watch: Callable[[Gatekeeper], Watch]
) -> None:
    gatekeeper = await start_gatekeeper()
    await gatekeeper.started.gate.close("@admin:example.org", "a spam wave")
    assert (await sign_up(gatekeeper, new_applicant()))[0] == 403  # the state is in memory
    seen = watch(gatekeeper)
    answers = await sign_ups(gatekeeper, FLOOD)
    pages = await asyncio.gather(*(sign_up_page(gatekeeper) for _ in range(FLOOD)))
    assert all((status, body["errcode"]) == (403, "GK_SIGNUPS_CLOSED") for status, body in answers)
    assert all("Sign-ups are paused. a spam wave" in page for page in pages)
    # Per request, 40 reads each; in memory, a refresh or two while the flood lasts.
    seen.assert_cheap(most_gate_state_reads=4)


@pytest.mark.parametrize(
    ("kind", "value"),
    [("ip", "127.0.0.1"), ("username", "ann-*"), ("email-domain", "example.org")],
)
async def test_blocked_sign_up_costs_no_hash_no_homeserver_no_read(
    start_gatekeeper: StartGatekeeper,
    watch: Callable[[Gatekeeper], Watch],
    kind: str,
    value: str,
) -> None:
    # The room notes are another test's: here nothing but the refusal runs.
    gatekeeper = await start_gatekeeper(
        registration={**NO_CONFIRMATION, "tell_room_about_blocked": False}
    )
    await gatekeeper.started.gate.add_block(kind, value, "@admin:example.org", None)
    assert (await sign_up(gatekeeper, new_applicant()))[0] == 403
    seen = watch(gatekeeper)
    answers = await sign_ups(gatekeeper, FLOOD)
    assert all((status, body["errcode"]) == (403, "GK_SIGNUP_REFUSED") for status, body in answers)
    seen.assert_cheap(most_gate_state_reads=4)


async def test_rate_limited_sign_up_is_remembered(
    start_gatekeeper: StartGatekeeper, watch: Callable[[Gatekeeper], Watch]
) -> None:
    gatekeeper = await start_gatekeeper(
        registration=NO_CONFIRMATION, security={"signups_per_hour": 2}
    )
    assert [status for status, _ in await sign_ups(gatekeeper, 3)].count(201) == 2
    seen = watch(gatekeeper)
    answers = await sign_ups(gatekeeper, FLOOD)
    assert all((status, body["errcode"]) == (429, "GK_RATE_LIMITED") for status, body in answers)
    seen.assert_cheap(most_gate_state_reads=4)
    # Counted exactly while under the limit: two sign-ups, then the hit that went over.
    hits = await gatekeeper.db.fetchval(
        "SELECT hits FROM rate_limit WHERE key = 'signup:addr:127.0.0.1'"
    )
    assert hits == 3


async def test_rate_limited_login_is_remembered(
    start_gatekeeper: StartGatekeeper, watch: Callable[[Gatekeeper], Watch]
) -> None:
    gatekeeper = await start_gatekeeper(
        registration=NO_CONFIRMATION, security={"login_attempts_per_minute": 3}
    )
    pat = await active_account(gatekeeper, "pat")
    async with WebClient(gatekeeper) as client:
        await client.get("/api/csrf")
        wrong = {"email": pat.email, "password": "not the password"}
        for _ in range(3):
            assert await client.post("/api/auth/login", wrong) == (
                200,
                {"status": "invalid-credentials"},
            )
        assert (await client.post("/api/auth/login", wrong))[0] == 429  # the DB says so once
        seen = watch(gatekeeper)
        right = {"email": pat.email, "password": pat.password}
        answers = await asyncio.gather(
            *(client.post("/api/auth/login", right) for _ in range(FLOOD))
        )
    assert all((status, body["errcode"]) == (429, "GK_RATE_LIMITED") for status, body in answers)
    seen.assert_cheap()


async def test_locked_login_never_hashes(
    start_gatekeeper: StartGatekeeper, watch: Callable[[Gatekeeper], Watch]
) -> None:
    gatekeeper = await start_gatekeeper(
        registration=NO_CONFIRMATION,
        security={"lockout_failures": 3, "login_attempts_per_minute": 1000},
    )
    quin = await active_account(gatekeeper, "quin")
    async with WebClient(gatekeeper) as client:
        await client.get("/api/csrf")
        for _ in range(3):
            await client.post("/api/auth/login", {"email": quin.email, "password": "wrong one!"})
        seen = watch(gatekeeper)
        right = {"email": quin.email, "password": quin.password}
        first = await client.post("/api/auth/login", right)
        answers = await asyncio.gather(
            *(client.post("/api/auth/login", right) for _ in range(FLOOD))
        )
        status, body = await client.post(
            "/api/auth/login-with-second-factor", {**right, "secondFactor": "000000"}
        )
    assert first == (200, {"status": "invalid-credentials"})
    assert all(answer == (200, {"status": "invalid-credentials"}) for answer in answers)
    assert (status, body["status"]) == (200, "invalid-credentials")
    assert "timeoutUntil" in body
    assert seen.hashes == []
    assert seen.homeserver_calls == []
    # The first try looks its name up and meets the lock, known since the failure that
    # set it; from then on the lock is known by the name typed, and a try needs no
    # database at all. A try the lock refuses tests no password, so it is not counted
    # against the address either.
    assert len(seen.statements) == 1
    assert "registration_request" in seen.statements[0]


async def test_a_spam_wave_of_blocked_sign_ups_is_a_few_notes(
    start_gatekeeper: StartGatekeeper, alice: MatrixUser
) -> None:
    gatekeeper, room_id = await started_with_room(
        start_gatekeeper, alice, registration=NO_CONFIRMATION
    )
    answer = await alice.reply_to(room_id, "!block username spam*", BOT)
    block_id = answer.split()[1].rstrip(":")
    # A short window, so the test need not wait a minute for the count.
    window = gatekeeper.started.gate.refusal_notes.window_seconds = 3.0
    started = time.monotonic()
    answers = await asyncio.gather(
        *(sign_up(gatekeeper, new_applicant(f"spam{n}")) for n in range(FLOOD))
    )
    wave_windows = math.ceil((time.monotonic() - started) / window)
    assert all(status == 403 for status, _ in answers)

    def note(event: Any) -> str:
        # This room's only: an earlier test's room may still get its count of refusals.
        body = event["content"].get("body", "")
        ours = event["room_id"] == room_id and event["sender"] == BOT
        return body if ours and "efused" in body else ""

    first = note(await alice.wait_for(lambda e: bool(note(e))))
    assert re.fullmatch(rf"Refused a sign-up for @spam\d+-\w+:\S+: block {block_id} .*\.", first)
    why = re.escape(f"block {block_id} (username spam*).")
    told, counts = 1, []
    while told < FLOOD:
        counts.append(note(await alice.wait_for(lambda e: bool(note(e)))))
        match = re.fullmatch(
            rf"(\d+) more sign-ups? refused since the last note: {why}", counts[-1]
        )
        assert match, counts[-1]
        told += int(match.group(1))
    assert told == FLOOD
    # One note with the count per window the wave lasted (one, unless the machine is slow).
    assert len(counts) <= wave_windows
    await asyncio.sleep(2 * window)
    await room_caught_up(alice, room_id)
    assert [note(e) for e in alice.timeline if note(e)] == []


async def test_a_login_costs_four_statements_around_its_hash(
    start_gatekeeper: StartGatekeeper, watch: Callable[[Gatekeeper], Watch]
) -> None:
    gatekeeper = await start_gatekeeper(registration=NO_CONFIRMATION)
    rio = await active_account(gatekeeper, "rio")
    right = {"email": rio.email, "password": rio.password}
    lockout_key = f"lockout:request:{await request_id_of(gatekeeper, rio)}"
    seen = watch(gatekeeper)
    async with WebClient(gatekeeper) as client:
        await client.get("/api/csrf")
        seen.reset()
        assert await client.post("/api/auth/login", right) == (200, {"status": "logged-in"})
    # The address's count, the account with its second factor, its lock, the session:
    # no lockout to forget, and 2FA read with the account.
    assert len(seen.besides_gate_state) == 4, seen.besides_gate_state
    assert seen.hashes == ["verify"]
    async with WebClient(gatekeeper) as client:
        await client.get("/api/csrf")
        wrong = {"email": rio.email, "password": "not the password"}
        assert await client.post("/api/auth/login", wrong) == (
            200,
            {"status": "invalid-credentials"},
        )
        assert await gatekeeper.db.fetchval(
            "SELECT hits FROM rate_limit WHERE key = $1", lockout_key
        )
        seen.reset()
        assert await client.post("/api/auth/login", right) == (200, {"status": "logged-in"})
    # With a failure counted, one more: the login forgets it.
    assert len(seen.besides_gate_state) == 5, seen.besides_gate_state
    assert (
        await gatekeeper.db.fetchval("SELECT 1 FROM rate_limit WHERE key = $1", lockout_key) is None
    )
