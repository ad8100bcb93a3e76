-- The operator console's pages (issue 18).
-- GET tasks, newest first with ties by id (Store.list_tasks' keyset pages): BINARY is code-point order
CREATE INDEX tasks_newest ON tasks (created_at DESC, id);
-- The alerts page (Store.search_audit for kind 'alert.raised'): alerts are rare, so a bounded scan
-- of the newest records would miss older ones. Partial: appends of every other kind cost nothing more.
CREATE INDEX audit_alerts ON audit (seq) WHERE kind = 'alert.raised';
-- No index on (task, seq): it cost every append 6-7% of append_audit's throughput on SQLite
-- (measured, notes/store.md), so a search by task is a bounded scan like the others.
