"""Shared fixtures. Servers are real uvicorn instances on loopback; stores are real files."""

from __future__ import annotations

import sys
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

sys.path.insert(0, str(Path(__file__).parent))

import services
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


# -- `store_independent`: tests the PostgreSQL pass of scripts/test leaves out ----------------------
# A test runs on PostgreSQL + Redis in that pass only through a deployment that follows
# TETHER_TEST_STORE, and every such deployment asks ``services.use_postgres()``. A test that
# never asks (no store, a store of a fixed kind, a `tether init` of its own) runs the same
# code on the same store in both passes, so it is marked and run once. The mark is checked
# here on every run: a marked test whose setup (fixtures of any scope included) or body asks
# fails, naming what asked.

#: (baseid, name) of each fixture whose setup asked which store to use, in this process
_CHOOSING_FIXTURES: set[tuple[str, str]] = set()
_ASKED_BEFORE = pytest.StashKey[int]()


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef[object]) -> Generator[None, object, object]:
    before = services.store_choices
    try:
        return (yield)
    finally:
        if services.store_choices != before:
            _CHOOSING_FIXTURES.add((fixturedef.baseid, fixturedef.argname))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    item.stash[_ASKED_BEFORE] = services.store_choices
    yield


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    yield
    if item.get_closest_marker("store_independent") is None:
        return
    names = set(getattr(item, "fixturenames", ()))
    fixtures = sorted(name for base, name in _CHOOSING_FIXTURES if name in names and item.nodeid.startswith(base))
    if fixtures or services.store_choices != item.stash.get(_ASKED_BEFORE, services.store_choices):
        asked = f"its fixture(s) {', '.join(fixtures)}" if fixtures else "its setup or body"
        pytest.fail(f"marked store_independent, but {asked} chose the store from TETHER_TEST_STORE: remove the mark")
