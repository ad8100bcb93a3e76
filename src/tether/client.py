"""A synchronous client for the STS: token exchange with DPoP and nonce retry, and the task API.

The CLI uses it as the local admin workload (dogfood: the admin's workload JWT is
exchanged for a short-lived DPoP-bound admin token; there is no static API key).
"""

from __future__ import annotations

from typing import Any

import httpx

from tether.agent.identity import IdentitySource
from tether.agent.proof import DPoPKey

__all__ = ["TOKEN_EXCHANGE", "TOKEN_TYPE_ACCESS", "TOKEN_TYPE_JWT", "StsClient", "StsError"]

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
TOKEN_TYPE_JWT = "urn:ietf:params:oauth:token-type:jwt"
TOKEN_TYPE_ACCESS = "urn:ietf:params:oauth:token-type:access_token"


class StsError(Exception):
    """An error answer from the STS, with its RFC 6749 ``error`` code."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(f"{error}: {description}" if description else error)
        self.status = status
        self.error = error
        self.description = description


def _raise_for(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        body = response.json()
        error, description = str(body.get("error", "error")), str(body.get("error_description", ""))
    except ValueError:
        error, description = "error", response.text[:200]
    raise StsError(response.status_code, error, description)


class StsClient:
    def __init__(self, url: str, identity: IdentitySource, *, http: httpx.Client | None = None) -> None:
        self.url = url.rstrip("/")
        self.identity = identity
        self.key = DPoPKey()
        self.http = http or httpx.Client(timeout=10.0, trust_env=False)
        self._nonce: str | None = None
        self._admin_token: str | None = None

    def _send(self, method: str, path: str, *, token: str | None = None, **kwargs: Any) -> httpx.Response:
        """Send with a fresh proof; retry once with the server's nonce (RFC 9449 §8)."""
        url = self.url + path
        for _ in range(2):
            headers = {"DPoP": self.key.proof(method, url, nonce=self._nonce, access_token=token)}
            if token is not None:
                headers["Authorization"] = f"DPoP {token}"
            response = self.http.request(method, url, headers=headers, **kwargs)
            if "dpop-nonce" in response.headers:
                self._nonce = response.headers["dpop-nonce"]
            if response.status_code in (400, 401) and _is_nonce_challenge(response):
                continue
            return response
        return response

    def exchange(self, form: dict[str, str]) -> dict[str, Any]:
        response = self._send("POST", "/token", data=form)
        _raise_for(response)
        body: dict[str, Any] = response.json()
        return body

    def admin_token(self) -> str:
        if self._admin_token is None:
            body = self.exchange(
                {
                    "grant_type": TOKEN_EXCHANGE,
                    "subject_token": self.identity.token(self.url),
                    "subject_token_type": TOKEN_TYPE_JWT,
                }
            )
            self._admin_token = str(body["access_token"])
        return self._admin_token

    def api(self, method: str, path: str, *, json: Any = None, params: dict[str, str] | None = None) -> Any:
        response = self._send(method, path, token=self.admin_token(), json=json, params=params)
        _raise_for(response)
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


def _is_nonce_challenge(response: httpx.Response) -> bool:
    if response.status_code == 401 and "use_dpop_nonce" in response.headers.get("www-authenticate", ""):
        return True
    try:
        return bool(response.json().get("error") == "use_dpop_nonce")
    except ValueError:
        return False
