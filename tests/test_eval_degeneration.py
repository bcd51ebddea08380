"""The gate catches degenerate and overfit models (issue: "the loss falls below 1.5 but the replies start
repeating, e.g. 请联系我们 over and over").

Measures on known texts, then the real path: a tiny Llama pre-trained in code on a few sample pairs
answers its questions like the references (healthy), and a LoRA on it deliberately overfit into one
canned, repeating reply is rejected by the gate, which names the criteria."""

from __future__ import annotations

import json

import pytest
from eval_fixtures import make_adapter, sample_rows

from replyloop.evaluation import degeneration as dg
from replyloop.evaluation.evaluate import evaluate_model
from replyloop.evaluation.gate import decide
from replyloop.config import DegenerationConfig
from replyloop.registry import Registry

CANNED = "请联系我们。请联系我们。请联系我们。"


def test_per_draft_measures_read_chinese():
    assert dg.repeat_share("请联系我们。请联系我们。请联系我们。") > 0.5
    assert dg.repeat_share("您好，请在订单详情页查看电子面单。") == 0.0
    assert dg.repeat_share("短") == 0.0 and dg.repeat_share("") == 0.0
    assert dg.clause_run("请联系我们，请联系我们，请 联系我们！好的") == 3
    assert dg.clause_run("您好。请稍等。谢谢") == 1 and dg.clause_run("") == 0
    # punctuation and spacing do not make clauses differ, markup-free NFKC text is compared
    assert dg.clause_run("请联系我们。 请联系我们!") == 2


def test_across_drafts_template_share_and_distinct2():
    refs = [r["response"] for r in sample_rows()[:20]]
    share, example = dg.template_share(["请联系我们。"] * 15 + refs[:5])
    assert share == 0.75 and example == "请联系我们。"
    assert dg.template_share(refs)[0] <= 0.1
    assert dg.distinct_n(["请联系我们"] * 10) == 0.1 < 0.4 < dg.distinct_n(refs)
    result = dg.measure(["请联系我们。"] * 20, refs)
    assert result.template_share == 1.0 and result.distinct2_ratio < DegenerationConfig().min_distinct2_ratio
    assert result.off_length_share == 1.0  # 6 characters against ~40-character references
    # cut at the token cap is not a collapse
    assert dg.measure(["请联系我们。"] * 20, refs, truncated=[True] * 20).off_length_share == 0.0


def test_gate_names_each_degeneration_criterion_absolute_and_against_the_champion():
    refs = [r["response"] for r in sample_rows()[:20]]
    lim = DegenerationConfig()
    healthy = dg.measure(refs, refs)
    canned = dg.measure([CANNED] * 20, refs)
    base = dict(mean=0.9, by_category={"a": 0.9}, block_count=0, floor=0.5, tolerance=0.02, category_margin=0.05,
                degeneration_limits=lim)
    ok = decide(**base, degeneration=healthy)
    assert ok.passed, ok.verdict()
    bad = decide(**base, degeneration=canned, champion_degeneration=healthy)
    assert not bad.passed
    failed = {line.split(":")[0] for line in bad.reasons}
    assert {"[FAIL] repetitive drafts", "[FAIL] repetitive drafts vs champion", "[FAIL] distinct-2 vs references",
            "[FAIL] one reply for many questions", "[FAIL] one reply for many questions vs champion"} <= failed
    assert any("请联系我们" in line for line in bad.reasons)
    # relative to the champion: a small worsening within the margin passes, beyond it fails
    slightly = dg.measure(refs[:18] + [CANNED] * 2, refs)
    assert decide(**base, degeneration=slightly, champion_degeneration=healthy).passed
    off = decide(**{**base, "degeneration_limits": DegenerationConfig(enabled=False)}, degeneration=canned)
    assert off.passed and not any("repetitive" in c.name for c in off.criteria)


@pytest.fixture(scope="module")
def memorising_base(tmp_path_factory):
    """A tiny Llama pre-trained fully on 24 sample pairs: it answers those questions as approved."""
    from replyloop.training.tiny import TinyPretrainConfig, pretrain_tiny_base

    rows = sorted(sample_rows(), key=lambda r: len(r["prompt"]) + len(r["response"]))[:24]
    pairs = [(r["prompt"], r["response"]) for r in rows]
    cfg = TinyPretrainConfig(vocab_size=600, hidden_size=64, num_layers=2, num_heads=2, steps=120,
                             batch_size=8, learning_rate=5e-3, warmup_steps=10, max_seq_length=160)
    result = pretrain_tiny_base(tmp_path_factory.mktemp("memo") / "base", pairs, cfg=cfg)
    return result.path, rows


@pytest.mark.slow
def test_gate_rejects_an_adapter_overfit_into_one_canned_reply(workspace, memorising_base, tmp_path):
    config, store = workspace
    base, rows = memorising_base
    from replyloop.store import SampleIn

    store.add_samples([SampleIn(prompt=r["prompt"], response=r["response"], category=r["category"])
                       for r in rows])
    snapshot = store.create_snapshot(0.8, "degeneration").hash
    heldout = store.snapshot_samples(snapshot, "heldout")
    assert len(heldout) >= 8
    pairs = [(r["prompt"], r["response"]) for r in rows]
    healthy = make_adapter(base, tmp_path / "healthy", snapshot_hash=snapshot, pairs=pairs)  # steps 0: the base
    overfit = make_adapter(base, tmp_path / "overfit", snapshot_hash=snapshot,
                           pairs=[(p, CANNED) for p, _ in pairs], steps=30, lr=5e-3)
    reg = Registry(store)
    champion = reg.promote(reg.register(healthy, name="healthy")["id"], "alice", force=True)

    good = evaluate_model(config, store, champion["id"], against="none", max_new_tokens=64)
    names = [c.name for c in good.gate.criteria if "repetitive" in c.name or "reply for many" in c.name
             or "distinct-2" in c.name or "off-length" in c.name]
    assert len(names) == 8
    assert all(c.passed for c in good.gate.criteria if c.name in names), good.gate.verdict()
    assert good.degeneration.template_share <= 0.3

    reg.register(overfit, name="overfit")
    bad = evaluate_model(config, store, "overfit", against="champion", max_new_tokens=64)
    assert sum(CANNED[:5] in item["draft"] for item in bad.items) >= len(bad.items) * 0.8
    assert not bad.passed
    reasons = "\n".join(bad.gate.reasons)
    assert "[FAIL] one reply for many questions:" in reasons and "请联系我们" in reasons
    assert "[FAIL] one reply for many questions vs champion" in reasons
    assert "[FAIL] repetitive drafts" in reasons
    # in the stored evaluation JSON and Markdown too
    row = store.one("SELECT report, summary_md FROM evaluations WHERE id = ?", (bad.id,))
    stored = json.loads(row["report"])
    assert stored["degeneration"]["template_share"] >= 0.8 and stored["champion_degeneration"] is not None
    assert stored["items"][0]["degeneration"]["repetitive"] in (True, False)
    assert "Degeneration: repetitive drafts" in row["summary_md"]
    assert "[FAIL] one reply for many questions" in row["summary_md"]


@pytest.mark.parametrize("champion, challenger, passed", [
    (1.098, 0.932, True),    # the demo on a 2-core AMD EPYC host: closer to the references is not degeneration
    (1.098, 0.899, False),   # still below the references' variety less the margin
    (0.95, 0.84, False),     # a champion under 1 counts as it is
    (0.95, 0.86, True),
])
def test_distinct2_vs_champion_counts_a_champion_over_the_references_as_1(champion, challenger, passed):
    from replyloop.evaluation.gate import degeneration_criteria

    def result(ratio):
        return dg.DegenerationResult(40, 0.0, 0.0, ratio, 0.05, 0.05)

    criteria = {c.name: c for c in degeneration_criteria(result(challenger), result(champion), DegenerationConfig())}
    assert DegenerationConfig().champion_margin == 0.1
    assert criteria["distinct-2 vs champion"].passed is passed
    assert criteria["distinct-2 vs champion"].limit == round(min(champion, 1.0) - 0.1, 6)
