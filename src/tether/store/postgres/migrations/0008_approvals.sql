-- Requests held for a human's yes (issue 17, rules.approval; SECURITY APR-01..05).
-- request and view are JSON text exactly as written (their MACs cover them: jsonb would
-- rewrite numbers and key order); groups and policies are JSON arrays. A pending request is
-- unique per (task, digest) while unexpired: hold_approval checks and inserts under the task's
-- advisory lock, so two holds of the same request on any replicas leave one row.
-- Ids compare in code-point order whatever the database's collation.
CREATE TABLE approvals (
    id                  TEXT COLLATE "C" PRIMARY KEY,
    task                TEXT NOT NULL,
    digest              TEXT NOT NULL,
    request             TEXT NOT NULL,
    view                TEXT NOT NULL,
    groups              TEXT NOT NULL,
    policies            TEXT NOT NULL,
    created_at          BIGINT NOT NULL,
    expires_at          BIGINT NOT NULL,
    request_mac         TEXT NOT NULL,
    creator_may_approve BOOLEAN NOT NULL,
    status              TEXT NOT NULL,
    decided_by          TEXT,
    decided_at          BIGINT,
    reason              TEXT NOT NULL DEFAULT '',
    uses                INTEGER NOT NULL DEFAULT 0,
    until               BIGINT,
    decision_mac        TEXT NOT NULL DEFAULT ''
);
-- a task's approvals by status (the cap, the idempotent hold, GET /approvals?task=)
CREATE INDEX approvals_task_status ON approvals (task, status, digest);
-- GET /approvals: newest first, ties by id in code-point order
CREATE INDEX approvals_newest ON approvals (created_at DESC, id COLLATE "C" DESC);
-- the expiry sweep: pending ones by expiry
CREATE INDEX approvals_due ON approvals (expires_at, id COLLATE "C") WHERE status = 'pending';
