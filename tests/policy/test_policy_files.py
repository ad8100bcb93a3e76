"""Who can change policy, and when a change takes effect (issue 21 findings 4 and 9).

* A group- or world-writable policy directory or file is refused (as a readable master key
  is): whoever can write it can grant anything. ``tether init`` creates every file it
  writes with explicit modes, whatever the umask.
* A symlinked policy directory swapped on deploy (``ln -sfn v2 current``) is noticed: the
  new target's policies are in force without a restart.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from policykit import call, write

from tether.config import load_config
from tether.errors import ConfigError, PolicyUnavailable
from tether.policy.engine import PolicyEngine
from tether.provision import initialize

PERMIT_ALL = '@id("permit-all")\npermit (principal, action, resource);\n'
FORBID_CALLS = '@id("no-calls")\nforbid (principal, action == Tether::Action::"call", resource);\n'


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_writes_private_files_whatever_the_umask(tmp_path: Path, permissive_umask: None) -> None:
    result = initialize(tmp_path / "deploy", issuer="http://127.0.0.1:8799")
    config = load_config(result.config_path)
    assert mode(result.config_path) == 0o600
    assert mode(config.policy_dir) == 0o700
    files = list(config.policy_dir.iterdir())
    assert files and all(mode(f) == 0o600 for f in files), {f.name: oct(mode(f)) for f in files}
    assert PolicyEngine(config.policy_dir).current is not None  # positive control: it loads


@pytest.mark.parametrize("bits", [0o020, 0o002])
def test_a_config_others_can_write_is_refused(tmp_path: Path, bits: int) -> None:
    path = initialize(tmp_path / "deploy", issuer="http://127.0.0.1:8799").config_path
    assert load_config(path).issuer == "http://127.0.0.1:8799"  # positive control
    os.chmod(path, 0o600 | bits)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "writable by its owner only" in str(info.value)


@pytest.mark.parametrize(("target", "bits"), [("dir", 0o020), ("dir", 0o002), ("file", 0o020), ("file", 0o002)])
def test_a_policy_directory_or_file_others_can_write_is_refused(tmp_path: Path, target: str, bits: int) -> None:
    directory = tmp_path / "policies"
    path = write(directory, "a.cedar", PERMIT_ALL)
    os.chmod(directory, 0o700)
    os.chmod(path, 0o600)
    assert PolicyEngine(directory).authorize(call()).allowed  # positive control
    victim = directory if target == "dir" else path
    os.chmod(victim, mode(victim) | bits)
    engine = PolicyEngine(directory)
    assert engine.current is None
    assert engine.last_error is not None and "writable by group or others" in str(engine.last_error)
    with pytest.raises(PolicyUnavailable):  # fail closed: no decision without a policy set
        engine.authorize(call())


def test_a_policy_file_made_writable_later_is_not_loaded(tmp_path: Path) -> None:
    """A running engine keeps its set: a world-writable new file cannot add a rule."""
    directory = tmp_path / "policies"
    write(directory, "a.cedar", PERMIT_ALL)
    os.chmod(directory, 0o700)
    engine = PolicyEngine(directory)
    assert engine.authorize(call()).allowed
    added = write(directory, "b.cedar", FORBID_CALLS)
    os.chmod(added, 0o666)  # noqa: S103 - the attack under test
    assert engine.authorize(call()).allowed, "the world-writable file must not take effect"
    assert engine.last_error is not None
    os.chmod(added, 0o600)
    assert not engine.authorize(call()).allowed  # positive control: the same file, owner-only, applies


def test_a_symlink_swap_of_the_policy_directory_takes_effect(tmp_path: Path) -> None:
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    write(v1, "a.cedar", PERMIT_ALL)
    write(v2, "a.cedar", PERMIT_ALL + FORBID_CALLS)
    current = tmp_path / "current"
    current.symlink_to(v1)
    engine = PolicyEngine(current)
    assert engine.authorize(call()).allowed
    first = engine.version
    swap = tmp_path / "current.new"  # what `ln -sfn v2 current` does: a new link renamed over the old
    swap.symlink_to(v2)
    os.replace(swap, current)
    decision = engine.authorize(call())
    assert not decision.allowed and engine.version != first, "the swap was not noticed"
    assert "no-calls" in decision.determining
    # and back again: the watch follows the link to whichever target it names now
    swap.symlink_to(v1)
    os.replace(swap, current)
    assert engine.authorize(call()).allowed and engine.version == first
