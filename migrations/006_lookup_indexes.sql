-- Logins and "send the confirmation again" look requests up by LOWER(email); without an
-- index on that expression every login read the whole table.
CREATE INDEX registration_request_email_lower ON registration_request (LOWER(email));

-- The notice worker asks on every change for the requests whose admin-room notice is
-- missing or out of date; this partial index holds just those, so the question no longer
-- reads every request ever made. Its WHERE is Registrations.notices_behind's, word for
-- word: SQLite uses a partial index only for the very same expression.
CREATE INDEX registration_request_notice_behind ON registration_request (updated_at)
    WHERE (notice_event_id IS NULL AND (status='pending'
        OR (status='approved' AND invite_id IS NOT NULL)))
    OR (notice_event_id IS NOT NULL AND notice_state <> (
        CASE WHEN status='approved' THEN
            CASE matrix_status WHEN 'success' THEN 'active' WHEN 'failed' THEN 'failed'
            ELSE 'approved' END
        ELSE status END));
