"""README "Using an adapter elsewhere": the snippet, taken from README.md as written, runs in a
plain Python process (transformers + peft only) on trained adapters and prints the same text as
`replyloop draft --model` with the same adapter (greedy)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings

import pytest
from test_prompt_format import _article_data, chat_base  # noqa: F401 - fixture
from training_fixtures import FAST, ROOT, tiny_base  # noqa: F401 - fixture

from helpers import cli

pytestmark = pytest.mark.slow
QUESTIONS = ["客户问：收不到验证码怎么办？", "快递三天没更新了怎么办"]


def readme_snippet() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("### Using an adapter elsewhere", 1)[1].split("\n### ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the section has one complete Python snippet"
    return blocks[0]


def run_snippet(cases: list[tuple[str, str]]) -> list[str]:
    """The README snippet, as written but for its ``adapter`` and ``question`` lines, run in one
    fresh Python process once per ``(adapter, question)``; its printed text for each."""
    code = readme_snippet()
    adapter_line, question_line = 'adapter = "./output/ecommerce_cs_lora"\n', 'question = "客户问：收不到验证码怎么办？"\n'
    assert adapter_line in code and question_line in code
    imports = {m for m in re.findall(r"^(?:from|import) (\w+)", code, re.M)}
    assert imports <= {"json", "re", "pathlib", "torch", "peft", "transformers"}
    body = code.replace(adapter_line, "").replace(question_line, "")
    runner = ("import sys\nSNIPPET = " + repr(body) + "\n"
              "for adapter, question in " + repr(cases) + ":\n"
              "    exec(SNIPPET, {'adapter': adapter, 'question': question})\n"
              "    print('\\x00', flush=True)\n")
    done = subprocess.run([sys.executable, "-c", runner], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return [part.strip("\n") for part in done.stdout.split("\x00")[:-1]]


def _train(root, base, **values):
    from replyloop.training.config import make_train_config
    from replyloop.training.recipe import run_training

    root.mkdir(parents=True, exist_ok=True)
    _article_data(root)
    cfg = make_train_config(root=root, **{**FAST, "max_steps": 20, "learning_rate": 0.03, "base_model": str(base),
                                          "train_data_dir": "data", "metadata_path": "prompts.csv",
                                          "output_dir": "out/adapter", **values})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run_training(cfg, progress=lambda e: None, notice=lambda s: None).output_dir


def test_readme_snippet_prints_what_replyloop_draft_prints(tmp_path, tiny_base, chat_base, workspace):
    adapters = {
        # the article's prompts (客户问： already there) with the plain template
        "plain": _train(tmp_path / "plain", tiny_base, prompt_template="plain"),
        # SmolLM2's chat template (its default system prompt kept out), its <|im_end|>, a system prompt
        "chat": _train(tmp_path / "chat", chat_base, system_prompt="你是电商客服，回答简洁。"),
    }
    cases, drafted = [], []
    for kind, adapter in adapters.items():
        manifest = json.loads((adapter / "manifest.json").read_text(encoding="utf-8"))
        assert manifest["prompt"]["template"] == kind
        registered = cli("models", "register", adapter, "--name", f"cs-{kind}")
        assert registered.exit_code == 0, registered.output
        for question in QUESTIONS:
            result = cli("draft", question, "--model", f"cs-{kind}", "--json")
            assert result.exit_code == 0, result.output
            drafted.append(json.loads(result.stdout)["text"])
            cases.append((str(adapter), question))
    assert all(drafted)  # real replies, not an empty match
    assert run_snippet(cases) == drafted
