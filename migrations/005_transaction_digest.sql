-- Synapse reuses transaction IDs after it restarts (on SQLite its counter starts again
-- from what is still queued), so a transaction is recognised by its ID and content.
DROP TABLE appservice_transaction;
CREATE TABLE appservice_transaction (
    txn_id      TEXT NOT NULL,
    digest      TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (txn_id, digest)
);
CREATE INDEX appservice_transaction_received ON appservice_transaction (received_at);
