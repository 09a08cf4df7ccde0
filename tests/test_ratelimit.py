"""Rate limits and account lockouts, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest
from mautrix.util.async_db import Database

from gatekeeper.appservice.storage.ratelimit import (
    Limit,
    Lockout,
    RateLimited,
    RateLimiter,
    RefusalMemo,
    address_key,
)
from tests.test_cheap_refusals import count_statements


class Clock:
    """A clock the test moves by hand, in milliseconds."""

    def __init__(self, start: int = 1_700_000_000_000) -> None:
        self.ms = start

    def __call__(self) -> int:
        return self.ms

    def advance(self, seconds: float) -> None:
        self.ms += round(seconds * 1000)


async def test_limit_allows_n_hits_per_window(db: Database) -> None:
    clock = Clock()
    limiter = RateLimiter(db, now=clock)
    limit = Limit(3, 60)
    for _ in range(3):
        await limiter.hit("login:addr:203.0.113.9", limit)
    clock.advance(20)
    with pytest.raises(RateLimited) as raised:
        await limiter.hit("login:addr:203.0.113.9", limit)
    assert raised.value.retry_after == 40

    # Other keys have their own counters.
    await limiter.hit("login:addr:203.0.113.10", limit)

    clock.advance(39.5)
    with pytest.raises(RateLimited) as raised:
        await limiter.hit("login:addr:203.0.113.9", limit)
    assert raised.value.retry_after >= 1
    assert raised.value.retry_after <= 60

    clock.advance(0.5)
    for _ in range(3):
        await limiter.hit("login:addr:203.0.113.9", limit)
    with pytest.raises(RateLimited):
        await limiter.hit("login:addr:203.0.113.9", limit)


async def test_concurrent_hits_count_exactly(db: Database) -> None:
    limiter = RateLimiter(db, now=Clock())
    results = await asyncio.gather(
        *(limiter.hit("signup:addr:198.51.100.1", Limit(20, 3600)) for _ in range(50)),
        return_exceptions=True,
    )
    assert sum(r is None for r in results) == 20
    assert all(isinstance(r, RateLimited) for r in results if r is not None)


async def test_concurrent_failures_count_exactly(db: Database) -> None:
    lockout = Lockout(db, max_failures=1000, now=Clock())
    await asyncio.gather(*(lockout.failure("alice") for _ in range(50)))
    assert await lockout.failures("alice") == 50
    await lockout.check("alice")


async def test_names_differing_in_case_and_spaces_share_a_counter(db: Database) -> None:
    lockout = Lockout(db, max_failures=1000, now=Clock())
    for name in ("Alice", "alice", " ALICE "):
        await lockout.failure(name)
    assert await lockout.failures("alice") == 3
    assert await lockout.failures("bob") == 0
    assert Lockout.account_key(" ALICE ") == Lockout.account_key("alice")


async def lock(lockout: Lockout, name: str, times: int) -> None:
    for _ in range(times):
        await lockout.check(name)
        await lockout.failure(name)


async def retry_after(lockout: Lockout, name: str) -> int:
    """The wait `lockout` asks of `name`, whose check it must refuse."""
    with pytest.raises(RateLimited) as raised:
        await lockout.check(name)
    return raised.value.retry_after


async def test_lockout_wait_doubles_up_to_the_cap(db: Database) -> None:
    clock = Clock()
    lockout = Lockout(db, max_failures=5, first_wait_seconds=60, max_wait_seconds=200, now=clock)

    await lock(lockout, "alice", 4)
    await lockout.check("alice")
    await lockout.failure("alice")
    assert await retry_after(lockout, "alice") == 60
    await lockout.check("bob")

    clock.advance(59)
    assert await retry_after(lockout, "alice") == 1
    clock.advance(1)
    await lock(lockout, "alice", 5)
    assert await retry_after(lockout, "alice") == 120

    for _ in range(2):
        clock.advance(300)
        await lock(lockout, "alice", 5)
        assert await retry_after(lockout, "alice") == 200


async def test_lockout_counts_concurrent_failures_once_each(db: Database) -> None:
    clock = Clock()
    lockout = Lockout(db, max_failures=10, first_wait_seconds=60, now=clock)
    await asyncio.gather(*(lockout.failure("alice") for _ in range(25)))
    # Two lockouts (60 s, then 120 s from the same instant) and 5 failures towards a third.
    assert await lockout.failures("alice") == 5
    assert await retry_after(lockout, "alice") == 120


async def test_success_clears_failures_and_lockouts(db: Database) -> None:
    clock = Clock()
    lockout = Lockout(db, max_failures=5, first_wait_seconds=60, now=clock)
    await lock(lockout, "alice", 5)
    clock.advance(60)
    await lock(lockout, "alice", 3)
    assert await lockout.failures("alice") == 3

    await lockout.success("Alice")
    assert await lockout.failures("alice") == 0
    # The next lockout is a first one again.
    await lock(lockout, "alice", 5)
    assert await retry_after(lockout, "alice") == 60


async def test_success_does_not_lift_a_lock_in_force(db: Database) -> None:
    clock = Clock()
    lockout = Lockout(db, max_failures=3, first_wait_seconds=60, now=clock)
    await lock(lockout, "alice", 3)
    await lockout.success("alice")
    await retry_after(lockout, "alice")


async def test_check_tells_whether_a_success_has_something_to_forget(db: Database) -> None:
    clock = Clock()
    lockout = Lockout(db, max_failures=2, first_wait_seconds=60, now=clock)
    assert await lockout.check("alice") is False
    await lockout.failure("alice")
    assert await lockout.check("Alice") is True
    await lockout.failure("alice")
    clock.advance(60)
    # The lock has ended, not the lockout it counts (the next wait doubles).
    assert await lockout.check("alice") is True
    await lockout.success("alice")
    assert await lockout.check("alice") is False
    await lock(lockout, "alice", 2)
    assert await retry_after(lockout, "alice") == 60


async def test_single_failure_lockout(db: Database) -> None:
    clock = Clock()
    lockout = Lockout(db, max_failures=1, first_wait_seconds=10, max_wait_seconds=15, now=clock)
    await lockout.failure("alice")
    assert await retry_after(lockout, "alice") == 10
    clock.advance(10)
    await lockout.failure("alice")
    assert await retry_after(lockout, "alice") == 15


async def test_a_key_over_its_limit_is_refused_from_memory_until_its_window_ends(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    limiter = RateLimiter(db, now=clock)
    limit = Limit(2, 60)
    statements: list[str] = []
    count_statements(db, statements, monkeypatch)
    for _ in range(2):
        await limiter.hit("signup:addr:203.0.113.9", limit)
    with pytest.raises(RateLimited):
        await limiter.hit("signup:addr:203.0.113.9", limit)
    assert len(statements) == 3
    clock.advance(30)
    for _ in range(10):
        with pytest.raises(RateLimited) as raised:
            await limiter.hit("signup:addr:203.0.113.9", limit)
        assert raised.value.retry_after == 30
    assert len(statements) == 3  # no database for a refusal already known
    # Other keys, and the same key under another limit, are counted as ever.
    await limiter.hit("signup:addr:203.0.113.10", limit)
    await limiter.hit("login:addr:203.0.113.9", limit)
    assert len(statements) == 5
    clock.advance(30)
    await limiter.hit("signup:addr:203.0.113.9", limit)  # a new window, counted again
    assert len(statements) == 6


async def test_a_lock_is_known_without_the_database_until_it_ends(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    lockout = Lockout(db, max_failures=3, first_wait_seconds=60, now=clock)
    other_process = Lockout(db, max_failures=3, first_wait_seconds=60, now=clock)
    await lock(other_process, "alice", 3)
    statements: list[str] = []
    count_statements(db, statements, monkeypatch)
    assert await retry_after(lockout, "alice") == 60
    assert len(statements) == 1  # learnt from the database once
    clock.advance(20)
    assert await retry_after(lockout, "alice") == 40
    # A login elsewhere lifts no lock in force: the remembered one still holds.
    await other_process.success("alice")
    assert await retry_after(lockout, "alice") == 40
    assert len(statements) == 2  # the success's statement alone
    clock.advance(40)
    await lockout.check("alice")
    # The failure that locks tells its own process at once.
    await lock(lockout, "bob", 3)
    statements.clear()
    assert await retry_after(lockout, "bob") == 60
    assert statements == []


def test_remembered_refusals_are_bounded() -> None:
    memo = RefusalMemo(size=3)
    for n in range(5):
        memo.remember(f"login:addr:203.0.113.{n}", 2_000)
    assert len(memo) == 3
    # The oldest are forgotten (and cost one database access again when they come back).
    assert memo.refused_until("login:addr:203.0.113.0", 1_000) is None
    assert memo.refused_until("login:addr:203.0.113.4", 1_000) == 2_000
    # An entry whose time is up goes, and refuses nothing.
    assert memo.refused_until("login:addr:203.0.113.4", 2_000) is None
    assert len(memo) == 2


def test_address_key_groups_ipv6_by_64() -> None:
    same = address_key("login", "2001:db8:1:2::1"), address_key("login", "2001:db8:1:2:ffff::9")
    assert same[0] == same[1] == "login:addr:2001:db8:1:2::/64"
    assert address_key("login", "2001:db8:1:3::1") != same[0]
    assert address_key("signup", "2001:db8:1:2::1") != same[0]


def test_address_key_keeps_ipv4_whole() -> None:
    assert address_key("login", "203.0.113.9") == "login:addr:203.0.113.9"
    assert address_key("login", "203.0.113.10") != address_key("login", "203.0.113.9")
    assert address_key("login", "::ffff:203.0.113.9") == "login:addr:203.0.113.9"


def test_retry_after_is_at_least_one_second() -> None:
    assert RateLimited(0).retry_after == 1
