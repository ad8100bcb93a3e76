"""tether: task-bound, key-bound, short-lived tokens for autonomous agents."""

__version__ = "0.1.0"
