-- tether schema v1 (SQLite). Holds jtis, hashes and thumbprints; never a token value.
CREATE TABLE signing_keys (
    kid            TEXT PRIMARY KEY,
    alg            TEXT NOT NULL,
    public_jwk     TEXT NOT NULL,
    sealed_private BLOB NOT NULL,
    created_at     INTEGER NOT NULL,
    retired_at     INTEGER,
    not_after      INTEGER
);

CREATE TABLE tasks (
    id            TEXT PRIMARY KEY,
    agent         TEXT NOT NULL,
    on_behalf_of  TEXT,
    purpose       TEXT,
    audiences     TEXT NOT NULL,
    scopes        TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    max_depth     INTEGER NOT NULL,
    max_tokens    INTEGER NOT NULL,
    tokens_issued INTEGER NOT NULL DEFAULT 0,
    state         TEXT NOT NULL,
    ended_at      INTEGER,
    created_by    TEXT
);
CREATE INDEX tasks_state ON tasks (state, expires_at);
CREATE INDEX tasks_agent ON tasks (agent);
CREATE INDEX tasks_subject ON tasks (on_behalf_of);

CREATE TABLE tokens (
    jti        TEXT PRIMARY KEY,
    kind       TEXT NOT NULL,
    task_id    TEXT,
    parent_jti TEXT,
    sub        TEXT NOT NULL,
    client_id  TEXT NOT NULL,
    aud        TEXT NOT NULL,
    scope      TEXT NOT NULL,
    jkt        TEXT NOT NULL,
    iat        INTEGER NOT NULL,
    exp        INTEGER NOT NULL,
    depth      INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE INDEX tokens_parent ON tokens (parent_jti);
CREATE INDEX tokens_task ON tokens (task_id);
CREATE INDEX tokens_sub ON tokens (sub);
CREATE INDEX tokens_client ON tokens (client_id);

CREATE TABLE spent (
    key   TEXT PRIMARY KEY,
    until INTEGER NOT NULL
);

CREATE TABLE replay (
    key   TEXT PRIMARY KEY,
    until INTEGER NOT NULL
);

CREATE TABLE revocations (
    seq   INTEGER PRIMARY KEY AUTOINCREMENT,
    kind  TEXT NOT NULL,
    value TEXT NOT NULL,
    exp   INTEGER NOT NULL,
    at    REAL NOT NULL
);

CREATE TABLE blocks (
    kind  TEXT NOT NULL,
    value TEXT NOT NULL,
    since REAL NOT NULL,
    PRIMARY KEY (kind, value)
);

CREATE TABLE audit (
    seq       INTEGER PRIMARY KEY,
    ts        REAL NOT NULL,
    kind      TEXT NOT NULL,
    outcome   TEXT NOT NULL,
    principal TEXT,
    task      TEXT,
    jti       TEXT,
    error     TEXT,
    detail    TEXT NOT NULL,
    prev      TEXT NOT NULL,
    hash      TEXT NOT NULL
);
