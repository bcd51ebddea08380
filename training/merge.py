"""Serving artefacts: a merged model (``merge_and_unload``) or a copied adapter with its manifest."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from replyloop.errors import TrainingError

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json", "manifest.json")


def _check_adapter(adapter_dir: Path) -> None:
    if not (adapter_dir / "adapter_config.json").exists():
        raise TrainingError(f"{adapter_dir}: not an adapter directory (no adapter_config.json)")


def read_manifest(adapter_dir: str | Path) -> dict:
    path = Path(adapter_dir) / "manifest.json"
    if not path.exists():
        raise TrainingError(f"{adapter_dir}: no manifest.json (was it written by `replyloop train`?)")
    return json.loads(path.read_text(encoding="utf-8"))


def base_model_of(adapter_dir: str | Path) -> str:
    """The base model an adapter was trained on: its manifest, else its adapter_config.json."""
    adapter_dir = Path(adapter_dir)
    manifest = adapter_dir / "manifest.json"
    if manifest.exists():
        return json.loads(manifest.read_text(encoding="utf-8"))["base_model"]
    config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    if not config.get("base_model_name_or_path"):
        raise TrainingError(f"{adapter_dir}: cannot tell the base model (no manifest, no base_model_name_or_path)")
    return config["base_model_name_or_path"]


def _refuse_registered(out: Path) -> None:
    from replyloop.registry import registered_refusal

    reason = registered_refusal(out)
    if reason is not None:
        raise TrainingError(f"{reason}; write to another directory")


def _publish(tmp: Path, out: Path) -> None:
    """Rename a complete temp dir to ``out`` (replacing an older ``out`` unless it is registered)."""
    _refuse_registered(out)
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


def _checkpoint_dtype(base: str):
    """The torch dtype the base checkpoint was saved in (``config.json``), or None."""
    import torch
    from transformers import AutoConfig

    dtype = getattr(AutoConfig.from_pretrained(base), "dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else None


def merge_adapter(adapter_dir: str | Path, out_dir: str | Path, base_model: str | Path | None = None) -> Path:
    """Write base + adapter merged into plain weights (with the tokenizer) to ``out_dir``."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    adapter_dir, out = Path(adapter_dir), Path(out_dir)
    _check_adapter(adapter_dir)
    base = str(base_model or base_model_of(adapter_dir))
    if not Path(base).is_dir():
        raise TrainingError(f"base model {base} not found (pass --base-model)")
    _refuse_registered(out)
    # an explicit dtype, the base checkpoint's own (float32 when config.json names none): the
    # merged model is the size of its base (peft computes the LoRA delta in float32 on CPU)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=_checkpoint_dtype(base) or torch.float32)
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        merged.save_pretrained(str(tmp))
        AutoTokenizer.from_pretrained(base).save_pretrained(str(tmp))
        if (adapter_dir / "manifest.json").exists():
            manifest = read_manifest(adapter_dir)
            manifest["merged_from"] = str(adapter_dir.resolve())
            (tmp / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n",
                                               encoding="utf-8")
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def export_adapter(adapter_dir: str | Path, out_dir: str | Path) -> Path:
    """Copy an adapter (weights, config, manifest) to ``out_dir``, atomically."""
    adapter_dir, out = Path(adapter_dir), Path(out_dir)
    _check_adapter(adapter_dir)
    read_manifest(adapter_dir)
    missing = [n for n in ADAPTER_FILES if not (adapter_dir / n).exists()]
    if missing:
        raise TrainingError(f"{adapter_dir}: missing {', '.join(missing)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        for name in ADAPTER_FILES:
            shutil.copy2(adapter_dir / name, tmp / name)
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
