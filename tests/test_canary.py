"""The canary judge: same-window rates, a confidence interval of their difference, and what
happens while the evidence is inconclusive. Registry rows and reviews in a real SQLite file."""

from __future__ import annotations

import datetime as dt

import pytest
from test_registry import add_eval, fake_adapter

from replyloop.bot.status import canary_trial
from replyloop.evaluation.stats import rate_difference, wilson_interval, z_for
from replyloop import timeutil
from replyloop.canary import judge_canary
from replyloop.registry import Registry


def test_newcombe_interval_matches_the_published_example():
    # Newcombe (1998), Statistics in Medicine 17:873-890, Table II: 56/70 vs 48/80, method 10
    d, low, high = rate_difference(56, 70, 48, 80)
    assert d == pytest.approx(0.2) and low == pytest.approx(0.0524, abs=5e-5) and high == pytest.approx(0.3339, abs=5e-5)
    assert rate_difference(0, 0, 3, 10) is None
    d, low, high = rate_difference(10, 10, 0, 10)  # extreme rates stay inside [-1, 1]
    assert d == 1.0 and 0 < low < 1 and high == 1.0
    assert z_for(0.95) == pytest.approx(1.959964, abs=1e-6) and z_for(0.9) < z_for(0.99)
    assert wilson_interval(0, 10)[0] == 0.0


def review(store, model_id: int, approved: int, edited: int, tag: str) -> None:
    for i in range(approved + edited):
        qid = store.add_question(f"{tag}问题{i}", f"{tag}-{i}", "物流查询", source="http")
        draft = store.add_draft(qid, "您好，请在订单详情页查看电子面单。", model_id=model_id, model_name=tag)
        if i < approved:
            store.decide(draft, "approve", "USUP1")
        else:
            store.decide(draft, "edit", "USUP1", final_text=f"改过的回复{tag}{i}")


@pytest.fixture
def canary_setup(workspace, tmp_path):
    """A champion with an earlier record of 50 unedited approvals, then a canary (10%)."""
    config, store = workspace
    config.file.scheduler.canary_min_reviews = 10
    reg = Registry(store)
    champion = reg.promote(reg.register(fake_adapter(tmp_path, "champ"))["id"], "alice", force=True)
    review(store, champion["id"], 50, 0, "old")
    canary = reg.register(fake_adapter(tmp_path, "challenger"))
    add_eval(store, canary["id"], True)
    reg.start_canary(canary["id"], 10, "alice")
    return config, store, reg, champion["id"], canary["id"]


def status(store, model_id):
    return store.one("SELECT status FROM models WHERE id = ?", (model_id,))["status"]


def test_inconclusive_keeps_the_canary_serving_until_max_days(canary_setup):
    config, store, reg, champ, canary = canary_setup
    review(store, champ, 6, 4, "now")  # the same window: 60%, not the earlier 100%
    review(store, canary, 9, 1, "canary")
    messages = []
    outcome = judge_canary(config, store, notify=messages.append)
    assert outcome["decision"] == "wait" and messages == []
    assert "90% vs champion 60%" in outcome["summary"] and "(9/10 vs 6/10)" in outcome["summary"]
    assert "difference +30 points, 95% CI [-8, +60]" in outcome["summary"]
    assert status(store, canary) == "canary"
    trial = canary_trial(config, store)  # what /retrain status shows
    assert (trial["reviews"], trial["min_reviews"], trial["next"]) == (10, 10, "keeps serving: too early to tell")
    # after canary_max_days the measured rates decide
    later = timeutil.now() + dt.timedelta(days=config.file.scheduler.canary_max_days + 1)
    outcome = judge_canary(config, store, notify=messages.append, now=later)
    assert outcome["decision"] == "promote" and status(store, canary) == "champion"
    assert "still inconclusive after 8.0 days, so the measured rates decided" in messages[-1]


def test_clear_evidence_decides_at_once(canary_setup):
    config, store, reg, champ, canary = canary_setup
    review(store, champ, 60, 40, "now")
    review(store, canary, 18, 2, "canary")
    assert canary_trial(config, store)["next"] == "the next canary check promotes it"
    outcome = judge_canary(config, store)
    assert outcome["decision"] == "promote", outcome
    assert "difference +30 points, 95% CI [+8, +42]" in outcome["summary"]


def test_clearly_worse_canary_is_rolled_back(canary_setup):
    config, store, reg, champ, canary = canary_setup
    review(store, champ, 9, 1, "now")
    review(store, canary, 2, 8, "canary")
    messages = []
    outcome = judge_canary(config, store, notify=messages.append)
    assert outcome["decision"] == "rollback" and status(store, canary) == "rejected"
    assert reg.champion()["id"] == champ and "stays champion" in messages[-1]


def test_the_champions_earlier_record_is_not_the_yardstick(canary_setup):
    """Against the champion's all-time 100% (50 earlier approvals) this canary would be worse;
    over the same window the champion is at 50% and the canary is not worse."""
    config, store, reg, champ, canary = canary_setup
    config.file.scheduler.canary_confidence = 0  # measured rates: the window is what is tested
    review(store, champ, 5, 5, "now")
    review(store, canary, 6, 4, "canary")
    outcome = judge_canary(config, store)
    assert outcome["decision"] == "promote" and "60% vs champion 50%" in outcome["summary"]


def test_a_failed_gate_rolls_back_whatever_the_rates(canary_setup):
    config, store, reg, champ, canary = canary_setup
    add_eval(store, canary, False)
    review(store, champ, 1, 9, "now")
    review(store, canary, 10, 0, "canary")
    outcome = judge_canary(config, store)
    assert outcome["decision"] == "rollback" and "consistency gate failed" in outcome["summary"]
