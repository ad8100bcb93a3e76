-- Legacy secrets for the gateway, sealed under the master key (envelope encryption).
-- Counters and first-seen marks live in Redis.
CREATE TABLE vault (
    name       TEXT PRIMARY KEY,
    sealed     BYTEA NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    version    INTEGER NOT NULL
);
