-- RFC 8705 certificate-bound tokens: the lineage records the client certificate thumbprint
-- (cnf.x5t#S256) a token is bound to. jkt stays NOT NULL: '' for a token bound to a certificate only.
ALTER TABLE tokens ADD COLUMN x5t TEXT;
