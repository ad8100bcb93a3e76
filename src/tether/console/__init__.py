"""The operator console: server-rendered pages over the STS's state, with OIDC login for humans (issue 18)."""
