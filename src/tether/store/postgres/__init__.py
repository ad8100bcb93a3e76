"""The store for many replicas: PostgreSQL for durable state, with Redis beside it."""
