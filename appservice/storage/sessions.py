"""Web sessions, sudo, remembered devices and second-factor tickets: random tokens, only
their hashes stored."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field, fields

from mautrix.util.async_db import Database

from gatekeeper.appservice.config import WebConfig
from gatekeeper.appservice.domain.registration_request import RegistrationRequest
from gatekeeper.appservice.timeutil import now_ms

TOKEN_BYTES = 32  # 256 bits, above the 128 our security rules ask for
SEEN_RESOLUTION_MS = 60_000  # write last_seen at most once a minute per session
# A right password waits this long for its second factor, then it must be typed again.
TICKET_MS = 5 * 60_000


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


@dataclass(frozen=True)
class Session:
    token_hash: str
    request_id: str
    csrf_secret: str
    created_at: int
    last_seen_at: int
    sudo_token_hash: str | None
    sudo_until: int | None
    # The account as it was when the session was looked up, read by the same query.
    account: RegistrationRequest | None = field(default=None, compare=False)


_SESSION_COLUMNS = [f.name for f in fields(Session) if f.name != "account"]
# One round trip per authenticated request: the session with its account.
_FIND_WITH_ACCOUNT = (
    "SELECT r.*, "  # noqa: S608 (column names are ours)
    + ", ".join(f"s.{name} AS session_{name}" for name in _SESSION_COLUMNS)
    + " FROM web_session s JOIN registration_request r ON r.id = s.request_id"
    " WHERE s.token_hash=$1"
)


class Sessions:
    def __init__(self, db: Database, config: WebConfig) -> None:
        self.db = db
        self.idle_ms = int(config.session_idle_minutes * 60_000)
        self.max_ms = int(config.session_max_hours * 3_600_000)
        self.device_ms = int(config.remember_device_days * 86_400_000)
        self.sudo_ms = int(config.sudo_minutes * 60_000)

    async def create(self, request_id: str) -> tuple[str, Session]:
        token = new_token()
        now = now_ms()
        session = Session(token_hash(token), request_id, new_token(), now, now, None, None)
        await self.db.execute(
            "INSERT INTO web_session (token_hash, request_id, csrf_secret, created_at,"
            " last_seen_at) VALUES ($1, $2, $3, $4, $4)",
            session.token_hash,
            request_id,
            session.csrf_secret,
            now,
        )
        return token, session

    async def find(self, token: str) -> Session | None:
        """The live session of a LOGIN_TOKEN; an idle or too old one is deleted."""
        row = await self.db.fetchrow(_FIND_WITH_ACCOUNT, token_hash(token))
        if row is None:
            return None
        session = Session(
            **{name: row[f"session_{name}"] for name in _SESSION_COLUMNS},
            account=RegistrationRequest.from_row(row),
        )
        now = now_ms()
        if now - session.last_seen_at > self.idle_ms or now - session.created_at > self.max_ms:
            await self.end(session)
            return None
        if now - session.last_seen_at > SEEN_RESOLUTION_MS:
            await self.db.execute(
                "UPDATE web_session SET last_seen_at=$2 WHERE token_hash=$1",
                session.token_hash,
                now,
            )
        return session

    async def end(self, session: Session) -> None:
        await self.db.execute("DELETE FROM web_session WHERE token_hash=$1", session.token_hash)

    async def end_all_others(self, request_id: str, keep: Session | None) -> None:
        """After a password, email or 2FA change: every other session and device goes, and
        so does every password still waiting for its second factor."""
        await self.db.execute(
            "DELETE FROM web_session WHERE request_id=$1 AND token_hash <> $2",
            request_id,
            keep.token_hash if keep else "",
        )
        await self.db.execute("DELETE FROM remembered_device WHERE request_id=$1", request_id)
        await self.db.execute("DELETE FROM second_factor_ticket WHERE request_id=$1", request_id)

    async def grant_sudo(self, session: Session) -> str:
        token = new_token()
        await self.db.execute(
            "UPDATE web_session SET sudo_token_hash=$2, sudo_until=$3 WHERE token_hash=$1",
            session.token_hash,
            token_hash(token),
            now_ms() + self.sudo_ms,
        )
        return token

    def has_sudo(self, session: Session, sudo_token: str | None) -> bool:
        """SUDO_TOKEN is bound to its session and short-lived."""
        if not sudo_token or session.sudo_token_hash is None or session.sudo_until is None:
            return False
        return session.sudo_until > now_ms() and hmac.compare_digest(
            session.sudo_token_hash, token_hash(sudo_token)
        )

    async def remember_device(self, request_id: str) -> str:
        token = new_token()
        now = now_ms()
        await self.db.execute(
            "INSERT INTO remembered_device (token_hash, request_id, created_at, expires_at)"
            " VALUES ($1, $2, $3, $4)",
            token_hash(token),
            request_id,
            now,
            now + self.device_ms,
        )
        return token

    async def device_remembered(self, request_id: str, token: str | None) -> bool:
        if not token:
            return False
        found = await self.db.fetchval(
            "SELECT 1 FROM remembered_device WHERE token_hash=$1 AND request_id=$2"
            " AND expires_at > $3",
            token_hash(token),
            request_id,
            now_ms(),
        )
        return found is not None

    async def forget_device(self, token: str | None) -> None:
        if token:
            await self.db.execute(
                "DELETE FROM remembered_device WHERE token_hash=$1", token_hash(token)
            )

    async def issue_ticket(self, request_id: str, expires_at: int | None = None) -> str:
        """A ticket that stands for a right password until `expires_at` (by default
        TICKET_MS from now), for the second-factor form to carry instead of the password."""
        token = new_token()
        now = now_ms()
        # Tickets nobody came back for are swept here, the only place that makes them.
        await self.db.execute("DELETE FROM second_factor_ticket WHERE expires_at <= $1", now)
        await self.db.execute(
            "INSERT INTO second_factor_ticket (token_hash, request_id, expires_at)"
            " VALUES ($1, $2, $3)",
            token_hash(token),
            request_id,
            expires_at or now + TICKET_MS,
        )
        return token

    async def redeem_ticket(self, token: str) -> tuple[str, int] | None:
        """(request ID, expiry) of a live ticket, which is used up; of concurrent
        redemptions only one gets it."""
        if not token:
            return None
        row = await self.db.fetchrow(
            "DELETE FROM second_factor_ticket WHERE token_hash=$1 RETURNING request_id, expires_at",
            token_hash(token),
        )
        if row is None or row["expires_at"] <= now_ms():
            return None
        return str(row["request_id"]), int(row["expires_at"])
