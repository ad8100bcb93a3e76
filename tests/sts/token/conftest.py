"""Fixtures for the token-endpoint tests (real STS servers on loopback)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tokenkit import RESOURCES_TOML

from helpers import QUIET_MONITOR, RunningSts, running_sts


@pytest.fixture(scope="module")
def actor_sts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSts]:
    """One STS per module with a resources registry, for actor (step 5) exchanges."""
    with running_sts(tmp_path_factory.mktemp("actor-sts"), extra_toml=RESOURCES_TOML + "\n" + QUIET_MONITOR) as server:
        yield server
