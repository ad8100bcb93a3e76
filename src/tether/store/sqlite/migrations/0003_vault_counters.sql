-- Legacy secrets for the gateway, sealed under the master key (envelope encryption).
CREATE TABLE vault (
    name       TEXT PRIMARY KEY,
    sealed     BLOB NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    version    INTEGER NOT NULL
);

-- Fixed-window counters (gateway rates and caps) and first-seen marks.
CREATE TABLE counters (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL,
    until INTEGER NOT NULL
);
