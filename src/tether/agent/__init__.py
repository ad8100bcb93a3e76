"""Agent SDK: DPoP keys and proofs, hop-token exchange, and an ``httpx.Auth``."""
