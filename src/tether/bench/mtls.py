"""Certificate-bound exchanges (RFC 8705) beside DPoP ones, on one STS served over TLS.

One ``tether init --tls`` deployment, ``tether serve`` on one core, the load generator on the
other. Over the same TLS listener: the hop and session exchanges of a DPoP agent (server-
authenticated TLS, a fresh proof per request) and of an mTLS agent (its X.509-SVID on the
connection, no proof, ``client_credentials`` for the session). Connections are kept alive, so
these rows compare the binding methods; the handshake is measured apart — the mTLS hop with a
new connection per request — and reported as the server-core milliseconds it adds per request.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx

import tether.features  # noqa: F401  (the feature tables are registered before a config is loaded)
from tether.bench.exchange import AGENT, AUD_B, AUD_C, RESOURCES, hop_requests, setup_task
from tether.bench.harness import Actor, Deployment, Load, run_loadgen, serve, summarise, tether_bin
from tether.bench.loadgen import form_request
from tether.bench.report import Row
from tether.config import load_config
from tether.identity.dev_issuer import DevTrustDomain
from tether.keys.sealed import load_master_key
from tether.provision import dev_x509_bundle_path, initialize, load_dev_ca, render_config
from tether.urns import CLIENT_CREDENTIALS, TOKEN_EXCHANGE
from tether.urns import TOKEN_TYPE_ACCESS as ACCESS
from tether.urns import TOKEN_TYPE_JWT as JWT
from tether.web.server import free_port

__all__ = ["mtls_rows"]


def _notes(load: Load) -> dict[str, object]:
    return {"p50_ms": round(load.p50_ms, 2), "p99_ms": round(load.p99_ms, 2), "errors": load.errors}


class _Mtls:
    def __init__(self, workdir: Path, duration: float, concurrency: int) -> None:
        self.duration = duration
        self.concurrency = concurrency
        directory = workdir / "mtls"
        directory.mkdir(parents=True, exist_ok=True)
        issuer = f"https://127.0.0.1:{free_port()}"
        text = render_config(issuer, tls=True).replace("max_tokens = 10000", "max_tokens = 10000000")
        (directory / "tether.toml").write_text(text + RESOURCES, encoding="utf-8")
        initialize(directory, issuer=issuer, tls=True)
        config = load_config(directory / "tether.toml")
        master = load_master_key(config.master_key_file)
        self.d = Deployment(config, DevTrustDomain.load(config.data_dir, "tether.local", master))
        bundle = dev_x509_bundle_path(config.data_dir, "tether.local")
        cert, key = load_dev_ca(config.data_dir, "tether.local", master).issue_svid(AGENT, ttl=3600).write(directory, "agent")
        self.tls = {"ca": str(bundle)}
        self.mtls = {**self.tls, "cert": str(cert), "key": str(key)}
        self.trust = ssl.create_default_context(cafile=str(bundle))
        self.with_svid = ssl.create_default_context(cafile=str(bundle))
        self.with_svid.load_cert_chain(str(cert), str(key))

    def load(self, requests: list[bytes], tls: dict[str, str], *, new_connection: bool = False) -> Load:
        raw = run_loadgen(
            self.d.url, requests, concurrency=self.concurrency, duration=self.duration, tls=tls, new_connection=new_connection
        )
        return summarise(raw)

    def rows(self) -> list[Row]:
        url, c, n = self.d.url + "/token", self.concurrency, int(self.duration * 6000)
        args = [tether_bin(), "serve", "--config", str(self.d.config.path)]
        with httpx.Client(trust_env=False, timeout=30, verify=self.trust) as http, serve(args, self.d.url, verify=self.trust):
            agent, dpop_session, task_id = setup_task(self.d, http, [AUD_B, AUD_C])
            dpop_hop = self.load(hop_requests(agent, dpop_session, n), self.tls)
            dpop_session_load = self.load(self._jwt_sessions(agent, task_id), self.tls)
            session_form = {"grant_type": CLIENT_CREDENTIALS, "client_id": AGENT, "task": task_id}
            with httpx.Client(trust_env=False, timeout=30, verify=self.with_svid) as mhttp:
                answer = mhttp.post(url, data=session_form)
                answer.raise_for_status()
                hop_form = {
                    "grant_type": TOKEN_EXCHANGE,
                    "subject_token": answer.json()["access_token"],
                    "subject_token_type": ACCESS,
                    "resource": AUD_B,
                }
                mhttp.post(url, data=hop_form).raise_for_status()  # warm-up: the subject token is cached
            mtls_hop = self.load([form_request(url, hop_form, {})] * n, self.mtls)
            mtls_session = self.load([form_request(url, session_form, {})] * n, self.mtls)
            closing = form_request(url, hop_form, {"Connection": "close"})
            handshakes = self.load([closing] * int(self.duration * 2000), self.mtls, new_connection=True)
        added_ms = 1000 / handshakes.throughput - 1000 / mtls_hop.throughput if handshakes.throughput else float("nan")
        return [
            Row(f"hop exchange, DPoP-bound, over TLS, c={c}", dpop_hop.throughput, "req/s", notes=_notes(dpop_hop)),
            Row(
                f"hop exchange, certificate-bound (RFC 8705), over mutual TLS, c={c}",
                mtls_hop.throughput,
                "req/s",
                dpop_hop.throughput,
                "req/s DPoP",
                notes=_notes(mtls_hop),
            ),
            Row(
                f"session exchange, JWT-SVID + DPoP, over TLS, c={c}",
                dpop_session_load.throughput,
                "req/s",
                notes=_notes(dpop_session_load),
            ),
            Row(
                f"session exchange, client_credentials by X.509-SVID, over mutual TLS, c={c}",
                mtls_session.throughput,
                "req/s",
                dpop_session_load.throughput,
                "req/s JWT + DPoP",
                notes=_notes(mtls_session),
            ),
            Row(
                f"mutual-TLS hop exchange on a new connection per request (handshake included), c={c}",
                handshakes.throughput,
                "req/s",
                mtls_hop.throughput,
                "req/s kept alive",
                notes={**_notes(handshakes), "handshake_server_core_ms_per_request": round(added_ms, 2)},
            ),
        ]

    def _jwt_sessions(self, agent: Actor, task_id: str) -> list[bytes]:
        """Session exchanges that each carry a fresh JWT-SVID and DPoP proof (the DPoP agent's path)."""
        url = self.d.url + "/token"
        form = {"grant_type": TOKEN_EXCHANGE, "subject_token_type": JWT, "task": task_id}
        return [
            form_request(
                url, {**form, "subject_token": agent.svid(AGENT)}, {"DPoP": agent.key.proof("POST", url, nonce=agent.nonce)}
            )
            for _ in range(int(self.duration * 3000))
        ]


def mtls_rows(workdir: Path, *, duration: float, concurrency: int = 16) -> list[Row]:
    return _Mtls(workdir, duration, concurrency).rows()
