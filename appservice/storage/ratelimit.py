"""Rate limits and account lockouts, counted atomically in the database.

Several web workers share the counters, so every counted hit is one upsert statement;
nothing is read, changed in Python and written back. A refusal that stays a refusal until
a known time (a key over its limit until its window ends, an account locked until its
lock ends) is remembered in memory, so repeating it costs no database access.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from mautrix.util.async_db import Database

from gatekeeper.appservice.timeutil import now_ms


@dataclass(frozen=True)
class Limit:
    """At most `hits` hits per fixed window of `window_seconds`."""

    hits: int
    window_seconds: float

    @property
    def window_ms(self) -> int:
        return max(1, round(self.window_seconds * 1000))


# The limits of one endpoint live with the code that applies them (and come from the config
# where an operator may tune them); this module holds only the limits it applies itself.
# Mail nobody can stop by other means (a confirmation sent again, a note that someone used
# the address to sign up): one per recipient per 5 minutes, and a few a day.
MAIL_PER_RECIPIENT = Limit(1, 300)
MAIL_PER_RECIPIENT_PER_DAY = Limit(10, 86400)


# Refusals remembered per process: about 200 bytes each, so a few MB at most however many
# addresses an attacker rotates through (past it, the oldest are forgotten, and cost one
# database access again when they come back).
REMEMBERED_REFUSALS = 10_000


class RateLimited(Exception):
    """Too many attempts; try again in `retry_after` seconds (at least 1)."""

    def __init__(self, retry_after: int) -> None:
        self.retry_after = max(1, retry_after)
        super().__init__(f"rate limited; retry after {self.retry_after} s")


def _seconds_until(deadline_ms: int, now: int) -> int:
    return max(1, math.ceil((deadline_ms - now) / 1000))


class RefusalMemo:
    """Keys known to be refused until a time (ms), at most `size` of them."""

    def __init__(self, size: int = REMEMBERED_REFUSALS) -> None:
        self.size = size
        self._until: dict[Hashable, int] = {}

    def refused_until(self, key: Hashable, now: int) -> int | None:
        until = self._until.get(key)
        if until is None:
            return None
        if until <= now:
            del self._until[key]
            return None
        return until

    def remember(self, key: Hashable, until: int) -> None:
        # Refusals only ever last longer: of two answers that raced, the later end holds.
        until = max(until, self._until.pop(key, until))
        if len(self._until) >= self.size:
            # The oldest entry: the first in the dict's order of insertion.
            del self._until[next(iter(self._until))]
        self._until[key] = until

    def __len__(self) -> int:
        return len(self._until)


def address_key(prefix: str, address: str) -> str:
    """The counter key of a client address: `{prefix}:addr:{address}`.

    IPv6 addresses count by their /64, since one host usually holds a whole /64 and could
    otherwise rotate through it; IPv4 (also IPv4-mapped IPv6) counts per address.
    Anything unparsable (e.g. a Unix socket peer) is used as given.
    """
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return f"{prefix}:addr:{address.strip()}"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return f"{prefix}:addr:{ip.ipv4_mapped}"
        network = ipaddress.IPv6Network((int(ip) >> 64 << 64, 64))
        return f"{prefix}:addr:{network}"
    return f"{prefix}:addr:{ip}"


def recipient_key(prefix: str, email: str) -> str:
    """The counter key of a mail recipient; a hash, so the table holds no addresses."""
    digest = hashlib.sha256(email.strip().lower().encode()).hexdigest()
    return f"{prefix}:to:{digest}"


class RateLimiter:
    """Fixed-window counters, one row of `rate_limit` per key."""

    # The SET expressions all see the row as it was, so the window test is the same for both.
    _HIT = """
        INSERT INTO rate_limit (key, window_start, hits) VALUES ($1, $2, 1)
        ON CONFLICT (key) DO UPDATE SET
            hits = CASE WHEN rate_limit.window_start <= $3 THEN 1
                        ELSE rate_limit.hits + 1 END,
            window_start = CASE WHEN rate_limit.window_start <= $3 THEN $2
                                ELSE rate_limit.window_start END
        RETURNING hits, window_start
    """

    def __init__(self, db: Database, now: Callable[[], int] = now_ms) -> None:
        self.db = db
        self.now = now
        # Within a window the hits only grow and the window's end stays, in every process:
        # a key over its limit is refused until that end whatever anyone does meanwhile.
        self._over = RefusalMemo()

    def refuse_if_known_over(self, key: str, limit: Limit) -> None:
        """Raise RateLimited if this process knows `key` to be over `limit`; no database,
        nothing counted (a caller that goes on counts the hit later)."""
        now = self.now()
        over_until = self._over.refused_until((key, limit), now)
        if over_until is not None:
            raise RateLimited(_seconds_until(over_until, now))

    async def hit(self, key: str, limit: Limit) -> None:
        """Count one hit on `key`; raise RateLimited if it goes over `limit` (no database
        access for a key this process already knows to be over it)."""
        self.refuse_if_known_over(key, limit)
        now = self.now()
        over_until = await self._count(key, limit, now)
        if over_until is not None:
            self._over.remember((key, limit), over_until)
            raise RateLimited(_seconds_until(over_until, now))

    async def _count(self, key: str, limit: Limit, now: int) -> int | None:
        """Count one hit; the end of the window if the hit is over the limit, else None."""
        window_ms = limit.window_ms
        row = await self.db.fetchrow(self._HIT, key, now, now - window_ms)
        assert row is not None  # an upsert returns its row
        return int(row["window_start"]) + window_ms if row["hits"] > limit.hits else None

    async def recipient_may_get_mail(self, email: str) -> bool:
        """Count a mail to `email` that a stranger could cause; False: over its limit."""
        # Counted every time, never remembered: it refuses no request (the answer is the
        # same either way), so it is no refusal to make cheap.
        key = recipient_key("mail", email)
        now = self.now()
        return (
            await self._count(key, MAIL_PER_RECIPIENT, now) is None
            and await self._count(f"{key}:day", MAIL_PER_RECIPIENT_PER_DAY, now) is None
        )


class Lockout:
    """Brute-force protection per account, after Keycloak's model.

    Every `max_failures` failed logins lock the account; the wait doubles with each
    lockout, from `first_wait_seconds` up to `max_wait_seconds`, until a login succeeds.
    """

    def __init__(
        self,
        db: Database,
        max_failures: int = 30,
        first_wait_seconds: int = 60,
        max_wait_seconds: int = 900,
        now: Callable[[], int] = now_ms,
    ) -> None:
        if max_failures < 1 or first_wait_seconds < 1 or max_wait_seconds < first_wait_seconds:
            raise ValueError("invalid lockout settings")
        self.db = db
        self.max_failures = max_failures
        self.first_wait_ms = first_wait_seconds * 1000
        self.max_wait_ms = max_wait_seconds * 1000
        self.now = now
        # From this many earlier lockouts on the wait is capped; below it the doubled wait
        # is under the cap, so SQL needs no MIN/LEAST (they differ between backends) and
        # the shift cannot overflow.
        self._capped_after = 0
        while self.first_wait_ms << self._capped_after < self.max_wait_ms:
            self._capped_after += 1
        # A lock in force ends only at its time: success() lifts ended locks alone, more
        # failures can only lengthen it, and nothing else (no password reset, no admin
        # command) lifts one. So "locked until T", once read, holds in every process until
        # T, and a refused login needs no database until then. Never the opposite: another
        # process's failures may lock an account this one thinks open.
        self._locked = RefusalMemo()

    @staticmethod
    def account_key(name: str) -> str:
        # Alice, alice and " ALICE " are one account to a guesser; they share one counter.
        return "lockout:" + name.strip().casefold()

    @staticmethod
    def _typed_key(typed: str) -> str:
        return "lockout-typed:" + typed.strip().casefold()

    async def check(self, name: str, typed: str | None = None) -> bool:
        """Raise RateLimited while the account is locked; else whether it has failures or
        lockouts counted (something for `success()` to forget). `typed`: what the login
        typed to name the account; while the lock holds, `known_lock()` knows it by that."""
        now = self.now()
        key = self.account_key(name)
        locked_until = self._locked.refused_until(key, now)
        if locked_until is None:
            row = await self.db.fetchrow("SELECT locked_until FROM rate_limit WHERE key = $1", key)
            if row is None:
                return False
            locked_until = int(row["locked_until"])
            if locked_until <= now:
                return True
            self._locked.remember(key, locked_until)
        if typed is not None:
            self._locked.remember(self._typed_key(typed), locked_until)
        raise RateLimited(_seconds_until(locked_until, now))

    def known_lock(self, typed: str) -> None:
        """Raise RateLimited if a lock this process saw for the account `typed` named is
        still in force: a refused login then needs no look-up. Should the name come to
        mean another account meanwhile (an email changed hands), that one waits out the
        rest of the lock too: stricter, never looser."""
        now = self.now()
        locked_until = self._locked.refused_until(self._typed_key(typed), now)
        if locked_until is not None:
            raise RateLimited(_seconds_until(locked_until, now))

    async def failure(self, name: str) -> None:
        """Count a failed login; the failure that reaches `max_failures` locks the account."""
        now = self.now()
        # A new row has no earlier failures or lockouts; only max_failures == 1 locks at once.
        locks_at_once = self.max_failures <= 1
        key = self.account_key(name)
        locked_until = await self.db.fetchval(
            """
            INSERT INTO rate_limit (key, window_start, hits, locked_until, lockouts)
            VALUES ($1, $2, $6, $7, $8)
            ON CONFLICT (key) DO UPDATE SET
                hits = CASE WHEN rate_limit.hits + 1 >= $3 THEN 0
                            ELSE rate_limit.hits + 1 END,
                locked_until = CASE
                    WHEN rate_limit.hits + 1 < $3 THEN rate_limit.locked_until
                    WHEN rate_limit.lockouts >= $4 THEN $2 + CAST($9 AS BIGINT)
                    ELSE $2 + CAST($5 AS BIGINT) * (1 << rate_limit.lockouts) END,
                lockouts = CASE WHEN rate_limit.hits + 1 >= $3 THEN rate_limit.lockouts + 1
                                ELSE rate_limit.lockouts END
            RETURNING locked_until
            """,
            key,
            now,
            self.max_failures,
            self._capped_after,
            self.first_wait_ms,
            0 if locks_at_once else 1,
            now + self.first_wait_ms if locks_at_once else 0,
            1 if locks_at_once else 0,
            self.max_wait_ms,
        )
        if locked_until is not None and locked_until > now:
            self._locked.remember(key, int(locked_until))

    async def success(self, name: str) -> None:
        """Forget the account's failures and lockouts after a successful login."""
        # A lock still in force was set by failures racing this login; it stands.
        await self.db.execute(
            "DELETE FROM rate_limit WHERE key = $1 AND locked_until <= $2",
            self.account_key(name),
            self.now(),
        )

    async def failures(self, name: str) -> int:
        """Failures counted towards the next lockout."""
        hits = await self.db.fetchval(
            "SELECT hits FROM rate_limit WHERE key = $1", self.account_key(name)
        )
        return int(hits or 0)
