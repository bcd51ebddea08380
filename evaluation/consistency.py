"""Consistency of drafts with the supervisor-approved references, and with each other.

- similarity: cosine of each draft with its reference (embeddings are unit length);
- mean and the share above ``threshold``, overall and per category;
- self-consistency: for questions of the same intent (paraphrases), the mean pairwise
  similarity of their drafts. Intents come from the samples' ``intent`` column; without it,
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

    def to_dict(self) -> dict:
        d = asdict(self)
        d["by_category"] = {k: asdict(v) for k, v in self.by_category.items()}
        return d


def _score(sims: np.ndarray, threshold: float) -> GroupScore:
    return GroupScore(n=int(sims.size), mean=float(sims.mean()) if sims.size else 0.0,
                      share_above=float((sims >= threshold).mean()) if sims.size else 0.0)


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
          group_threshold: float = 0.8) -> ConsistencyResult:
    """Consistency of ``drafts`` (n, dim) with ``refs`` (n, dim); both unit length."""
    cats = [c or NO_CATEGORY for c in categories]
    sims = np.einsum("ij,ij->i", drafts, refs) if len(cats) else np.zeros(0)
    by_category = {c: _score(sims[[i for i, x in enumerate(cats) if x == c]], threshold)
                   for c in sorted(set(cats))}
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
        self_consistency[label] = {"n": len(idx), "mean": float(upper.mean())}
    overall = _score(sims, threshold)
    return ConsistencyResult(n=overall.n, mean=overall.mean, share_above=overall.share_above,
                             threshold=threshold, similarities=[float(s) for s in sims],
                             by_category=by_category, self_consistency=self_consistency,
                             intent_source=source, groups=labels)
