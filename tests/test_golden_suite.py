"""Golden suites without a model: the file format, every assertion (passing and failing, Chinese
variants), malformed files, writing a case, promptfoo export / import."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from replyloop.evaluation import golden, golden_promptfoo
from replyloop.evaluation.golden import GoldenError, check_case, load_suites
from replyloop.evaluation.policy import load_policies
from replyloop.evaluation.degeneration import first_repeat, repeated_ngram_share

SUITE = """\
# evals/returns.yaml
cases:
  - id: custom-no-7day
    question: 定制商品可以七天无理由退货吗？
    category: 退换货政策
    intent: custom-return
    reference: 定制商品不适用七天无理由退货，质量问题可以申请售后。
    assert:
      - {type: contains, value: [不适用, 不支持]}
      - {type: not-contains, value: 全额赔付}
      - {type: regex, value: '定制.{0,6}不'}
      - {type: chrf, threshold: 0.3}
      - {type: policy-clean}
      - {type: terminology}
      - {type: max-chars, value: 40}
      - {type: min-chars, value: 8}
      - {type: not-repetitive}
  - id: waybill
    question: 快递单号在哪里看？
    assert:
      - {type: contains, value: [电子面单, 订单详情], mode: all}
      - {type: policy-clean, allow_warn: false}
"""


@pytest.fixture(scope="module")
def engine():
    return load_policies()


@pytest.fixture
def suite_dir(tmp_path) -> Path:
    d = tmp_path / "evals"
    d.mkdir()
    (d / "returns.yaml").write_text(SUITE, encoding="utf-8")
    return d


def results(case, draft, engine, **kw) -> dict[str, golden.AssertionResult]:
    return {r.type + ("" if r.type != "policy-clean" else ""): r for r in check_case(case, draft, engine=engine, **kw).results}


def test_suite_loads_with_lines_and_fields(suite_dir):
    [suite] = load_suites(suite_dir)
    assert suite.name == "returns" and [c.id for c in suite.cases] == ["custom-no-7day", "waybill"]
    case = suite.cases[0]
    assert case.line == 3 and case.category == "退换货政策" and case.intent == "custom-return"
    assert [a.type for a in case.assertions] == list(golden.TYPES[:3]) + ["chrf", "policy-clean", "terminology",
                                                                        "max-chars", "min-chars", "not-repetitive"]
    assert case.assertions[0].line == 9


def test_every_assertion_passes_on_a_good_reply(suite_dir, engine):
    case = load_suites(suite_dir)[0].cases[0]
    res = check_case(case, "定制商品不适用七天无理由退货，质量问题可申请售后。", engine=engine)
    assert res.passed, [(r.label, r.detail) for r in res.results if not r.passed]


@pytest.mark.parametrize("draft", [
    "定製商品不適用七天無理由退貨。",          # Traditional
    "定制商品ＮＯ，不　适　用七天无理由退货",     # full-width, ideographic spaces
    "定制商品不 适 用七天无理由退货",            # spaced
    "定制商品<b>不适</b>用七天无理由退货",       # markup
])
def test_contains_matches_chinese_variants(suite_dir, engine, draft):
    case = load_suites(suite_dir)[0].cases[0]
    r = results(case, draft, engine)["contains"]
    assert r.passed and r.match.replace(" ", "").replace("　", "") in (draft.replace(" ", "").replace("　", ""))
    assert draft[r.start:r.end] == r.match


def test_failures_name_the_offending_span(suite_dir, engine):
    case = load_suites(suite_dir)[0].cases[0]
    draft = "您好您好您好您好您好您好，我们承诺全 額 賠 付，请提供快递条码，感谢您耐心等待。"
    res = check_case(case, draft, engine=engine)
    r = {x.type: x for x in res.results}
    assert not res.passed
    assert not r["contains"].passed and r["contains"].detail == "none of 不适用, 不支持"
    assert not r["not-contains"].passed and r["not-contains"].match == "全 額 賠 付"
    assert not r["regex"].passed
    assert not r["chrf"].passed and r["chrf"].score < 0.3
    assert not r["policy-clean"].passed and r["policy-clean"].match == "全 額 賠 付"
    assert not r["terminology"].passed and r["terminology"].match == "快递条码" and "电子面单" in r["terminology"].detail
    assert not r["max-chars"].passed and r["max-chars"].start == 40
    assert r["min-chars"].passed
    assert not r["not-repetitive"].passed and r["not-repetitive"].match == "您好您好"
    assert golden.highlight(draft, r["not-contains"].start, r["not-contains"].end).count("[[全 額 賠 付]]") == 1


def test_negated_promise_is_policy_clean_and_warn_option(suite_dir, engine):
    suites = load_suites(suite_dir)
    case, strict = suites[0].cases
    assert results(case, "定制商品不适用七天无理由退货，我们无法承诺全额赔付。", engine)["policy-clean"].passed
    # allow_warn: false also fails a warn (terminology and absolute assurances are warns)
    r = results(strict, "请在订单详情查看电子面单，绝对没问题。", engine)["policy-clean"]
    assert not r.passed and "warn" in r.detail
    assert results(strict, "请在订单详情查看电子面单。", engine)["policy-clean"].passed


def test_contains_all_and_not_contains_all(tmp_path, engine):
    d = tmp_path / "e"
    d.mkdir()
    (d / "a.yaml").write_text(textwrap.dedent("""\
        cases:
          - id: all
            question: q
            assert:
              - {type: contains, value: [电子面单, 订单详情], mode: all}
              - {type: not-contains, value: [赔付, 保证], mode: all}
    """), encoding="utf-8")
    case = load_suites(d)[0].cases[0]
    r = check_case(case, "请查看订单详情。我们保证", engine=engine).results
    assert not r[0].passed and r[0].detail == "missing: 电子面单"
    assert r[1].passed  # only one of the two
    r = check_case(case, "订单详情里有電子面單，保证赔付", engine=engine).results
    assert r[0].passed and not r[1].passed and r[1].detail == "found: 赔付, 保证"


def test_similar_uses_the_given_similarity(suite_dir, tmp_path):
    d = tmp_path / "s"
    d.mkdir()
    (d / "s.yaml").write_text("cases:\n  - id: s\n    question: q\n    reference: r\n    assert:\n"
                              "      - {type: similar, threshold: 0.8}\n", encoding="utf-8")
    case = load_suites(d)[0].cases[0]
    assert check_case(case, "x", similarity=0.85).passed
    res = check_case(case, "x", similarity=0.5)
    assert not res.passed and res.results[0].detail == "similarity 0.500 < 0.8"
    assert not check_case(case, "x").passed  # nothing measured: fails, says so


def test_repetition_measure():
    assert repeated_ngram_share("定制商品不适用七天无理由退货，质量问题可以申请售后。") == 0.0
    assert repeated_ngram_share("您好您好您好您好您好您好") > 0.7
    assert repeated_ngram_share("短") == 0.0
    text = "The order ships soon. The order ships soon. The order ships soon."
    assert repeated_ngram_share(text) > 0.5
    s, e = first_repeat(text)
    assert (s, text[s:e]) == (22, "The o")  # the second sentence starts repeating the first


BAD = {
    "bad yaml": ("cases:\n  - id: a\n    question: 退货: 可以吗\n", "bad.yaml:3: invalid YAML: mapping values are not allowed"),
    "unknown assertion": ("cases:\n  - id: a1\n    question: q\n    assert:\n      - {type: javascript, value: x}\n",
                          "bad.yaml:5: case 'a1': unknown assertion 'javascript'"),
    "bad regex": ("cases:\n  - id: r1\n    question: q\n    assert:\n      - type: regex\n        value: '定制(('\n",
                  "bad.yaml:6: case 'r1': regex '定制((' does not compile"),
    "catastrophic regex": ("cases:\n  - id: r2\n    question: q\n    assert:\n      - {type: regex, value: '(a+)+b'}\n",
                           "bad.yaml:5: case 'r2': regex '(a+)+b':"),
    "unknown key": ("cases:\n  - id: k\n    question: q\n    answer: x\n    assert: [{type: terminology}]\n",
                    "bad.yaml:4: case 'k': key 'cases.0.answer': unknown key"),
    "no assertions": ("cases:\n  - id: n\n    question: q\n", "bad.yaml:2: case 'n': key 'cases.0.assert': required key"),
    "chrf without reference": ("cases:\n  - id: c\n    question: q\n    assert:\n      - {type: chrf, threshold: 0.3}\n",
                               "bad.yaml:5: case 'c': chrf compares the draft with the reference"),
    "value that does not apply": ("cases:\n  - id: v\n    question: q\n    assert:\n      - {type: terminology, value: x}\n",
                                  "bad.yaml:5: case 'v': 'value' does not apply to terminology"),
    "empty phrase": ("cases:\n  - id: e\n    question: q\n    assert:\n      - {type: contains, value: '，。'}\n",
                     "bad.yaml:5: case 'e': empty phrase"),
}


@pytest.mark.parametrize("name", BAD)
def test_malformed_suite_names_file_line_and_case(tmp_path, name):
    text, expected = BAD[name]
    d = tmp_path / "evals"
    d.mkdir()
    (d / "bad.yaml").write_text(text, encoding="utf-8")
    (d / "good.yaml").write_text(SUITE, encoding="utf-8")
    with pytest.raises(GoldenError) as exc:
        load_suites(d, ["good"])  # the bad file rejects the whole directory
    assert f"{d}/{expected}" in str(exc.value), str(exc.value)


def test_duplicate_id_across_files_and_all_errors_at_once(tmp_path):
    d = tmp_path / "evals"
    d.mkdir()
    (d / "a.yaml").write_text(SUITE, encoding="utf-8")
    (d / "b.yaml").write_text("cases:\n  - id: waybill\n    question: q\n    assert: [{type: terminology}]\n"
                              "  - id: x\n    question: q\n    assert: [{type: nope}]\n", encoding="utf-8")
    with pytest.raises(GoldenError) as exc:
        load_suites(d)
    lines = str(exc.value).splitlines()
    assert lines == [f"{d}/b.yaml:2: case 'waybill': duplicate case id (first at {d}/a.yaml:18)",
                     f"{d}/b.yaml:7: case 'x': unknown assertion 'nope' (one of: {', '.join(golden.TYPES)})"]


def test_unknown_suite_name(suite_dir):
    with pytest.raises(GoldenError, match="no suite named refunds .suites there: returns."):
        load_suites(suite_dir, ["refunds"])


def test_add_case_appends_keeps_comments_and_validates(suite_dir):
    path = suite_dir / "returns.yaml"
    case = {"id": "slack-1", "question": "可以全额赔付吗？", "reference": "我们会按规则处理。",
            "assert": [{"type": "not-contains", "value": ["全额赔付"]}, {"type": "chrf", "threshold": 0.3}]}
    new = golden.add_case(suite_dir, "returns", case)
    assert new.id == "slack-1" and new.file == path and new.line == 23
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# evals/returns.yaml\n") and text.count("- id:") == 3
    assert [c.id for c in load_suites(suite_dir)[0].cases] == ["custom-no-7day", "waybill", "slack-1"]
    # a duplicate id or a bad assertion: refused, the file unchanged, the message names the file
    for bad in ({**case}, {**case, "id": "slack-2", "assert": [{"type": "regex", "value": "(("}]}):
        with pytest.raises(GoldenError) as exc:
            golden.add_case(suite_dir, "returns", bad)
        assert str(path) in str(exc.value) and ".tmp-" not in str(exc.value)
        assert path.read_text(encoding="utf-8") == text
    assert not [p for p in suite_dir.iterdir() if ".tmp-" in p.name]
    # hostile text reads back as written (YAML specials, several lines, a comment sign)
    tricky = {**case, "id": "tricky", "question": "退货: 可以吗？ # 不是注释\n- id: fake\n  question: x",
              "reference": "第一行\n  第二行: 'x' \"y\"\n"}
    new = golden.add_case(suite_dir, "returns", tricky)
    assert (new.question, new.reference) == (tricky["question"], tricky["reference"])
    assert [c.id for c in load_suites(suite_dir)[0].cases] == ["custom-no-7day", "waybill", "slack-1", "tricky"]
    # a file whose last key is not `cases`: rewritten, still valid
    (suite_dir / "tail.yaml").write_text("cases:\n  - {id: t1, question: q, assert: [{type: terminology}]}\n"
                                         "description: cases first\n", encoding="utf-8")
    golden.add_case(suite_dir, "tail", {**case, "id": "t2"})
    assert [c.id for c in load_suites(suite_dir, ["tail"])[0].cases] == ["t1", "t2"]
    # a new suite file
    golden.add_case(suite_dir, "campaign", {**case, "id": "c-1"})
    assert [s.name for s in load_suites(suite_dir)] == ["campaign", "returns", "tail"]
    with pytest.raises(GoldenError, match="suite name"):
        golden.add_case(suite_dir, "../etc", {**case, "id": "c-2"})


def test_suggested_assertions_from_an_edit():
    got = golden.suggest_assertions("您好，我们承诺全额赔付，三天内到账。", "您好，我们会按售后规则处理，三天内到账。")
    assert got[0] == {"type": "not-contains", "value": ["承诺全额赔付"]}
    assert {"type": "chrf", "threshold": 0.3} in got and {"type": "policy-clean"} in got


# -- promptfoo ---------------------------------------------------------------------------------

def _promptfoo_schema():
    """The parts of promptfoo's config schema (promptfoo.dev/config-schema.json) an export uses:
    ``prompts`` required, ``tests[]`` with ``vars`` / ``assert`` / ``description`` / ``metadata``,
    and assertion objects whose ``type`` is one of promptfoo's assertion types."""
    from typing import Any, Literal

    from pydantic import BaseModel, ConfigDict, Field

    types = Literal["contains", "contains-any", "contains-all", "icontains", "icontains-any", "icontains-all",
                    "not-contains", "not-contains-any", "not-contains-all", "regex", "not-regex", "similar",
                    "python", "javascript", "equals", "starts-with", "levenshtein", "rouge-n", "bleu", "llm-rubric"]

    class Strict(BaseModel):
        model_config = ConfigDict(extra="forbid")

    class Assertion(Strict):
        type: types
        value: Any = None
        threshold: float | None = None
        metric: str | None = None
        weight: float | None = None

    class Test(Strict):
        description: str | None = None
        vars: dict[str, str]
        assert_: list[Assertion] = Field(default_factory=list, alias="assert")
        metadata: dict[str, str] | None = None

    class Config(Strict):
        description: str | None = None
        prompts: list[str]
        providers: list[str]
        tests: list[Test]

    return Config


def test_promptfoo_export_matches_schema_and_round_trips(suite_dir, tmp_path, engine):
    import yaml

    suites = load_suites(suite_dir)
    config = golden_promptfoo.to_promptfoo(suites)
    text = yaml.safe_dump(config, allow_unicode=True, sort_keys=False)
    parsed = _promptfoo_schema().model_validate(yaml.safe_load(text))
    assert [t.description for t in parsed.tests] == ["custom-no-7day", "waybill"]
    first = parsed.tests[0].assert_
    assert [(a.type, a.value) for a in first[:3]] == [("contains-any", ["不适用", "不支持"]),
                                                      ("not-contains", "全额赔付"), ("regex", "定制.{0,6}不")]
    assert first[3].type == "python" and first[3].metric == "chrf"
    # the python assertion runs replyloop's own check (as promptfoo would call it)
    code = first[3].value
    assert code.startswith(golden_promptfoo.PYTHON_PREFIX)
    good = eval(code, {"output": "定制商品不适用七天无理由退货，质量问题可以申请售后。", "__builtins__": __builtins__})
    bad = eval(code, {"output": "好的", "__builtins__": __builtins__})
    assert good["pass"] is True and bad["pass"] is False and "chrF" in bad["reason"]
    # read back: the same cases and assertions
    (tmp_path / "pf.yaml").write_text(text, encoding="utf-8")
    back = golden_promptfoo.from_promptfoo(tmp_path / "pf.yaml")
    assert back == [c.to_dict() for c in suites[0].cases]


def test_promptfoo_import_supported_and_unsupported(tmp_path, suite_dir):
    pf = tmp_path / "promptfooconfig.yaml"
    pf.write_text(textwrap.dedent("""\
        prompts: ["{{query}}"]
        providers: [openai:gpt-4o-mini]
        tests:
          - description: refund policy
            vars: {query: 可以退货吗？}
            assert:
              - {type: icontains, value: 七天}
              - {type: similar, value: 支持七天无理由退货, threshold: 0.7}
              - {type: not-contains-all, value: [a, b]}
    """), encoding="utf-8")
    target = golden_promptfoo.import_promptfoo(pf, suite_dir, "imported")
    [case] = load_suites(suite_dir, ["imported"])[0].cases
    assert target == suite_dir / "imported.yaml"
    assert case.id == "refund-policy" and case.question == "可以退货吗？" and case.reference == "支持七天无理由退货"
    assert [a.label() for a in case.assertions] == ["contains 七天", "similar >= 0.7", "not-contains a & b"]
    with pytest.raises(GoldenError, match="exists already"):
        golden_promptfoo.import_promptfoo(pf, suite_dir, "imported")
    pf.write_text(pf.read_text(encoding="utf-8") + "      - {type: llm-rubric, value: polite}\n", encoding="utf-8")
    with pytest.raises(GoldenError) as exc:
        golden_promptfoo.import_promptfoo(pf, suite_dir, "other")
    assert f"{pf}:10: test 'refund-policy': unsupported assertion 'llm-rubric'" in str(exc.value)
    assert not (suite_dir / "other.yaml").exists()


WRITER = """
import sys
from replyloop.evaluation import golden
d = sys.argv[1]
for i in range(100000):
    golden.add_case(d, "slack", {"id": f"c{i}", "question": "q" * 50 + str(i),
                                 "assert": [{"type": "not-contains", "value": ["全额赔付"]}]})
    print(i, flush=True)
"""


def test_kill_9_while_adding_cases_leaves_a_valid_file(tmp_path):
    """A writer killed at a random moment: the suite file still loads, holds every case whose
    add_case was reported as returned, and no half-written one (ids consecutive, in order)."""
    import random
    import signal
    import subprocess
    import sys
    import time

    d = tmp_path / "evals"
    script = tmp_path / "writer.py"
    script.write_text(WRITER, encoding="utf-8")
    proc = subprocess.Popen([sys.executable, str(script), str(d)], stdout=subprocess.PIPE, text=True)
    done = -1
    for line in proc.stdout:
        done = int(line.split()[0])
        if done >= 4:
            break
    time.sleep(random.random() * 0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    ids = [c.id for c in load_suites(d)[0].cases]
    assert ids == [f"c{i}" for i in range(len(ids))] and len(ids) >= done + 1
    assert not [p for p in d.iterdir() if p.suffix == ".yaml" and p.name != "slack.yaml"]
