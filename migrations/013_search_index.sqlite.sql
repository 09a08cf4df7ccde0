-- !search looks for a piece of text anywhere in a request's user name, email or ID: a
-- LIKE '%text%' that a b-tree cannot serve, so every search read the whole table (30 ms
-- at 100,000 requests). This full-text table with the trigram tokenizer (SQLite 3.34)
-- holds the three joined together, one row per request under the request's rowid; a
-- LIKE on it with three letters or more finds the rows that hold every three-letter piece
-- of the text. RegistrationStore.search joins back by rowid and checks each column as
-- before. The triggers keep it in step; a migration that rebuilds registration_request
-- (as 011 did) drops them and renumbers the rowids, so it must rebuild this table too.
-- A statement inside a trigger shares its line with END: migration files are cut into
-- statements at a ';' that ends a line.
CREATE VIRTUAL TABLE registration_search USING fts5 (text, tokenize = 'trigram');

INSERT INTO registration_search (rowid, text)
    SELECT rowid, COALESCE(localpart, '') || ' ' || LOWER(email) || ' ' || id
    FROM registration_request;

CREATE TRIGGER registration_search_insert AFTER INSERT ON registration_request BEGIN
    INSERT INTO registration_search (rowid, text) VALUES (new.rowid,
        COALESCE(new.localpart, '') || ' ' || LOWER(new.email) || ' ' || new.id); END;

CREATE TRIGGER registration_search_update AFTER UPDATE OF localpart, email, id
    ON registration_request BEGIN
    UPDATE registration_search
        SET text = COALESCE(new.localpart, '') || ' ' || LOWER(new.email) || ' ' || new.id
        WHERE rowid = new.rowid; END;

CREATE TRIGGER registration_search_delete AFTER DELETE ON registration_request BEGIN
    DELETE FROM registration_search WHERE rowid = old.rowid; END;
