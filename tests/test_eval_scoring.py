"""Embedding cache, consistency scoring and the gate verdict (real MiniLM, no generation)."""

from __future__ import annotations

import numpy as np
import pytest

from replyloop.evaluation import consistency, gate
from replyloop.evaluation.embeddings import BUNDLED_NAME, Encoder, text_hash


@pytest.fixture(scope="module")
def minilm():
    """One loaded MiniLM shared by the module (loading takes a few seconds)."""
    enc = Encoder("")
    enc.model  # noqa: B018 - load now
    return enc._model


def encoder_for(store, minilm) -> Encoder:
    enc = Encoder("", store)
    enc._model = minilm
    return enc


def test_cache_hits_avoid_reencoding(workspace, minilm):
    _, store = workspace
    texts = ["您好，请在订单详情里申请退货。", "Your parcel is on its way.", "您好，请在订单详情里申请退货。"]
    first = encoder_for(store, minilm)
    v1 = first.encode(texts)
    assert v1.shape == (3, 384) and first.encoded == 2 and first.hits == 0
    assert np.allclose(np.linalg.norm(v1, axis=1), 1.0, atol=1e-5)
    rows = store.query("SELECT model, text_hash, dim FROM embedding_cache ORDER BY text_hash")
    assert {(r["model"], r["text_hash"], r["dim"]) for r in rows} == {
        (BUNDLED_NAME, text_hash(texts[0]), 384), (BUNDLED_NAME, text_hash(texts[1]), 384)}
    # a new encoder (a new process, say) on the same store encodes nothing it has seen
    second = encoder_for(store, minilm)
    v2 = second.encode(texts + ["新的一句"])
    assert second.encoded == 1 and second.hits == 3
    assert np.array_equal(v2[:3], v1)
    # the cache is per embedding model
    other = Encoder("some/other-model", store)
    other._model = minilm
    other.encode(texts[:1])
    assert other.encoded == 1


def test_bad_embedding_model_is_a_config_error(tmp_path):
    from replyloop.errors import ConfigError

    (tmp_path / "not-a-model").mkdir()
    with pytest.raises(ConfigError, match="evaluation.embedding_model: cannot load"):
        Encoder(str(tmp_path / "not-a-model")).encode(["x"])


def test_paraphrases_score_above_unrelated(minilm):
    enc = Encoder("")
    enc._model = minilm
    refs = enc.encode(["Please request a return in My Orders within 7 days.",
                       "Your refund reaches the original payment method in 1-7 business days."])
    close = enc.encode(["You can request a return under My Orders within seven days.",
                        "The refund goes back to your original payment method within 1 to 7 business days."])
    far = enc.encode(["Our store opens at nine.", "Try the voice verification code."])
    good = consistency.score(close, refs, ["退换货政策", "退换货政策"], threshold=0.75)
    bad = consistency.score(far, refs, ["退换货政策", "退换货政策"], threshold=0.75)
    assert good.mean > 0.75 > bad.mean
    assert good.share_above == 1.0 and bad.share_above == 0.0


def unit(*rows) -> np.ndarray:
    a = np.array(rows, dtype=np.float32)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def test_consistency_per_category_and_intent_column():
    refs = unit([1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1])
    drafts = unit([1, 0, 0], [1, 1, 0], [0, 1, 0], [1, 0, 0])
    res = consistency.score(drafts, refs, ["a", "a", "b", None], ["i1", "i1", "i2", ""], threshold=0.9)
    assert res.similarities == pytest.approx([1.0, 0.70710677, 1.0, 0.0])
    assert res.mean == pytest.approx((1 + 0.70710677 + 1) / 4)
    assert res.share_above == 0.5
    assert res.by_category["a"].n == 2 and res.by_category["a"].mean == pytest.approx(0.853553, abs=1e-5)
    assert res.by_category["(none)"].mean == pytest.approx(0.0)
    assert res.intent_source == "column"
    # only intents with two or more questions have a pairwise score
    assert res.self_consistency == {"i1": {"n": 2, "mean": pytest.approx(0.70710677)}}


def test_self_consistency_groups_by_reference_similarity_without_intents():
    refs = unit([1, 0, 0], [0.95, 0.05, 0], [0, 1, 0], [1, 0, 0])
    drafts = unit([1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1])
    res = consistency.score(drafts, refs, ["a", "a", "a", "b"], None, group_threshold=0.9)
    assert res.intent_source == "reference-similarity"
    assert res.groups == ["a#1", "a#1", "a#2", "b#1"]  # same refs in another category: not grouped
    assert res.self_consistency == {"a#1": {"n": 2, "mean": pytest.approx(1.0)}}


GATE = dict(floor=0.5, tolerance=0.02, category_margin=0.05)


def test_gate_passes_and_lists_every_criterion():
    result = gate.decide(mean=0.71, by_category={"a": 0.70, "b": 0.72}, block_count=0, champion_mean=0.72,
                         champion_by_category={"a": 0.74, "b": 0.70}, **GATE)
    assert result.passed and result.reasons == []
    assert [(c.name, c.value, c.limit) for c in result.criteria] == [
        ("block violations", 0, 0),
        ("mean consistency >= floor", 0.71, 0.5),
        ("mean consistency vs champion", 0.71, pytest.approx(0.70)),
        ("largest category drop", pytest.approx(0.04), 0.05)]
    assert result.verdict().splitlines()[0] == "Gate: PASS"


def test_gate_fails_with_reasons():
    result = gate.decide(mean=0.45, by_category={"a": 0.40, "b": 0.50}, block_count=2,
                         block_rules={"no-full-compensation": 2}, champion_mean=0.60,
                         champion_by_category={"a": 0.60, "b": 0.52}, block_example="全额赔付", **GATE)
    assert not result.passed
    assert result.reasons == [
        "[FAIL] block violations: 2 (limit 0) — no-full-compensation ×2; e.g. 全额赔付",
        "[FAIL] mean consistency >= floor: 0.450 (limit 0.500)",
        "[FAIL] mean consistency vs champion: 0.450 (limit 0.580) — champion 0.600 - tolerance 0.020",
        "[FAIL] largest category drop: 0.200 (limit 0.050) — dropped: a 0.400 vs 0.600",
    ]


def test_gate_without_champion_or_policy_engine():
    result = gate.decide(mean=0.6, by_category={"a": 0.6}, block_count=None, **GATE)
    assert not result.passed
    assert result.reasons == ["[FAIL] block violations: n/a (limit 0) — the policy engine"
                              " (evaluation.policy) is not available"]
    ok = gate.decide(mean=0.6, by_category={"a": 0.6}, block_count=0, **GATE)
    assert ok.passed
    assert ok.to_dict()["criteria"][2] == {"name": "mean consistency vs champion", "value": 0.6, "limit": None,
                                           "passed": True, "detail": "no champion to compare with", "counted": True}
