"""The unknown-token guard: the share of reference characters the embedding tokenizer maps to
[UNK], measured with the bundled MiniLM on the shipped sample set (Chinese and English rows)."""

from __future__ import annotations

import csv
import re
from importlib import resources

import pytest

from replyloop.evaluation import gate
from replyloop.evaluation.embeddings import Encoder, _unknown_by_character, _unknown_by_offsets, unknown_share
from replyloop.config import EvaluationConfig

HAN = re.compile(r"[\u4e00-\u9fff]")


@pytest.fixture(scope="module")
def minilm():
    enc = Encoder("")
    enc.model  # noqa: B018 - load now
    return enc


@pytest.fixture(scope="module")
def samples():
    text = resources.files("replyloop").joinpath("samples/cs_samples.csv").read_text(encoding="utf-8")
    rows = list(csv.DictReader(text.splitlines()))
    chinese = [r["response"] for r in rows if HAN.search(r["response"])]
    english = [r["response"] for r in rows if not HAN.search(r["response"])]
    assert len(chinese) > 100 and len(english) > 10
    return chinese, english


def test_minilm_cannot_read_the_chinese_samples(minilm, samples):
    chinese, english = samples
    limit = EvaluationConfig().max_unknown_share
    assert limit == 0.2
    zh = minilm.unknown_share(chinese)
    assert 0.6 < zh < 0.9  # measured 0.74: most Chinese characters are [UNK]
    assert minilm.unknown_share(english) == 0.0
    assert limit < minilm.unknown_share(chinese + english) < zh
    # the example: 11 of the 14 characters are [UNK] (only ：不？ are in the vocabulary)
    assert minilm.unknown_share(["客户问：收不到验证码怎么办？"]) == pytest.approx(11 / 14)
    assert minilm.unknown_share(["  ", ""]) is None


def test_offsets_and_per_character_counts_agree(minilm, samples):
    tok = minilm.model.tokenizer
    texts = samples[0][:40] + samples[1][:10] + ["全角ＡＢＣ　和 emoji 😀 混排"]
    assert _unknown_by_offsets(tok, tok.unk_token_id, texts) == _unknown_by_character(tok, tok.unk_token_id, texts)
    assert unknown_share(None, texts) is None


def _decide(share):
    opts = EvaluationConfig()
    return gate.decide(mean=0.9, by_category={"a": 0.9}, block_count=0, floor=opts.floor, tolerance=opts.tolerance,
                       category_margin=opts.category_margin, chrf_mean=0.05, chrf_by_category={"a": 0.05},
                       chrf_floor=opts.chrf_floor, chrf_tolerance=opts.chrf_tolerance,
                       chrf_category_margin=opts.chrf_category_margin, unknown_share=share,
                       max_unknown_share=opts.max_unknown_share, embedding_model="minilm", fix="set it")


def test_gate_fires_on_chinese_and_not_on_english(minilm, samples):
    chinese, english = samples
    fired = _decide(minilm.unknown_share(chinese))
    # a high cosine cannot pass the gate on its own: the embedding criteria are not counted, chrF decides
    assert not fired.passed
    assert fired.reasons == ["[FAIL] mean chrF >= floor: 0.050 (limit 0.150)"]
    [warning] = fired.warnings
    assert warning.startswith("[WARN] embedding model reads the references: 0.7") and "fix: set it" in warning
    assert [c.counted for c in fired.criteria if "consistency" in c.name or c.name == "largest category drop"] \
        == [False, False, False]
    calm = _decide(minilm.unknown_share(english))
    assert not calm.warnings and all(c.counted for c in calm.criteria)
    assert calm.reasons == ["[FAIL] mean chrF >= floor: 0.050 (limit 0.150)"]  # both count: chrF still fails


def test_gate_without_chrf_cannot_pass_on_an_unreadable_embedding():
    result = gate.decide(mean=0.9, by_category={"a": 0.9}, block_count=0, floor=0.5, tolerance=0.02,
                         category_margin=0.05, unknown_share=0.7, max_unknown_share=0.2)
    assert not result.passed
    assert result.reasons == ["[FAIL] mean chrF >= floor: n/a (limit 0.000) — chrF was not measured, and the"
                              " embedding model cannot read the references"]


def test_stored_verdicts_from_before_the_guard_still_load():
    old = [{"name": "mean consistency >= floor", "value": 0.6, "limit": 0.5, "passed": True, "detail": ""}]
    result = gate.GateResult.from_stored(1, old)
    assert result.passed and result.criteria[0].counted and result.warnings == []
