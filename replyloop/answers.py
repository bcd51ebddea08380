"""Search of the approved answers (``/reply`` and ``replyloop reply``): the nearest approved
samples to a question, by embedding similarity and chrF-style character overlap of the questions.

    index = AnswerIndex.from_config(config, store)   # built once (embeddings cached in the store)
    found = index.search("收不到验证码怎么办", check=checker)   # refreshes with new approvals first

The index holds, for every sample, its question's character n-grams (1 to 3 characters of the
text normalised as the policy rules normalise it, ``evaluation.textmap.compact``) in one sparse
matrix per n (scipy CSR, n-gram x sample), and optionally its embedding in one float32 matrix.
A query's character score is chrF's recipe on sets: per n, the F-score (beta 2, recall-weighted)
of the shared n-grams, averaged over n. It reads Chinese with no model, where the bundled English
embedding model sees mostly ``[UNK]``. The score shown is ``w * cosine + (1 - w) * character``
(``reply.embedding_weight``). New approvals are added on the next search (samples with a higher
id than the last one indexed): a small tail scored directly, folded into the matrices when it
grows. From ``IVF_MIN`` samples on, the embeddings are searched through k-means clusters (about
sqrt(n) of them, rebuilt whenever a quarter more samples arrived): exact cosines for the samples of
the query's nearest clusters, the cluster centre's cosine for the rest, so a query reads a few
percent of the embedding matrix instead of all of it. Every candidate answer is checked against the
current policies at query time; one that fails them is left out and counted.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from replyloop.config import Config
from replyloop.i18n import N_, _, pgettext
from replyloop.phrases import Phrase, localized
from replyloop.store import Store

NGRAMS = (1, 2, 3)
BETA2 = 4.0            # chrF's beta = 2
TAIL_LIMIT = 2000      # samples scored one by one before the matrices are rebuilt
CANDIDATES = 30        # ranked candidates policy-checked per round
IVF_MIN = 20_000       # from this many samples on, embeddings are searched through k-means clusters


def ngrams(text: str, n: int) -> set[str]:
    return {text[i:i + n] for i in range(len(text) - n + 1)}


def _compact(text: str) -> str:
    from replyloop.evaluation.textmap import compact

    return compact(text or "")


@dataclass
class Answer:
    sample_id: int
    question: str
    answer: str
    category: str | None
    approved_by: str | None
    approved_at: str
    score: float
    embedding: float | None
    characters: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SearchResult:
    question: str
    answers: list[Answer] = field(default_factory=list)
    excluded: list[dict] = field(default_factory=list)  # [{sample_id, rules}] left out by the policies
    explanation: str | None = None                      # why there are fewer answers than asked for
    indexed: int = 0
    best: float | None = None                           # i18n22: the best score (a renderer explains in its language)


class HashingEncoder:
    """A cheap stand-in for a sentence encoder (the benchmark builds 100,000 embeddings with it):
    character 1- and 2-grams hashed into ``dim`` signed buckets, unit length. Not a semantic model."""

    name = "hashing"

    def __init__(self, dim: int = 384):
        self.dim = dim

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        import zlib

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            t = _compact(text)
            for n in (1, 2):
                for i in range(len(t) - n + 1):
                    h = zlib.crc32(t[i:i + n].encode("utf-8"))
                    out[row, h % self.dim] += 1.0 if (h >> 16) & 1 else -1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)


class StoreEncoder:
    """The evaluation's encoder (``evaluation.embeddings.Encoder``): samples through its cache in
    the store, queries straight through the model (a question is not worth a cached row)."""

    def __init__(self, model: str, store: Store | None):
        from replyloop.evaluation.embeddings import Encoder

        self._encoder = Encoder(model, store)
        self.name = self._encoder.name

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return self._encoder.encode(texts)

    def encode_query(self, text: str) -> np.ndarray:
        vectors = self._encoder.model.encode([text], convert_to_numpy=True, normalize_embeddings=True,
                                             show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)[0]


class _Grams:
    """Per n: a vocabulary and a CSR matrix (n-gram x sample) of 0/1, plus the sizes |D_n|."""

    def __init__(self):
        from scipy.sparse import csr_matrix

        self.docs = 0
        self.vocab: dict[int, dict[str, int]] = {n: {} for n in NGRAMS}
        self.matrix = {n: csr_matrix((0, 0), dtype=np.float32) for n in NGRAMS}
        self.sizes = {n: np.zeros(0, dtype=np.float32) for n in NGRAMS}

    def extend(self, grams_per_doc: list[dict[int, set[str]]]) -> None:
        """Append samples (columns); new n-grams become new rows. O(non-zeros) per call."""
        from scipy.sparse import csr_matrix, hstack

        new_docs = len(grams_per_doc)
        for n in NGRAMS:
            vocab = self.vocab[n]
            rows, cols = [], []
            sizes = np.zeros(new_docs, dtype=np.float32)
            for doc, grams in enumerate(grams_per_doc):
                g = grams[n]
                sizes[doc] = len(g)
                for gram in g:
                    rows.append(vocab.setdefault(gram, len(vocab)))
                    cols.append(doc)
            tail = csr_matrix((np.ones(len(rows), dtype=np.float32),
                               (np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64))),
                              shape=(len(vocab), new_docs))
            base = self.matrix[n]
            base.resize((len(vocab), self.docs))
            self.matrix[n] = hstack([base, tail], format="csr") if self.docs else tail
            self.sizes[n] = np.concatenate([self.sizes[n], sizes])
        self.docs += new_docs

    def overlap(self, n: int, query: set[str]) -> np.ndarray:
        vocab = self.vocab[n]
        rows = [vocab[g] for g in query if g in vocab]
        if not rows or self.docs == 0:
            return np.zeros(self.docs, dtype=np.float32)
        m = self.matrix[n]
        indptr, indices = m.indptr, m.indices
        postings = np.concatenate([indices[indptr[r]:indptr[r + 1]] for r in rows])
        return np.bincount(postings, minlength=self.docs)  # the rows' postings, counted


class _Clusters:
    """An inverted-file index over the embeddings (k-means, about sqrt(n) clusters): a query
    computes exact cosines only for the samples of its ``probe`` nearest clusters; every other
    sample gets its cluster centre's cosine (an estimate that keeps far clusters far)."""

    def __init__(self, vectors: np.ndarray, seed: int = 19, iterations: int = 6):
        n = len(vectors)
        k = max(8, int(np.sqrt(n)))
        rng = np.random.default_rng(seed)
        sample = vectors[rng.choice(n, size=min(n, 40 * k), replace=False)]
        centres = sample[rng.choice(len(sample), size=k, replace=False)].copy()
        for _unused in range(iterations):
            assign = np.argmax(sample @ centres.T, axis=1)
            for c in range(k):
                members = sample[assign == c]
                if len(members):
                    centres[c] = members.mean(axis=0)
            centres /= np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)
        assign = np.empty(n, dtype=np.int32)
        for start in range(0, n, 8192):
            assign[start:start + 8192] = np.argmax(vectors[start:start + 8192] @ centres.T, axis=1)
        order = np.argsort(assign, kind="stable")
        self.bounds = np.searchsorted(assign[order], np.arange(k + 1))
        self.size = n
        self.centres, self.assign, self.order = centres, assign, order
        self.sorted = vectors[order]  # the clusters' rows contiguous: a probe reads slices, copies nothing
        self.probe = max(4, k // 16)

    def cosines(self, query: np.ndarray) -> np.ndarray:
        """Cosine of the first ``size`` samples: exact in the probed clusters, the centre's elsewhere."""
        centre = self.centres @ query
        out = centre[self.assign]
        b = self.bounds
        for c in np.argpartition(-centre, self.probe - 1)[:self.probe]:
            lo, hi = b[c], b[c + 1]
            out[self.order[lo:hi]] = self.sorted[lo:hi] @ query
        return out


def _f_score(shared: np.ndarray, q_size: int, d_size: np.ndarray) -> np.ndarray:
    """chrF's F-beta of precision ``shared / q_size`` and recall ``shared / d_size``, which is
    ``(1 + beta^2) * shared / (beta^2 * d_size + q_size)``: two array operations."""
    return shared * (1 + BETA2) / (BETA2 * d_size + q_size)


class AnswerIndex:
    """The approved answers, searchable. Thread-safe: searches share it, refreshes take a lock."""

    def __init__(self, store: Store, encoder=None, embedding_weight: float = 0.5, min_score: float = 0.1,
                 results: int = 3):
        self.store = store
        self.encoder = encoder
        self.weight = embedding_weight if encoder is not None else 0.0
        self.min_score = min_score
        self.results = results
        self._lock = threading.Lock()
        self._rows: list[tuple] = []            # (id, prompt, response, category, approved_by, approved_at)
        self._grams: _Grams | None = None
        self._tail: list[dict[int, set[str]]] = []  # grams of samples added since the last rebuild
        self._vectors = np.zeros((0, 0), dtype=np.float32)
        self._clusters: _Clusters | None = None
        self._answer_key: dict[str, int] = {}       # answer text -> id: one candidate per distinct answer
        self._answer_of = np.zeros(0, dtype=np.int64)
        self._count = 0
        self._verdicts: dict = {}
        self.last_id = 0

    @classmethod
    def from_config(cls, config: Config, store: Store, encoder=None) -> "AnswerIndex":
        settings = config.file.reply
        if encoder is None:
            model = settings.embedding_model
            if model.lower() == "hashing":
                encoder = HashingEncoder()
            elif model.lower() != "none":
                value = model or config.file.evaluation.embedding_model
                if value and config.resolve(value).exists():
                    value = str(config.resolve(value))
                encoder = StoreEncoder(value, store)
        index = cls(store, encoder, settings.embedding_weight, settings.min_score, settings.results)
        index.refresh()
        return index

    def __len__(self) -> int:
        return self._count

    # -- building -------------------------------------------------------------------------

    @staticmethod
    def _grams_of(prompt: str) -> dict[int, set[str]]:
        text = _compact(prompt)
        return {n: ngrams(text, n) for n in NGRAMS}

    def add_rows(self, rows: list[tuple]) -> None:
        """Index ``(id, prompt, response, category, approved_by, approved_at)`` rows (ids ascending)."""
        if not rows:
            return
        grams = [self._grams_of(r[1]) for r in rows]
        vectors = None
        if self.encoder is not None:
            vectors = np.asarray(self.encoder.encode([r[1] for r in rows]), dtype=np.float32)
        with self._lock:
            if vectors is not None:
                need = self._count + len(rows)
                if self._vectors.shape[0] < need:  # capacity doubles: an approval costs one row, not a copy
                    room = max(need + need // 4 + 16, 2 * self._vectors.shape[0])  # a quarter spare
                    grown = np.zeros((room, vectors.shape[1]), dtype=np.float32)
                    if self._count:
                        grown[:self._count] = self._vectors[:self._count]
                    self._vectors = grown
                self._vectors[self._count:need] = vectors
            self._rows.extend(rows)
            keys = self._answer_key
            self._answer_of = np.concatenate([self._answer_of, np.fromiter(
                (keys.setdefault(r[2], len(keys)) for r in rows), dtype=np.int64, count=len(rows))])
            if self._grams is None:
                self._grams = _Grams()
            if len(self._tail) + len(grams) > TAIL_LIMIT or len(grams) > 1:
                self._grams.extend(self._tail + grams)
                self._tail = []
            else:
                self._tail = self._tail + grams  # a new list: a search holds the old one
            self._count = len(self._rows)
            self.last_id = max(self.last_id, int(rows[-1][0]))
            count, all_vectors, clusters = self._count, self._vectors, self._clusters
        # past IVF_MIN samples, cluster the embeddings again whenever a quarter more arrived
        # (geometric: a few times over the index's life; searches go on meanwhile)
        if vectors is not None and count >= IVF_MIN and (clusters is None or count > 1.25 * clusters.size):
            built = _Clusters(all_vectors[:count])
            with self._lock:
                self._clusters = built

    def refresh(self) -> int:
        """Index the samples approved since the last refresh; returns how many."""
        rows = [tuple(r.values()) for r in self.store.query(
            "SELECT id, prompt, response, category, approved_by, approved_at FROM samples WHERE id > ? ORDER BY id",
            (self.last_id,))]
        self.add_rows(rows)
        return len(rows)

    # -- searching ------------------------------------------------------------------------

    def _verdict(self, check: Callable[[str], dict] | None, text: str) -> dict:
        """``check(text)``, remembered while the policies stay the same (a reload makes a new engine)."""
        if check is None:
            return {"verdict": "pass", "violations": []}
        policies = getattr(check, "engine", None) or check  # a reloaded policy set is a new engine
        cache = self._verdicts
        if cache.get(None) is not policies:
            cache = self._verdicts = {None: policies}
        verdict = cache.get(text)
        if verdict is None:
            if len(cache) > 50_000:
                cache = self._verdicts = {None: policies}
            verdict = cache[text] = check(text)
        return verdict

    def scores(self, question: str) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """(combined, embedding or None, character) scores of every indexed sample."""
        with self._lock:
            grams, tail, count, vectors, clusters = (self._grams, self._tail, self._count, self._vectors,
                                                     self._clusters)
        q = self._grams_of(question)
        chars = np.zeros(count, dtype=np.float32)
        used = 0
        base = grams.docs if grams is not None else 0
        for n in NGRAMS:
            if not q[n]:
                continue
            used += 1
            if grams is not None:
                chars[:base] += _f_score(grams.overlap(n, q[n]), len(q[n]), grams.sizes[n])
            if tail:
                shared = np.asarray([len(q[n] & t[n]) for t in tail], dtype=np.float32)
                sizes = np.asarray([len(t[n]) for t in tail], dtype=np.float32)
                chars[base:base + len(tail)] += _f_score(shared, len(q[n]), sizes)
        if used:
            chars /= used
        if self.encoder is None or count == 0 or vectors.size == 0:
            return chars, None, chars
        query = (self.encoder.encode_query(question) if hasattr(self.encoder, "encode_query")
                 else self.encoder.encode([question])[0])
        query = np.asarray(query, dtype=np.float32)
        if clusters is None:
            emb = vectors[:count] @ query
        else:  # the clustered samples through the index, the ones added since exactly
            emb = np.concatenate([clusters.cosines(query), vectors[clusters.size:count] @ query])
        return self.weight * emb + (1 - self.weight) * chars, emb, chars

    def search(self, question: str, k: int | None = None,
               check: Callable[[str], dict] | None = None, refresh: bool = True) -> SearchResult:
        """The ``k`` best answers that pass ``check`` (the current policies), best first."""
        k = k or self.results
        if refresh:
            self.refresh()
        result = SearchResult(question, indexed=self._count)
        if not _compact(question):
            result.explanation = Phrase(N_("The question is empty: write what the customer asked, e.g. `/reply 收不到验证码怎么办`."))
            return result
        if self._count == 0:
            result.explanation = Phrase(N_("There are no approved answers yet: answers appear here once supervisors "
                                           "approve drafts (or samples are imported with `replyloop data import`)."))
            return result
        combined, emb, chars = self.scores(question)
        best = result.best = float(combined.max())
        answer_of = self._answer_of[:len(combined)]
        done: set[int] = set()
        top, finished = CANDIDATES, False
        while not finished:
            top = min(top, len(combined))
            head = np.argpartition(-combined, top - 1)[:top] if top < len(combined) else np.arange(len(combined))
            head = head[np.argsort(-combined[head], kind="stable")]
            _unused, first = np.unique(answer_of[head], return_index=True)  # the best-scored sample of each answer
            for i in head[np.sort(first)]:
                a_id = int(answer_of[i])
                if a_id in done:
                    continue
                done.add(a_id)
                score = float(combined[i])
                if score < self.min_score or len(result.answers) >= k:
                    finished = True
                    break
                sid, prompt, response, category, approved_by, approved_at = self._rows[i]
                verdict = self._verdict(check, response)
                if verdict.get("verdict", "pass") != "pass":
                    result.excluded.append({"sample_id": sid, "rules": sorted(
                        {v.get("rule", "?") for v in verdict.get("violations") or []})})
                    continue
                result.answers.append(Answer(sid, prompt, response, category, approved_by, approved_at, score,
                                             None if emb is None else float(emb[i]), float(chars[i])))
            finished = finished or top == len(combined)
            top *= 4
        if len(result.answers) < k or result.excluded:
            result.explanation = explain(result, best, self.min_score, k)
        return result


def explain(result: SearchResult, best: float, min_score: float, k: int) -> str:
    """Why there are fewer answers than asked for: a ``Phrase`` (English as a str for --json;
    ``localized()`` in the reader's language)."""
    parts = []
    if not result.answers:
        parts.append(Phrase(N_("No approved answer is close enough to this question (best score {best}, reply.min_score "
                               "{min_score}); try other words, or ask a supervisor."),
                            best=f"{best:.2f}", min_score=f"{min_score:.2f}"))
    elif len(result.answers) < k:
        parts.append(Phrase(N_("Only {found} of {k} answers are close enough (score at least {min_score})."),
                            found=len(result.answers), k=k, min_score=f"{min_score:.2f}"))
    if result.excluded:
        rules = sorted({r for e in result.excluded for r in e["rules"]})
        parts.append(Phrase(N_("{count} approved answer(s) were left out because they break the current policies "
                               "({rules})."), count=len(result.excluded), rules=", ".join(rules)))
    text = parts[0] if parts else ""
    for part in parts[1:]:
        text = text + " " + part
    return text


def render_text(found: SearchResult) -> str:
    """Plain text for the terminal, in the current language."""
    lines = []
    for n, a in enumerate(found.answers, 1):
        lines += [_("{n}. [{category}] approved by {who} at {when} (score {score})").format(
                      n=n, category=a.category or _("no category"), who=a.approved_by or pgettext("approved by", "import"),
                      when=a.approved_at, score=f"{a.score:.2f}"),
                  _("   Q: {question}").format(question=a.question), _("   A: {answer}").format(answer=a.answer)]
    if found.explanation:
        lines.append(localized(found.explanation))
    return "\n".join(lines)
