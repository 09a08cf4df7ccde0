-- Logins and "send the confirmation again" look requests up by LOWER(email); without an
-- index on that expression every login read the whole table.
CREATE INDEX registration_request_email_lower ON registration_request (LOWER(email));
