"""``tether audit export`` / ``tether audit verify FILE --jwks``: signed checkpoints, checked offline.

A real STS writes checkpoints through its upkeep: every ``checkpoint_every`` records, and
after ``checkpoint_seconds`` (driven by the STS's ManualClock, not by sleeping). Its log is
exported, and a third party verifies the export with nothing but its own copy of ``/jwks``.
Then the export is tampered with. An altered record fails ``audit verify`` at exactly
that record (issue 8, "must show"). So do a rechained tail, a truncation below the known
head, a foreign JWKS, another issuer and an unsigned tail under ``--require-signed``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cli_support import one_line, tether
from typer.testing import CliRunner, Result

from helpers import Client, RunningSts, create_task, make_deployment, running_sts, serving
from services import store_sql
from tether.audit.chain import canonical
from tether.audit.checkpoint import CHECKPOINT_KIND
from tether.audit.export import verify_export
from tether.cli.main import app
from tether.clock import ManualClock
from tether.config import Config, load_config
from tether.identity.jwks_cache import parse_jwks
from tether.keys.keyring import generate_key, public_jwk
from tether.sts.checkpoints import STATE_FILE

AUD = "http://127.0.0.1:9001"
BODY = ("seq", "ts", "kind", "outcome", "principal", "task", "jti", "error", "detail", "prev")


def cli(*args: str) -> Result:
    """The same typer app as the ``tether`` executable, in process (fast); stdout and stderr apart."""
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def wait_until(predicate: Any, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def checkpoint_count(sts: RunningSts) -> int:
    return sum(r.kind == CHECKPOINT_KIND for r in sts.audit())


def activity(sts: RunningSts) -> None:
    """Five records: the admin's token, the task, a session token and two hop tokens."""
    task = create_task(sts, audiences=[AUD])
    agent = Client(sts)
    session = agent.session(task["id"]).json()["access_token"]
    for scope in ("wiki:read", "wiki:write"):
        assert agent.hop(session, AUD, scope=scope).status_code == 200


def write_lines(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows), encoding="utf-8")
    return path


@dataclass
class Exported:
    sts: RunningSts
    rows: list[dict[str, Any]]
    file: Path
    jwks: Path
    head: str
    tmp: Path

    def variant(self, name: str, rows: list[dict[str, Any]]) -> Path:
        return write_lines(self.tmp / f"{name}.jsonl", rows)

    def verify(self, file: Path, *extra: str) -> Result:
        return cli("audit", "verify", str(file), "--jwks", str(self.jwks), *extra)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exported]:
    """A deployment that checkpoints every 5 records, exported with two checkpoints and an unsigned tail."""
    tmp = tmp_path_factory.mktemp("checkpoints")
    toml = "[audit]\ncheckpoint_every = 5\ncheckpoint_seconds = 3600"
    with running_sts(tmp / "deploy", extra_toml=toml) as sts:
        for expected in (1, 2):
            activity(sts)
            wait_until(lambda n=expected: checkpoint_count(sts) >= n, f"checkpoint {expected}")
        assert Client(sts).session("no-such-task").status_code == 400  # one more record: the unsigned tail
        wait_until(lambda: sts.audit()[-1].kind != CHECKPOINT_KIND, "the tail record")
        jwks = tmp / "jwks.json"  # the third party's own copy, fetched from the STS
        jwks.write_text(httpx.get(sts.url + "/jwks", trust_env=False).text, encoding="utf-8")
        out = tmp / "audit.jsonl"
        result = tether("audit", "export", "--out", str(out), "--config", str(sts.config.path))
        assert result.returncode == 0, result.stderr
        head = re.search(r"head (\d+:[0-9a-f]{64})", result.stderr)
        assert head is not None, result.stderr
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        yield Exported(sts=sts, rows=rows, file=out, jwks=jwks, head=head.group(1), tmp=tmp)


def checkpoint_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r["kind"] == CHECKPOINT_KIND]


def unsigned_tail(rows: list[dict[str, Any]]) -> int:
    """Records after the one the last checkpoint names, other than that checkpoint itself."""
    return int(rows[-1]["seq"]) - int(checkpoint_rows(rows)[-1]["detail"]["seq"]) - 1


def rechain(rows: list[dict[str, Any]], start: int) -> list[dict[str, Any]]:
    out = copy.deepcopy(rows)
    for i in range(start, len(out)):
        if i:
            out[i]["prev"] = out[i - 1]["hash"]
        out[i]["hash"] = hashlib.sha256(canonical({k: out[i][k] for k in BODY})).hexdigest()
    return out


def store_rows(config: Config, rows: list[dict[str, Any]]) -> None:
    """Write ``rows`` over the stored records, as someone with database access does (and move
    PostgreSQL's head row to the last of them)."""
    for row in rows:
        store_sql(config, "UPDATE audit SET kind = ?, detail = ?, prev = ?, hash = ? WHERE seq = ?",
                  (row["kind"], canonical(row["detail"]).decode(), row["prev"], row["hash"], row["seq"]))  # fmt: skip
    if config.values[""]["store"] == "postgres":
        store_sql(config, "UPDATE audit_head SET hash = ? WHERE seq = ?", (rows[-1]["hash"], rows[-1]["seq"]))


# ---------------------------------------------------------------------------------------------
# the STS writes the checkpoints
# ---------------------------------------------------------------------------------------------


def test_sts_checkpoints_every_n_records(exported: Exported) -> None:
    checkpoints = checkpoint_rows(exported.rows)
    assert len(checkpoints) == 2
    assert all(c["detail"]["seq"] < c["seq"] and set(c["detail"]) == {"seq", "hash", "prev", "jws"} for c in checkpoints)
    # each names the checkpoint record before it (issue 12, finding 5)
    assert [c["detail"]["prev"] for c in checkpoints] == [None, {"seq": checkpoints[0]["seq"], "hash": checkpoints[0]["hash"]}]
    assert exported.head == f"{exported.rows[-1]['seq']}:{exported.rows[-1]['hash']}"


def test_sts_checkpoints_after_t_seconds_on_its_clock(tmp_path: Path) -> None:
    toml = "[audit]\ncheckpoint_every = 1000\ncheckpoint_seconds = 60"
    with running_sts(tmp_path, extra_toml=toml) as sts:
        create_task(sts)
        assert checkpoint_count(sts) == 0  # before T (the writer's own tests check every tick before T)
        sts.clock.advance(61)
        wait_until(lambda: checkpoint_count(sts) == 1, "the timed checkpoint")
        keys = parse_jwks(httpx.get(sts.url + "/jwks", trust_env=False).json()).by_kid
        report = verify_export([r.as_json() for r in sts.audit()], keys=keys, issuer=sts.url)
        assert report.checkpoints == 1 and report.signed_through is not None and report.signed_through >= 3


@pytest.mark.parametrize("forged", [True, False], ids=["rewritten", "control"])
def test_sts_never_signs_a_rewritten_chain_and_tether_alerts_shows_why(tmp_path: Path, forged: bool) -> None:
    """Issue 12 finding 5, on a live STS: a record under the last checkpoint is rewritten in the
    database and the whole tail re-hashed (the head row too), so new records link to the forgery."""
    toml = "[audit]\ncheckpoint_every = 5\ncheckpoint_seconds = 3600"
    with running_sts(tmp_path, extra_toml=toml) as sts:
        activity(sts)
        wait_until(lambda: checkpoint_count(sts) == 1, "the first checkpoint")
        named = next(r.detail["seq"] for r in sts.audit() if r.kind == CHECKPOINT_KIND)
        if forged:
            rows = [r.as_json() for r in sts.audit()]
            rows[2]["detail"] = {**rows[2]["detail"], "scope": "tether:admin"}
            store_rows(sts.config, rechain(rows, 2)[2:])
        activity(sts)  # five records more: a checkpoint is due
        if not forged:
            wait_until(lambda: checkpoint_count(sts) == 2, "the second checkpoint")
            assert tether("alerts", "--json", "--config", str(sts.config.path)).stdout.strip() == "[]"
            return
        wait_until(lambda: any(r.kind == "alert.raised" for r in sts.audit()), "the chain alert")
        result = tether("alerts", "--json", "--config", str(sts.config.path))
        assert result.returncode == 0, result.stderr
        (alert,) = json.loads(result.stdout)
        assert (alert["detector"], alert["severity"], alert["evidence"]["seq"]) == ("audit_chain", "critical", named)
        assert "no checkpoint signed" in alert["reason"]
        assert checkpoint_count(sts) == 1


def later(config: Config) -> Config:
    """The deployment as an STS started a while later sees it. On PostgreSQL + Redis the checkpoint
    claims of the first run have expired by then; a fresh Redis prefix stands in for the 30 s a test
    does not wait."""
    if config.values[""]["store"] != "postgres":
        return config
    prefix = config.values["redis"]["prefix"]
    path = config.path
    assert path is not None  # loaded from a file
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace(f'prefix = "{prefix}"', f'prefix = "{prefix}-later"'), encoding="utf-8")
    return load_config(path)


@pytest.mark.parametrize("case", ["state-kept", "state-deleted", "control"])
def test_a_restarted_sts_cannot_be_made_to_forget_a_checkpoint(tmp_path: Path, case: str) -> None:
    """Issue 12 finding 5, the reviewer's attack on a deployment: with the STS stopped, a record under
    the first checkpoint is edited, the checkpoint turned into an ordinary record and the chain re-hashed.
    The restarted STS refuses and alerts; with its state file deleted too it signs, and ``audit verify
    --require-signed`` fails on the stretch that checkpoint closes. The control restarts an intact log."""
    config = make_deployment(tmp_path, extra_toml="[audit]\ncheckpoint_every = 5\ncheckpoint_seconds = 60")
    clock = ManualClock()
    with serving(config, clock) as sts:
        activity(sts)
        wait_until(lambda: checkpoint_count(sts) == 1, "the first checkpoint")
        for _ in range(2):  # a tail the checkpoint does not cover
            assert Client(sts).session("no-such-task").status_code == 400
    rows = [r.as_json() for r in sts.audit()]  # read once stopped: shutting down may append
    first = next(i for i, r in enumerate(rows) if r["kind"] == CHECKPOINT_KIND)
    if case != "control":
        rows[2]["detail"] = {**rows[2]["detail"], "scope": "tether:admin"}
        rows[first].update(kind="token.refused", detail={"reason": "nothing to see"})
        store_rows(config, rechain(rows, 2)[2:])
    if case == "state-deleted":
        (config.data_dir / STATE_FILE).unlink()
    clock.advance(120)
    with serving(later(config), clock) as sts:
        if case == "state-kept":
            wait_until(lambda: any(r.kind == "alert.raised" for r in sts.audit()), "the chain alert")
            (alert,) = json.loads(tether("alerts", "--json", "--config", str(sts.config.path)).stdout)
            assert (alert["detector"], alert["severity"], alert["evidence"]["seq"]) == ("audit_chain", "critical",
                                                                                         first + 1)  # fmt: skip
            assert "is no longer the checkpoint this STS signed last" in alert["reason"]
            assert checkpoint_count(sts) == 0
            return
        wait_until(lambda: sts.audit()[-1].kind == CHECKPOINT_KIND, "the checkpoint after the restart")
        jwks, out = tmp_path / "jwks.json", tmp_path / "audit.jsonl"
        jwks.write_text(httpx.get(sts.url + "/jwks", trust_env=False).text, encoding="utf-8")
        assert cli("audit", "export", "--out", str(out), "--config", str(sts.config.path)).exit_code == 0
    result = cli("audit", "verify", str(out), "--jwks", str(jwks), "--require-signed", "--checkpoint-every", "5")
    if case == "control":
        assert result.exit_code == 0, result.stderr
        assert re.search(r"longest stretch between checkpoints: \d+ records \(1-\d+\)", result.stdout)
        return
    head = sts.audit()[-1]
    overdue = (
        f"checkpoint record {head.seq} closes a stretch (records 1-{head.seq - 1}) with {head.seq - 1} records "
        "appended over 10 s before it, more than checkpoint_every (5) lets pass: a checkpoint may have been removed "
        "and the log signed again"
    )
    assert result.exit_code == 1 and one_line(result.stderr) == f"error: audit chain not signed often enough: {overdue}"
    warned = cli("audit", "verify", str(out), "--jwks", str(jwks), "--checkpoint-every", "5")  # reported, not refused
    assert warned.exit_code == 0 and one_line(warned.stderr) == f"warning: {overdue}"


# ---------------------------------------------------------------------------------------------
# verifying an export offline
# ---------------------------------------------------------------------------------------------


def test_export_verifies_offline_with_the_jwks(exported: Exported) -> None:
    last = checkpoint_rows(exported.rows)[-1]
    result = tether("audit", "verify", str(exported.file), "--jwks", str(exported.jwks), "--issuer", exported.sts.url,
                    "--expect-head", exported.head)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"audit chain intact: {len(exported.rows)} records (1-{exported.rows[-1]['seq']})" in result.stdout
    assert (
        f"signed: records up to {last['detail']['seq']} vouched for by 2 checkpoints of `{exported.sts.url}`" in result.stdout
    )
    tail = unsigned_tail(exported.rows)
    assert f"warning: the last {tail} records (up to {exported.rows[-1]['seq']}) are not covered" in result.stderr


def test_altered_record_fails_verify_at_that_record(exported: Exported) -> None:
    """Issue 8 "must show": one record altered in the export fails ``audit verify`` at that record."""
    rows = copy.deepcopy(exported.rows)
    index = next(i for i, r in enumerate(rows) if r["kind"] == "task.created")
    rows[index]["detail"] = {**rows[index]["detail"], "scopes": ["wiki:admin"]}
    result = tether("audit", "verify", str(exported.variant("altered", rows)), "--jwks", str(exported.jwks))
    assert result.returncode == 1
    assert (
        one_line(result.stderr) == f"error: audit chain broken at record {rows[index]['seq']}: hash does not match its contents"
    )


@pytest.mark.parametrize("field", ["ts", "kind", "outcome"])
def test_altered_field_fails_at_that_record(exported: Exported, field: str) -> None:
    rows = copy.deepcopy(exported.rows)
    index = next(i for i, r in enumerate(rows) if r["kind"] == "token.issued" and i > 3)
    rows[index][field] = {"ts": rows[index]["ts"] + 1, "kind": "token.refused", "outcome": "refused"}[field]
    result = exported.verify(exported.variant(f"altered-{field}", rows))
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: audit chain broken at record {index + 1}: hash does not match its contents"


def test_altered_record_with_a_rechained_tail_fails_at_the_next_checkpoint(exported: Exported) -> None:
    first = checkpoint_rows(exported.rows)[0]
    rows = copy.deepcopy(exported.rows)
    rows[1]["outcome"] = "refused"
    result = exported.verify(exported.variant("rechained", rechain(rows, 1)))
    assert result.exit_code == 1
    covered = first["detail"]["seq"]
    assert result.stderr.strip() == (
        f"error: audit chain broken at record {first['seq']}: checkpoint does not match record {covered}: "
        "a record up to it was changed"
    )


def test_record_removed_from_the_middle(exported: Exported) -> None:
    rows = exported.rows[:3] + exported.rows[4:]
    result = exported.verify(exported.variant("removed", rows))
    assert result.exit_code == 1
    assert result.stderr.strip().startswith("error: audit chain broken at record 5: out of order, expected record 4")


def test_truncation_is_caught_against_the_known_head(exported: Exported) -> None:
    last = checkpoint_rows(exported.rows)[-1]
    cut = exported.variant("truncated", exported.rows[: last["seq"]])  # ends right after the last checkpoint
    looks_complete = exported.verify(cut)
    assert looks_complete.exit_code == 0 and f"records up to {last['detail']['seq']} vouched" in looks_complete.stdout
    result = exported.verify(cut, "--expect-head", exported.head)
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"error: audit chain broken at record {last['seq'] + 1}: missing: the export ends at record {last['seq']}, "
        f"the expected head is record {exported.head.split(':')[0]}"
    )


def test_require_signed_refuses_the_unsigned_tail(exported: Exported) -> None:
    last = checkpoint_rows(exported.rows)[-1]
    result = exported.verify(exported.file, "--require-signed")
    assert result.exit_code == 1
    tail = unsigned_tail(exported.rows)
    assert result.stderr.strip() == (
        f"error: audit chain not signed after record {last['detail']['seq']}: "
        f"{tail} records are not covered by a valid checkpoint"
    )


def test_a_log_rewritten_end_to_end_without_checkpoints_fails_with_the_jwks(exported: Exported) -> None:
    # drop every checkpoint, renumber, alter a record and recompute every hash: a consistent
    # chain that only the missing signatures give away
    rows = [copy.deepcopy(r) for r in exported.rows if r["kind"] != CHECKPOINT_KIND]
    for seq, row in enumerate(rows, 1):
        row["seq"] = seq
    rows[1]["outcome"] = "refused"
    forged = exported.variant("forged", rechain(rows, 0))
    result = exported.verify(forged)
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"error: audit chain not signed at all: none of its {len(rows)} records is covered by a checkpoint "
        "signed by a key in the JWKS (--allow-unsigned accepts that)"
    )
    # the operator may knowingly accept it (say, a deployment with checkpoints off); it is still warned
    allowed = exported.verify(forged, "--allow-unsigned")
    assert allowed.exit_code == 0 and f"audit chain intact: {len(rows)} records" in allowed.stdout
    assert "not covered by a checkpoint" in allowed.stderr


def test_an_export_with_a_duplicated_name_is_refused(exported: Exported) -> None:
    # RFC 8259 leaves duplicate names undefined: two parsers could read two different records
    line = json.dumps(exported.rows[0], sort_keys=True)
    doubled = line[:-1] + ', "outcome": "refused"}\n'
    bad = exported.tmp / "duplicate.jsonl"
    bad.write_text(doubled, encoding="utf-8")
    result = exported.verify(bad)
    assert result.exit_code == 1 and "is not a readable JSON-lines audit export" in result.stderr


def test_jwks_without_the_signing_key_is_refused(exported: Exported) -> None:
    other = exported.tmp / "other-jwks.json"
    other.write_text(json.dumps({"keys": [public_jwk(generate_key("ES256"), "ES256")]}), encoding="utf-8")
    result = cli("audit", "verify", str(exported.file), "--jwks", str(other))
    assert result.exit_code == 1
    first = checkpoint_rows(exported.rows)[0]
    kid = json.loads(exported.jwks.read_text())["keys"][0]["kid"]
    assert result.stderr.strip() == (
        f"error: audit chain broken at record {first['seq']}: checkpoint signed by a key not in the JWKS (kid `{kid}`)"
    )
    # an archived copy next to the real one changes nothing
    assert cli("audit", "verify", str(exported.file), "--jwks", str(other), "--jwks", str(exported.jwks)).exit_code == 0


def test_jwks_files_that_disagree_or_hold_no_usable_key_are_usage_errors(exported: Exported) -> None:
    real = json.loads(exported.jwks.read_text())
    kid = real["keys"][0]["kid"]
    impostor = exported.tmp / "impostor-jwks.json"  # the same kid, another key
    impostor.write_text(json.dumps({"keys": [{**public_jwk(generate_key("ES256"), "ES256"), "kid": kid}]}), encoding="utf-8")
    empty = exported.tmp / "empty-jwks.json"
    empty.write_text(json.dumps({"keys": []}), encoding="utf-8")
    huge = exported.tmp / "huge-jwks.json"
    huge.write_text(json.dumps({"keys": real["keys"], "pad": "x" * 300_000}), encoding="utf-8")
    cases = [([exported.jwks, impostor], f"the JWKS files disagree about the key `{kid}`"),
             ([empty], "holds no signing key with a `kid`"), ([huge], "larger than")]  # fmt: skip
    for files, message in cases:
        result = cli("audit", "verify", str(exported.file), *[a for f in files for a in ("--jwks", str(f))])
        assert result.exit_code == 2 and message in one_line(result.stderr), result.stderr
    assert exported.verify(exported.file).exit_code == 0  # positive control: the real JWKS alone


def test_checkpoints_of_another_issuer_are_refused(exported: Exported) -> None:
    result = exported.verify(exported.file, "--issuer", "https://sts.other.example")
    assert result.exit_code == 1
    first = checkpoint_rows(exported.rows)[0]
    assert result.stderr.strip() == (
        f"error: audit chain broken at record {first['seq']}: checkpoint issued by `{exported.sts.url}`, "
        "expected `https://sts.other.example`"
    )


def test_partial_export_anchored_to_an_earlier_record(exported: Exported) -> None:
    anchor = exported.rows[3]
    out = exported.tmp / "partial.jsonl"
    result = cli("audit", "export", "--after", "4", "--out", str(out), "--config", str(exported.sts.config.path))
    assert result.exit_code == 0, result.stderr
    ok = exported.verify(out, "--after", f"4:{anchor['hash']}")
    assert ok.exit_code == 0, ok.stderr
    assert f"audit chain intact: {len(exported.rows) - 4} records (5-" in ok.stdout
    wrong = exported.verify(out, "--after", f"4:{'e' * 64}")
    assert wrong.stderr.strip() == "error: audit chain broken at record 5: does not link to the previous record"
    assert exported.verify(out).exit_code == 1  # not from the genesis, and not said to be partial


def test_live_store_is_checked_against_its_own_keys(exported: Exported) -> None:
    result = cli("audit", "verify", "--config", str(exported.sts.config.path))
    assert result.exit_code == 0, result.stderr
    assert "vouched for by" in result.stdout and f"of `{exported.sts.url}`" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--jwks", "missing.json"], "is not a readable JWKS"),
        (["--jwks", "{rows}"], "is not a readable JWKS"),
        (["--require-signed"], "needs --jwks"),
        (["--expect-head", "12"], "must be SEQ:HASH"),
    ],
)
def test_bad_options_are_usage_errors(exported: Exported, args: list[str], message: str) -> None:
    args = [a.replace("{rows}", str(exported.file)) for a in args]
    result = cli("audit", "verify", str(exported.file), *args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[" * 100_000 + "]" * 100_000 + "\n", "is not a readable JSON-lines audit export"),
        ("[1]\n", "entry 1 is not a json object"),
    ],
    ids=["deeply-nested", "not-an-object"],
)
def test_malformed_export_is_one_clear_line(tmp_path: Path, content: str, message: str) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content, encoding="utf-8")
    result = cli("audit", "verify", str(bad))
    assert result.exit_code == 1
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
