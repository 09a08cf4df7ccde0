"""Password policy (NIST 800-63B: length and a common-password list, no composition rules)
and argon2id hashing run off the event loop."""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import Executor
from importlib import resources

import argon2
from argon2.exceptions import InvalidHashError, VerificationError
from argon2.low_level import ARGON2_VERSION

MIN_LENGTH = 8
MAX_BYTES = 4096


@functools.cache
def _common_passwords() -> frozenset[str]:
    text = (
        resources.files("gatekeeper.appservice.domain")
        .joinpath("data/common-passwords.txt")
        .read_text(encoding="utf-8")
    )
    return frozenset(line for line in text.splitlines() if line)


def password_problem(password: str) -> str | None:
    """Why the password is refused, as a short phrase about it, or None if it is acceptable."""
    # Every character is at least one UTF-8 byte, so this refuses a huge input before
    # any work proportional to its size.
    if len(password) > MAX_BYTES:
        return f"must be at most {MAX_BYTES} bytes"
    try:
        size = len(password.encode("utf-8"))
    except UnicodeEncodeError:
        # Lone surrogates (JSON allows "\ud800") cannot be stored or hashed as UTF-8.
        return "must be valid Unicode text"
    if size > MAX_BYTES:
        return f"must be at most {MAX_BYTES} bytes"
    if len(password) < MIN_LENGTH:
        return f"must be at least {MIN_LENGTH} characters"
    if password.lower() in _common_passwords():
        return "is too common; choose another"
    return None


class PasswordHasher:
    """argon2id at the OWASP minimum (19 MiB, 2 passes, 1 lane), each call in an executor."""

    MEMORY_COST = 19456
    TIME_COST = 2
    PARALLELISM = 1
    HASH_LEN = 32
    SALT_LEN = 16

    # A hash of a random throwaway password made with the parameters above, so that a
    # login for an unknown user costs the same as one with a wrong password.
    _DUMMY_HASH = (
        "$argon2id$v=19$m=19456,t=2,p=1$dLpRYO+n8P6F8wxkEUdSlA$"
        "1Duzk2jmi1so1Zh+mqjKqAU56AnH0jf1p/ORoS+urws"
    )

    def __init__(self, executor: Executor | None = None) -> None:
        self._executor = executor
        self._hasher = self.argon2_hasher()

    @classmethod
    def argon2_hasher(cls) -> argon2.PasswordHasher:
        """The argon2id hasher with our parameters (the bench measures its ceiling)."""
        return argon2.PasswordHasher(
            time_cost=cls.TIME_COST,
            memory_cost=cls.MEMORY_COST,
            parallelism=cls.PARALLELISM,
            hash_len=cls.HASH_LEN,
            salt_len=cls.SALT_LEN,
            type=argon2.Type.ID,
        )

    async def hash(self, password: str) -> str:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._hasher.hash, password)

    async def verify(self, stored_hash: str, password: str) -> bool:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._verify, stored_hash, password)

    def _verify(self, stored_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(stored_hash, password)
        except (VerificationError, InvalidHashError, UnicodeEncodeError):
            # A mismatch, a corrupt or foreign hash, or a password that is not valid
            # Unicode: none of them can let anyone in.
            return False

    def needs_rehash(self, stored_hash: str) -> bool:
        """True when the stored hash is weaker than what we would make now."""
        try:
            stored = argon2.extract_parameters(stored_hash)
        except InvalidHashError:
            return True
        # Compared as "at least", not equal: a hash made stronger than ours stays as it is.
        return (
            stored.type is not argon2.Type.ID
            or stored.version < ARGON2_VERSION
            or stored.memory_cost < self.MEMORY_COST
            or stored.time_cost < self.TIME_COST
            or stored.parallelism < self.PARALLELISM
            or stored.hash_len < self.HASH_LEN
            or stored.salt_len < self.SALT_LEN
        )

    async def verify_dummy(self, password: str) -> None:
        """Spend the time of a real verify, for paths where there is no user to check."""
        await self.verify(self._DUMMY_HASH, password)
