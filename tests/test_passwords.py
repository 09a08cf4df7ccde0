"""Password policy and argon2id hashing: what is refused, how hashes are stored, and that
the work runs in the executor, not on the event loop."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from importlib import resources
from typing import Any

import argon2
import pytest

from gatekeeper.appservice.domain.passwords import (
    MAX_BYTES,
    MIN_LENGTH,
    PasswordHasher,
    password_problem,
)

LONG = "Tr0ub4dor&3-" * 5 + "xyzw"
EMOJI = "🦄🦄🦄🦄🦄🦄🦄🦄🔑"
HASH_FORMAT = re.compile(r"^\$argon2id\$v=19\$m=(\d+),t=(\d+),p=(\d+)\$[^$]+\$[^$]+$")


def shipped_list() -> list[str]:
    path = resources.files("gatekeeper.appservice.domain").joinpath("data/common-passwords.txt")
    return path.read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def hasher() -> PasswordHasher:
    return PasswordHasher()


def test_limits() -> None:
    assert (MIN_LENGTH, MAX_BYTES) == (8, 4096)


async def test_long_and_emoji_passwords_accepted_and_round_trip(hasher: PasswordHasher) -> None:
    assert len(LONG) == 64
    for password in (LONG, EMOJI):
        assert password_problem(password) is None
        stored = await hasher.hash(password)
        assert password not in stored
        assert await hasher.verify(stored, password)
    # Nothing is truncated: a difference in the last character still matters.
    assert not await hasher.verify(await hasher.hash(LONG), LONG[:-1] + "!")


def test_too_short_refused() -> None:
    assert password_problem("aB3$xY7") == "must be at least 8 characters"
    assert password_problem("") == "must be at least 8 characters"


def test_too_long_refused() -> None:
    assert password_problem("q" * MAX_BYTES + "z") == "must be at most 4096 bytes"
    # 1,025 characters but 4,100 bytes: the limit is on bytes, not characters.
    assert password_problem("🦄" * 1025) == "must be at most 4096 bytes"
    assert password_problem("🦄" * 1024) is None
    assert password_problem("q" * (1024 * 1024)) == "must be at most 4096 bytes"


def test_not_unicode_refused() -> None:
    assert password_problem("abcdefgh\ud800") == "must be valid Unicode text"


def test_common_password_refused_in_any_case() -> None:
    common = shipped_list()
    assert "password1" in common
    for password in ("password1", "PASSWORD1", "PassWord1"):
        assert password_problem(password) == "is too common; choose another"
    assert password_problem("password1 but longer and mine") is None


def test_shipped_list() -> None:
    common = shipped_list()
    assert len(common) >= 3000
    assert len(set(common)) == len(common)
    assert all(p and p == p.lower() and len(p) >= MIN_LENGTH for p in common)


async def test_stored_hash_is_argon2id_at_owasp_floor(hasher: PasswordHasher) -> None:
    stored = await hasher.hash(LONG)
    match = HASH_FORMAT.match(stored)
    assert match, stored
    memory, time, lanes = (int(g) for g in match.groups())
    assert memory >= 19456
    assert time >= 2
    assert lanes >= 1
    # Salted: the same password never gives the same hash twice.
    assert await hasher.hash(LONG) != stored


async def test_weaker_hash_needs_rehash_but_still_verifies(hasher: PasswordHasher) -> None:
    weak = argon2.PasswordHasher(memory_cost=8192, time_cost=1, parallelism=1).hash(LONG)
    assert hasher.needs_rehash(weak)
    assert await hasher.verify(weak, LONG)
    # Weaker in one parameter alone is enough.
    for memory, time in ((8192, 2), (19456, 1)):
        one_weak = argon2.PasswordHasher(memory_cost=memory, time_cost=time, parallelism=1)
        assert hasher.needs_rehash(one_weak.hash(LONG)), (memory, time)
    assert not hasher.needs_rehash(await hasher.hash(LONG))
    assert not hasher.needs_rehash(PasswordHasher._DUMMY_HASH)
    argon2i = argon2.PasswordHasher(
        memory_cost=19456, time_cost=2, parallelism=1, type=argon2.Type.I
    ).hash(LONG)
    assert hasher.needs_rehash(argon2i)
    # Stronger than ours is left alone rather than weakened.
    strong = argon2.PasswordHasher(memory_cost=19456, time_cost=3, parallelism=2).hash(LONG)
    assert not hasher.needs_rehash(strong)


async def test_verify_false_for_wrong_password_and_garbage(hasher: PasswordHasher) -> None:
    stored = await hasher.hash(LONG)
    assert not await hasher.verify(stored, LONG.upper())
    assert not await hasher.verify(stored, "")
    assert not await hasher.verify(stored, "abcdefgh\ud800")
    assert not await hasher.verify("garbage", LONG)
    assert not await hasher.verify("", LONG)
    assert not await hasher.verify("$argon2id$v=19$m=19456,t=2,p=1$!!!$!!!", LONG)
    assert not await hasher.verify(stored[:-8], LONG)


async def test_dummy_hash_costs_a_full_verify(hasher: PasswordHasher) -> None:
    dummy = PasswordHasher._DUMMY_HASH
    ours = argon2.extract_parameters(await hasher.hash(LONG))
    assert argon2.extract_parameters(dummy) == ours
    # A mismatch, not a parse error: argon2 ran in full before saying no.
    with pytest.raises(argon2.exceptions.VerifyMismatchError):
        argon2.PasswordHasher().verify(dummy, LONG)
    await hasher.verify_dummy(LONG)


class RecordingExecutor(ThreadPoolExecutor):
    """Notes which thread runs each piece of submitted work."""

    def __init__(self) -> None:
        super().__init__(max_workers=1, thread_name_prefix="pw-worker")
        self.threads: list[str] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        def run() -> Any:
            self.threads.append(threading.current_thread().name)
            return fn(*args, **kwargs)

        return super().submit(run)


@pytest.fixture
def executor() -> Iterator[RecordingExecutor]:
    with RecordingExecutor() as pool:
        yield pool


async def test_work_runs_in_the_given_executor(executor: RecordingExecutor) -> None:
    hasher = PasswordHasher(executor=executor)
    stored = await hasher.hash(EMOJI)
    assert await hasher.verify(stored, EMOJI)
    await hasher.verify_dummy(EMOJI)
    assert len(executor.threads) == 3
    assert all(name.startswith("pw-worker") for name in executor.threads)
    assert threading.current_thread().name not in executor.threads
