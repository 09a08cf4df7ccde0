"""Rate limits and account lockouts, counted atomically in the database.

Several web workers share the counters, so every hit is one upsert statement; nothing is
read, changed in Python and written back.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
from collections.abc import Callable
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


class RateLimited(Exception):
    """Too many attempts; try again in `retry_after` seconds (at least 1)."""

    def __init__(self, retry_after: int) -> None:
        self.retry_after = max(1, retry_after)
        super().__init__(f"rate limited; retry after {self.retry_after} s")


def _seconds_until(deadline_ms: int, now: int) -> int:
    return max(1, math.ceil((deadline_ms - now) / 1000))


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

    async def hit(self, key: str, limit: Limit) -> None:
        """Count one hit on `key`; raise RateLimited if it goes over `limit`."""
        now = self.now()
        window_ms = limit.window_ms
        row = await self.db.fetchrow(self._HIT, key, now, now - window_ms)
        assert row is not None  # an upsert returns its row
        if row["hits"] > limit.hits:
            raise RateLimited(_seconds_until(row["window_start"] + window_ms, now))

    async def recipient_may_get_mail(self, email: str) -> bool:
        """Count a mail to `email` that a stranger could cause; False: over its limit."""
        key = recipient_key("mail", email)
        try:
            await self.hit(key, MAIL_PER_RECIPIENT)
            await self.hit(f"{key}:day", MAIL_PER_RECIPIENT_PER_DAY)
        except RateLimited:
            return False
        return True


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

    @staticmethod
    def account_key(name: str) -> str:
        # Alice, alice and " ALICE " are one account to a guesser; they share one counter.
        return "lockout:" + name.strip().casefold()

    async def check(self, name: str) -> None:
        """Raise RateLimited while the account is locked."""
        now = self.now()
        locked_until = await self.db.fetchval(
            "SELECT locked_until FROM rate_limit WHERE key = $1", self.account_key(name)
        )
        if locked_until is not None and locked_until > now:
            raise RateLimited(_seconds_until(locked_until, now))

    async def failure(self, name: str) -> None:
        """Count a failed login; the failure that reaches `max_failures` locks the account."""
        now = self.now()
        # A new row has no earlier failures or lockouts; only max_failures == 1 locks at once.
        locks_at_once = self.max_failures <= 1
        await self.db.execute(
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
            """,
            self.account_key(name),
            now,
            self.max_failures,
            self._capped_after,
            self.first_wait_ms,
            0 if locks_at_once else 1,
            now + self.first_wait_ms if locks_at_once else 0,
            1 if locks_at_once else 0,
            self.max_wait_ms,
        )

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
