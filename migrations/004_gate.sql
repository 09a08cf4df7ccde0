-- Invites: a shareable sign-up link that skips the admins' approval.
CREATE TABLE invite (
    id          TEXT PRIMARY KEY,
    token_hash  TEXT NOT NULL UNIQUE,
    created_by  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT,
    uses_left   INTEGER NOT NULL,
    uses        INTEGER NOT NULL DEFAULT 0,
    note        TEXT NOT NULL DEFAULT '',
    revoked_at  BIGINT
);

ALTER TABLE registration_request ADD COLUMN invite_id TEXT REFERENCES invite (id);

-- Blocks on sign-ups: kind is email-domain, email, ip or username (a glob or /regex/).
CREATE TABLE signup_block (
    id          TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,
    value       TEXT NOT NULL,
    created_by  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT,
    removed_at  BIGINT
);

-- Every admin action that is not a request's transition (blocks, invites, pauses).
CREATE TABLE admin_audit (
    at      BIGINT NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    detail  TEXT NOT NULL DEFAULT ''
);
CREATE INDEX admin_audit_at ON admin_audit (at);
