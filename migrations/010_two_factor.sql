-- A right password waiting for its second factor: the login page's form carries this
-- ticket instead of the password. Only a hash is kept; it lives a few minutes and each
-- attempt uses it up (a wrong code gets a new ticket with the same end).
CREATE TABLE second_factor_ticket (
    token_hash TEXT PRIMARY KEY,
    request_id TEXT NOT NULL REFERENCES registration_request (id),
    expires_at BIGINT NOT NULL
);
CREATE INDEX second_factor_ticket_request ON second_factor_ticket (request_id);

-- Recovery codes: each stands in for one TOTP code, once. Only hashes are kept; a new set
-- replaces the old one, and turning two-factor login off deletes them.
CREATE TABLE recovery_code (
    code_hash  TEXT PRIMARY KEY,
    request_id TEXT NOT NULL REFERENCES registration_request (id),
    created_at BIGINT NOT NULL
);
CREATE INDEX recovery_code_request ON recovery_code (request_id);

-- Two-factor logins the admins turned off (!reset-2fa), after checking who asked.
CREATE TABLE two_factor_reset (
    request_id TEXT NOT NULL REFERENCES registration_request (id),
    at         BIGINT NOT NULL,
    actor      TEXT NOT NULL,
    reason     TEXT
);
CREATE INDEX two_factor_reset_request ON two_factor_reset (request_id, at);
