"""Fixtures for the identity tests: one real loopback HTTP provider for the session."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from identity_support import Provider


@pytest.fixture(scope="session")
def provider() -> Iterator[Provider]:
    """A Starlette app under uvicorn on 127.0.0.1; tests use their own path prefix on it."""
    server = Provider().start()
    try:
        yield server
    finally:
        server.stop()
