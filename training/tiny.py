"""Tiny Llamas with a tokenizer trained on the given texts: for tests and demos, no download.

``build_tiny_base``: randomly initialised (tests of the mechanics). ``pretrain_tiny_base`` /
``cached_tiny_base``: trained fully, in code, on a small corpus of question/reply pairs, so a
LoRA on top of it has something to adapt (the demo's base model).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>"]


def build_tiny_tokenizer(texts: Iterable[str], vocab_size: int = 1024):
    """A byte-level BPE fast tokenizer trained on ``texts`` (round-trips any text)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def build_tiny_base(out_dir: str | Path, texts: Iterable[str], *, vocab_size: int = 1024, hidden_size: int = 64,
                    num_layers: int = 2, num_heads: int = 4, seed: int = 0,
                    initializer_range: float = 0.1) -> Path:
    """Save a randomly initialised ``LlamaForCausalLM`` and its tokenizer to ``out_dir``.

    Loadable with ``AutoModelForCausalLM.from_pretrained(out_dir)`` and
    ``AutoTokenizer.from_pretrained(out_dir)``. Same texts and seed, same model.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer(texts, vocab_size=vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads,
        max_position_embeddings=2048, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False, initializer_range=initializer_range,
    )
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(state)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


# -- a tiny base that has learned something ------------------------------------------------------

PRETRAIN_FORMAT = 1  # bump when the pre-training code changes what it produces


@dataclass(frozen=True)
class TinyPretrainConfig:
    """Sizes of a tiny Llama pre-trained fully on a small corpus. The defaults (about 0.85M
    parameters: hidden 128, 2 layers), 300 steps, reproduce the demo's 149 legacy replies: greedy
    drafts of 40 of 46 sampled training questions within fuzz ratio 80 of their reply (corpus loss
    0.28), in 43 CPU-seconds on one thread. Measured on the same corpus: 4 layers and 400 steps
    (the earlier default, 1.2M parameters) reproduced fewer, 39 of 46 (loss 0.47), in 79 CPU-seconds;
    2 layers and 400 steps 46 of 46 (loss 0.04) in 51; 2 layers and 200 steps fall short (32 of 46,
    loss 1.1). Fewer layers also make every LoRA step and every generated token cheaper."""

    vocab_size: int = 2048
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    steps: int = 300
    batch_size: int = 16
    learning_rate: float = 3e-3
    warmup_steps: int = 20
    max_seq_length: int = 160
    seed: int = 0


@dataclass
class PretrainResult:
    path: Path
    reused: bool           # found in the cache, not trained now
    first_loss: float
    final_loss: float
    seconds: float
    parameters: int
    key: str


def pretrain_key(pairs: Sequence[tuple[str, str]], texts: Sequence[str], cfg: TinyPretrainConfig) -> str:
    """sha256 of everything the pre-trained model depends on: corpus, sizes, prompt template."""
    from replyloop.training.prompting import PLAIN_TEMPLATE

    blob = json.dumps({"format": PRETRAIN_FORMAT, "pairs": [list(p) for p in pairs], "texts": list(texts),
                       "config": asdict(cfg), "template": PLAIN_TEMPLATE}, ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def pretrain_tiny_base(out_dir: str | Path, pairs: Sequence[tuple[str, str]], texts: Sequence[str] = (),
                       cfg: TinyPretrainConfig = TinyPretrainConfig(),
                       progress: Callable[[int, int, float], None] | None = None) -> PretrainResult:
    """Train a tiny ``LlamaForCausalLM`` from scratch, all weights, on ``pairs`` (question,
    reply) in the prompt format training and drafting use (``training.prompting``: the reply
    is the label, the prompt is masked), and save it with its tokenizer to ``out_dir``.

    The tokenizer is a byte-level BPE trained on the pairs and ``texts``. ``progress(step,
    steps, loss)`` is called every 50 steps. Same corpus, config and seed, same batches."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from replyloop.training.data import collate_padded, epoch_batches, tokenize_records

    started = time.monotonic()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pairs = [(str(p), str(r)) for p, r in pairs]
    tokenizer = build_tiny_tokenizer([t for pair in pairs for t in pair] + list(texts), vocab_size=cfg.vocab_size)
    examples, _ = tokenize_records(tokenizer, pairs, cfg.max_seq_length)
    if not examples:
        raise ValueError("pretrain_tiny_base: no pair fits max_seq_length")
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.hidden_size * 2,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_heads,
        max_position_embeddings=2048, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
    )
    state = torch.random.get_rng_state()
    torch.manual_seed(cfg.seed)
    try:
        model = LlamaForCausalLM(config)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=0.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _pretrain_lr(s, cfg))
        lengths = [len(e) for e in examples]
        batches: list[list[int]] = []
        epoch = 0
        first = last = float("nan")
        for step in range(1, cfg.steps + 1):
            if not batches:  # epochs of length-grouped, shuffled batches (little padding)
                batches = epoch_batches(lengths, cfg.batch_size, cfg.seed, epoch, group_by_length=True)
                epoch += 1
            batch = collate_padded([examples[i] for i in batches.pop()], tokenizer.pad_token_id)
            loss = model(**batch, use_cache=False).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            last = loss.item()
            if step == 1:
                first = last
            if progress and (step % 50 == 0 or step == cfg.steps):
                progress(step, cfg.steps, last)
        model.eval()
        last = _corpus_loss(model, examples, tokenizer.pad_token_id, cfg.batch_size)
    finally:
        torch.random.set_rng_state(state)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return PretrainResult(out, False, first, last, time.monotonic() - started,
                          sum(p.numel() for p in model.parameters()), pretrain_key(pairs, texts, cfg))


def _corpus_loss(model, examples, pad_id: int, batch_size: int) -> float:
    """Mean loss per reply token over the whole corpus (what ``final_loss`` reports)."""
    import torch

    from replyloop.training.data import collate_padded

    total, n = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            chunk = examples[start:start + batch_size]
            batch = collate_padded(chunk, pad_id)
            labels = sum(e.n_labels for e in chunk)
            total += model(**batch, use_cache=False).loss.item() * labels
            n += labels
    return total / max(1, n)


def _pretrain_lr(step: int, cfg: TinyPretrainConfig) -> float:
    """Linear warm-up, then a cosine decay to a tenth (measured: a constant rate ends noisier)."""
    import math

    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    done = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, done)))


MANIFEST = "pretrain.json"


def cached_tiny_base(cache_dir: str | Path, pairs: Sequence[tuple[str, str]], texts: Sequence[str] = (),
                     cfg: TinyPretrainConfig = TinyPretrainConfig(),
                     progress: Callable[[int, int, float], None] | None = None) -> PretrainResult:
    """``pretrain_tiny_base`` once per corpus and config: the model is kept in
    ``cache_dir/tiny-llama-<key>`` (the key hashes corpus, config and format), reused while the
    key matches, rebuilt when anything changed (older entries are then removed). Written to a
    temporary directory and renamed, so an interrupted run leaves no half model behind."""
    cache = Path(cache_dir)
    key = pretrain_key(pairs, texts, cfg)
    target = cache / f"tiny-llama-{key[:16]}"
    manifest = target / MANIFEST
    if manifest.exists():
        try:
            info = json.loads(manifest.read_text(encoding="utf-8"))
        except ValueError:
            info = {}
        if info.get("key") == key and (target / "config.json").exists():
            return PretrainResult(target, True, info["first_loss"], info["final_loss"], info["seconds"],
                                  info["parameters"], key)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=cache))
    try:
        result = pretrain_tiny_base(tmp, pairs, texts, cfg, progress)
        (tmp / MANIFEST).write_text(json.dumps({
            "key": key, "config": asdict(cfg), "pairs": len(pairs), "first_loss": result.first_loss,
            "final_loss": result.final_loss, "seconds": result.seconds, "parameters": result.parameters,
        }, indent=2), encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in cache.glob("tiny-llama-*"):
        if old != target and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    result.path = target
    return result
