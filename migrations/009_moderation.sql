-- Moderation after approval (!suspend, !unsuspend, !deactivate and their admin API):
-- one row per call to the homeserver, whether it took (outcome 'done') or not ('failed',
-- with the homeserver's answer, or that it did not answer, in error). Refusals before
-- that (a user out of scope, an admin, the bot) change nothing and write no row.
-- request_id is the sign-up request the account came from, NULL for a local user made
-- another way.
CREATE TABLE account_moderation (
    user_id    TEXT NOT NULL,
    request_id TEXT REFERENCES registration_request (id),
    at         BIGINT NOT NULL,
    actor      TEXT NOT NULL,
    -- suspend | unsuspend | deactivate
    action     TEXT NOT NULL,
    erase      BOOLEAN NOT NULL DEFAULT FALSE,
    reason     TEXT,
    -- done | failed
    outcome    TEXT NOT NULL,
    error      TEXT
);
CREATE INDEX account_moderation_user ON account_moderation (user_id, at);

-- Moderation finds the request an account came from by its Matrix ID.
CREATE INDEX registration_request_matrix_user ON registration_request (matrix_user_id);

-- A deactivated account is a new state, ('approved', 'deactivated'): it keeps its name and
-- email like an active one (status approved), and its admin-room notice says it is
-- deactivated. The notice worker's query (RegistrationStore.notices_behind) learns the new
-- matrix_status, and its partial index (migration 006) must keep the very same WHERE.
DROP INDEX registration_request_notice_behind;
CREATE INDEX registration_request_notice_behind ON registration_request (updated_at)
    WHERE (notice_event_id IS NULL AND (status='pending'
        OR (status='approved' AND invite_id IS NOT NULL)))
    OR (notice_event_id IS NOT NULL AND notice_state <> (
        CASE WHEN status='approved' THEN
            CASE matrix_status WHEN 'success' THEN 'active' WHEN 'failed' THEN 'failed'
            WHEN 'deactivated' THEN 'deactivated' ELSE 'approved' END
        ELSE status END));
