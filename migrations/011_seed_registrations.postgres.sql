-- Requests made through the seed's /registrations/ API (appservice/domain/
-- seed_registrations.py) have no user name until their approved applicant chooses one:
-- localpart is NULL until then. NULLs never collide in the unique index of live names.
ALTER TABLE registration_request ALTER COLUMN localpart DROP NOT NULL;

-- The user token of such a request (HTTP Basic rid:token); only its SHA-256 is kept.
-- creating_until: while the PATCH makes the account itself (it alone has the password),
-- the provisioner does not take the request for an interrupted round of its own.
CREATE TABLE seed_registration (
    request_id     TEXT PRIMARY KEY REFERENCES registration_request (id),
    token_hash     TEXT NOT NULL,
    creating_until BIGINT
);
