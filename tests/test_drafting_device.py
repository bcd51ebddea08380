"""Where and in which dtype the local backend loads the base model (drafting.device), and that
inputs follow the model: CPU float32 whatever the checkpoint's dtype, CUDA bf16 when available."""

from __future__ import annotations

import shutil

import pytest
import torch
from eval_fixtures import load_samples, tiny_models  # noqa: F401 - fixture

from replyloop.drafting import Drafter, DraftingError, LocalModels, drafting_device, generate
from replyloop.registry import Registry

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("setting, cuda, bf16, expected", [
    ("auto", False, False, ("cpu", "float32")),
    ("auto", False, True, ("cpu", "float32")),
    ("auto", True, True, ("cuda", "bfloat16")),
    ("auto", True, False, ("cuda", "float16")),
    ("cpu", False, False, ("cpu", "float32")),
    ("cpu", True, True, ("cpu", "float32")),
    ("cpu", True, False, ("cpu", "float32")),
    ("cuda", True, True, ("cuda", "bfloat16")),
    ("cuda", True, False, ("cuda", "float16")),
])
def test_device_and_dtype_selection(setting, cuda, bf16, expected):
    assert drafting_device(setting, cuda_available=cuda, bf16_supported=bf16) == expected


def test_cuda_without_cuda_and_unknown_setting_are_errors():
    with pytest.raises(DraftingError, match="drafting.device: cuda was asked for"):
        drafting_device("cuda", cuda_available=False, bf16_supported=False)
    with pytest.raises(DraftingError, match="drafting.device: 'gpu' is not one of auto, cpu, cuda"):
        drafting_device("gpu", cuda_available=True, bf16_supported=True)


@pytest.fixture(scope="module")
def bf16_base(tiny_models, tmp_path_factory):
    """The tiny base saved in bfloat16 (as Qwen2.5 and most released checkpoints are)."""
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("bf16") / "base"
    shutil.copytree(tiny_models.base, out)
    AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16).save_pretrained(out)
    assert AutoModelForCausalLM.from_pretrained(out).dtype == torch.bfloat16  # transformers 5's default
    return out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU path")
@pytest.mark.parametrize("setting", ["auto", "cpu"])
def test_bf16_checkpoint_drafts_in_float32_on_cpu(bf16_base, tiny_models, setting):
    local = LocalModels(device=setting)
    row = {"id": 1, "name": "trained", "base_model": str(bf16_base), "adapter_path": str(tiny_models.trained)}
    model, tok = local.activate(row)
    assert model.device.type == "cpu"
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    texts = generate(model, tok, ["退货运费谁出？", "发票怎么开"], max_new_tokens=8, batch_size=2, min_new_tokens=4)
    assert all(texts)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_drafter_and_eval_with_device_cuda_on_a_cpu_machine_name_the_key(workspace, tiny_models):
    from replyloop.evaluation.evaluate import evaluate_model

    config, store = workspace
    load_samples(store)
    reg = Registry(store)
    champion = reg.promote(reg.register(tiny_models.trained)["id"], "alice", force=True)
    config.file.drafting.device = "cuda"
    with pytest.raises(DraftingError, match="drafting.device: cuda"):
        Drafter(config, store).draft("退货运费谁出？", model=champion["id"])
    with pytest.raises(DraftingError, match="drafting.device: cuda"):
        evaluate_model(config, store, champion["id"], against="none", max_new_tokens=4)
    config.file.drafting.device = "cpu"
    res = Drafter(config, store).draft("退货运费谁出？", model=champion["id"], min_new_tokens=4)
    assert res.text


def test_drafting_device_is_a_checked_config_key(replyloop_home):
    from replyloop.config import load_config, write_default_config
    from replyloop.errors import ConfigError

    path = write_default_config(replyloop_home)
    assert load_config(path).file.drafting.device == "auto"
    path.write_text(path.read_text(encoding="utf-8").replace("  device: auto ", "  device: gpu "), encoding="utf-8")
    with pytest.raises(ConfigError, match="device"):
        load_config(path)
