-- The newest vault.put / vault.rotated record naming an entry (Store.vault_latest_audit):
-- the gateway compares a vault row with it on every cache miss, so a row written back from
-- before a rotation is refused even by a gateway that never opened the newer one. Partial:
-- appending any other record costs nothing more.
CREATE INDEX audit_vault ON audit ((detail::jsonb ->> 'name'), seq) WHERE kind IN ('vault.put', 'vault.rotated');
