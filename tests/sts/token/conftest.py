"""Fixtures for the token-endpoint tests (real STS servers on loopback)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tokenkit import SERVICE_B, SERVICE_C, SERVICE_D

from helpers import QUIET_MONITOR, SVC_B, SVC_C, RunningSts, running_sts

#: Service B acts as SERVICE_B and SERVICE_D, service C as SERVICE_C (the ``aud`` owners).
RESOURCES_TOML = f"""
[[resources]]
uri = "{SERVICE_B}"
principals = ["{SVC_B}"]

[[resources]]
uri = "{SERVICE_C}"
principals = ["{SVC_C}"]

[[resources]]
uri = "{SERVICE_D}"
principals = ["{SVC_B}"]
"""


@pytest.fixture(scope="module")
def actor_sts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSts]:
    """One STS per module with a resources registry, for actor (step 5) exchanges."""
    with running_sts(tmp_path_factory.mktemp("actor-sts"), extra_toml=RESOURCES_TOML + "\n" + QUIET_MONITOR) as server:
        yield server
