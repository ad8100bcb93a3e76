"""Loading a policy directory: parse, validate against the tether schema, name, version.

Every refusal names the file and the line where the offending statement starts and
carries the parser's or validator's reason; a set with any problem is refused whole.
The version is a content hash of the file names and texts.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import cedarpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from policykit import STARTER_IDS, starter_dir, write

from tether.policy.loader import (
    PolicyLoadError,
    PolicyProblem,
    load_directory,
    load_texts,
    read_directory,
    split_statements,
)

PERMIT = '@id("p")\npermit (principal, action == Tether::Action::"exchange", resource);\n'


def refused(files: dict[str, str]) -> list[PolicyProblem]:
    with pytest.raises(PolicyLoadError) as caught:
        load_texts(files)
    assert caught.value.problems, "a refusal names at least one problem"
    return caught.value.problems


# -- the starter set ---------------------------------------------------------------------------
def test_every_starter_policy_loads_with_its_id_and_file_line(tmp_path: Path) -> None:
    directory = starter_dir(tmp_path)
    version = load_directory(directory)
    assert {p.id: (p.file, p.effect, p.shadow) for p in version.policies} == STARTER_IDS
    for policy in version.policies:
        lines = (directory / policy.file).read_text(encoding="utf-8").splitlines()
        assert lines[policy.line - 1].startswith(f'@id("{policy.id}")'), (policy, lines[policy.line - 1])
    assert version.shadow_ids == ("payments-office-hours",)
    assert version.full is not None  # a shadow policy exists, so the full set is kept too
    assert set(version.sources) == {"00-defaults.cedar", "10-examples.cedar"}  # cases.yaml is not a policy


def test_starter_directory_from_the_package_matches_the_installed_copy(tmp_path: Path) -> None:
    from importlib import resources

    packaged = {
        entry.name: entry.read_text(encoding="utf-8")
        for entry in resources.files("tether.policy").joinpath("starter").iterdir()
        if entry.name.endswith(".cedar")
    }
    assert load_texts(packaged).version == load_directory(starter_dir(tmp_path)).version


def test_unnamed_policy_is_named_by_file_and_line() -> None:
    version = load_texts({"a.cedar": "// first\n\npermit (principal, action, resource);\n"})
    assert [(p.id, p.file, p.line) for p in version.policies] == [("a.cedar:3", "a.cedar", 3)]


# -- syntax errors -----------------------------------------------------------------------------
def test_syntax_error_is_refused_with_file_line_and_parser_reason() -> None:
    bad = (
        "// header\n"  # 1
        '@id("ok")\n'  # 2
        'permit (principal, action == Tether::Action::"exchange", resource);\n'  # 3
        "\n"  # 4
        '@id("broken")\n'  # 5
        'forbid (principal, action == Tether::Action::"exchange", resource)\n'  # 6
        "when { context.risk > };\n"  # 7
    )
    problems = refused({"00-good.cedar": PERMIT, "20-bad.cedar": bad})
    assert [(p.file, p.line) for p in problems] == [("20-bad.cedar", 5)]
    assert problems[0].message.startswith("syntax error: ")
    assert "unexpected token `}`" in problems[0].message  # the parser's own reason
    assert str(problems[0]).startswith("20-bad.cedar:5: syntax error")
    # positive control: the same file, fixed, loads
    fixed = bad.replace("context.risk > }", "context.risk > 50 }")
    assert [p.id for p in load_texts({"00-good.cedar": PERMIT, "20-bad.cedar": fixed}).policies] == ["p", "ok", "broken"]


def test_missing_final_semicolon_is_reported_at_the_statement() -> None:
    problems = refused({"a.cedar": PERMIT + "\n\npermit (principal, action, resource)\n"})
    assert [(p.file, p.line) for p in problems] == [("a.cedar", 5)]
    assert "syntax error" in problems[0].message
    assert load_texts({"a.cedar": PERMIT + "\n\npermit (principal, action, resource);\n"}).policies


def test_every_problem_of_every_file_is_reported_and_the_message_names_them() -> None:
    files = {
        "a.cedar": PERMIT + "\nforbid (principal, action, resource) when { context.risk > };\n",
        "b.cedar": '\n\npermit (principal, action == Tether::Action::"fly", resource);\n',
    }
    with pytest.raises(PolicyLoadError) as caught:
        load_texts(files)
    places = {(p.file, p.line) for p in caught.value.problems}
    assert places == {("a.cedar", 4), ("b.cedar", 3)}
    assert "a.cedar:4:" in str(caught.value) and "b.cedar:3:" in str(caught.value)


# -- schema violations -------------------------------------------------------------------------
SCHEMA_VIOLATIONS = {
    "unknown action": ('permit (principal, action == Tether::Action::"fly", resource);', "unrecognized action"),
    "unknown context attribute": (
        'permit (principal, action == Tether::Action::"exchange", resource) when { context.nope == 1 };',
        "attribute `nope`",
    ),
    "wrong type": (
        'forbid (principal, action == Tether::Action::"exchange", resource) when { context.risk == "high" };',
        "Long and String",
    ),
    "unknown entity attribute": (
        'permit (principal, action == Tether::Action::"exchange", resource) when { resource.owner == "x" };',
        "attribute `owner`",
    ),
    "unknown entity type": ("permit (principal is Tether::Robot, action, resource);", "Tether::Robot"),
    "action and resource do not fit": (
        'permit (principal, action == Tether::Action::"call", resource is Tether::Task);',
        "unable to find an applicable action",
    ),
    "context attribute of another action": (
        'permit (principal, action == Tether::Action::"create_task", resource) when { context.depth > 1 };',
        "attribute `depth`",
    ),
}


@pytest.mark.parametrize("case", sorted(SCHEMA_VIOLATIONS))
def test_schema_violation_is_refused_with_file_line(case: str) -> None:
    statement, reason = SCHEMA_VIOLATIONS[case]
    problems = refused({"00-ok.cedar": PERMIT, "30-x.cedar": f'// {case}\n\n@id("x")\n{statement}\n'})
    assert {(p.file, p.line) for p in problems} == {("30-x.cedar", 3)}
    assert all(p.message.startswith("does not match the schema: ") for p in problems)
    assert any(reason in p.message for p in problems), [p.message for p in problems]
    # positive control: the same set without the offending file is valid
    assert [p.id for p in load_texts({"00-ok.cedar": PERMIT}).policies] == ["p"]


def test_policies_using_every_part_of_the_schema_validate() -> None:
    text = """
@id("a") permit (principal in Tether::Group::"admins", action == Tether::Action::"create_task", resource)
when { resource.max_depth <= 3 && resource.purpose != "" && resource.agent.kind == "spiffe" };
@id("b") forbid (principal, action == Tether::Action::"exchange", resource)
when { context.task.on_behalf_of.contains(Tether::User::"alice") && context.client.isLoopback() == false };
@id("c") forbid (principal, action == Tether::Action::"call", resource)
when { resource in Tether::Service::"https://wiki.example" && resource.method == "POST" && context.token_age > 60 };
@id("d") forbid (principal, action == Tether::Action::"admin", resource)
when { context.operation == "principals.block" && context.hour < 7 && context.weekday > 4 };
"""
    assert [p.id for p in load_texts({"all.cedar": text}).policies] == ["a", "b", "c", "d"]


# -- duplicates, templates, encodings ----------------------------------------------------------
def test_duplicate_id_is_refused_at_the_second_occurrence() -> None:
    first = '@id("same")\npermit (principal, action, resource);\n'
    second = '\n\n@id("same")\nforbid (principal, action, resource);\n'
    problems = refused({"a.cedar": first, "b.cedar": second})
    assert [(p.file, p.line) for p in problems] == [("b.cedar", 3)]
    assert "duplicate policy id `same`" in problems[0].message
    assert len(load_texts({"a.cedar": first, "b.cedar": second.replace('"same"', '"other"')}).policies) == 2


def test_duplicate_id_within_one_file_is_refused() -> None:
    text = '@id("d") permit (principal, action, resource);\n@id("d") forbid (principal, action, resource);\n'
    problems = refused({"a.cedar": text})
    assert [(p.file, p.line, "duplicate" in p.message) for p in problems] == [("a.cedar", 2, True)]
    assert [p.id for p in load_texts({"a.cedar": text.replace('@id("d") forbid', '@id("e") forbid')}).policies] == ["d", "e"]


def test_templates_are_refused() -> None:
    problems = refused({"t.cedar": PERMIT + '\n@id("t")\npermit (principal == ?principal, action, resource);\n'})
    assert [(p.file, p.line, p.message) for p in problems] == [("t.cedar", 4, "policy templates are not supported")]
    linked = PERMIT + '\n@id("t")\npermit (principal == Tether::Workload::"spiffe://a", action, resource);\n'
    assert [p.id for p in load_texts({"t.cedar": linked}).policies] == ["p", "t"]


def test_non_utf8_file_is_refused_naming_it(tmp_path: Path) -> None:
    directory = tmp_path / "p"
    write(directory, "00-ok.cedar", PERMIT)
    (directory / "10-latin1.cedar").write_bytes("// caf\xe9\npermit (principal, action, resource);\n".encode("latin-1"))
    with pytest.raises(PolicyLoadError) as caught:
        load_directory(directory)
    assert [p.file for p in caught.value.problems] == ["10-latin1.cedar"]
    assert "not UTF-8" in caught.value.problems[0].message
    (directory / "10-latin1.cedar").write_bytes("// caf\xe9\npermit (principal, action, resource);\n".encode())
    assert len(load_directory(directory).policies) == 2


def test_only_cedar_files_are_read(tmp_path: Path) -> None:
    directory = tmp_path / "p"
    write(directory, "00-ok.cedar", PERMIT)
    write(directory, "cases.yaml", "cases: []\n")
    write(directory, "README", "not cedar;")
    write(directory, "00-ok.cedar~", "garbage (")
    (directory / "sub.cedar").mkdir()
    assert set(read_directory(directory)) == {"00-ok.cedar"}
    assert [p.id for p in load_directory(directory).policies] == ["p"]


def test_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PolicyLoadError) as caught:
        load_directory(tmp_path / "nope")
    assert "does not exist" in str(caught.value)
    write(tmp_path / "nope", "a.cedar", PERMIT)
    assert [p.id for p in load_directory(tmp_path / "nope").policies] == ["p"]


def test_empty_set_loads_with_no_policies() -> None:
    version = load_texts({})
    assert version.policies == () and version.full is None


# -- split_statements --------------------------------------------------------------------------
def test_split_statements_ignores_semicolons_in_strings_and_comments() -> None:
    text = (
        '// a comment; with a semicolon and a "quote\n'  # 1
        '@id("one;two")\n'  # 2
        "permit (principal, action, resource)\n"  # 3
        'when { context has purpose && context.purpose == "a;b // not a comment" };  // trailing; comment\n'  # 4
        "\n"  # 5
        'forbid (principal, action, resource) when { context has purpose && context.purpose == "esc \\" ; quote" };\n'  # 6
        "permit (principal, action, resource)"  # 7: no final semicolon, still yielded
    )
    parts = list(split_statements(text))
    assert [line for line, _ in parts] == [2, 6, 7]
    assert parts[0][1].rstrip().endswith('"a;b // not a comment" };')
    assert '"esc \\" ; quote"' in parts[1][1]
    assert parts[2][1].strip() == "permit (principal, action, resource)"


def test_split_statements_loads_the_strings_intact() -> None:
    text = (
        '@id("semi") permit (principal, action == Tether::Action::"exchange", resource)\n'
        'when { context.purpose == "a;b // c" };\n'
    )
    version = load_texts({"s.cedar": text})
    est = json.loads(cedarpy.policies_to_json_str(text))
    assert [p.id for p in version.policies] == ["semi"]
    assert "a;b // c" in json.dumps(est)


_ALPHABET = st.sampled_from(list('ab ;/"\\\n'))


def _cedar_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.text(_ALPHABET, max_size=12), st.text(_ALPHABET, max_size=12)), min_size=1, max_size=5))
def test_split_statements_property_one_chunk_per_policy(pairs: list[tuple[str, str]]) -> None:
    """Strings and comments full of ``;``, ``//``, quotes and backslashes never split a policy."""
    lines: list[str] = []
    starts: list[int] = []
    for purpose, comment in pairs:
        lines.append("// " + comment.replace("\n", " "))
        starts.append(len(lines) + 1)
        lines.append('permit (principal, action == Tether::Action::"exchange", resource)')
        lines.append(f"when {{ context.purpose == {_cedar_string(purpose)} }};")
    text = "\n".join(lines) + "\n"
    parts = list(split_statements(text))
    assert [line for line, _ in parts] == starts
    version = load_texts({"p.cedar": text})
    assert [p.line for p in version.policies] == starts


# -- versions ----------------------------------------------------------------------------------
def test_version_is_a_content_hash(tmp_path: Path) -> None:
    files = {"a.cedar": PERMIT, "b.cedar": '@id("f")\nforbid (principal, action, resource) when { context.risk > 90 };\n'}
    version = load_texts(files).version
    assert re.fullmatch(r"[0-9a-f]{16}", version)
    assert load_texts(dict(reversed(list(files.items())))).version == version  # order does not matter
    # the same content in another directory: the same version
    one, two = tmp_path / "one", tmp_path / "two"
    for directory in (one, two):
        for name, text in files.items():
            write(directory, name, text)
    assert load_directory(one).version == load_directory(two).version == version
    # any edit, even in a comment or whitespace: a new version
    assert load_texts({**files, "a.cedar": files["a.cedar"] + "// note\n"}).version != version
    assert load_texts({**files, "a.cedar": files["a.cedar"] + "\n"}).version != version
    assert load_texts({**files, "b.cedar": files["b.cedar"].replace("90", "91")}).version != version
    # a rename (same texts): a new version
    (two / "b.cedar").rename(two / "c.cedar")
    renamed = load_directory(two).version
    assert renamed != version
    (two / "c.cedar").rename(two / "b.cedar")
    assert load_directory(two).version == version  # and back
    # adding a file: a new version
    assert load_texts({**files, "c.cedar": "// empty\n"}).version != version
