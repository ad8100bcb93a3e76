-- Every policy set the STS loaded, by content hash (for audits and tether report).
CREATE TABLE policy_versions (
    version   TEXT PRIMARY KEY,
    loaded_at REAL NOT NULL,
    files     TEXT NOT NULL
);
