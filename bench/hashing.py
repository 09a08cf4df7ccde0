"""Sign-up and login: the endpoints that hash a password, against the argon2id ceiling."""

from __future__ import annotations

import secrets

from bench.context import PASSWORD, Bench, log_in
from bench.load import Call, Load, LoadResult, new_client_address, run_load
from bench.report import Figure
from bench.seed import seeded_requests
from gatekeeper.appservice.domain.passwords import PasswordHasher

HASHING_CLIENTS = 8
CEILING_SHARE = 0.9
ARGON2_CEILING = "argon2id hashes/s, all cores"
SIGN_UP_CEILING = "hash + Synapse name check/s, all cores"


def sign_up_calls(prefix: str, count: int) -> tuple[Call, ...]:
    return tuple(
        Call(
            "POST",
            "/api/auth/sign-up",
            {
                "userName": f"{prefix}-{index}",
                "email": f"{prefix}-{index}@example.org",
                "password": PASSWORD,
                "language": "en",
            },
            client=new_client_address(),
        )
        for index in range(count)
    )


def _against_ceiling(
    scenario: str, what: str, result: LoadResult, ceiling_name: str, ceiling: float
) -> list[Figure]:
    succeeded = result.requests - result.failures
    return [
        Figure(
            scenario,
            f"{what}/s ({HASHING_CLIENTS} clients, {result.failures} failed)",
            succeeded / result.elapsed,
            "/s",
            ceiling_name,
            ceiling,
            f"ratio ≥ {CEILING_SHARE}",
            result.failures == 0 and succeeded / result.elapsed >= CEILING_SHARE * ceiling,
        )
    ]


async def signup(bench: Bench) -> list[Figure]:
    ceiling = await bench.sign_up_ceiling()
    calls = sign_up_calls(f"su{secrets.token_hex(2)}", bench.sizes.signups)
    result = await run_load(Load(bench.stack.web_url, calls, concurrency=HASHING_CLIENTS))
    return _against_ceiling("signup", "sign-ups", result, SIGN_UP_CEILING, ceiling)


async def login(bench: Bench) -> list[Figure]:
    ceiling = await bench.argon2_ceiling()
    accounts = await seeded_requests(
        bench.stack.db, "lg", bench.sizes.logins, PasswordHasher.argon2_hasher().hash(PASSWORD)
    )
    # Every answer is 200, a refused login too: one checked login proves the accounts work.
    await log_in(bench.stack.web_url, accounts[0][1])
    calls = tuple(
        Call(
            "POST",
            "/api/auth/login",
            {"email": email, "password": PASSWORD},
            client=new_client_address(),
        )
        for _, email in accounts[1:]
    )
    result = await run_load(Load(bench.stack.web_url, calls, concurrency=HASHING_CLIENTS))
    return _against_ceiling("login", "logins", result, ARGON2_CEILING, ceiling)
