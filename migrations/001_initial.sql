-- Small facts the bot keeps across restarts (the admin room it created, ...).
CREATE TABLE bot_state (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Appservice transactions already handled, so a retried one is a no-op.
CREATE TABLE appservice_transaction (
    txn_id      TEXT PRIMARY KEY,
    received_at BIGINT NOT NULL
);
