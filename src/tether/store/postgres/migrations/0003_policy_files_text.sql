-- Policy files are kept as the JSON text the store writes (as in the SQLite store);
-- schema 1 declared the column JSONB, and a migration already applied is never edited.
ALTER TABLE policy_versions ALTER COLUMN files TYPE TEXT USING files::text;
