"""Workload identity: JWT-SVIDs, OIDC-issued service tokens and RFC 7523 client assertions."""
