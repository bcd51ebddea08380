"""chrF: character n-gram F-score of a draft against its reference (sacrebleu's ``CHRF``).

It needs no model and reads any script: on Chinese each character is a token, so it measures
wording where an English embedding model sees only ``[UNK]``. Settings: sacrebleu's defaults for
chrF (character n-grams up to 6, no word n-grams, beta 2), on text normalised as the policy
rules normalise it (``evaluation.textmap.compact``: punctuation and whitespace dropped, NFKC,
casefold, Traditional to Simplified), so ``全額賠付。`` and ``全额赔付`` score 1.0. Scores are
0..1 (sacrebleu's 0..100 divided by 100); two texts that are both empty after normalisation
score 1.0, one empty against one not 0.0.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from replyloop.evaluation.textmap import compact


@lru_cache(maxsize=1)
def _metric():
    from sacrebleu.metrics import CHRF

    return CHRF(char_order=6, word_order=0, beta=2)


def _score(metric, hypothesis: str, reference: str) -> float:
    hyp, ref = compact(hypothesis or ""), compact(reference or "")
    if not hyp or not ref:
        return 1.0 if hyp == ref else 0.0
    return metric.sentence_score(hyp, [ref]).score / 100.0


def chrf(hypothesis: str, reference: str) -> float:
    """chrF of ``hypothesis`` against ``reference``, 0..1."""
    return _score(_metric(), hypothesis, reference)


def chrf_many(hyps: Sequence[str], refs: Sequence[str]) -> list[float]:
    """chrF of each hypothesis against the reference at the same position, 0..1 each."""
    hyps, refs = list(hyps), list(refs)
    if len(hyps) != len(refs):
        raise ValueError(f"chrf_many: {len(hyps)} hypotheses against {len(refs)} references")
    metric = _metric()
    return [_score(metric, h, r) for h, r in zip(hyps, refs)]
