"""Schemathesis against /api/openapi.json: no 5xx, and every answer as documented.

Schemathesis runs as a child process (the server lives on this test's event loop, which
a synchronous run in this thread would block); tests/fuzz_hooks.py gives each request
the fuzz account's session, sudo and CSRF token. GATEKEEPER_FUZZ_EXAMPLES sets the
examples per operation (`make fuzz` runs many more), GATEKEEPER_FUZZ_SEED replays a run.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any

import pytest

from gatekeeper.appservice.runtime.program import Gatekeeper
from tests.conftest import ADMIN_API_TOKEN, Homeserver, StartGatekeeper
from tests.flows import WebClient, active_account, logged_in, web_url

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
REPOSITORY = Path(__file__).parent.parent
EXAMPLES = int(os.environ.get("GATEKEEPER_FUZZ_EXAMPLES", "10"))
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
)
# The answers that say a request never got past the credentials the hooks inject.
REFUSED_AT_THE_DOOR = {"GK_NOT_LOGGED_IN", "GK_SUDO_REQUIRED", "GK_CSRF", "GK_UNAUTHORIZED"}


@pytest.fixture
async def gatekeeper(start_gatekeeper: StartGatekeeper, synapse: Homeserver) -> Gatekeeper:
    """With an admin token (password changes reach Synapse) and generous limits: the
    fuzzer's wrong sudo passwords must not lock the account the hooks log back into, and
    rate limits would otherwise answer 429 before most bodies are even read."""
    admin = await synapse.server.register_user(
        f"server-admin-{secrets.token_hex(3)}", "admin password 123", admin=True
    )
    return await start_gatekeeper(
        homeserver={"admin_token": admin["access_token"]},
        registration={"require_email_confirmation": False},
        security={
            "lockout_failures": 1_000_000,
            "login_attempts_per_minute": 1_000_000,
            "signups_per_hour": 1_000_000,
        },
    )


async def run_schemathesis(
    gatekeeper: Gatekeeper, settings: dict[str, Any], directory: Path
) -> list[dict[str, Any]]:
    """Fuzz every operation with `settings` in the hooks; the answers the hooks logged."""
    answer_log = directory / "answers.jsonl"
    settings_file = directory / "settings.json"
    settings_file.write_text(json.dumps({**settings, "answerLog": str(answer_log)}))
    seed = os.environ.get("GATEKEEPER_FUZZ_SEED")
    process = await asyncio.create_subprocess_exec(
        str(SCHEMATHESIS),
        "run",
        f"{web_url(gatekeeper)}/api/openapi.json",
        "--checks",
        ",".join(CHECKS),
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        str(EXAMPLES),
        *(["--seed", seed] if seed else []),
        "--workers",
        "2",
        "--generation-database",
        "none",
        "--no-color",
        cwd=directory,
        env={
            **os.environ,
            "SCHEMATHESIS_HOOKS": "tests.fuzz_hooks",
            "PYTHONPATH": str(REPOSITORY),
            "GATEKEEPER_FUZZ_SETTINGS": str(settings_file),
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    assert process.returncode == 0, output.decode(errors="replace")
    return [json.loads(line) for line in answer_log.read_text().splitlines()]


def operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path) for path, methods in document["paths"].items() for method in methods
    }


async def test_fuzzing_with_a_session_finds_nothing(gatekeeper: Gatekeeper, tmp_path: Path) -> None:
    applicant = await active_account(gatekeeper, "fuzz")
    async with await logged_in(gatekeeper, applicant) as client:
        sudo = await client.post("/api/user/settings/sudo", {"password": applicant.password})
        assert sudo == (200, {"success": True})
        cookies = {cookie.key: cookie.value for cookie in client.session.cookie_jar}
        _, document = await client.get("/api/openapi.json")
    answers = await run_schemathesis(
        gatekeeper,
        {
            "baseUrl": web_url(gatekeeper),
            "email": applicant.email,
            "password": applicant.password,
            "adminToken": ADMIN_API_TOKEN,
            "cookies": cookies,
        },
        tmp_path,
    )
    # The credentials held: every operation was answered past the door at least once.
    let_in = {(a["method"], a["path"]) for a in answers if a["errcode"] not in REFUSED_AT_THE_DOOR}
    assert operations(document) - let_in == set()


async def test_fuzzing_without_a_session_finds_nothing(
    gatekeeper: Gatekeeper, tmp_path: Path
) -> None:
    async with WebClient(gatekeeper) as client:
        _, body = await client.get("/api/csrf")
    answers = await run_schemathesis(
        gatekeeper,
        {"baseUrl": web_url(gatekeeper), "cookies": {"CSRF-Token": body["csrfToken"]}},
        tmp_path,
    )
    # Nothing under settings answers without a session (bad input may be refused first).
    settings = {a["status"] for a in answers if a["path"].startswith("/api/user/settings/")}
    assert 401 in settings
    assert all(400 <= status < 500 for status in settings)


# Found by probing beyond the fuzzer's alphabet: PostgreSQL refuses NUL, and unpaired
# surrogates are not UTF-8; each used to be a 500.
UNSTORABLE = ["a\x00b@example.org", "a\ud800b@example.org"]


@pytest.mark.parametrize("text", UNSTORABLE)
async def test_unstorable_text_is_refused_not_a_crash(gatekeeper: Gatekeeper, text: str) -> None:
    async with WebClient(gatekeeper) as client:
        login = await client.post("/api/auth/login", {"email": text, "password": "x"})
        assert login[0] == 422
        assert login[1]["fields"] == {
            "email": "must be text without NUL characters or broken Unicode"
        }
        status, body = await client.get("/api/registration/status?token=%00")
        assert (status, body["errcode"]) == (400, "GK_BAD_TEXT")
