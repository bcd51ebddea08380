"""Policy files: every shipped file loads; every kind of bad file is rejected whole, naming file, line and rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from replyloop.evaluation import regexcheck
from replyloop.evaluation.policy import load_policies
from replyloop.evaluation.policy_files import read_policies
from replyloop.errors import PolicyError
from replyloop.paths import default_policies_dir

GOOD = """\
rules:
  - id: ok-rule
    severity: block
    message: fine
    phrases: [全额赔付]
"""


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(directory: Path) -> str:
    with pytest.raises(PolicyError) as info:
        load_policies(directory)
    return str(info.value)


@pytest.mark.parametrize("path", sorted(default_policies_dir().glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_policy_file_loads(path, tmp_path):
    write(tmp_path, path.name, path.read_text(encoding="utf-8"))
    engine = load_policies(tmp_path)
    assert engine.rules or engine.terms


def test_shipped_policies_together():
    engine = load_policies()
    ids = {r.id for r in engine.rules}
    assert {"full-compensation", "refund-without-review", "guaranteed-24h-dispatch", "absolute-assurance"} <= ids
    assert {t.preferred for t in engine.terms} == {"电子面单", "七天无理由退货"}
    assert load_policies(default_policies_dir()).rules == engine.rules


def test_invalid_yaml(tmp_path):
    write(tmp_path, "a.yaml", GOOD)
    bad = write(tmp_path, "b.yaml", "rules:\n  - id: x\n    phrases: [unclosed\n")
    assert error_of(tmp_path).startswith(f"{bad}:")
    assert "invalid YAML" in error_of(tmp_path)


def test_unknown_key_names_file_line_and_rule(tmp_path):
    bad = write(tmp_path, "a.yaml", GOOD + "  - id: typo-rule\n    severity: warn\n    message: m\n    phrase: [x]\n")
    assert error_of(tmp_path) == (f"{bad}:9: rule 'typo-rule': key 'rules.1.phrase': unknown key")


def test_unknown_top_level_key(tmp_path):
    bad = write(tmp_path, "a.yaml", GOOD + "rulez: []\n")
    assert error_of(tmp_path) == f"{bad}:6: file: key 'rulez': unknown key"


def test_bad_severity_and_missing_message(tmp_path):
    bad = write(tmp_path, "a.yaml", "rules:\n  - id: r1\n    severity: fatal\n    phrases: [a]\n")
    message = error_of(tmp_path)
    assert f"{bad}:3: rule 'r1': key 'rules.0.severity'" in message
    assert f"{bad}:2: rule 'r1': key 'rules.0.message': required key is missing" in message


def test_duplicate_ids_across_files(tmp_path):
    first = write(tmp_path, "a.yaml", GOOD)
    second = write(tmp_path, "b.yaml", "\n" + GOOD)
    assert error_of(tmp_path) == f"{second}:3: rule 'ok-rule': duplicate rule id (first defined at {first}:2)"


@pytest.mark.parametrize("phrase", ["''", "'  '", "'，。!'", "'\u200b'"])
def test_empty_phrase(tmp_path, phrase):
    bad = write(tmp_path, "a.yaml", f"rules:\n  - id: empty\n    severity: warn\n    message: m\n    phrases: [ok, {phrase}]\n")
    message = error_of(tmp_path)
    assert message.startswith(f"{bad}:5: rule 'empty': empty phrase")


def test_rule_without_phrases_or_patterns(tmp_path):
    bad = write(tmp_path, "a.yaml", "rules:\n  - id: nothing\n    severity: warn\n    message: m\n")
    assert error_of(tmp_path) == f"{bad}:2: rule 'nothing': needs at least one of 'phrases' or 'patterns'"


def test_regex_that_does_not_compile(tmp_path):
    bad = write(tmp_path, "a.yaml", "rules:\n  - id: broken\n    severity: block\n    message: m\n"
                                    "    patterns:\n      - '保证(24'\n")
    message = error_of(tmp_path)
    assert message.startswith(f"{bad}:6: rule 'broken': pattern '保证(24': regex does not compile")


@pytest.mark.parametrize("pattern", ["(a+)+b", "(a*)*", "(a|a)*", "(a|ab)+", r"(\d{1,3})+元", r"(\w|\d)+", "x(y+z?)+"])
def test_catastrophic_regex_is_rejected(tmp_path, pattern):
    bad = write(tmp_path, "a.yaml", "rules:\n  - id: slow\n    severity: block\n    message: m\n"
                                    f"    patterns: ['{pattern}']\n")
    message = error_of(tmp_path)
    assert message.startswith(f"{bad}:5: rule 'slow': pattern")
    assert "backtrack catastrophically" in message


@pytest.mark.parametrize("pattern", ["保证在?(24|二十四)小时内?发货", "(ab|cd)+", "[a-z0-9]+天", "(很|非常)?好", r"\d{1,3}元"])
def test_safe_regex_is_accepted(pattern):
    assert regexcheck.backtracking_problem(pattern) is None


@pytest.mark.parametrize("pattern, reason", [
    ("[A-Z]退款", "can never match"),       # upper case: text is case-folded (a range is not rewritten)
    ("[！？]+", "empty string"),            # punctuation only: nothing is left after normalisation
    ("(?P<n>退款)", "named groups"),
    ("(退)款\\1", "backreferences"),
    ("(?i)退款", "inline flags"),
    ("x*", "empty string"),
])
def test_patterns_that_could_never_work(tmp_path, pattern, reason):
    write(tmp_path, "a.yaml", "rules:\n  - id: p\n    severity: warn\n    message: m\n"
                              f"    patterns: ['{pattern}']\n")
    assert reason in error_of(tmp_path)


def test_all_errors_reported_together_and_nothing_half_loaded(tmp_path):
    a = write(tmp_path, "a.yaml", GOOD + "  - id: slow\n    severity: warn\n    message: m\n    patterns: ['(a+)+']\n")
    b = write(tmp_path, "b.yaml", "terminology:\n  - preferred: 电子面单\n    avoid: []\n")
    lines = error_of(tmp_path).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{a}:9: rule 'slow'")
    assert lines[1].startswith(f"{b}:3: terminology '电子面单': key 'terminology.0.avoid'")


def test_missing_and_empty_directory(tmp_path):
    assert error_of(tmp_path / "nope") == f"{tmp_path / 'nope'}: policy directory not found"
    assert error_of(tmp_path) == f"{tmp_path}: no policy files (*.yaml)"


def test_top_level_must_be_a_mapping(tmp_path):
    bad = write(tmp_path, "a.yaml", "- just\n- a list\n")
    assert error_of(tmp_path).startswith(f"{bad}: expected a mapping")


def test_read_policies_keeps_file_and_line(tmp_path):
    path = write(tmp_path, "a.yaml", "# comment\n" + GOOD)
    [rule] = read_policies(tmp_path).rules
    assert (rule.file, rule.line, rule.phrases[0].norm) == (path, 3, "全额赔付")


def test_duplicate_key_in_a_rule_rejects_the_file(tmp_path):
    # A second `phrases:` would silently replace the first (PyYAML keeps the last): 全额赔付 no longer banned.
    from helpers import cli

    bad = write(tmp_path, "a.yaml", "rules:\n  - id: x\n    severity: block\n    message: m\n"
                                    "    phrases: [全额赔付]\n    phrases: [免审核退款]\n")
    assert error_of(tmp_path) == f"{bad}:6: duplicate key 'rules.0.phrases' (first at line 5)"
    result = cli("check", "-p", tmp_path, "我们全额赔付，免审核退款")
    assert result.exit_code == 2
    assert result.stderr == f"Error: {bad}:6: duplicate key 'rules.0.phrases' (first at line 5)\n"
    assert "Traceback" not in result.output


@pytest.mark.parametrize("pattern, shown", [
    ("[A-Z]+退款", "[A-Z]"),                    # case-folded text has no upper case
    ("退款[Ａ-Ｚ]", "[Ａ-Ｚ]"),                  # full-width: NFKC makes it half-width
    ("[a-zA-Z]+退款", "[A-Z]"),                 # the dead half of a class is a mistake too
    (r"退款[\u3001-\u3003]", "[、-〃]"),       # CJK punctuation is dropped from the text
])
def test_class_range_that_can_never_match_is_rejected(tmp_path, pattern, shown):
    bad = write(tmp_path, "a.yaml", "rules:\n  - id: dead\n    severity: warn\n    message: m\n"
                                    f"    patterns: ['{pattern}']\n")
    message = error_of(tmp_path)
    assert message.startswith(f"{bad}:5: rule 'dead': pattern"), message
    assert "can never match" in message and shown in message


@pytest.mark.parametrize("pattern", ["[a-z]+退款", "[0-9]{1,3}元", "[一-龥]+退款", "[^A-Z]退款", r"[\u0000-\U0010ffff]退款"])
def test_class_range_that_can_match_is_accepted(tmp_path, pattern):
    write(tmp_path, "a.yaml", "rules:\n  - id: ok\n    severity: warn\n    message: m\n"
                              f"    patterns: ['{pattern}']\n")
    engine = load_policies(tmp_path)
    assert len(engine.rules) == 1
