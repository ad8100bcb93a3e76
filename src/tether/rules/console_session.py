"""The operator console's sessions, CSRF tokens and one-time login links (SECURITY WEB-01, 02, 04).

Pure: no I/O, no clock of its own. Everything the console hands a browser is ``payload.tag``
(``rules.signed_token``): RFC 8785 JSON in base64url, then an HMAC-SHA256 tag under a key derived from the
master key (``keys.sealed.derive_key(master, "console")``), with a label per kind of value so a
login link can never be presented as a session or the other way round. The tag is checked
before anything in the payload is read.

* A **session** names its id, the human's principal, roles, approver groups, how they logged in
  (and, for OIDC, which provider vouched for them), when (``iat``, for the absolute timeout) and
  when they were last seen (idle timeout). The cookie is re-sealed on each request with a new
  ``seen``. Logging out spends the session id in the store (``logout_key``), so a copy of the
  cookie dies with it on every replica.
* A **CSRF token** is an HMAC of the session id (the "synchronizer token" bound to the session,
  OWASP ASVS V3.5): nothing to store, and a token from another session never verifies.
* A **login link** names the principal and role it logs in as, an expiry and a nonce; the
  console spends the nonce in the store on use (single use, ``link_key``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from tether.errors import AccessDenied, TetherError
from tether.rules.signed_token import b64url, open_payload, seal_payload

__all__ = [
    "LoginLink",
    "Session",
    "SessionInvalid",
    "check_csrf",
    "csrf_token",
    "link_key",
    "logout_key",
    "open_link",
    "open_session",
    "seal_link",
    "seal_session",
]

MAX_SEALED = 4096
_SESSION = b"tether console session v1\x00"
_LINK = b"tether console login link v1\x00"
_CSRF = b"tether console csrf v1\x00"


class SessionInvalid(TetherError):
    """No usable session: absent, forged, malformed, idle too long or too old. ``reason`` says which (for logs)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _strings(value: Any) -> frozenset[str] | None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return None
    return frozenset(value)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class Session:
    """A logged-in human: ``sid`` (random), ``principal``, ``roles``, approver ``groups``, ``via``
    (``oidc`` or ``link``), ``iat`` (login time) and ``seen`` (last request)."""

    sid: str
    principal: str
    roles: frozenset[str]
    groups: frozenset[str]
    via: str
    iat: int
    seen: int
    name: str = ""
    #: the provider that vouched for an OIDC login (``""`` for a link): a session outlives a
    #: restart, and one from a provider no longer configured must not pass as the new one's
    issuer: str = ""

    def touched(self, now: float) -> Session:
        """The same session, seen at ``now`` (the idle timeout restarts)."""
        return dataclasses.replace(self, seen=int(now))


def seal_session(key: bytes, session: Session) -> str:
    return seal_payload(key, _SESSION, {
        "sid": session.sid, "p": session.principal, "r": sorted(session.roles), "g": sorted(session.groups),
        "v": session.via, "iat": session.iat, "seen": session.seen, "n": session.name, "i": session.issuer,
    })  # fmt: skip


def open_session(key: bytes, sealed: str | None, *, now: float, idle: int, max_age: int) -> Session:
    """The session a cookie carries, if it verifies and neither timeout has passed (WEB-01)."""
    if not sealed:
        raise SessionInvalid("no session")
    data = open_payload(key, _SESSION, sealed, max_length=MAX_SEALED)
    if data is None:
        raise SessionInvalid("session cookie does not verify")
    roles, groups = _strings(data.get("r")), _strings(data.get("g"))
    iat, seen = _int(data.get("iat")), _int(data.get("seen"))
    texts = [data.get(k) for k in ("sid", "p", "v", "n", "i")]
    if roles is None or groups is None or iat is None or seen is None or not all(isinstance(t, str) for t in texts):
        raise SessionInvalid("session cookie malformed")
    session = Session(data["sid"], data["p"], roles, groups, data["v"], iat, seen, data["n"], data["i"])
    if now >= session.iat + max_age:
        raise SessionInvalid("session reached its absolute timeout")
    if now >= session.seen + idle:
        raise SessionInvalid("session idle too long")
    if session.seen < session.iat or session.seen > now + 60:
        raise SessionInvalid("session times inconsistent")
    return session


def logout_key(sid: str) -> str:
    """The store key that marks a session logged out (``Store.spend`` / ``Store.spent``)."""
    return hashlib.sha256(b"tether console logout\x00" + sid.encode()).hexdigest()


def csrf_token(key: bytes, sid: str) -> str:
    """The CSRF token of session ``sid`` (WEB-02): an HMAC of the id, never stored."""
    return b64url(hmac.new(key, _CSRF + sid.encode(), hashlib.sha256).digest())


def check_csrf(key: bytes, sid: str, presented: object) -> None:
    """``AccessDenied`` unless ``presented`` is this session's CSRF token."""
    if not isinstance(presented, str) or not presented.isascii() or len(presented) > 100:
        raise AccessDenied("the form is missing its CSRF token; reload the page and try again")
    if not hmac.compare_digest(presented.encode(), csrf_token(key, sid).encode()):
        raise AccessDenied("the form's CSRF token is not this session's; reload the page and try again")


@dataclass(frozen=True)
class LoginLink:
    """What a one-time login link logs in as: ``principal`` with ``role``, until ``exp``, once (``nonce``)."""

    principal: str
    role: str
    exp: int
    nonce: str


def seal_link(key: bytes, link: LoginLink) -> str:
    return seal_payload(key, _LINK, {"p": link.principal, "r": link.role, "x": link.exp, "n": link.nonce})


_BAD_LINK = "this login link is not valid; ask for a new one (tether console --link)"


def open_link(key: bytes, sealed: str, *, now: float) -> LoginLink:
    """The link's content if it verifies and has not expired (``AccessDenied``); single use is the caller's."""
    data = open_payload(key, _LINK, sealed, max_length=MAX_SEALED)
    if data is None:
        raise AccessDenied(_BAD_LINK, debug="login link does not verify")
    exp = _int(data.get("x"))
    texts = [data.get(k) for k in ("p", "r", "n")]
    if exp is None or not all(isinstance(t, str) and t for t in texts):
        raise AccessDenied(_BAD_LINK, debug="login link malformed")
    if now >= exp:
        raise AccessDenied("this login link has expired; ask for a new one (tether console --link)", debug="expired")
    return LoginLink(data["p"], data["r"], exp, data["n"])


def link_key(nonce: str) -> str:
    """The store key that marks a login link used (``Store.spend``)."""
    return hashlib.sha256(b"tether console login link\x00" + nonce.encode()).hexdigest()


# --- OIDC login state (WEB-04): what the browser carries between /login/oidc and /login/callback ---

_LOGIN = b"tether console oidc login v1\x00"

#: seconds a started OIDC login may take before its callback is refused (the login cookie's life)
LOGIN_TTL = 600


@dataclass(frozen=True)
class LoginState:
    """One OIDC login in flight (OIDC Core §3.1.2.1, RFC 7636 §4): the ``state`` the callback must
    echo (login CSRF), the ``nonce`` the ID token must carry (code injection), the PKCE
    ``verifier``, the local path to go to afterwards and an expiry. Sealed into the short-lived
    ``__Host-tether-login`` cookie; the console spends ``state`` on the first callback (``login_key``)."""

    state: str
    nonce: str
    verifier: str
    next_path: str
    exp: int


def seal_login(key: bytes, login: LoginState) -> str:
    return seal_payload(key, _LOGIN, {"s": login.state, "n": login.nonce, "v": login.verifier, "x": login.next_path,
                               "e": login.exp})  # fmt: skip


def open_login(key: bytes, sealed: str | None, *, now: float) -> LoginState:
    """The login a cookie carries, if it verifies (under its own label: a session or a login link
    never opens as one) and has not expired; ``AccessDenied`` otherwise."""
    if not sealed:
        raise AccessDenied("this login was not started here or has expired; start again", debug="no login cookie")
    data = open_payload(key, _LOGIN, sealed, max_length=MAX_SEALED)
    if data is None:
        raise AccessDenied("this login was not started here; start again", debug="login cookie does not verify")
    exp = _int(data.get("e"))
    texts = [data.get(k) for k in ("s", "n", "v", "x")]
    if exp is None or not all(isinstance(t, str) and t for t in texts):
        raise AccessDenied("this login was not started here; start again", debug="login cookie malformed")
    if now >= exp:
        raise AccessDenied("this login took too long and has expired; start again", debug="login cookie expired")
    return LoginState(data["s"], data["n"], data["v"], data["x"], exp)


def login_key(state: str) -> str:
    """The store key that marks an OIDC login's ``state`` used: one login cookie serves one callback."""
    return hashlib.sha256(b"tether console oidc login\x00" + state.encode()).hexdigest()


__all__ += ["LOGIN_TTL", "LoginState", "login_key", "open_login", "seal_login"]
