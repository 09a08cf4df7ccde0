-- Requests made through the seed's /registrations/ API (appservice/domain/
-- seed_registrations.py) have no user name until their approved applicant chooses one:
-- localpart is NULL until then. NULLs never collide in the unique index of live names.
-- SQLite cannot drop a NOT NULL: the table is rebuilt (SQLite's documented way: new
-- table, copy, drop, rename), with every index it had. Foreign keys are not enforced
-- (no PRAGMA foreign_keys), so the tables that reference it keep their rows.
CREATE TABLE registration_request_new (
    id                 TEXT PRIMARY KEY,
    localpart          TEXT,
    email              TEXT NOT NULL,
    language           TEXT NOT NULL,
    reason             TEXT NOT NULL DEFAULT '',
    password_hash      TEXT NOT NULL,
    password_encrypted TEXT,
    status             TEXT NOT NULL,
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
    notice_event_id    TEXT,
    notice_state       TEXT,
    pending_email      TEXT,
    invite_id          TEXT REFERENCES invite (id)
);

INSERT INTO registration_request_new (id, localpart, email, language, reason, password_hash,
    password_encrypted, status, matrix_status, email_verified, created_at, updated_at,
    decided_by, decided_at, decision_reason, matrix_user_id, provision_attempts,
    next_attempt_at, last_error, notice_event_id, notice_state, pending_email, invite_id)
    SELECT id, localpart, email, language, reason, password_hash, password_encrypted, status,
    matrix_status, email_verified, created_at, updated_at, decided_by, decided_at,
    decision_reason, matrix_user_id, provision_attempts, next_attempt_at, last_error,
    notice_event_id, notice_state, pending_email, invite_id
    FROM registration_request;

DROP TABLE registration_request;

ALTER TABLE registration_request_new RENAME TO registration_request;

CREATE UNIQUE INDEX registration_request_live_localpart ON registration_request (localpart)
    WHERE status IN ('unverified', 'pending', 'approved');

CREATE INDEX registration_request_status ON registration_request (status, created_at);

CREATE INDEX registration_request_email ON registration_request (email);

CREATE INDEX registration_request_notice ON registration_request (notice_event_id);

CREATE INDEX registration_request_email_lower ON registration_request (LOWER(email));

CREATE UNIQUE INDEX registration_request_live_email ON registration_request (LOWER(email))
    WHERE status IN ('unverified', 'pending', 'approved');

CREATE INDEX registration_request_matrix_user ON registration_request (matrix_user_id);

CREATE INDEX registration_request_notice_behind ON registration_request (updated_at)
    WHERE (notice_event_id IS NULL AND (status='pending'
        OR (status='approved' AND invite_id IS NOT NULL)))
    OR (notice_event_id IS NOT NULL AND notice_state <> (
        CASE WHEN status='approved' THEN
            CASE matrix_status WHEN 'success' THEN 'active' WHEN 'failed' THEN 'failed'
            WHEN 'deactivated' THEN 'deactivated' ELSE 'approved' END
        ELSE status END));

-- The user token of such a request (HTTP Basic rid:token); only its SHA-256 is kept.
-- creating_until: while the PATCH makes the account itself (it alone has the password),
-- the provisioner does not take the request for an interrupted round of its own.
CREATE TABLE seed_registration (
    request_id     TEXT PRIMARY KEY REFERENCES registration_request (id),
    token_hash     TEXT NOT NULL,
    creating_until BIGINT
);
