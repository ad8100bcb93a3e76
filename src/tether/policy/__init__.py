"""Cedar policy: request entities, the loader and its directory watch, the engine, test cases."""
