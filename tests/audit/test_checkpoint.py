"""Signed checkpoints and offline export verification (``tether.audit.checkpoint``), with real keys.

Every way of tampering with an export is refused at the first bad record, with the exact
reason: an edited, removed, reordered or inserted record, a forged checkpoint, a
checkpoint signed by a key outside the JWKS, naming the wrong record or hash, from
another issuer or of another JWT type, and a truncated export when the head is known.
Each negative case has a positive control on the same fixture.
"""

from __future__ import annotations

import copy
import hashlib
from typing import Any

import pytest

from tether.audit.chain import GENESIS, AuditEvent, canonical, first_broken, link
from tether.audit.checkpoint import (
    ALGORITHMS,
    CHECKPOINT_KIND,
    CHECKPOINT_TYP,
    checkpoint_claims,
    checkpoint_due,
    checkpoint_event,
)
from tether.audit.coverage import GRACE_SECONDS, Stretch
from tether.audit.export import ExportBroken, verify_export
from tether.keys.keyring import SIGNING_ALGS, KeyRing, SigningKey, generate_key, public_jwk
from tether.rules.jws import PublicKey, sign_compact

ISS = "https://sts.example"
TS = 1_790_000_000.0
#: a checkpoint names the newest checkpoint record of the log as the one before it
LAST: Any = object()


def signing_key(alg: str = "ES256") -> SigningKey:
    private = generate_key(alg)
    jwk = public_jwk(private, alg)
    public = type(private).import_key(jwk)
    return SigningKey(kid=jwk["kid"], alg=alg, private=private, public=public, jwk=jwk, retired_at=None, not_after=None)


def keys_of(*rings: SigningKey) -> dict[str, PublicKey]:
    return {k.kid: k.public for k in rings}


class Log:
    """An audit chain built with ``chain.link``, with checkpoints signed like the STS signs them."""

    def __init__(self, key: SigningKey) -> None:
        self.key = key
        self.rows: list[dict[str, Any]] = []

    @property
    def head(self) -> tuple[int, str]:
        return (self.rows[-1]["seq"], self.rows[-1]["hash"]) if self.rows else (0, GENESIS)

    def append(self, event: AuditEvent, *, ts: float | None = None) -> dict[str, Any]:
        seq, prev = self.head
        row = link(event, seq=seq + 1, ts=TS + seq if ts is None else ts, prev=prev).as_json()
        self.rows.append(row)
        return row

    def add(self, n: int = 1) -> Log:
        for _ in range(n):
            seq = self.head[0] + 1
            self.append(AuditEvent(kind="token.issued", outcome="ok", principal="spiffe://t/agent", jti=f"j{seq}",
                                   detail={"aud": "https://b.example", "scope": ["wiki:read"]}))  # fmt: skip
        return self

    @property
    def last_checkpoint(self) -> tuple[int, str] | None:
        """The newest checkpoint record: what the next checkpoint names as the one before it."""
        found = [(r["seq"], r["hash"]) for r in self.rows if r["kind"] == CHECKPOINT_KIND]
        return found[-1] if found else None

    def jws(self, *, key: SigningKey | None = None, iss: str = ISS, seq: int | None = None, digest: str | None = None,
            iat: int | None = None, typ: str = CHECKPOINT_TYP, prev: Any = LAST, legacy: bool = False) -> str:  # fmt: skip
        head_seq, head_hash = self.head
        claims = checkpoint_claims(issuer=iss, seq=head_seq if seq is None else seq,
                                   hash=head_hash if digest is None else digest, iat=iat or int(TS) + head_seq,
                                   prev=self.last_checkpoint if prev is LAST else prev)  # fmt: skip
        if legacy:  # written before checkpoints named the one before them
            del claims["prev"]
        return KeyRing([key or self.key]).sign(claims, typ=typ)

    def checkpoint(self, jws: str | None = None, **claims: Any) -> dict[str, Any]:
        token = jws or self.jws(**claims)
        head_seq, head_hash = self.head
        seq, digest = claims.get("seq", head_seq), claims.get("digest", head_hash)
        iat = claims.get("iat") or int(TS) + head_seq
        prev = claims.get("prev", LAST)
        event = checkpoint_event(seq=seq, hash=digest, jws=token, prev=self.last_checkpoint if prev is LAST else prev)
        if claims.get("legacy"):
            event = AuditEvent(kind=CHECKPOINT_KIND, outcome="ok", detail={"seq": seq, "hash": digest, "jws": token})
        return self.append(event, ts=float(iat))


def rechain(rows: list[dict[str, Any]], start: int) -> list[dict[str, Any]]:
    """What an attacker with the log does after an edit: recompute every hash and link from ``start`` on."""
    out = copy.deepcopy(rows)
    for i in range(start, len(out)):
        if i:
            out[i]["prev"] = out[i - 1]["hash"]
        body = {k: out[i][k] for k in ("seq", "ts", "kind", "outcome", "principal", "task", "jti", "error", "detail", "prev")}
        out[i]["hash"] = hashlib.sha256(canonical(body)).hexdigest()
    return out


@pytest.fixture
def key() -> SigningKey:
    return signing_key()


@pytest.fixture
def log(key: SigningKey) -> Log:
    """Records 1-5, checkpoint 6 (covers 5), records 7-9, checkpoint 10 (covers 9), records 11-12."""
    log = Log(key).add(5)
    log.checkpoint()
    log.add(3).checkpoint()
    log.add(2)
    report = verify_export(log.rows, keys=keys_of(key), issuer=ISS)  # positive control for every test using it
    assert (report.signed_through, report.checkpoints, report.unsigned) == (9, 2, 2)
    return log


def broken(rows: list[dict[str, Any]], *keys: SigningKey, **kw: Any) -> ExportBroken:
    with pytest.raises(ExportBroken) as info:
        verify_export(rows, keys=keys_of(*keys) if keys else None, **kw)
    assert str(info.value) == f"audit chain broken at record {info.value.seq}: {info.value.reason}"
    return info.value


# ---------------------------------------------------------------------------------------------
# intact exports
# ---------------------------------------------------------------------------------------------


def test_intact_export_report(log: Log, key: SigningKey) -> None:
    report = verify_export(log.rows, keys=keys_of(key), issuer=ISS)
    assert report.records == 12 and report.first == 1 and report.head == (12, log.rows[-1]["hash"])
    assert report.signatures_checked and report.issuer == ISS and report.superseded == 0


def test_export_ending_in_a_checkpoint_has_no_unsigned_tail(log: Log, key: SigningKey) -> None:
    log.checkpoint()
    report = verify_export(log.rows, keys=keys_of(key), issuer=ISS)
    assert (report.signed_through, report.checkpoints, report.unsigned) == (12, 3, 0)


def test_export_without_checkpoints_is_all_unsigned(key: SigningKey) -> None:
    log = Log(key).add(4)
    report = verify_export(log.rows, keys=keys_of(key), issuer=ISS)
    assert (report.signed_through, report.checkpoints, report.unsigned) == (None, 0, 4)
    assert verify_export([], keys=keys_of(key)).records == 0


def test_without_keys_only_the_chain_is_checked(log: Log) -> None:
    report = verify_export(log.rows, keys=None)
    assert not report.signatures_checked and report.signed_through is None and report.unsigned == 12


def test_checkpoint_algorithms_are_the_issuer_signing_algorithms() -> None:
    assert set(ALGORITHMS) == set(SIGNING_ALGS)


def test_lagging_checkpoint_covers_what_it_names(key: SigningKey) -> None:
    """An issuance can land between reading the head and appending: the checkpoint names an earlier record."""
    log = Log(key).add(3)
    jws = log.jws()  # signed for record 3 ...
    log.add(1)  # ... record 4 is appended meanwhile ...
    log.checkpoint(jws, seq=3, digest=log.rows[2]["hash"], iat=int(TS) + 3)  # ... and the checkpoint becomes record 5
    report = verify_export(log.rows, keys=keys_of(key), issuer=ISS)
    assert (report.signed_through, report.unsigned) == (3, 1)


# ---------------------------------------------------------------------------------------------
# the chain: altered, removed, reordered, inserted records
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("index", [0, 4, 5, 7, 9, 11], ids=lambda i: f"record{i + 1}")
@pytest.mark.parametrize("field", ["detail", "ts", "kind", "outcome", "principal", "prev"])
def test_altered_record_fails_at_that_record(log: Log, key: SigningKey, index: int, field: str) -> None:
    rows = copy.deepcopy(log.rows)
    changed = {"detail": {"reason": "nothing to see"}, "ts": rows[index]["ts"] + 1, "kind": "task.created",
               "outcome": "refused", "principal": "spiffe://t/other", "prev": "f" * 64}  # fmt: skip
    rows[index][field] = changed[field]
    error = broken(rows, key, issuer=ISS)
    assert error.seq == index + 1
    assert error.reason == ("does not link to the previous record" if field == "prev" else "hash does not match its contents")


def test_altered_record_with_recomputed_hash_fails_at_the_next(log: Log, key: SigningKey) -> None:
    rows = copy.deepcopy(log.rows)
    rows[2]["outcome"] = "refused"
    rows[2] = rechain(rows, 2)[2]
    error = broken(rows, key, issuer=ISS)
    assert (error.seq, error.reason) == (4, "does not link to the previous record")


def test_altered_record_with_the_rest_rechained_fails_at_the_checkpoint(log: Log, key: SigningKey) -> None:
    """Rechaining everything after an edit mends every link, but the signed hash no longer matches."""
    rows = copy.deepcopy(log.rows)
    rows[2]["detail"] = {"aud": "https://evil.example"}
    rows = rechain(rows, 2)
    assert first_broken(rows) is None
    error = broken(rows, key, issuer=ISS)
    assert (error.seq, error.reason) == (6, "checkpoint does not match record 5: a record up to it was changed")


@pytest.mark.parametrize("index", [1, 5, 8])
def test_record_removed_from_the_middle(log: Log, key: SigningKey, index: int) -> None:
    rows = log.rows[:index] + log.rows[index + 1 :]
    error = broken(rows, key, issuer=ISS)
    assert (error.seq, error.reason) == (
        index + 2,
        f"out of order, expected record {index + 1} (records missing, moved or inserted)",
    )


def test_records_reordered(log: Log, key: SigningKey) -> None:
    rows = list(log.rows)
    rows[6], rows[7] = rows[7], rows[6]
    error = broken(rows, key, issuer=ISS)
    assert (error.seq, error.reason) == (8, "out of order, expected record 7 (records missing, moved or inserted)")


def test_first_record_removed(log: Log, key: SigningKey) -> None:
    error = broken(log.rows[1:], key, issuer=ISS)
    assert error.seq == 2 and error.reason.startswith("out of order, expected record 1")


def test_record_with_a_seq_that_is_not_an_integer(log: Log, key: SigningKey) -> None:
    rows = copy.deepcopy(log.rows)
    rows[3]["seq"] = "4"
    assert (broken(rows, key).seq, broken(rows, key).reason) == (4, "record has no valid seq")


@pytest.mark.parametrize("index", range(6))
@pytest.mark.parametrize(
    "field", ["seq", "ts", "kind", "outcome", "principal", "task", "jti", "error", "detail", "prev", "hash"]
)
def test_same_first_bad_record_as_chain_first_broken(key: SigningKey, index: int, field: str) -> None:
    """The export verifier and ``chain.first_broken`` agree on which record is the first bad one."""
    rows = Log(key).add(6).rows
    value = rows[index][field]
    rows[index][field] = value + 1000 if isinstance(value, int | float) else {"x": 1} if isinstance(value, dict) else "x"
    assert broken(rows).seq == first_broken(rows)


# ---------------------------------------------------------------------------------------------
# truncation: detectable only against a known head
# ---------------------------------------------------------------------------------------------


def test_truncated_tail_shows_as_unsigned_and_fails_against_the_known_head(log: Log, key: SigningKey) -> None:
    head = log.head
    cut = log.rows[:11]
    assert verify_export(cut, keys=keys_of(key), issuer=ISS).unsigned == 1
    error = broken(cut, key, issuer=ISS, expect_head=head)
    assert (error.seq, error.reason) == (12, "missing: the export ends at record 11, the expected head is record 12")
    assert verify_export(log.rows, keys=keys_of(key), issuer=ISS, expect_head=head).head == head  # control


def test_truncation_right_after_a_checkpoint_looks_complete_without_the_head(log: Log, key: SigningKey) -> None:
    """The documented limit: records removed after a checkpoint leave a shorter, fully signed log."""
    cut = log.rows[:10]
    report = verify_export(cut, keys=keys_of(key), issuer=ISS)
    assert (report.signed_through, report.unsigned) == (9, 0)
    assert broken(cut, key, issuer=ISS, expect_head=log.head).seq == 11


def test_expected_head_with_another_hash(log: Log, key: SigningKey) -> None:
    error = broken(log.rows, key, issuer=ISS, expect_head=(10, "a" * 64))
    assert (error.seq, error.reason) == (10, "hash differs from the expected head")


# ---------------------------------------------------------------------------------------------
# checkpoints: forged, foreign, misnamed
# ---------------------------------------------------------------------------------------------


def test_JWT_08_forged_checkpoint_claiming_the_issuer_kid(log: Log, key: SigningKey) -> None:
    attacker = signing_key()
    claims = checkpoint_claims(issuer=ISS, seq=log.head[0], hash=log.head[1], iat=int(TS) + log.head[0])
    forged = sign_compact({"typ": CHECKPOINT_TYP, "alg": "ES256", "kid": key.kid}, claims, attacker.private, "ES256")
    log.checkpoint(forged)
    error = broken(log.rows, key, issuer=ISS)
    assert (error.seq, error.reason) == (13, "checkpoint signature does not verify")


def test_checkpoint_with_its_signature_altered(log: Log, key: SigningKey) -> None:
    good = log.jws()
    head, _, signature = good.rpartition(".")
    flipped = ("A" if signature[10] != "A" else "B").join((signature[:10], signature[11:]))
    log.checkpoint(f"{head}.{flipped}")
    assert broken(log.rows, key, issuer=ISS).reason == "checkpoint signature does not verify"


def test_last_checkpoint_signed_by_a_key_not_in_the_jwks(log: Log, key: SigningKey) -> None:
    other = signing_key()
    log.checkpoint(log.jws(key=other))
    error = broken(log.rows, key, issuer=ISS)
    assert (error.seq, error.reason) == (13, f"checkpoint signed by a key not in the JWKS (kid `{other.kid}`)")
    assert verify_export(log.rows, keys=keys_of(key, other), issuer=ISS).signed_through == 12  # control


def test_rotation_older_checkpoint_by_a_retired_key_is_vouched_for_by_a_later_one(key: SigningKey) -> None:
    """After rotation the JWKS drops the old key; the newer checkpoint covers the older one through the chain."""
    new = signing_key()
    log = Log(key).add(3)
    log.checkpoint()
    log.add(2)
    log.checkpoint(log.jws(key=new))
    report = verify_export(log.rows, keys=keys_of(new), issuer=ISS)
    assert (report.signed_through, report.checkpoints, report.superseded, report.unsigned) == (6, 1, 1, 0)
    archived = verify_export(log.rows, keys=keys_of(new, key), issuer=ISS)  # with an archived copy: both checked
    assert (archived.checkpoints, archived.superseded) == (2, 0)
    # only a checkpoint whose signature is checked ends a stretch between checkpoints
    assert report.longest == Stretch(first=1, last=6, checkpoint=7, records=5, late=0)
    assert archived.longest == Stretch(first=1, last=3, checkpoint=4, records=3, late=0)


def test_retired_key_checkpoint_not_vouched_for_is_refused(key: SigningKey) -> None:
    new = signing_key()
    log = Log(key).add(3)
    log.checkpoint(log.jws(key=new))
    log.add(2)
    log.checkpoint()
    assert broken(log.rows, new, issuer=ISS).seq == 7
    assert verify_export(log.rows, keys=keys_of(key), issuer=ISS).superseded == 1  # control: 7 vouches for 4


def test_checkpoint_naming_the_wrong_hash(log: Log, key: SigningKey) -> None:
    log.checkpoint(seq=12, digest=log.rows[10]["hash"])
    error = broken(log.rows, key, issuer=ISS)
    assert (error.seq, error.reason) == (13, "checkpoint does not match record 12: a record up to it was changed")


def test_checkpoint_naming_itself_or_a_later_record(log: Log, key: SigningKey) -> None:
    log.checkpoint(seq=13, digest="b" * 64)
    error = broken(log.rows, key, issuer=ISS)
    assert (error.seq, error.reason) == (13, "checkpoint names record 13, which does not precede it")


def test_checkpoint_replayed_from_another_deployment(log: Log, key: SigningKey) -> None:
    """Same key material, another issuer (a copied data directory): ``iss`` is compared exactly."""
    log.checkpoint(iss="https://sts.example.evil")
    error = broken(log.rows, key, issuer=ISS)
    assert (error.seq, error.reason) == (13, f"checkpoint issued by `https://sts.example.evil`, expected `{ISS}`")
    # without --issuer, the first checkpoint's issuer is pinned for the rest
    assert broken(log.rows, key).reason == f"checkpoint issued by `https://sts.example.evil`, expected `{ISS}`"


def test_export_from_another_issuer_is_refused_when_the_issuer_is_pinned(key: SigningKey) -> None:
    log = Log(key).add(2)
    log.checkpoint(iss="https://other.example")
    assert verify_export(log.rows, keys=keys_of(key)).issuer == "https://other.example"  # reported, not pinned
    assert broken(log.rows, key, issuer=ISS).reason == f"checkpoint issued by `https://other.example`, expected `{ISS}`"


def test_JWT_12_access_token_typ_is_not_a_checkpoint(log: Log, key: SigningKey) -> None:
    log.checkpoint(log.jws(typ="at+jwt"))
    error = broken(log.rows, key, issuer=ISS)
    assert (error.seq, error.reason) == (13, f"checkpoint has type `at+jwt`, not `{CHECKPOINT_TYP}`")


def test_JWT_10_checkpoint_with_a_jku_header_is_refused(log: Log, key: SigningKey) -> None:
    claims = checkpoint_claims(issuer=ISS, seq=12, hash=log.head[1], iat=int(TS) + 12)
    header = {"typ": CHECKPOINT_TYP, "alg": "ES256", "kid": key.kid, "jku": "https://evil.example/jwks"}
    log.checkpoint(sign_compact(header, claims, key.private, "ES256"))
    assert broken(log.rows, key, issuer=ISS).reason == "checkpoint rejected: header parameter `jku` not allowed"


def test_checkpoint_record_detail_not_matching_its_claims(log: Log, key: SigningKey) -> None:
    jws = log.jws()
    log.append(checkpoint_event(seq=11, hash=log.head[1], jws=jws), ts=TS + 12)
    assert broken(log.rows, key, issuer=ISS).reason == "checkpoint record does not match its signed claims"


def test_last_checkpoint_record_time_edited_and_rehashed(log: Log, key: SigningKey) -> None:
    """No later link protects the last record, so a checkpoint record's ``ts`` is pinned to the signed ``iat``."""
    log.checkpoint()
    rows = copy.deepcopy(log.rows)
    rows[-1]["ts"] += 3600
    rows = rechain(rows, len(rows) - 1)
    error = broken(rows, key, issuer=ISS)
    assert (error.seq, error.reason) == (13, "checkpoint record does not match its signed claims")


def test_checkpoint_without_a_signature(log: Log, key: SigningKey) -> None:
    log.append(AuditEvent(kind=CHECKPOINT_KIND, outcome="ok", detail={"seq": 12, "hash": log.head[1]}))
    assert broken(log.rows, key, issuer=ISS).reason == "checkpoint carries no signature"


# ---------------------------------------------------------------------------------------------
# partial exports (``export --after``)
# ---------------------------------------------------------------------------------------------


def test_partial_export_anchored_to_a_verified_record(log: Log, key: SigningKey) -> None:
    rows, anchor = log.rows[7:], log.rows[6]
    report = verify_export(rows, keys=keys_of(key), issuer=ISS, after=7, after_hash=anchor["hash"])
    assert (report.first, report.signed_through) == (8, 9)
    error = broken(rows, key, issuer=ISS, after=7, after_hash="c" * 64)
    assert (error.seq, error.reason) == (8, "does not link to the previous record")
    assert broken(rows, key, issuer=ISS, after=6).seq == 8  # an export that does not start where it is said to


def test_partial_export_unanchored_checks_a_checkpoint_naming_the_record_before_it(log: Log, key: SigningKey) -> None:
    rows = log.rows[5:]  # starts with checkpoint 6, which names record 5
    assert verify_export(rows, keys=keys_of(key), issuer=ISS, after=5).signed_through == 9
    tampered = copy.deepcopy(rows)
    tampered[0]["prev"] = "d" * 64  # the first record's prev is bound by its own hash, even unanchored
    error = broken(rechain(tampered, 0), key, issuer=ISS, after=5)
    assert (error.seq, error.reason) == (6, "checkpoint does not match record 5: a record up to it was changed")


# ---------------------------------------------------------------------------------------------
# when the STS writes one
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pending", "since", "now", "key_changed", "due"),
    [
        (0, 0.0, 10_000.0, False, False),  # nothing new: never, however long
        (999, 100.0, 159.0, False, False),
        (1000, 100.0, 100.0, False, True),  # the count
        (1, 100.0, 160.0, False, True),  # the time, with at least one record
        (1, 100.0, 159.9, False, False),
        (0, 100.0, 100.0, True, True),  # the last checkpoint's key is no longer current
    ],
)
def test_checkpoint_due(pending: int, since: float, now: float, key_changed: bool, due: bool) -> None:
    assert checkpoint_due(pending=pending, since=since, now=now, every=1000, seconds=60, key_changed=key_changed) is due


def test_record_too_deep_to_hash_is_refused_not_crashed(log: Log, key: SigningKey) -> None:
    deep: Any = 1
    for _ in range(100_000):
        deep = [deep]
    rows = copy.deepcopy(log.rows[:3])
    rows[2]["detail"] = deep
    assert (broken(rows, key).seq, broken(rows, key).reason) == (3, "record cannot be hashed")


# ---------------------------------------------------------------------------------------------
# the chain of checkpoints (issue 12, finding 5): each names the checkpoint record before it
# ---------------------------------------------------------------------------------------------


def test_each_checkpoint_names_the_checkpoint_record_before_it(log: Log, key: SigningKey) -> None:
    first, second = (r for r in log.rows if r["kind"] == CHECKPOINT_KIND)
    assert first["detail"]["prev"] is None
    assert second["detail"]["prev"] == {"seq": first["seq"], "hash": first["hash"]}


@pytest.mark.parametrize(
    ("prev", "reason"),
    [
        (None, "checkpoint names no checkpoint before it, but record 6 is one"),
        ("record2", "checkpoint names record 2 as the checkpoint before it, not record 6 (removed or rewritten)"),
        ("changed6", "the checkpoint before it (record 6) was changed"),
        ("later", "checkpoint names record 10 as the checkpoint before it, which does not precede it"),
        ("control", None),
    ],
)
def test_a_checkpoint_that_does_not_name_the_one_before_it(key: SigningKey, prev: str | None, reason: str | None) -> None:
    log = Log(key).add(5)
    log.checkpoint()
    log.add(3)
    named = {None: None, "record2": (2, log.rows[1]["hash"]), "changed6": (6, "a" * 64), "later": (10, "b" * 64),
             "control": LAST}[prev]  # fmt: skip
    log.checkpoint(prev=named)
    if reason is None:
        assert verify_export(log.rows, keys=keys_of(key), issuer=ISS).checkpoints == 2
        return
    error = broken(log.rows, key, issuer=ISS)
    assert (error.seq, error.reason) == (10, reason)


def test_a_checkpoint_demoted_under_a_later_one_breaks_the_chain_there(key: SigningKey) -> None:
    """Checkpoint 7 names record 5 (it was signed while checkpoint 6 landed) and checkpoint 6 as the one
    before it. Turning 6 into an ordinary record and re-hashing leaves 7's signature and named record
    intact; only the chain of checkpoints shows what was removed."""
    log = Log(key).add(5)
    log.checkpoint()
    log.checkpoint(seq=5, digest=log.rows[4]["hash"], iat=int(TS) + 6)
    assert verify_export(log.rows, keys=keys_of(key), issuer=ISS).checkpoints == 2  # control
    rows = copy.deepcopy(log.rows)
    rows[5].update(kind="token.issued", detail={"aud": "https://b.example"})
    error = broken(rechain(rows, 5), key, issuer=ISS)
    assert (error.seq, error.reason) == (
        7,
        "checkpoint names record 6 as the checkpoint before it, but none precedes it (removed or rewritten)",
    )


def test_exports_from_before_prev_still_verify_until_the_first_checkpoint_with_it(key: SigningKey) -> None:
    log = Log(key).add(3)
    log.checkpoint(legacy=True)
    log.add(3).checkpoint(legacy=True)
    older = verify_export(log.rows, keys=keys_of(key), issuer=ISS)
    assert (older.checkpoints, older.signed_through) == (2, 7)
    log.add(2).checkpoint()  # the first one written after the upgrade names the last legacy one
    assert log.rows[-1]["detail"]["prev"] == {"seq": 8, "hash": log.rows[7]["hash"]}
    upgraded = verify_export(log.rows, keys=keys_of(key), issuer=ISS)
    assert (upgraded.checkpoints, upgraded.signed_through) == (3, 10)
    log.add(1).checkpoint(legacy=True)  # a checkpoint without prev after one with it
    error = broken(log.rows, key, issuer=ISS)
    assert (error.seq, error.reason) == (13, "checkpoint does not name the checkpoint before it, unlike an earlier one")


@pytest.mark.parametrize("detail", ["other", "missing", "control"])
def test_checkpoint_record_prev_is_pinned_to_the_signed_claim(log: Log, key: SigningKey, detail: str) -> None:
    jws = log.jws()
    head_seq, head_hash = log.head
    prev = {"other": {"seq": 6, "hash": log.rows[5]["hash"]}, "control": {"seq": 10, "hash": log.rows[9]["hash"]}}
    shown = {"seq": head_seq, "hash": head_hash, "jws": jws} | ({"prev": prev[detail]} if detail in prev else {})
    log.append(AuditEvent(kind=CHECKPOINT_KIND, outcome="ok", detail=shown), ts=TS + head_seq)
    if detail == "control":
        assert verify_export(log.rows, keys=keys_of(key), issuer=ISS).checkpoints == 3
        return
    assert broken(log.rows, key, issuer=ISS).reason == "checkpoint record does not match its signed claims"


@pytest.mark.parametrize("value", [{"seq": "6", "hash": "a" * 64}, {"seq": 6}, [6, "a" * 64], {"seq": 6, "hash": "A" * 64}])
def test_a_malformed_prev_claim_is_refused(log: Log, key: SigningKey, value: Any) -> None:
    head_seq, head_hash = log.head
    claims = checkpoint_claims(issuer=ISS, seq=head_seq, hash=head_hash, iat=int(TS) + head_seq) | {"prev": value}
    jws = KeyRing([key]).sign(claims, typ=CHECKPOINT_TYP)
    detail = {"seq": head_seq, "hash": head_hash, "prev": value, "jws": jws}
    log.append(AuditEvent(kind=CHECKPOINT_KIND, outcome="ok", detail=detail), ts=TS + head_seq)
    assert broken(log.rows, key, issuer=ISS).reason == "checkpoint claims do not name a valid checkpoint before it"


def test_a_partial_export_accepts_a_first_checkpoint_naming_one_before_it(log: Log, key: SigningKey) -> None:
    rows = log.rows[6:]  # records 7-12: checkpoint 10 names checkpoint 6, which is not exported
    report = verify_export(rows, keys=keys_of(key), issuer=ISS, after=6, after_hash=log.rows[5]["hash"])
    assert (report.checkpoints, report.signed_through) == (1, 9)
    error = broken(rows, key, issuer=ISS, after=5)  # said to start after record 5: checkpoint 6 should be in it
    assert error.seq == 7


# ---------------------------------------------------------------------------------------------
# stretches between checkpoints: a removed checkpoint shows (issue 12, finding 5)
# ---------------------------------------------------------------------------------------------


def test_the_longest_stretch_is_reported(log: Log, key: SigningKey) -> None:
    report = verify_export(log.rows, keys=keys_of(key), issuer=ISS, every=5)
    assert report.longest == Stretch(first=1, last=5, checkpoint=6, records=5, late=0)
    assert report.overdue is None
    assert verify_export(log.rows, keys=None).longest is None  # only verified checkpoints end a stretch


@pytest.mark.parametrize("removed", [True, False], ids=["removed", "control"])
def test_a_removed_checkpoint_and_a_re_signed_log_is_an_overdue_stretch(key: SigningKey, removed: bool) -> None:
    """The reviewer's attack seen offline: checkpoint 6 turned into an ordinary record, the log re-hashed,
    and a writer that had forgotten it signs record 9 a minute later."""
    log = Log(key).add(5)
    log.checkpoint()
    log.add(3)
    if removed:
        log.rows = rechain([r | {"kind": "token.issued"} if r["seq"] == 6 else r for r in log.rows], 5)
    log.checkpoint(iat=int(TS) + 60)
    report = verify_export(log.rows, keys=keys_of(key), issuer=ISS, every=5)
    assert report.signed_through == 9
    if not removed:
        assert report.overdue is None and report.longest == Stretch(first=1, last=5, checkpoint=6, records=5, late=0)
        return
    assert report.overdue == report.longest == Stretch(first=1, last=9, checkpoint=10, records=9, late=9)
    assert verify_export(log.rows, keys=keys_of(key), issuer=ISS).overdue is None  # without ``every``: reported only


@pytest.mark.parametrize(("old", "overdue"), [(5, False), (6, True)])
def test_records_of_the_last_seconds_before_a_checkpoint_are_not_held_against_it(key: SigningKey, old: int,
                                                                                  overdue: bool) -> None:  # fmt: skip
    """A busy STS signs a stretch that grew past ``checkpoint_every`` in the second before it looked:
    only records appended more than ``GRACE_SECONDS`` before the checkpoint count."""
    log = Log(key)
    for i in range(old + 50):
        log.append(AuditEvent(kind="token.issued", outcome="ok", jti=f"j{i}"), ts=TS if i < old else TS + 100)
    log.checkpoint(iat=int(TS) + 100 + GRACE_SECONDS)
    report = verify_export(log.rows, keys=keys_of(key), issuer=ISS, every=5)
    assert report.longest == Stretch(first=1, last=old + 50, checkpoint=old + 51, records=old + 50, late=old)
    assert (report.overdue is not None) is overdue
