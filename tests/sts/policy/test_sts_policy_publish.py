"""The policy set the STS publishes (``/policies``, the feed heartbeat) and the installed cases.

Resource servers and gateways that take their policies from the STS fetch
``POST /policies`` (a registered workload's client assertion; ETag = version, 304 on
``If-None-Match``) when the revocation stream's
heartbeat names a new ``policy_version``. ``tether init`` installs ``policies/cases.yaml``
and ``tether policy test`` passes on it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
from stspolicykit import add_policy, engine_version, remove_policy

from helpers import RunningSts

TETHER = str(Path(sys.prefix) / "bin" / "tether")
FORBID = '@id("published-forbid")\nforbid (principal, action == Tether::Action::"call", resource) when { context.method == "DELETE" };\n'  # noqa: E501


def _http(sts: RunningSts) -> httpx.Client:
    http = httpx.Client(timeout=10.0, trust_env=False)
    sts.clients.append(http)  # closed with the server
    return http


def _cedar_files(directory: Path) -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(directory.glob("*.cedar"))}


def test_policies_endpoint_returns_the_bundle_and_honours_if_none_match(sts: RunningSts) -> None:
    http = _http(sts)
    response = http.post(sts.url + "/policies", data=sts.client_auth())
    assert response.status_code == 200, response.text
    body = response.json()
    version = engine_version(sts)
    assert body == {"version": version, "mode": "enforce", "files": _cedar_files(sts.config.policy_dir)}
    assert "cases.yaml" not in body["files"]
    etag = response.headers["etag"]
    assert etag == f'"{version}"'
    cached = http.post(sts.url + "/policies", data=sts.client_auth(), headers={"If-None-Match": etag})
    assert cached.status_code == 304 and cached.content == b"" and cached.headers["etag"] == etag
    # a stale tag gets the full bundle
    assert http.post(sts.url + "/policies", data=sts.client_auth(), headers={"If-None-Match": '"0000"'}).status_code == 200

    # a new file: the same tag now gets the new bundle (no exchange needed in between)
    add_policy(sts, "80-published.cedar", FORBID)
    changed = http.post(sts.url + "/policies", data=sts.client_auth(), headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.json()["version"] == engine_version(sts) != version
    assert changed.json()["files"]["80-published.cedar"] == FORBID
    assert changed.headers["etag"] == f'"{changed.json()["version"]}"'
    remove_policy(sts, "80-published.cedar")
    assert http.post(sts.url + "/policies", data=sts.client_auth(), headers={"If-None-Match": etag}).status_code == 304


def _first_heartbeat(http: httpx.Client, sts: RunningSts) -> dict[str, Any]:
    with http.stream("POST", sts.url + "/revocations/stream", data=sts.client_auth(heartbeat="0.2")) as response:
        assert response.status_code == 200
        event = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line[len("event: ") :]
            elif line.startswith("data: ") and event == "heartbeat":
                beat: dict[str, Any] = json.loads(line[len("data: ") :])
                return beat
    raise AssertionError("no heartbeat")


def test_heartbeat_announces_the_policy_version_in_force(sts: RunningSts) -> None:
    http = _http(sts)
    assert _first_heartbeat(http, sts)["policy_version"] == engine_version(sts)
    # a new file while nothing else happens at the STS: the next heartbeat must announce it,
    # or subscribers that take their policies from the STS never learn about it
    before = engine_version(sts)
    add_policy(sts, "80-published.cedar", FORBID)
    announced = _first_heartbeat(http, sts)["policy_version"]
    fetched = http.post(sts.url + "/policies", data=sts.client_auth()).json()["version"]
    assert fetched != before
    assert announced == fetched, "the heartbeat still announces the old policy version"


def test_init_installed_cases_and_policy_test_passes_on_them(sts: RunningSts) -> None:
    directory = sts.config.policy_dir
    assert (directory / "cases.yaml").is_file()
    assert {"00-defaults.cedar", "10-examples.cedar"} <= set(_cedar_files(directory))
    env = {"PATH": str(Path(sys.prefix) / "bin"), "COLUMNS": "200", "NO_COLOR": "1"}
    cwd = sts.config.base_dir
    result = subprocess.run(
        [TETHER, "policy", "test", str(directory.relative_to(cwd) / "cases.yaml")],
        capture_output=True, text=True, timeout=60, check=False, cwd=cwd, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all 6 cases passed" in result.stdout
    assert engine_version(sts) in result.stdout  # the same set the STS enforces
