"""Request-time Cedar ``call`` checks in the resource SDK, local or pushed from the STS (issue 4).

A real STS (uvicorn, SQLite) issues the tokens; the protected Starlette app from
``rskit`` runs under ``ServerThread`` with ``ResourceSettings(policy_dir=...)`` or
``policy_from_sts=True``. Background pushes are awaited by polling with a deadline;
no latency is asserted.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from rskit import Served, actor_exchange, call, hop_token, protected_app, wait_until
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from helpers import QUIET_MONITOR, SVC_B, SVC_C, RunningSts, create_task, free_port, running_sts
from tether.agent.proof import DPoPKey
from tether.provision import install_starter_policies
from tether.resource import ResourceSettings, Verifier
from tether.web.server import ServerThread

DEADLINE = 5.0
X = "http://svc-x.test"  # owned by service B

FORBID_POST_WRITE = """// no writes through this service, whatever the token says
@id("no-post-write")
forbid (principal, action == Tether::Action::"call", resource)
when { context.method == "POST" && context.path == "/write" };
"""

FORBID_WHOAMI = """@id("no-whoami")
forbid (principal, action == Tether::Action::"call", resource)
when { context.path == "/whoami" };
"""


@dataclass
class World:
    sts: RunningSts
    port: int
    http: httpx.Client

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def token(self, *, scope: str | None = None) -> tuple[str, DPoPKey]:
        task = create_task(self.sts, audiences=[self.url, X], scopes=["wiki:read", "wiki:write"], max_depth=3)
        return hop_token(self.sts, task["id"], self.url, scope=scope)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    port = free_port()
    resources = f"""
[[resources]]
uri = "{X}"
principals = ["{SVC_B}"]

[[resources]]
uri = "http://127.0.0.1:{port}"
principals = ["{SVC_B}", "{SVC_C}"]
"""
    with (
        running_sts(tmp_path_factory.mktemp("rs-policy"), extra_toml=resources + "\n" + QUIET_MONITOR) as sts,
        httpx.Client(timeout=10.0, trust_env=False) as http,
    ):
        yield World(sts, port, http)


def policy_dir(tmp_path: Path, *extra: tuple[str, str]) -> Path:
    directory = tmp_path / "rs-policies"
    install_starter_policies(directory)
    for name, text in extra:
        (directory / name).write_text(text, encoding="utf-8")
    return directory


@contextlib.contextmanager
def service(world: World, settings: ResourceSettings, *, http: httpx.AsyncClient | None = None) -> Iterator[Served]:
    """The protected app on the world's port; an injected async client is closed at shutdown."""
    verifier = Verifier(settings, http=http, clock=world.sts.clock, identity=world.sts.identity(SVC_C))
    log: list[dict[str, Any]] = []
    app: ASGIApp = protected_app(verifier, log=log)
    if http is not None:
        app = _ClosesClient(app, http)
    thread = ServerThread(app, world.port).start()
    served = Served(world.url, verifier, thread, log)
    try:
        yield served
    finally:
        thread.stop()


class _ClosesClient:
    def __init__(self, app: ASGIApp, http: httpx.AsyncClient) -> None:
        self.app, self.http = app, http

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def closing(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                await self.http.aclose()
            await send(message)

        await self.app(scope, receive, closing)


def settings(world: World, **fields: Any) -> ResourceSettings:
    return ResourceSettings(issuer=world.sts.url, resource=world.url, **fields)


def request(world: World, method: str, path: str, token: str, key: DPoPKey) -> httpx.Response:
    return call(world.http, method, world.url + path, token, key)


def assert_policy_denied(response: httpx.Response) -> None:
    assert response.status_code == 403, response.text
    assert response.json()["error"] == "access_denied"
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("DPoP ") and 'error="access_denied"' in challenge


@pytest.fixture
def denials(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """The resource server's log, where each policy refusal names the policies that decided it."""
    caplog.set_level(logging.INFO, logger="tether.resource")
    return caplog


def denied_by(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The determining policy ids of each refusal logged so far (``call denied by policy v (ids)``)."""
    messages = [r.getMessage() for r in caplog.records if r.name == "tether.resource"]
    return [m.split("(", 1)[1].split(")", 1)[0] for m in messages if m.startswith("call denied by policy ")]


# -- local policy directory --------------------------------------------------------------------
def test_call_policy_refuses_a_forbidden_route_and_allows_others(
    world: World, tmp_path: Path, denials: pytest.LogCaptureFixture
) -> None:
    directory = policy_dir(tmp_path, ("50-no-write.cedar", FORBID_POST_WRITE))
    token, key = world.token()
    with service(world, settings(world, policy_dir=str(directory))) as served:
        served.wait_synced()
        assert_policy_denied(request(world, "POST", "/write", token, key))
        assert denied_by(denials) == ["no-post-write"]
        # positive controls: the same token, other routes or methods
        assert request(world, "GET", "/whoami", token, key).status_code == 200
        assert request(world, "POST", "/whoami", token, key).status_code == 200
        assert denied_by(denials) == ["no-post-write"]


def test_call_policy_cannot_be_bypassed_by_percent_encoding_the_path(world: World, tmp_path: Path) -> None:
    """``/wr%69te`` is routed to ``/write``; the policy must see the path the app routes on."""
    directory = policy_dir(tmp_path, ("50-no-write.cedar", FORBID_POST_WRITE))
    token, key = world.token()
    with service(world, settings(world, policy_dir=str(directory))) as served:
        served.wait_synced()
        assert_policy_denied(request(world, "POST", "/write", token, key))
        response = request(world, "POST", "/wr%69te", token, key)
        assert served.log[-1]["path"] == "/write"  # the app routes it to the forbidden endpoint
        assert response.status_code == 403, f"/write reached as /wr%69te: {response.status_code} {response.text}"
        assert_policy_denied(response)


def test_local_policy_directory_is_hot_reloaded(world: World, tmp_path: Path) -> None:
    directory = policy_dir(tmp_path)
    token, key = world.token()
    with service(world, settings(world, policy_dir=str(directory))) as served:
        served.wait_synced()
        assert request(world, "GET", "/whoami", token, key).status_code == 200
        (directory / "50-no-whoami.cedar").write_text(FORBID_WHOAMI, encoding="utf-8")
        assert_policy_denied(request(world, "GET", "/whoami", token, key))
        # an invalid file is refused; the set in force keeps deciding
        (directory / "60-broken.cedar").write_text("forbid (principal, action, resource) when { };\n", encoding="utf-8")
        assert_policy_denied(request(world, "GET", "/whoami", token, key))
        assert served.verifier.policy is not None and served.verifier.policy.last_error is not None
        (directory / "60-broken.cedar").unlink()
        (directory / "50-no-whoami.cedar").unlink()
        assert request(world, "GET", "/whoami", token, key).status_code == 200


def test_TX_05_call_policy_on_the_current_actor_ignores_a_nested_actor(
    world: World, tmp_path: Path, denials: pytest.LogCaptureFixture
) -> None:
    forbid_b = (
        f'@id("no-b")\nforbid (principal, action == Tether::Action::"call", resource)\nwhen {{ context.actor == "{SVC_B}" }};\n'
    )
    directory = policy_dir(tmp_path, ("50-no-b.cedar", forbid_b))
    task = create_task(world.sts, audiences=[world.url, X], scopes=["wiki:read"], max_depth=3)
    to_x, _ = hop_token(world.sts, task["id"], X)
    by_b, key_b = actor_exchange(world.sts, to_x, SVC_B, world.url)  # act: B (current)
    by_c, key_c = actor_exchange(world.sts, by_b, SVC_C, world.url)  # act: C (current), B (nested)
    with service(world, settings(world, policy_dir=str(directory))) as served:
        served.wait_synced()
        response = request(world, "GET", "/whoami", by_c, key_c)
        assert response.status_code == 200, response.text
        assert response.json()["actor"] == SVC_C and response.json()["actors"] == [SVC_C, SVC_B]
        # positive control: B as the current actor is refused
        assert denied_by(denials) == []
        assert_policy_denied(request(world, "GET", "/whoami", by_b, key_b))
        assert denied_by(denials) == ["no-b"]


# -- pushed from the STS -----------------------------------------------------------------------
class PolicyGate(httpx.AsyncBaseTransport):
    """Real HTTP to the STS, except that ``/policies`` cannot be reached until the test opens it."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.open = threading.Event()
        self.held = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/policies" and not self.open.is_set():
            self.held += 1
            raise httpx.ConnectError("the test holds /policies back", request=request)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def _pushed(world: World, gate: httpx.AsyncBaseTransport) -> contextlib.AbstractContextManager[Served]:
    http = httpx.AsyncClient(transport=gate, timeout=5.0, trust_env=False, follow_redirects=False)
    return service(world, settings(world, policy_from_sts=True, stale_after=3.0), http=http)


def _status(world: World, token: str, key: DPoPKey) -> tuple[int, str | None]:
    response = request(world, "GET", "/whoami", token, key)
    return response.status_code, response.json().get("error") if response.status_code != 200 else None


def test_policy_from_sts_is_unavailable_until_the_bundle_arrives(world: World) -> None:
    token, key = world.token()
    gate = PolicyGate()
    with _pushed(world, gate) as served:
        served.wait_synced()  # the revocation view is fresh; only the policy set is missing
        wait_until(lambda: gate.held > 0, timeout=DEADLINE, what="a /policies fetch attempt")
        for _ in range(2):
            response = request(world, "GET", "/whoami", token, key)
            assert response.status_code == 503, response.text
            assert response.json()["error"] == "temporarily_unavailable"
            assert "cannot decide" in response.json()["error_description"]  # the policy, not a stale feed
        assert served.verifier.policy is not None and served.verifier.policy.current is None
        gate.open.set()
        wait_until(lambda: _status(world, token, key) == (200, None), timeout=DEADLINE, what="the pushed policy set")
        assert served.verifier.policy.version == world.sts.sts.ctx.policy.version


def test_policy_from_sts_follows_changes_at_the_sts(world: World, denials: pytest.LogCaptureFixture) -> None:
    token, key = world.token()
    gate = PolicyGate()
    gate.open.set()
    directory = world.sts.config.policy_dir
    with _pushed(world, gate) as served:
        served.wait_synced()
        wait_until(lambda: _status(world, token, key) == (200, None), timeout=DEADLINE, what="the pushed policy set")
        try:
            (directory / "50-no-whoami.cedar").write_text(FORBID_WHOAMI, encoding="utf-8")
            wait_until(
                lambda: _status(world, token, key) == (403, "access_denied"),
                timeout=DEADLINE,
                what="the service to follow the forbid added at the STS",
            )
            denials.clear()
            assert_policy_denied(request(world, "GET", "/whoami", token, key))
            assert denied_by(denials) == ["no-whoami"]
        finally:
            (directory / "50-no-whoami.cedar").unlink()
        wait_until(
            lambda: _status(world, token, key) == (200, None),
            timeout=DEADLINE,
            what="the service to follow the removal at the STS",
        )


class LaggingReplica(httpx.AsyncBaseTransport):
    """Real HTTP to the STS; while ``lagging``, ``/policies`` answers what it answered first — what a
    replica that has not reloaded its policy directory yet would answer."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.open = threading.Event()
        self.open.set()
        self.lagging = False
        self.first: tuple[int, bytes] | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.url.path != "/policies":
            return response
        body = await response.aread()
        if self.first is None:
            self.first = (response.status_code, body)
        if self.lagging:
            status, body = self.first
            return httpx.Response(status, content=body, headers={"content-type": "application/json"})
        return httpx.Response(response.status_code, content=body, headers=response.headers)

    async def aclose(self) -> None:
        await self.inner.aclose()


def test_policy_from_sts_never_pins_a_stale_set_from_a_lagging_replica(world: World) -> None:
    """Issue 21 finding 5: the SDK records the version it installed, asks again until it is the one
    announced, and fails closed once it has lagged for ``stale_after``."""
    token, key = world.token()
    replica = LaggingReplica()
    directory = world.sts.config.policy_dir
    with _pushed(world, replica) as served:
        served.wait_synced()
        wait_until(lambda: _status(world, token, key) == (200, None), timeout=DEADLINE, what="the pushed policy set")
        old = served.verifier.policy.version if served.verifier.policy else None
        replica.lagging = True
        try:
            (directory / "50-no-whoami.cedar").write_text(FORBID_WHOAMI, encoding="utf-8")
            wait_until(lambda: served.verifier.feed is not None and served.verifier.feed.announced_version not in (None, old),
                       timeout=DEADLINE, what="the new version to be announced")  # fmt: skip
            assert served.verifier.feed is not None and served.verifier.feed.policy_version == old  # installed, not announced
            wait_until(lambda: _status(world, token, key) == (503, "temporarily_unavailable"), timeout=DEADLINE + 5,
                       what="the service to fail closed while its policy set lags")  # fmt: skip
            replica.lagging = False  # the replica has reloaded: the next heartbeat's fetch installs the new set
            wait_until(lambda: _status(world, token, key) == (403, "access_denied"), timeout=DEADLINE,
                       what="the forbid to be enforced")  # fmt: skip
        finally:
            (directory / "50-no-whoami.cedar").unlink()
