-- !search looks for a piece of text anywhere in a request's user name, email or ID: a
-- LIKE '%text%' that a b-tree cannot serve, so every search read the whole table (48 ms
-- at 100,000 requests). A trigram index (pg_trgm) on the three joined together finds
-- the rows that hold every three-letter piece of the text; RegistrationStore.search asks
-- with LIKE on this very expression, then checks each column as before.
--
-- pg_trgm ships with PostgreSQL (the contrib package) and is a trusted extension since
-- PostgreSQL 13: the database's owner may create it. Without it the upgrade stops with
-- a message that says so. A statement inside the block shares its line with the next
-- word: migration files are cut into statements at a ';' that ends a line.
DO $$
BEGIN
    CREATE EXTENSION IF NOT EXISTS pg_trgm; EXCEPTION
    WHEN insufficient_privilege OR undefined_file THEN RAISE EXCEPTION
        'the PostgreSQL extension pg_trgm (for the admin room''s !search) cannot be created '
        '(%): make Gatekeeper''s database user the owner of its database, or have a superuser '
        'run CREATE EXTENSION pg_trgm in it', SQLERRM; END
$$;

-- fastupdate off: new rows go straight into the index instead of a pending list that
-- every search reads through (up to 4 MB, until a vacuum empties it: 7 ms at 10,000
-- new requests); a sign-up's insert pays the few index pages instead.
CREATE INDEX registration_request_search ON registration_request USING gin (
    (COALESCE(localpart, '') || ' ' || LOWER(email) || ' ' || id) gin_trgm_ops)
    WITH (fastupdate = off);
