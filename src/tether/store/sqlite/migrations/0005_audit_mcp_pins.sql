-- The mcp.pinned record naming the newest approval of an MCP route's catalogue
-- (Store.mcp_pin_latest_audit): the gateway refuses a pin file older than it, so a pin file
-- written back from before a re-pin is refused. Partial: other records cost nothing more.
CREATE INDEX audit_mcp_pins ON audit (json_extract(detail, '$.route'), seq) WHERE kind = 'mcp.pinned';
