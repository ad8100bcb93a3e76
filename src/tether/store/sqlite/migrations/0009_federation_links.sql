-- Linked tasks (issue 19): which local task a federation peer's task opened or joined, and from
-- which of its tokens. A peer token is redeemed once, so (peer, foreign_jti) is unique; the
-- peer's revocation feed names tasks and tokens, hence the two look-ups.
CREATE TABLE federation_links (
    peer         TEXT NOT NULL,
    foreign_task TEXT NOT NULL,
    foreign_jti  TEXT NOT NULL,
    task_id      TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (peer, foreign_jti)
);
CREATE INDEX federation_links_foreign_task ON federation_links (peer, foreign_task);
