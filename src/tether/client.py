"""A synchronous client for the STS: token exchange with DPoP and nonce retry, and the task API.

The CLI uses it as the local admin workload (dogfood: the admin's workload JWT is
exchanged for a short-lived DPoP-bound admin token; there is no static API key).
"""

from __future__ import annotations

from typing import Any

import httpx

from tether.agent.exchange import ExchangeError, Nonces, exchange_flow, refusal, run_sync, send_flow
from tether.agent.identity import IdentitySource
from tether.agent.proof import DPoPKey
from tether.urns import TOKEN_EXCHANGE, TOKEN_TYPE_JWT

__all__ = ["StsClient", "StsError"]

#: an error answer from the STS, with its RFC 6749 ``error`` code (the agent SDK's error)
StsError = ExchangeError


class StsClient:
    def __init__(self, url: str, identity: IdentitySource, *, http: httpx.Client | None = None) -> None:
        self.url = url.rstrip("/")
        self.identity = identity
        self.key = DPoPKey()
        self.nonces = Nonces()
        self.http = http or httpx.Client(timeout=10.0, trust_env=False)
        self._admin_token: str | None = None

    def admin_token(self) -> str:
        """The admin's DPoP-bound token, from its workload JWT on first use (RFC 8693 §2.1)."""
        if self._admin_token is None:
            form = {
                "grant_type": TOKEN_EXCHANGE,
                "subject_token": self.identity.token(self.url),
                "subject_token_type": TOKEN_TYPE_JWT,
            }
            issued = run_sync(exchange_flow(self.url + "/token", form, self.key, self.nonces), self.http)
            self._admin_token = str(issued.value)
        return self._admin_token

    def api(self, method: str, path: str, *, json: Any = None, params: dict[str, str] | None = None) -> Any:
        token = self.admin_token()
        request = self.http.build_request(method, self.url + path, json=json, params=params)
        response: httpx.Response = run_sync(send_flow(request, self.key, self.nonces, access_token=token), self.http)
        if not response.is_success:
            raise refusal(response)
        return response.json()

    def create_task(self, **fields: Any) -> dict[str, Any]:
        body: dict[str, Any] = self.api("POST", "/tasks", json={k: v for k, v in fields.items() if v is not None})
        return body

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> StsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
