"""``tether init --tls``, ``tether identity issue --x509`` and ``tether serve`` over TLS (RFC 8705).

Real files, real crypto, a real ``tether serve`` subprocess speaking HTTPS on loopback; the
handshakes are made with the dev CA the command wrote (and, as negatives, with a stranger's)."""

from __future__ import annotations

import ipaddress
import json
import shutil
import ssl
import stat
import time
from pathlib import Path

import httpx
import pytest
from cli_support import one_line, serving, tether
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import verification

from helpers import free_port
from tether.config import load_config
from tether.errors import InvalidClient
from tether.identity.dev_x509 import DevCA
from tether.rules.certificate import verify_svid

# runs the same whatever TETHER_TEST_STORE says: the PostgreSQL pass of scripts/test leaves it out
pytestmark = pytest.mark.store_independent

AGENT_ID = "spiffe://tether.local/agent/research"


def _init(directory: Path, port: int, *extra: str) -> str:
    result = tether("init", "--dir", str(directory), "--issuer", f"http://127.0.0.1:{port}", "--tls", *extra)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _certs(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """One ``tether init --tls`` for the module (reading tests only; the rest copy it)."""
    directory = tmp_path_factory.mktemp("tls")
    port = free_port()
    _init(directory, port)
    return directory, port


def test_init_tls_writes_a_sealed_dev_ca_a_server_certificate_and_https_config(deployment: tuple[Path, int]) -> None:
    directory, port = deployment
    data = directory / ".tether"
    config = load_config(directory / "tether.toml")
    assert config.issuer == f"https://127.0.0.1:{port}"
    assert config.gateway.url.startswith("https://")
    assert config.resolve(config.tls.certificate) == data / "tls" / "server.pem"
    assert config.resolve(config.tls.key) == data / "tls" / "server.key"
    (domain,) = config.trust_domains
    assert domain.x509_bundle_file == data / "bundles" / "tether.local.x509.pem"
    # the CA key is sealed under the master key, like the JWT-SVID key: no PEM in the clear
    sealed = data / "dev" / "tether.local.ca.key.sealed"
    assert _mode(sealed) == 0o600
    assert b"PRIVATE KEY" not in sealed.read_bytes()
    assert _mode(data / "tls" / "server.key") == 0o600
    assert _mode(data / "tls") == 0o700
    # the bundle is the CA certificate; the server certificate chains to it for the issuer host and loopback
    (root,) = _certs(domain.x509_bundle_file)
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    leaf, *rest = _certs(data / "tls" / "server.pem")
    store = verification.Store([root])
    for name in (x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")):
        builder = verification.PolicyBuilder().store(store)
        builder.build_server_verifier(name).verify(leaf, rest)  # raises if the name or the chain is wrong


def test_init_tls_twice_keeps_the_ca_and_force_replaces_it(tmp_path: Path) -> None:
    port = free_port()
    _init(tmp_path, port)
    bundle = tmp_path / ".tether" / "bundles" / "tether.local.x509.pem"
    server = tmp_path / ".tether" / "tls" / "server.pem"
    ca, cert = bundle.read_bytes(), server.read_bytes()
    again = _init(tmp_path, port)
    assert "created" not in again
    assert bundle.read_bytes() == ca and server.read_bytes() == cert
    _init(tmp_path, port, "--force")
    assert bundle.read_bytes() != ca
    assert server.read_bytes() != cert  # a new CA means a new server certificate


def test_init_tls_over_an_existing_plain_config_says_what_to_add_and_never_rewrites_it(tmp_path: Path) -> None:
    port = free_port()
    plain = tether("init", "--dir", str(tmp_path), "--issuer", f"http://127.0.0.1:{port}")
    assert plain.returncode == 0, plain.stderr
    before = (tmp_path / "tether.toml").read_text()
    out = _init(tmp_path, port)
    assert (tmp_path / "tether.toml").read_text() == before
    flat = " ".join(out.split())
    assert "[tls] certificate" in flat and "x509_bundle_file" in flat and f'issuer = "https://127.0.0.1:{port}"' in flat
    assert (tmp_path / ".tether" / "bundles" / "tether.local.x509.pem").is_file()


def test_identity_issue_x509_writes_an_svid_that_verifies_against_the_bundle(
    deployment: tuple[Path, int], tmp_path: Path
) -> None:
    directory, _ = deployment
    out = tmp_path / "svid"
    result = tether("identity", "issue", "--x509", AGENT_ID, "--out", str(out), "--config", str(directory / "tether.toml"))
    assert result.returncode == 0, result.stderr
    assert _mode(out / "svid.key") == 0o600
    (leaf,) = _certs(out / "svid.pem")
    anchors = _certs(out / "bundle.pem")
    assert (out / "bundle.pem").read_bytes() == (directory / ".tether" / "bundles" / "tether.local.x509.pem").read_bytes()
    der = leaf.public_bytes(serialization.Encoding.DER)
    assert verify_svid(der, [], anchors, trust_domain="tether.local", now=time.time()) == AGENT_ID
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert 3600 <= lifetime.total_seconds() <= 3600 + 60  # the default --ttl for X.509 (+ the CA's backdating)
    # the key is the certificate's
    context = ssl.create_default_context()
    context.load_cert_chain(out / "svid.pem", out / "svid.key")
    # a stranger's CA is not this domain's bundle (MTLS-02)
    stranger = DevCA.create("tether.local")
    with pytest.raises(InvalidClient):
        verify_svid(der, [], [stranger.certificate], trust_domain="tether.local", now=time.time())


def test_identity_issue_x509_refusals_exit_2_with_one_line(deployment: tuple[Path, int], tmp_path: Path) -> None:
    directory, _ = deployment
    config = str(directory / "tether.toml")
    other_domain = tether(
        "identity", "issue", "--x509", "spiffe://elsewhere.org/a", "--out", str(tmp_path / "x"), "--config", config
    )
    assert other_domain.returncode == 2 and "tether.local" in one_line(other_domain.stderr)
    no_out = tether("identity", "issue", "--x509", AGENT_ID, "--config", config)
    assert no_out.returncode == 2 and "--out" in one_line(no_out.stderr)
    assert not (tmp_path / "x").exists()
    # without init --tls there is no CA: a clear error, no traceback
    plain = tmp_path / "plain"
    assert tether("init", "--dir", str(plain), "--issuer", f"http://127.0.0.1:{free_port()}").returncode == 0
    missing = tether(
        "identity", "issue", "--x509", AGENT_ID, "--out", str(tmp_path / "y"), "--config", str(plain / "tether.toml")
    )
    assert missing.returncode == 2, missing.stderr
    assert "init --tls" in one_line(missing.stderr)
    # and --tls on a configuration without [tls] is an error, not plain HTTP by surprise
    refused = tether("serve", "--tls", "--config", str(plain / "tether.toml"), timeout=30)
    assert refused.returncode == 2 and "[tls]" in one_line(refused.stderr)


def test_serve_with_tls_config_speaks_https_and_verifies_client_certificates_mtls_02(
    deployment: tuple[Path, int], tmp_path: Path
) -> None:
    template, _ = deployment
    directory = tmp_path / "d"
    shutil.copytree(template, directory)
    port = free_port()  # a port of its own: the template's may be taken by now
    config = directory / "tether.toml"
    text = config.read_text()
    _, old = deployment
    config.write_text(text.replace(str(old), str(port)))
    bundle = directory / ".tether" / "bundles" / "tether.local.x509.pem"
    trust = ssl.create_default_context(cafile=str(bundle))
    svid = tmp_path / "svid"
    issued = tether("identity", "issue", "--x509", AGENT_ID, "--out", str(svid), "--config", str(config))
    assert issued.returncode == 0, issued.stderr
    url = f"https://127.0.0.1:{port}"
    with serving(config, url, log=tmp_path / "serve.log", verify=trust, args=("--tls",)):
        # the dev CA vouches for the server; a client with the dev SVID completes the handshake
        with_cert = ssl.create_default_context(cafile=str(bundle))
        with_cert.load_cert_chain(svid / "svid.pem", svid / "svid.key")
        with httpx.Client(verify=with_cert, trust_env=False) as http:
            assert http.get(url + "/healthz").status_code == 200
        # a certificate from another CA fails the handshake (it chains to no configured bundle)
        stranger = DevCA.create("tether.local").issue_svid(AGENT_ID)
        cert, key = stranger.write(tmp_path / "stranger", "svid")
        foreign = ssl.create_default_context(cafile=str(bundle))
        foreign.load_cert_chain(cert, key)
        with httpx.Client(verify=foreign, trust_env=False) as http, pytest.raises(httpx.TransportError):
            http.get(url + "/healthz")
        # the server is not the system's: without the dev CA the client refuses it
        with httpx.Client(trust_env=False) as http, pytest.raises(httpx.ConnectError):
            http.get(url + "/healthz")
        # the CLI's admin commands reach the STS over TLS (they trust the dev CA)
        created = tether("task", "create", "--agent", AGENT_ID, "--audience", "https://wiki.example", "--scope", "wiki:read",
                         "--json", "--config", str(config))  # fmt: skip
        assert created.returncode == 0, created.stderr
        assert json.loads(created.stdout)["agent"] == AGENT_ID
        # and plain HTTP on the TLS port gets no answer
        with httpx.Client(trust_env=False) as http, pytest.raises(httpx.TransportError):
            http.get(f"http://127.0.0.1:{port}/healthz")


def test_serve_tls_with_workers_pickles_the_context_factory(deployment: tuple[Path, int], tmp_path: Path) -> None:
    """``--workers N`` spawns processes: the TLS options (a partial of module-level names) must
    pickle, and every worker serves HTTPS with the dev CA."""
    template, old = deployment
    directory = tmp_path / "d"
    shutil.copytree(template, directory)
    port = free_port()
    config = directory / "tether.toml"
    config.write_text(config.read_text().replace(str(old), str(port)))
    trust = ssl.create_default_context(cafile=str(directory / ".tether" / "bundles" / "tether.local.x509.pem"))
    url = f"https://127.0.0.1:{port}"
    with (
        serving(config, url, log=tmp_path / "serve.log", verify=trust, args=("--workers", "2"), timeout=40),
        httpx.Client(verify=trust, trust_env=False) as http,
    ):
        assert all(http.get(url + "/healthz").status_code == 200 for _ in range(4))


def test_gateway_tls_without_tls_settings_exits_2(tmp_path: Path) -> None:
    port = free_port()
    assert tether("init", "--dir", str(tmp_path), "--issuer", f"http://127.0.0.1:{port}").returncode == 0
    config = tmp_path / "tether.toml"
    route = (
        '\n[[gateway.routes]]\nname = "apikey"\nupstream = "http://127.0.0.1:9"\nsecret = "key"\n'
        'allow = ["GET /v1/items"]\nowner = "team"\njustification = "a static key"\nexpires = 2099-12-31\n'
    )
    config.write_text(config.read_text() + route)
    result = tether("gateway", "--tls", "--config", str(config), timeout=30)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "[tls]" in one_line(result.stderr)
