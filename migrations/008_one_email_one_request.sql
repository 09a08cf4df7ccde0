-- An email belongs to one live request or account at a time (a second sign-up with it
-- used to make a second account, which then took over the first one's web login).
-- Held while a request is unverified, pending or approved (approved covers the account
-- from provisioning on); a withdrawn, rejected or expired request frees its address.
--
-- Before the index can exist, requests the old code let share an address are sorted
-- out: per address the one furthest along (approved, then pending, then unverified,
-- among equals the oldest) keeps it, and every other open one is withdrawn, with an
-- audit row by "gatekeeper". Two approved requests (two accounts) with one
-- address cannot be undone here: the index then fails, and the operator guide says how
-- to give one of them another address. The one parameter is the time of the upgrade.
CREATE TEMPORARY TABLE email_loser AS
    SELECT loser.id, loser.status
    FROM registration_request loser
    WHERE loser.status IN ('unverified', 'pending')
    AND EXISTS (
        SELECT 1 FROM registration_request keeper
        WHERE LOWER(keeper.email) = LOWER(loser.email)
        AND keeper.id <> loser.id
        AND keeper.status IN ('unverified', 'pending', 'approved')
        AND (CASE keeper.status WHEN 'approved' THEN 0 WHEN 'pending' THEN 1 ELSE 2 END
                < CASE loser.status WHEN 'pending' THEN 1 ELSE 2 END
            OR (keeper.status = loser.status AND (keeper.created_at < loser.created_at
                OR (keeper.created_at = loser.created_at AND keeper.id < loser.id))))
    );

INSERT INTO registration_audit (request_id, at, actor, from_state, to_state, reason)
    SELECT id, $1, 'gatekeeper', status, 'withdrawn',
        'its email belongs to another request (migration 008)'
    FROM email_loser;

UPDATE registration_request
    SET status = 'withdrawn', password_encrypted = NULL, updated_at = $1
    WHERE id IN (SELECT id FROM email_loser);

DROP TABLE email_loser;

CREATE UNIQUE INDEX registration_request_live_email ON registration_request (LOWER(email))
    WHERE status IN ('unverified', 'pending', 'approved');
