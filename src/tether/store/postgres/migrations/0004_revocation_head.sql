-- The revocation feed's order is its commit order. A serial is
-- drawn at insert but transactions commit in any order, so a follower that had read seq
-- N+1 never saw a later-committed N. Every publishing transaction now locks this single
-- head row first and numbers its entries from it: no later seq can become visible before
-- an earlier one. Seeded past every seq ever drawn (purged entries included), so no
-- follower's cursor is already beyond the next entry.
CREATE TABLE revocation_head (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    seq BIGINT NOT NULL
);
INSERT INTO revocation_head (id, seq)
SELECT 1, GREATEST(
    COALESCE((SELECT MAX(seq) FROM revocations), 0),
    COALESCE(pg_sequence_last_value(pg_get_serial_sequence('revocations', 'seq')::regclass), 0)
);
-- nothing may draw a seq any other way
DO $$
DECLARE serial TEXT := pg_get_serial_sequence('revocations', 'seq');
BEGIN
    ALTER TABLE revocations ALTER COLUMN seq DROP DEFAULT;
    EXECUTE 'DROP SEQUENCE ' || serial;
END $$;
