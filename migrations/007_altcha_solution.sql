-- Proof-of-work solutions already used for a sign-up: each is good for one sign-up only,
-- whichever worker process it reaches. Rows are dropped once their challenge has expired.
CREATE TABLE altcha_solution (
    signature  TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL
);
CREATE INDEX altcha_solution_expires ON altcha_solution (expires_at);
