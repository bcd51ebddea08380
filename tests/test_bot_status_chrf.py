"""/retrain status and App Home show chrF beside the embedding consistency, and say when the
embedding model could not read the references (the unknown-token guard decided the gate)."""

from __future__ import annotations

import json

from bot_support import *  # noqa: F401,F403
from replyloop.evaluation import gate
from replyloop import timeutil


def seed(store, unknown_share: float):
    verdict = gate.decide(mean=0.812, by_category={"登录异常": 0.8}, block_count=0, floor=0.5, tolerance=0.02,
                          category_margin=0.05, chrf_mean=0.213, chrf_by_category={"登录异常": 0.2},
                          chrf_floor=0.15, chrf_tolerance=0.05, chrf_category_margin=0.15,
                          unknown_share=unknown_share, max_unknown_share=0.2, embedding_model="minilm")
    now = timeutil.now_iso()
    with store.transaction() as db:
        db.execute("INSERT INTO models (id, name, base_model, status, promoted_at, created_at)"
                   " VALUES (1, 'cs-lora-0001', 'tiny', 'champion', ?, ?)", (now, now))
        db.execute("INSERT INTO evaluations (model_id, embedding_model, n, mean_similarity, share_above, mean_chrf,"
                   " unknown_share, gate_passed, gate, created_at) VALUES (1, 'minilm', 30, 0.812, 0.7, 0.213, ?, ?,"
                   " ?, ?)", (unknown_share, int(verdict.passed), json.dumps(verdict.to_dict()["criteria"]), now))
    return verdict


def status_text(env) -> str:
    env.sim.command("/retrain", "status", user="USUP1")
    [call] = env.fake.wait_for("response_url", 1)
    return call.params["text"]


def home_models(env) -> str:
    assert env.sim.home_opened("USUP1").status == 200
    [publish] = env.fake.wait_for("views.publish")
    return {b.get("block_id"): b["text"]["text"] for b in publish.params["view"]["blocks"]
            if b.get("block_id")}["models"]


def test_unreadable_references_are_flagged(env):
    verdict = seed(env.store, 0.74)
    assert verdict.passed and verdict.warnings  # chrF 0.213 >= 0.15 decided
    line = ("*Champion:* `cs-lora-0001` (id 1) — consistency 0.812, chrF 0.213, share above threshold 0.700,"
            " gate passed")
    warning = ":warning: the embedding model cannot read the references, chrF decided the gate"
    for text in (status_text(env), home_models(env)):
        assert line in text and warning in text


def test_readable_references_show_no_warning(env):
    verdict = seed(env.store, 0.0)
    assert verdict.passed and not verdict.warnings
    for text in (status_text(env), home_models(env)):
        assert "consistency 0.812, chrF 0.213, share above threshold 0.700, gate passed" in text
        assert ":warning:" not in text
