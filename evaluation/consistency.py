"""Consistency of drafts with the supervisor-approved references, and with each other.

- similarity: cosine of each draft with its reference (embeddings are unit length);
- chrF: character n-gram F-score of each draft against its reference (``evaluation.chrf``),
  when the texts are given; it needs no model and reads Chinese;
- mean and the share above ``threshold``, overall and per category (with the mean chrF);
- self-consistency: for questions of the same intent (paraphrases), the mean pairwise
  similarity of their drafts (and their mean pairwise chrF, both directions). Intents come from the samples' ``intent`` column; without it,
  questions of one category whose references are at least ``group_threshold`` similar are
  grouped (connected components).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

NO_CATEGORY = "(none)"


@dataclass
class GroupScore:
    n: int
    mean: float
    share_above: float
    chrf: float | None = None      # mean chrF against the references; None when not measured


@dataclass
class ConsistencyResult:
    n: int
    mean: float
    share_above: float
    threshold: float
    similarities: list[float]
    by_category: dict[str, GroupScore]
    self_consistency: dict[str, dict]          # intent -> {"n": questions, "mean": pairwise similarity}
    intent_source: str                         # "column" | "reference-similarity"
    groups: list[str] = field(default_factory=list)   # the intent of each item
    chrf_mean: float | None = None                     # mean chrF of the drafts against the references
    chrf: list[float] = field(default_factory=list)    # chrF of each draft against its reference

    def to_dict(self) -> dict:
        d = asdict(self)
        d["by_category"] = {k: asdict(v) for k, v in self.by_category.items()}
        return d


def _score(sims: np.ndarray, threshold: float, chrf: np.ndarray | None = None) -> GroupScore:
    return GroupScore(n=int(sims.size), mean=float(sims.mean()) if sims.size else 0.0,
                      share_above=float((sims >= threshold).mean()) if sims.size else 0.0,
                      chrf=None if chrf is None else float(chrf.mean()) if chrf.size else 0.0)


def group_by_reference(categories: Sequence[str], refs: np.ndarray, group_threshold: float) -> list[str]:
    """Intent labels from categories + reference similarity (connected components)."""
    n = len(categories)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    sims = refs @ refs.T if n else np.zeros((0, 0))
    for i in range(n):
        for j in range(i + 1, n):
            if categories[i] == categories[j] and sims[i, j] >= group_threshold:
                parent[find(i)] = find(j)
    roots: dict[int, str] = {}
    labels = []
    per_category: dict[str, int] = defaultdict(int)
    for i in range(n):
        r = find(i)
        if r not in roots:
            per_category[categories[i]] += 1
            roots[r] = f"{categories[i]}#{per_category[categories[i]]}"
        labels.append(roots[r])
    return labels


def score(drafts: np.ndarray, refs: np.ndarray, categories: Sequence[str | None],
          intents: Sequence[str | None] | None = None, threshold: float = 0.75,
          group_threshold: float = 0.8, draft_texts: Sequence[str] | None = None,
          reference_texts: Sequence[str] | None = None) -> ConsistencyResult:
    """Consistency of ``drafts`` (n, dim) with ``refs`` (n, dim); both unit length. With
    ``draft_texts`` and ``reference_texts`` (n each), chrF is scored beside the cosine."""
    from replyloop.evaluation.chrf import chrf_many

    cats = [c or NO_CATEGORY for c in categories]
    sims = np.einsum("ij,ij->i", drafts, refs) if len(cats) else np.zeros(0)
    chrf = None
    if draft_texts is not None and reference_texts is not None:
        chrf = np.asarray(chrf_many(draft_texts, reference_texts), dtype=float)
        if chrf.size != len(cats):
            raise ValueError(f"consistency.score: {chrf.size} draft texts for {len(cats)} embeddings")
    by_category = {}
    for c in sorted(set(cats)):
        idx = [i for i, x in enumerate(cats) if x == c]
        by_category[c] = _score(sims[idx], threshold, None if chrf is None else chrf[idx])
    if intents is not None and any(intents):
        labels = [it or f"{c}#{i}" for i, (it, c) in enumerate(zip(intents, cats))]
        source = "column"
    else:
        labels = group_by_reference(cats, refs, group_threshold)
        source = "reference-similarity"
    members: dict[str, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        members[label].append(i)
    self_consistency = {}
    for label in sorted(members):
        idx = members[label]
        if len(idx) < 2:
            continue
        block = drafts[idx] @ drafts[idx].T
        upper = block[np.triu_indices(len(idx), k=1)]
        entry = {"n": len(idx), "mean": float(upper.mean())}
        if chrf is not None:
            pairs = [(draft_texts[a], draft_texts[b]) for a in idx for b in idx if a != b]
            entry["chrf"] = float(np.mean(chrf_many([p[0] for p in pairs], [p[1] for p in pairs])))
        self_consistency[label] = entry
    overall = _score(sims, threshold, chrf)
    return ConsistencyResult(n=overall.n, mean=overall.mean, share_above=overall.share_above,
                             threshold=threshold, similarities=[float(s) for s in sims],
                             by_category=by_category, self_consistency=self_consistency,
                             intent_source=source, groups=labels, chrf_mean=overall.chrf,
                             chrf=[] if chrf is None else [float(x) for x in chrf])
