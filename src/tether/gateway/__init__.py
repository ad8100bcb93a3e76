"""The legacy-credential gateway: the narrow, registered bearer exception."""
