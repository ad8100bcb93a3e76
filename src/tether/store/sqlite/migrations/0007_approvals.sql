-- Requests held for a human's yes (issue 17, rules.approval; SECURITY APR-01..05).
-- request and view are JSON text exactly as written (their MACs cover them); groups and
-- policies are JSON arrays. A pending request is unique per (task, digest) while unexpired:
-- hold_approval checks and inserts inside one BEGIN IMMEDIATE transaction, which every writer
-- of the file queues on, so two holds of the same request leave one row.
CREATE TABLE approvals (
    id                  TEXT PRIMARY KEY,
    task                TEXT NOT NULL,
    digest              TEXT NOT NULL,
    request             TEXT NOT NULL,
    view                TEXT NOT NULL,
    groups              TEXT NOT NULL,
    policies            TEXT NOT NULL,
    created_at          INTEGER NOT NULL,
    expires_at          INTEGER NOT NULL,
    request_mac         TEXT NOT NULL,
    creator_may_approve INTEGER NOT NULL,
    status              TEXT NOT NULL,
    decided_by          TEXT,
    decided_at          INTEGER,
    reason              TEXT NOT NULL DEFAULT '',
    uses                INTEGER NOT NULL DEFAULT 0,
    until               INTEGER,
    decision_mac        TEXT NOT NULL DEFAULT ''
);
-- a task's approvals by status (the cap, the idempotent hold, GET /approvals?task=)
CREATE INDEX approvals_task_status ON approvals (task, status, digest);
-- GET /approvals: newest first, ties by id (BINARY: code-point order)
CREATE INDEX approvals_newest ON approvals (created_at DESC, id DESC);
-- the expiry sweep: pending ones by expiry
CREATE INDEX approvals_due ON approvals (expires_at, id) WHERE status = 'pending';
