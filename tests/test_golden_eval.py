"""Golden suites with real tiny models: `replyloop eval MODEL --suite` as a subprocess (table,
JSON, exit codes, the draft cache), and the promotion gate blocking a challenger that breaks a
case the champion passed."""

from __future__ import annotations

import json

import pytest
import yaml
from eval_fixtures import make_adapter
from helpers import cli, cli_subprocess
from pipeline_fixtures import make_workspace, tiny_base_dir  # noqa: F401 - fixture

from replyloop.evaluation.textmap import compact

pytestmark = pytest.mark.slow
QUESTIONS = ["定制商品可以七天无理由退货吗？", "快递三天没更新了怎么办？", "收不到验证码怎么办？"]


@pytest.fixture(scope="module")
def adapters(tiny_base_dir, tmp_path_factory):
    """Champion: the base as it is (an untrained adapter); challenger: a few steps of training."""
    from eval_fixtures import sample_rows

    rows = sample_rows()
    pairs = [(r["prompt"], r["response"]) for r in rows[:48]]
    root = tmp_path_factory.mktemp("golden-adapters")
    champion = make_adapter(tiny_base_dir, root / "champion", pairs=pairs)
    challenger = make_adapter(tiny_base_dir, root / "challenger", pairs=pairs, steps=6, lr=1e-2, seed=3)
    return champion, challenger


@pytest.fixture
def ws(replyloop_home, tiny_base_dir, adapters):
    from replyloop.registry import Registry

    config, store = make_workspace(replyloop_home, tiny_base_dir, evaluation={"max_new_tokens": 10})
    snapshot = store.create_snapshot(0.15, "replyloop").hash
    registry = Registry(store)
    rows = []
    for path in adapters:
        manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
        manifest["snapshot_hash"] = snapshot
        (path / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
        rows.append(registry.register(path))
    registry.promote(rows[0]["id"], "test", force=True, reason="the champion of this test")
    yield config, store, registry, rows[0], rows[1]
    store.close()


def write_suite(config, name: str, cases: list[dict]) -> None:
    d = config.root / "evals"
    d.mkdir(exist_ok=True)
    (d / f"{name}.yaml").write_text(yaml.safe_dump({"cases": cases}, allow_unicode=True, sort_keys=False),
                                    encoding="utf-8")


def eval_suite(model: str, *args: str):
    return cli_subprocess("eval", model, "--suite", *args)


def breaking_assertion(champion_draft: str, challenger_draft: str) -> dict:
    """An assertion the champion's real draft passes and the challenger's fails: `contains` a
    piece of the champion's draft the challenger lacks, else `not-contains` one of the
    challenger's the champion lacks."""
    a, b = compact(champion_draft), compact(challenger_draft)
    for text, other, kind in ((a, b, "contains"), (b, a, "not-contains")):
        for size in (3, 2, 1):
            for i in range(len(text) - size + 1):
                piece = text[i:i + size]
                if piece not in other:
                    return {"type": kind, "value": piece}
    raise AssertionError(f"the two models drafted the same text: {champion_draft!r}")


def test_eval_suite_cli_table_json_cache_and_exit_codes(ws):
    config, store, registry, champ, chall = ws
    write_suite(config, "probe", [{"id": f"q{i}", "question": q, "assert": [{"type": "min-chars", "value": 0}]}
                                  for i, q in enumerate(QUESTIONS)])
    from replyloop.evaluation import golden

    # drafted once here (real models, one process); the CLI runs below find them in the cache
    gen = golden.local_generator(config, max_new_tokens=10, batch_size=16)
    suites = golden.load_suites(config.root / "evals")
    drafts = {}
    for row in (champ, chall):
        run = golden.run_suites(config, store, row, suites, generate=gen)
        assert len(run.cases) == 3 and run.generated == 3 and run.passed
        drafts[row["name"]] = [c.draft for c in run.cases]
    breaking = breaking_assertion(drafts[champ["name"]][0], drafts[chall["name"]][0])
    # the real suite: an assertion edit of the same questions drafts nothing new
    write_suite(config, "probe", [
        {"id": "breaks", "question": QUESTIONS[0], "assert": [breaking, {"type": "max-chars", "value": 500}]},
        {"id": "holds", "question": QUESTIONS[1], "assert": [{"type": "policy-clean"}]},
    ])
    r = eval_suite(chall["name"])
    assert r.returncode == 4, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    row = next(line for line in lines if line.startswith("breaks (newly broken)"))
    assert " FAIL " in row
    if breaking["type"] == "not-contains":  # the offending span is highlighted
        assert "[[" in row and "]]" in row
    assert any(line.startswith("holds") and " PASS" in line for line in lines)
    assert lines[-2].startswith(f"Golden suites (probe) for {chall['name']}: 1 of 2 cases passed; failed: breaks"
                                " (0 drafted, 2 from the cache)")
    assert lines[-1] == f"Against {champ['name']}: newly broken: breaks"
    r = eval_suite(chall["name"], "probe", "--json")
    out = json.loads(r.stdout)
    assert r.returncode == 4 and out["generated"] == 0 and out["changes"]["newly broken"] == ["breaks"]
    assert [c["draft"] for c in out["cases"]] == drafts[chall["name"]][:2]  # the cached drafts
    assert out["cases"][0]["assertions"][0]["passed"] is False
    # the champion passes: exit 0 (in process)
    assert cli("eval", champ["name"], "--suite", "--against", "none").exit_code == 0
    # stored runs with per-case results
    assert store.scalar("SELECT count(*) FROM golden_runs WHERE model_id = ?", (chall["id"],)) == 3  # 1 + 2 CLI runs
    history = golden.case_history(store, "breaks")
    assert [(h["model_name"], h["passed"]) for h in history] == [(champ["name"], True), (chall["name"], False),
                                                                  (chall["name"], False)]
    assert history[1]["failures"] == [golden.load_suites(config.root / "evals")[0].cases[0].assertions[0].label()]
    # a malformed suite: exit 2, file and line; nothing is drafted
    (config.root / "evals" / "probe.yaml").write_text(
        "cases:\n  - id: x\n    question: q\n    assert:\n      - {type: contians, value: a}\n", encoding="utf-8")
    r = eval_suite(chall["name"])
    assert r.returncode == 2
    assert r.stderr.startswith(f"Error: {config.root / 'evals' / 'probe.yaml'}:5: case 'x': unknown assertion 'contians'")
    # export without a model
    r = cli("eval", "--suite", "--export", "promptfoo")
    assert r.exit_code == 2 and "unknown assertion 'contians'" in r.output


def test_gate_blocks_a_challenger_that_breaks_a_case_the_champion_passed(ws):
    from replyloop.evaluation.evaluate import evaluate_model
    from replyloop.errors import GateFailed

    config, store, registry, champ, chall = ws
    write_suite(config, "probe", [{"id": "p", "question": QUESTIONS[0], "assert": [{"type": "min-chars", "value": 0}]}])
    from replyloop.evaluation import golden

    suites = golden.load_suites(config.root / "evals")
    gen = golden.local_generator(config, max_new_tokens=10, batch_size=16)
    d_champ = golden.run_suites(config, store, champ, suites, generate=gen, save=False).cases[0].draft
    d_chall = golden.run_suites(config, store, chall, suites, generate=gen, save=False).cases[0].draft
    write_suite(config, "must-pass", [
        {"id": "custom-return", "question": QUESTIONS[0], "assert": [breaking_assertion(d_champ, d_chall)]},
        {"id": "any-reply", "question": QUESTIONS[2], "assert": [{"type": "min-chars", "value": 0}]},
    ])
    (config.root / "evals" / "probe.yaml").unlink()
    report = evaluate_model(config, store, chall["id"], against="champion")
    crit = next(c for c in report.gate.criteria if c.name == golden.GATE_NAME)
    assert not report.gate.passed and not crit.passed and crit.counted and crit.value == 1
    assert "newly broken: custom-return" in crit.detail
    assert "[FAIL] golden suite failures: 1 (limit 0) — 2 cases; newly broken: custom-return" in report.gate.verdict()
    from replyloop.pipeline import _result_message  # what the pipeline posts to Slack

    message = _result_message(7, chall["name"], report.gate, "rejected", config)
    assert "did not pass the gate" in message and "newly broken: custom-return" in message
    assert report.golden["failed"] == ["custom-return"] and report.golden["changes"]["newly broken"] == ["custom-return"]
    # stored with the evaluation; promotion refused
    assert store.scalar("SELECT evaluation_id FROM golden_runs WHERE id = ?", (report.golden["run_id"],)) == report.id
    assert json.loads(store.scalar("SELECT report FROM evaluations WHERE id = ?", (report.id,)))["golden"]["failed"] == \
        ["custom-return"]
    with pytest.raises(GateFailed):
        registry.promote(chall["id"], "test")
    # the weekly report lists the failing case
    import datetime as dt
    from zoneinfo import ZoneInfo

    from replyloop.evaluation.report import collect_weekly_report, render_markdown

    year, week, _ = dt.datetime.now(ZoneInfo(config.file.scheduler.timezone)).isocalendar()
    weekly = collect_weekly_report(config, store, f"{year}-W{week:02d}")
    md = render_markdown(weekly)
    section = md[md.index("## Golden suites"):md.index("## Models")]
    assert f"| #{report.id} | {chall['name']} (#{chall['id']}) | 2 | 1 | custom-return | custom-return | – |" in section
    assert any(r.section == "golden" and r.metric == f"evaluation_{report.id}_failed" and r.value == 1
               for r in weekly.rows())
    # the champion itself passes the same suite
    assert golden.gate_check(config, store, champ, None, generate=gen)[0].passed
    # a case both fail: `block` counts it, `regressions` only the newly broken one
    write_suite(config, "hard", [{"id": "both-fail", "question": QUESTIONS[1],
                                  "assert": [{"type": "min-chars", "value": 5000}]}])
    crit, _, changes = golden.gate_check(config, store, chall, champ, generate=gen)
    assert (crit.value, changes["still failing"]) == (2, ["both-fail"]) and not crit.passed
    config.file.evaluation.golden_gate = "regressions"
    crit, _, _ = golden.gate_check(config, store, chall, champ, generate=gen)
    assert crit.value == 1 and not crit.passed and "still failing: both-fail" in crit.detail
    assert golden.gate_check(config, store, champ, champ, generate=gen)[0].passed  # nothing newly broken
    (config.root / "evals" / "hard.yaml").unlink()
    # in report mode the failure is shown, not counted
    config.file.evaluation.golden_gate = "report"
    report = evaluate_model(config, store, chall["id"], against="champion")
    crit = next(c for c in report.gate.criteria if c.name == golden.GATE_NAME)
    assert not crit.passed and not crit.counted and report.gate.passed
    assert "[SKIP] golden suite failures: 1 (limit 0)" in report.gate.verdict()
