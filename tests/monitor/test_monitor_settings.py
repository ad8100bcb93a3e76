"""The ``[monitor]`` block ``tether init`` writes documents the real defaults, and they parse."""

from __future__ import annotations

import tomllib

import pytest

from tether.config import parse_config
from tether.errors import ConfigError
from tether.monitor.sample import sample_config
from tether.monitor.settings import DEFAULTS, parse_detectors
from tether.provision import render_config


def _uncommented(block: str) -> str:
    lines = [line[2:] if line.startswith("# ") else "" for line in block.splitlines()]
    return "\n".join(line for line in lines if not line.startswith("#"))


def test_rendered_config_carries_the_commented_monitor_block() -> None:
    text = render_config("http://127.0.0.1:8700")
    assert sample_config() in text
    assert "monitor" not in tomllib.loads(text)  # commented out: the defaults apply


def test_uncommented_monitor_block_equals_the_defaults() -> None:
    data = tomllib.loads(_uncommented(sample_config()))
    config = parse_config(data, path=None, env={})
    assert config.detectors == parse_detectors(None)
    assert {d.name for d in config.detectors} == set(DEFAULTS)
    assert config.monitor.interval == 1 and config.monitor.webhook_url == ""


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"exchange_rate_spike": {"warmup": -1}}, "monitor.detectors.exchange_rate_spike.warmup"),
        ({"gateway_unusual": {"span": "day"}}, "monitor.detectors.gateway_unusual.span"),
        ({"dpop_replay": {"actions": ["page"]}}, "monitor.detectors.dpop_replay.actions"),
        ({"nope": {}}, "monitor.detectors.nope"),
    ],
)
def test_bad_detector_tables_are_config_errors_naming_the_key(table: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_detectors(table)
    assert caught.value.key == key
