-- tether schema v1 (PostgreSQL). Durable state shared by every replica.
-- Holds jtis, hashes and thumbprints; never a token or secret value.
CREATE TABLE signing_keys (
    kid            TEXT PRIMARY KEY,
    alg            TEXT NOT NULL,
    public_jwk     TEXT NOT NULL,
    sealed_private BYTEA NOT NULL,
    created_at     BIGINT NOT NULL,
    retired_at     BIGINT,
    not_after      BIGINT,
    ordinal        BIGSERIAL
);

CREATE TABLE tasks (
    id            TEXT PRIMARY KEY,
    agent         TEXT NOT NULL,
    on_behalf_of  TEXT,
    purpose       TEXT,
    audiences     TEXT NOT NULL,
    scopes        TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    max_depth     INTEGER NOT NULL,
    max_tokens    INTEGER NOT NULL,
    tokens_issued INTEGER NOT NULL DEFAULT 0,
    state         TEXT NOT NULL,
    ended_at      BIGINT,
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
    iat        BIGINT NOT NULL,
    exp        BIGINT NOT NULL,
    depth      INTEGER NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX tokens_parent ON tokens (parent_jti);
CREATE INDEX tokens_task ON tokens (task_id);
CREATE INDEX tokens_sub ON tokens (sub);
CREATE INDEX tokens_client ON tokens (client_id);

-- Single-use workload JWT jtis: spent in the same transaction as the issuance they allow.
CREATE TABLE spent (
    key   TEXT PRIMARY KEY,
    until BIGINT NOT NULL
);

CREATE TABLE revocations (
    seq   BIGSERIAL PRIMARY KEY,
    kind  TEXT NOT NULL,
    value TEXT NOT NULL,
    exp   BIGINT NOT NULL,
    at    DOUBLE PRECISION NOT NULL
);
CREATE INDEX revocations_exp ON revocations (exp);

CREATE TABLE blocks (
    kind  TEXT NOT NULL,
    value TEXT NOT NULL,
    since DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (kind, value)
);
CREATE INDEX blocks_value ON blocks (value);

-- One chain for every replica: appends serialise on the single head row.
CREATE TABLE audit (
    seq       BIGINT PRIMARY KEY,
    ts        DOUBLE PRECISION NOT NULL,
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
CREATE TABLE audit_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  BIGINT NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

-- Every policy set a replica loaded, by content hash (for tether report and audits).
CREATE TABLE policy_versions (
    version   TEXT PRIMARY KEY,
    loaded_at DOUBLE PRECISION NOT NULL,
    files     JSONB NOT NULL
);
