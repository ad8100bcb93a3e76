"""Redis: the replay cache, counters and revocation announcements the PostgreSQL store shares."""
