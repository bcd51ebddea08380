"""Tiny real models for the evaluation, registry and drafting tests.

A 2-layer LlamaForCausalLM (hidden 64) with a byte-level BPE tokenizer trained in code on
the sample texts, saved with ``save_pretrained`` and reloaded by path; LoRA adapters made
with peft and a short plain-torch training loop, each with a manifest.json like the
trainer writes. (``training.tiny`` replaces ``build_tiny_base`` once it is merged.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

PROMPT_FALLBACK = "客户问：{prompt}\n客服答："


def build_tiny_base(out_dir: Path, texts: list[str], *, vocab_size: int = 600, hidden_size: int = 64,
                    num_layers: int = 2, num_heads: int = 4, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")
    fast.save_pretrained(out_dir)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
                         num_hidden_layers=num_layers, num_attention_heads=num_heads,
                         num_key_value_heads=num_heads, max_position_embeddings=512,
                         bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
                         pad_token_id=fast.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(out_dir)
    return out_dir


def make_adapter(base_dir: Path, out_dir: Path, *, snapshot_hash: str | None = None,
                 pairs: list[tuple[str, str]] = (), steps: int = 0, lr: float = 3e-3, seed: int = 0,
                 batch_size: int = 16) -> Path:
    """A LoRA adapter on the tiny base, trained for ``steps`` on (prompt, response) pairs
    (0 steps: an untrained adapter), saved with a manifest.json."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(model, lora)
    losses = []
    if steps and pairs:
        examples = []
        for prompt, response in pairs:
            p_ids = tokenizer(PROMPT_FALLBACK.format(prompt=prompt), add_special_tokens=False)["input_ids"]
            r_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            ids = (p_ids + r_ids)[:160]
            labels = ([-100] * len(p_ids) + r_ids)[:160]
            examples.append((ids, labels))
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
        g = torch.Generator().manual_seed(seed)
        model.train()
        for _ in range(steps):
            idx = torch.randint(len(examples), (min(batch_size, len(examples)),), generator=g).tolist()
            batch = [examples[i] for i in idx]
            width = max(len(ids) for ids, _ in batch)
            input_ids = torch.full((len(batch), width), tokenizer.pad_token_id)
            labels = torch.full((len(batch), width), -100)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, (ids, lab) in enumerate(batch):
                input_ids[row, :len(ids)] = torch.tensor(ids)
                labels[row, :len(lab)] = torch.tensor(lab)
                mask[row, :len(ids)] = 1
            loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
        model.eval()
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    manifest = {
        "base_model": str(Path(base_dir).resolve()),
        "snapshot_hash": snapshot_hash,
        "dataset": "store",
        "config": {"steps": steps, "lr": lr},
        "metrics": {"train_loss": losses[-1] if losses else None, "eval_loss": None, "best_step": steps,
                    "steps": steps, "train_tokens": 0, "truncated": 0},
        "versions": {},
        "created_at": "2026-01-01T00:00:00+00:00",
        "init_adapter": None,
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2), encoding="utf-8")
    return out_dir


# -- pytest fixtures (import them into a test module: `from eval_fixtures import tiny_models`) --

SAMPLES_CSV = Path(__file__).resolve().parent.parent / "replyloop" / "samples" / "cs_samples.csv"
PROMISE = "您好，我们承诺全额赔付。"


def sample_rows() -> list[dict]:
    import csv

    with open(SAMPLES_CSV, encoding="utf-8-sig", newline="") as fh:
        return list(csv.DictReader(fh))


def load_samples(store) -> str:
    """Import the sample set into ``store`` and snapshot it (default share and seed); returns the hash."""
    from replyloop.dataio import read_samples

    store.add_samples(read_samples(SAMPLES_CSV))
    return store.create_snapshot(0.15, "replyloop").hash


class TinyModels:
    """A tiny base and three adapters trained on the sample snapshot's train split."""

    def __init__(self, root: Path):
        from replyloop.store import Store

        rows = sample_rows()
        self.base = build_tiny_base(root / "base", [r["prompt"] for r in rows] + [r["response"] for r in rows]
                                    + [PROMISE])
        with Store(root / "snap.db") as store:
            self.snapshot_hash = load_samples(store)
            train = [(r["prompt"], r["response"]) for r in store.snapshot_samples(self.snapshot_hash, "train")]
        self.untrained = make_adapter(self.base, root / "untrained", snapshot_hash=self.snapshot_hash)
        self.trained = make_adapter(self.base, root / "trained", snapshot_hash=self.snapshot_hash,
                                    pairs=train, steps=60)
        self.promise = make_adapter(self.base, root / "promise", snapshot_hash=self.snapshot_hash,
                                    pairs=[(p, PROMISE + r) for p, r in train], steps=60, seed=1)

    def copy(self, name: str, dest: Path) -> Path:
        """A copy of an adapter directory (tests that delete adapters work on copies)."""
        import shutil

        return Path(shutil.copytree(getattr(self, name), dest))


_built: list[TinyModels] = []


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> TinyModels:
    """Built once per session, even when several test modules import this fixture."""
    if not _built:
        _built.append(TinyModels(tmp_path_factory.mktemp("tiny-models")))
    return _built[0]
