"""Shared fixtures. Servers are real uvicorn instances on loopback; stores are real files."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

sys.path.insert(0, str(Path(__file__).parent))

from helpers import QUIET_MONITOR, SCHEMAS, RunningSts, running_sts
from services import drop_schema

# Property tests share two cores with live servers: generation speed is not what they test,
# so the "too slow" health check (a timing judgement) must not fail them under load.
settings.register_profile("tether", suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("tether")


@pytest.fixture
def sts(tmp_path: Path) -> Iterator[RunningSts]:
    """A fresh STS per test (its own directory, keys and database)."""
    with running_sts(tmp_path) as server:
        yield server


@pytest.fixture(scope="module")
def shared_sts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSts]:
    """One STS for a whole module, for tests that only create their own tasks."""
    with running_sts(tmp_path_factory.mktemp("sts"), extra_toml=QUIET_MONITOR) as server:
        yield server


@pytest.fixture(scope="session", autouse=True)
def _drop_test_schemas() -> Iterator[None]:
    yield
    for schema in SCHEMAS:
        drop_schema(schema)
