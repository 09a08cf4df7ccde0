"""Sign-up and login: the endpoints that hash a password, against the argon2id ceiling."""

from __future__ import annotations

import secrets
import statistics
from dataclasses import dataclass

from bench.context import PASSWORD, Bench
from bench.load import Call, Load, LoadResult, new_client_address, run_load
from bench.report import Figure
from bench.seed import seeded_requests
from gatekeeper.appservice.domain.passwords import PasswordHasher

HASHING_CLIENTS = 8
CEILING_SHARE = 0.9
ARGON2_CEILING = "argon2id hashes/s, all cores"
SIGN_UP_CEILING = "hash + Synapse name check/s, all cores"


def sign_up_call(prefix: str, index: int, client: str | None = None, **fields: str) -> Call:
    """Applicant `index`'s sign-up, from `client` (by default an address of its own);
    `fields` add to the form or replace its fields."""
    return Call(
        "POST",
        "/api/auth/sign-up",
        {
            "userName": f"{prefix}-{index}",
            "email": f"{prefix}-{index}@example.org",
            "password": PASSWORD,
            "language": "en",
            **fields,
        },
        client=client or new_client_address(),
    )


def sign_up_calls(prefix: str, count: int) -> tuple[Call, ...]:
    return tuple(sign_up_call(prefix, index) for index in range(count))


@dataclass(frozen=True)
class _Hashed:
    """A hashing load: what the load saw, and the hashes Gatekeeper computed meanwhile."""

    result: LoadResult
    hashes: int


async def _hashing_load(bench: Bench, calls: tuple[Call, ...]) -> _Hashed:
    before = bench.stack.counts()
    result = await run_load(Load(bench.stack.web_url, calls, concurrency=HASHING_CLIENTS))
    return _Hashed(result, (bench.stack.counts() - before).hashes)


def _against_ceiling(
    scenario: str,
    what: str,
    load: _Hashed,
    done: int,
    ceiling_name: str,
    ceilings: tuple[float, float],
) -> list[Figure]:
    """`done`: the requests that did what they asked, as the database shows (a refused
    login is a 200 too). The ceiling is measured right before and right after the load,
    and their mean is the limit: on a shared machine either alone may catch a busy moment.
    The hashes show that each request made its one."""
    result = load.result
    failed = result.requests - done
    ceiling = statistics.mean(ceilings)
    before, after = ceilings
    return [
        Figure(
            scenario,
            f"{what}/s ({HASHING_CLIENTS} clients, {failed} failed, {load.hashes} hashes;"
            f" ceiling {before:.0f} before, {after:.0f} after)",
            done / result.elapsed,
            "/s",
            ceiling_name,
            ceiling,
            f"ratio ≥ {CEILING_SHARE}",
            failed == 0 and done / result.elapsed >= CEILING_SHARE * ceiling,
        )
    ]


async def signup(bench: Bench) -> list[Figure]:
    before = await bench.sign_up_ceiling()
    prefix = f"su{secrets.token_hex(2)}"
    load = await _hashing_load(bench, sign_up_calls(prefix, bench.sizes.signups))
    made = await bench.stack.db.fetchval(
        "SELECT COUNT(*) FROM registration_request WHERE localpart LIKE $1", f"{prefix}-%"
    )
    ceilings = (before, await bench.sign_up_ceiling())
    return _against_ceiling("signup", "sign-ups", load, made, SIGN_UP_CEILING, ceilings)


async def _sessions(bench: Bench) -> int:
    return int(await bench.stack.db.fetchval("SELECT COUNT(*) FROM web_session"))


async def login(bench: Bench) -> list[Figure]:
    ceiling_before = await bench.argon2_ceiling()
    accounts = await seeded_requests(
        bench.stack.db, "lg", bench.sizes.logins, PasswordHasher.argon2_hasher().hash(PASSWORD)
    )
    calls = tuple(
        Call(
            "POST",
            "/api/auth/login",
            {"email": email, "password": PASSWORD},
            client=new_client_address(),
        )
        for _, email in accounts
    )
    before = await _sessions(bench)
    load = await _hashing_load(bench, calls)
    logged_in = await _sessions(bench) - before
    ceilings = (ceiling_before, await bench.argon2_ceiling())
    return _against_ceiling("login", "logins", load, logged_in, ARGON2_CEILING, ceilings)
