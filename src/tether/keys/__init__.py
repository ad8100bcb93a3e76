"""Key material: the issuer keyring and private keys sealed at rest under the master key."""
