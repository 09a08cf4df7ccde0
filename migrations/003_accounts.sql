-- Web sessions of applicants and account holders; only hashes of tokens are kept.
CREATE TABLE web_session (
    token_hash      TEXT PRIMARY KEY,
    request_id      TEXT NOT NULL REFERENCES registration_request (id),
    csrf_secret     TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    last_seen_at    BIGINT NOT NULL,
    sudo_token_hash TEXT,
    sudo_until      BIGINT
);
CREATE INDEX web_session_request ON web_session (request_id);

-- Remembered devices: they skip the second factor (never the password) until expiry.
CREATE TABLE remembered_device (
    token_hash  TEXT PRIMARY KEY,
    request_id  TEXT NOT NULL REFERENCES registration_request (id),
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX remembered_device_request ON remembered_device (request_id);

-- TOTP second factor; seeds encrypted. last_step only grows: a code works once.
CREATE TABLE totp (
    request_id               TEXT PRIMARY KEY REFERENCES registration_request (id),
    secret_encrypted         TEXT,
    pending_secret_encrypted TEXT,
    last_step                BIGINT NOT NULL DEFAULT 0
);

-- Rate limits and lockouts shared by every worker: one row per key and window.
CREATE TABLE rate_limit (
    key          TEXT PRIMARY KEY,
    window_start BIGINT NOT NULL,
    hits         INTEGER NOT NULL,
    locked_until BIGINT NOT NULL DEFAULT 0,
    lockouts     INTEGER NOT NULL DEFAULT 0
);

-- An email change waits here until the new address is confirmed.
ALTER TABLE registration_request ADD COLUMN pending_email TEXT;
