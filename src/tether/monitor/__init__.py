"""Watching the audit stream: detectors, their actions, and alerts."""
