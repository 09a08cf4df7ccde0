-- !pending counts the requests in a state and shows a page of them, oldest first. The
-- index of migration 002 held the status but not the Matrix status, so counting read
-- every row of the table (31 ms at 100,000 pending requests) and PostgreSQL sorted them
-- all for a page (35 ms). This one holds the whole state and the page's order: the count
-- reads the index alone and a page is its first rows.
DROP INDEX registration_request_status;
CREATE INDEX registration_request_state
    ON registration_request (status, matrix_status, created_at, id);

-- The daily cap (on every sign-up while one is set) and !stats count requests by when
-- they were made, whatever their state.
CREATE INDEX registration_request_created ON registration_request (created_at);
