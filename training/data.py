"""Training data: records from a lora-scripts folder or a store snapshot, tokenised with the
prompt masked, then batched either packed (one row per batch, no padding) or padded to the
longest sample of length-grouped batches."""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

from replyloop.errors import ConfigError, DataFormatError, TrainingError
from replyloop.training.config import TrainConfig
from replyloop.training.prompting import PromptFormat, needs_bos, prompt_input_ids, resolve_format

IGNORE_INDEX = -100
TRUNCATION_WARN_SHARE = 0.05  # warn at train start when more samples than this are cut or dropped


class DatasetTooSmallError(TrainingError):
    """The dataset is empty or smaller than one batch"""


@dataclass
class Records:
    pairs: list[tuple[str, str]]
    description: dict
    snapshot_hash: str | None = None


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]

    @property
    def n_labels(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class TokenStats:
    samples: int = 0
    truncated: int = 0  # responses cut at max_seq_length
    dropped: int = 0  # prompts alone reach max_seq_length: nothing left to learn from
    tokens: int = 0
    label_tokens: int = 0
    lengths: list[int] = field(default_factory=list)
    full_lengths: list[int] = field(default_factory=list)  # prompt + reply + end token, before cutting
    max_seq_length: int = 0

    def report(self) -> dict:
        """Token lengths before cutting (p50 / p95 / max) and how many samples were cut or dropped."""
        ordered = sorted(self.full_lengths)

        def pct(q: float) -> int:
            return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)] if ordered else 0

        cut = self.truncated + self.dropped
        return {"event": "token_lengths", "samples": self.samples, "max_seq_length": self.max_seq_length,
                "p50": pct(0.5), "p95": pct(0.95), "max": ordered[-1] if ordered else 0,
                "truncated": self.truncated, "dropped": self.dropped,
                "cut_share": round(cut / self.samples, 4) if self.samples else 0.0}

    def warning(self) -> str | None:
        """A message when more than TRUNCATION_WARN_SHARE of the samples are cut or dropped."""
        r = self.report()
        if not self.samples or r["cut_share"] <= TRUNCATION_WARN_SHARE:
            return None
        return (f"{r['truncated']} of {self.samples} samples are longer than max_seq_length {self.max_seq_length} "
                f"and were cut, {r['dropped']} dropped (prompt alone too long) - {r['cut_share']:.0%}, more than "
                f"{TRUNCATION_WARN_SHARE:.0%}; token lengths p50 {r['p50']}, p95 {r['p95']}, max {r['max']}: "
                f"raise max_seq_length to about {r['p95']}")


# -- records -----------------------------------------------------------------------------------

def load_records(cfg: TrainConfig, snapshot: str | None = None) -> Records:
    """The training pairs named by the config (dataset: folder or store). ``snapshot`` (store
    only) overrides ``cfg.snapshot``: a resumed run passes the snapshot its checkpoint trained on."""
    if cfg.dataset == "folder":
        return _folder_records(cfg)
    return _store_records(cfg, snapshot)


def records_fingerprint(pairs: list[tuple[str, str]]) -> str:
    """sha256 of the pairs in order: what the batches of a run are built from."""
    digest = hashlib.sha256()
    for prompt, response in pairs:
        digest.update(json.dumps([prompt, response], ensure_ascii=False).encode("utf-8") + b"\n")
    return digest.hexdigest()


def examples_fingerprint(examples: list[Example]) -> str:
    """sha256 of the tokenised examples in order (token ids and labels)."""
    from array import array

    digest = hashlib.sha256()
    for ex in examples:
        digest.update(len(ex.input_ids).to_bytes(4, "little"))
        digest.update(array("q", ex.input_ids).tobytes())
        digest.update(array("q", ex.labels).tobytes())
    return digest.hexdigest()


def _folder_records(cfg: TrainConfig) -> Records:
    """The samples of ``metadata_path``. Other CSV files in ``train_data_dir`` are not read:
    they are listed in the description (``other_csv``), and the run says so."""
    from replyloop.dataio import read_samples

    folder = cfg.path("train_data_dir")
    if not folder.is_dir():
        raise TrainingError(f"{cfg.where('train_data_dir')}train_data_dir: {folder} is not a directory")
    meta = cfg.metadata_file
    try:
        samples = read_samples(meta)
    except DataFormatError as exc:
        if "no samples" in str(exc):
            raise DatasetTooSmallError(f"dataset is empty: {meta} has no samples") from None
        raise
    return Records([(s.prompt, s.response) for s in samples],
                   {"type": "folder", "path": str(meta), "other_csv": other_csv_files(folder, meta)})


def other_csv_files(folder: Path, metadata: Path) -> list[str]:
    """CSV files directly in ``folder`` other than ``metadata`` (not trained on), sorted."""
    meta = metadata.resolve()
    return sorted(str(p) for p in folder.iterdir() if p.suffix.lower() == ".csv" and p.is_file()
                  and p.resolve() != meta)


def _workspace():
    """The replyloop workspace config, when there is one."""
    from replyloop import paths
    from replyloop.config import load_config

    if paths.default_config_path().exists():
        return load_config()
    return None


def _store_records(cfg: TrainConfig, snapshot: str | None = None) -> Records:
    from replyloop.errors import NotFoundError
    from replyloop.store import Store

    ws = _workspace()
    store_path = cfg.path("store_path") or (ws.db_path if ws else None)
    if store_path is None:
        raise ConfigError(f"{cfg.where('dataset')}dataset: store needs store_path (no workspace config found)")
    if not Path(store_path).exists():
        raise TrainingError(f"{cfg.where('store_path')}store_path: {store_path} does not exist")
    share = ws.file.store.heldout_share if ws else 0.15
    seed = ws.file.store.split_seed if ws else "replyloop"
    named = f"{cfg.where('snapshot')}snapshot: {cfg.snapshot}" if cfg.snapshot else None
    if snapshot:
        named = f"the checkpoint's snapshot {snapshot}"
    with Store(store_path) as store:
        snapshot = snapshot or cfg.snapshot
        if snapshot is None:
            snapshot = store.create_snapshot(share, seed, actor="training").hash
        try:
            rows = store.snapshot_samples(snapshot, "train")
        except NotFoundError:
            raise TrainingError(f"{named} is not a snapshot of {store_path}") from None
    return Records([(r["prompt"], r["response"]) for r in rows],
                   {"type": "store", "path": str(store_path), "snapshot": snapshot, "split": "train"},
                   snapshot_hash=snapshot)


# -- tokenisation ------------------------------------------------------------------------------

def tokenize_pair(tokenizer, prompt: str, response: str, max_seq_length: int,
                  bos: bool | None = None, fmt: PromptFormat | None = None,
                  full_lengths: list[int] | None = None) -> tuple[Example | None, bool]:
    """``(example, truncated)``: prompt tokens labelled -100, response tokens + the end token
    (the chat template's end of turn, e.g. ``<|im_end|>``, else EOS) labelled with themselves.
    Returns ``None`` when the prompt alone fills ``max_seq_length``. The prompt ids come from
    ``prompt_input_ids``, the function generation uses (same template, same BOS handling).
    ``full_lengths``, when given, gets the sample's token count before cutting."""
    fmt = fmt or resolve_format(tokenizer)
    prompt_ids = prompt_input_ids(tokenizer, prompt, bos=bos, fmt=fmt)
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    end = fmt.end_id(tokenizer)
    if end is not None:
        response_ids = response_ids + [end]
    if full_lengths is not None:  # the length before cutting, for the token-length report
        full_lengths.append(len(prompt_ids) + len(response_ids))
    room = max_seq_length - len(prompt_ids)
    if room <= 0:
        return None, True
    truncated = len(response_ids) > room
    response_ids = response_ids[:room]
    return Example(prompt_ids + response_ids, [IGNORE_INDEX] * len(prompt_ids) + response_ids), truncated


def tokenize_records(tokenizer, pairs: list[tuple[str, str]], max_seq_length: int,
                     fmt: PromptFormat | None = None) -> tuple[list[Example], TokenStats]:
    stats = TokenStats(samples=len(pairs), max_seq_length=max_seq_length)
    examples = []
    fmt = fmt or resolve_format(tokenizer)  # resolved once, not per sample
    bos = needs_bos(tokenizer, fmt)  # probed once, not per sample
    for prompt, response in pairs:
        ex, truncated = tokenize_pair(tokenizer, prompt, response, max_seq_length, bos, fmt, stats.full_lengths)
        if ex is None:
            stats.dropped += 1
            continue
        stats.truncated += truncated
        stats.tokens += len(ex)
        stats.label_tokens += ex.n_labels
        stats.lengths.append(len(ex))
        examples.append(ex)
    return examples, stats


def split_eval(examples: list, ratio: float, seed: int) -> tuple[list, list]:
    """A seeded share of the examples for held-out loss (at least one when ratio > 0)."""
    if ratio <= 0 or len(examples) < 2:
        return list(examples), []
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_eval = min(len(examples) - 1, max(1, round(len(examples) * ratio)))
    held = set(order[:n_eval])
    return ([e for i, e in enumerate(examples) if i not in held],
            [e for i, e in enumerate(examples) if i in held])


# -- batching ----------------------------------------------------------------------------------

def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int, group_by_length: bool) -> list[list[int]]:
    """The batches (lists of example indices) of one epoch; a pure function of its arguments,
    so a resumed run can rebuild the order and skip to its position."""
    rng = random.Random(f"{seed}:{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if not group_by_length:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    # Length-grouped: sort inside mega-chunks so a batch's samples have similar lengths, then
    # shuffle the batches (HF's LengthGroupedSampler does the same).
    mega = batch_size * 16
    batches = []
    for start in range(0, len(order), mega):
        chunk = sorted(order[start:start + mega], key=lambda i: -lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def collate_packed(examples: list[Example], dtype=None) -> dict:
    """One row: the samples concatenated, ``position_ids`` restarting at 0 for each, and a 4-D
    block-diagonal causal mask (additive float: 0 allowed, dtype min elsewhere) so no sample
    attends to another. The first token of every sample is a prompt token (label -100), so
    the shifted loss never predicts across a boundary."""
    import torch

    dtype = dtype or torch.float32
    ids, labels, pos, seg = [], [], [], []
    for k, ex in enumerate(examples):
        ids += ex.input_ids
        labels += ex.labels
        pos += range(len(ex))
        seg += [k] * len(ex)
    length = len(ids)
    seg_t = torch.tensor(seg)
    allowed = (seg_t[:, None] == seg_t[None, :]) & torch.ones(length, length, dtype=torch.bool).tril()
    mask = torch.zeros(length, length, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    return {
        "input_ids": torch.tensor([ids]),
        "labels": torch.tensor([labels]),
        "position_ids": torch.tensor([pos]),
        "attention_mask": mask[None, None],
    }


def collate_padded(examples: list[Example], pad_id: int, pad_to: int | None = None) -> dict:
    """Right-padded to the longest sample (or to ``pad_to``), pads labelled -100."""
    import torch

    width = pad_to or max(len(e) for e in examples)
    ids = [e.input_ids + [pad_id] * (width - len(e)) for e in examples]
    labels = [e.labels + [IGNORE_INDEX] * (width - len(e)) for e in examples]
    mask = [[1] * len(e) + [0] * (width - len(e)) for e in examples]
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "attention_mask": torch.tensor(mask)}
