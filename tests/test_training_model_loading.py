"""How the base model is loaded for training and merging: attention implementation (flash-attention
only in fp16/bf16 on CUDA), an explicit dtype (a bf16-saved checkpoint trains in float32 on CPU)."""

from __future__ import annotations

import itertools
import json
import shutil

import pytest
import torch
from training_fixtures import cfg_factory, data_dir, tiny_base  # noqa: F401 - fixtures

from replyloop.training.recipe import LoRAFinetuneRecipe, model_load_options

CASES = list(itertools.product(["cpu", "cuda"], ["fp32", "bf16", "fp16"], [True, False], [True, False]))


@pytest.mark.parametrize("device, precision, packing, flash", CASES)
def test_load_options_for_every_combination(device, precision, packing, flash):
    options = model_load_options(device=device, precision=precision, packing=packing, flash_attn_available=flash)
    assert options["dtype"] == {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[precision]
    wants_flash = device == "cuda" and precision in ("bf16", "fp16") and packing and flash
    assert options["attn_implementation"] == ("flash_attention_2" if wants_flash else "sdpa")


def test_fp32_default_never_asks_for_flash_attention():
    # the default precision (fp32) with packing and flash_attn installed on a GPU: flash-attn
    # would crash on the first step (it needs fp16/bf16), so sdpa with the 4-D mask is used
    assert model_load_options(device="cuda", precision="fp32", packing=True, flash_attn_available=True) == \
        {"dtype": "float32", "attn_implementation": "sdpa"}
    assert model_load_options(device="cuda", precision="bf16", packing=True, flash_attn_available=True) == \
        {"dtype": "bfloat16", "attn_implementation": "flash_attention_2"}


def test_unresolved_precision_is_refused():
    with pytest.raises(ValueError, match="auto"):
        model_load_options(device="cpu", precision="auto", packing=True, flash_attn_available=False)


@pytest.fixture(scope="module")
def bf16_base(tiny_base, tmp_path_factory):
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("bf16") / "base"
    shutil.copytree(tiny_base, out)
    AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16).save_pretrained(out)
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    return out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU path")
def test_bf16_checkpoint_trains_in_float32_on_cpu(tmp_path, bf16_base, data_dir):
    from training_fixtures import make_cfg

    recipe = LoRAFinetuneRecipe(make_cfg(tmp_path, bf16_base, max_steps=2), progress=lambda e: None)
    try:
        recipe.setup()
        model = recipe.accelerator.unwrap_model(recipe.model)
        assert recipe.precision == "fp32" and recipe.compute_dtype == torch.float32
        assert {p.dtype for p in model.parameters()} == {torch.float32}
        assert model.config._attn_implementation == "sdpa" and not recipe.flash
        recipe.train()
        result = recipe.save_output()
    finally:
        recipe.cleanup()
    assert result.manifest["config"]["precision"] == "fp32"


def test_merge_of_a_bf16_base_keeps_bf16_and_equals_a_float32_merge(tmp_path, bf16_base, data_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from replyloop.training.merge import merge_adapter
    from replyloop.training.recipe import run_training
    from training_fixtures import make_cfg

    adapter = run_training(make_cfg(tmp_path, bf16_base, max_steps=2), progress=lambda e: None).output_dir
    out = merge_adapter(adapter, tmp_path / "merged")
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert merged.dtype == torch.bfloat16
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(bf16_base, dtype=torch.float32),
                                          str(adapter)).merge_and_unload().to(torch.bfloat16)
    expected = reference.state_dict()
    for name, tensor in merged.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
