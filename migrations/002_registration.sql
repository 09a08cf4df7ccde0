-- A request for an account, from sign-up to account (or refusal). Only
-- appservice/registrations.py writes status and matrix_status.
CREATE TABLE registration_request (
    id                 TEXT PRIMARY KEY,
    localpart          TEXT NOT NULL,
    email              TEXT NOT NULL,
    language           TEXT NOT NULL,
    reason             TEXT NOT NULL DEFAULT '',
    password_hash      TEXT NOT NULL,
    -- Fernet ciphertext of the password, kept only until the account exists.
    password_encrypted TEXT,
    -- unverified | pending | approved | rejected | expired | withdrawn
    status             TEXT NOT NULL,
    -- pending | processing | success | failed (the account on the homeserver)
    matrix_status      TEXT NOT NULL,
    email_verified     BOOLEAN NOT NULL DEFAULT FALSE,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL,
    decided_by         TEXT,
    decided_at         BIGINT,
    decision_reason    TEXT,
    matrix_user_id     TEXT,
    provision_attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at    BIGINT,
    last_error         TEXT,
    -- The admin-room notice and the state it last showed, so edits catch up after a crash.
    notice_event_id    TEXT,
    notice_state       TEXT
);

-- One live request per wished name; ended requests free it again.
CREATE UNIQUE INDEX registration_request_live_localpart ON registration_request (localpart)
    WHERE status IN ('unverified', 'pending', 'approved');
CREATE INDEX registration_request_status ON registration_request (status, created_at);
CREATE INDEX registration_request_email ON registration_request (email);
CREATE INDEX registration_request_notice ON registration_request (notice_event_id);

-- Every state change: who, when, from, to, why.
CREATE TABLE registration_audit (
    request_id TEXT NOT NULL REFERENCES registration_request (id),
    at         BIGINT NOT NULL,
    actor      TEXT NOT NULL,
    from_state TEXT,
    to_state   TEXT NOT NULL,
    reason     TEXT
);
CREATE INDEX registration_audit_request ON registration_audit (request_id, at);

-- Links sent by mail; only a hash of each token is kept.
CREATE TABLE email_token (
    token_hash TEXT PRIMARY KEY,
    request_id TEXT NOT NULL REFERENCES registration_request (id),
    purpose    TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT
);
CREATE INDEX email_token_request ON email_token (request_id, purpose);

-- Mail waiting to be sent; written in the same transaction as the change it tells of.
CREATE TABLE mail_outbox (
    id            TEXT PRIMARY KEY,
    recipient     TEXT NOT NULL,
    subject       TEXT NOT NULL,
    body          TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    last_error    TEXT,
    sent_at       BIGINT
);
CREATE INDEX mail_outbox_due ON mail_outbox (sent_at, next_attempt_at);
