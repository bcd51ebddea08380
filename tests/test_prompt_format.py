"""prompt_template and system_prompt: the prompt text per template, no doubled 客户问：, no chat
template default system prompt unless written out, the reply's end token, the manifest record
read back by drafting and the vLLM backend, and the token-length report."""

from __future__ import annotations

import csv
import json
import warnings

import pytest
from training_fixtures import FAST, SAMPLES, sample_rows, tiny_base  # noqa: F401 - fixture

from replyloop.errors import ConfigError
from replyloop.training.data import IGNORE_INDEX, TokenStats, tokenize_pair, tokenize_records
from replyloop.training.prompting import PromptFormat, plain_question, prompt_input_ids, resolve_format

# SmolLM2-135M-Instruct's chat template, as its GGUF ships it: a default system prompt when the
# conversation has none.
SMOL_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# Llama-2-chat's: no default, an (empty) system message becomes a <<SYS>> block.
LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}")
NO_SYSTEM_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}<start>{{ m['role'] }}\n{{ m['content'] }}<end>\n{% endfor %}"
    "{% if add_generation_prompt %}<start>assistant\n{% endif %}")
ARTICLE_PROMPT = "客户问：收不到验证码怎么办？"


@pytest.fixture(scope="module")
def chat_tok():
    """The tiny tokenizer with ChatML specials and SmolLM2's template (EOS stays </s>)."""
    from replyloop.training.tiny import build_tiny_tokenizer

    rows = sample_rows()
    tok = build_tiny_tokenizer([r["prompt"] for r in rows] + [r["response"] for r in rows])
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = SMOL_TEMPLATE
    return tok


@pytest.fixture(scope="module")
def chat_base(tiny_base, tmp_path_factory):
    """The tiny base with ``chat_tok``'s tokenizer (embeddings resized), saved like a real model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("chat") / "base"
    tok = AutoTokenizer.from_pretrained(tiny_base)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = SMOL_TEMPLATE
    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    model.resize_token_embeddings(len(tok))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


# -- the text per template ------------------------------------------------------------------------

def test_plain_does_not_double_a_prefix_the_data_already_has(tiny_base):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_base)
    fmt = resolve_format(tok, "plain")
    assert fmt.render(tok, ARTICLE_PROMPT) == "客户问：收不到验证码怎么办？\n客服答："
    assert fmt.render(tok, "收不到验证码怎么办？") == "客户问：收不到验证码怎么办？\n客服答："
    assert fmt.render(tok, " 客户问: 收不到验证码怎么办？\n客服答：") == "客户问：收不到验证码怎么办？\n客服答："
    assert plain_question("我想问客户问：是什么") == "我想问客户问：是什么"  # only a leading prefix
    # the training sample's prompt tokens decode to the prompt once
    ex, _ = tokenize_pair(tok, ARTICLE_PROMPT, "您好，请稍候再试。", 256, fmt=fmt)
    n = ex.labels.index(next(x for x in ex.labels if x != IGNORE_INDEX))
    assert tok.decode(ex.input_ids[:n]) == "客户问：收不到验证码怎么办？\n客服答："


def test_raw_is_the_prompt_exactly_and_system_prompt_goes_on_its_own_line(tiny_base):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_base)
    assert resolve_format(tok, "raw").render(tok, ARTICLE_PROMPT) == ARTICLE_PROMPT
    fmt = resolve_format(tok, "raw", "你是电商客服。")
    assert fmt.render(tok, ARTICLE_PROMPT) == "你是电商客服。\n客户问：收不到验证码怎么办？"
    assert resolve_format(tok, "plain", "你是电商客服。").render(tok, "退货？") == "你是电商客服。\n客户问：退货？\n客服答："
    assert resolve_format(tok).template == "plain"  # auto without a chat template


def test_chat_template_default_system_prompt_is_kept_out(chat_tok):
    fmt = resolve_format(chat_tok)  # auto -> chat
    assert fmt == PromptFormat(template="chat", system_prompt="", system_turn=True, end_token="<|im_end|>")
    text = fmt.render(chat_tok, ARTICLE_PROMPT)
    assert text == f"<|im_start|>system\n<|im_end|>\n<|im_start|>user\n{ARTICLE_PROMPT}<|im_end|>\n<|im_start|>assistant\n"
    assert "SmolLM" not in text
    own = resolve_format(chat_tok, "chat", "你是电商客服，回答简洁。")
    assert not own.system_turn
    assert own.render(chat_tok, "退货？").startswith("<|im_start|>system\n你是电商客服，回答简洁。<|im_end|>\n<|im_start|>user\n退货？")
    # to keep the template's default, write it out: the same text the template would have added
    default = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert (resolve_format(chat_tok, "chat", default).render(chat_tok, "hi")
            == chat_tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                            add_generation_prompt=True))


def test_chat_labels_cover_the_reply_and_the_template_end_token_only(chat_tok):
    fmt = resolve_format(chat_tok, "chat")
    end = chat_tok.convert_tokens_to_ids("<|im_end|>")
    assert end != chat_tok.eos_token_id and fmt.end_id(chat_tok) == end
    assert fmt.stop_ids(chat_tok) == [end, chat_tok.eos_token_id]
    reply = "您好，请稍候再试。"
    ex, truncated = tokenize_pair(chat_tok, ARTICLE_PROMPT, reply, 256, fmt=fmt)
    prompt_ids = chat_tok(fmt.render(chat_tok, ARTICLE_PROMPT), add_special_tokens=False)["input_ids"]
    reply_ids = chat_tok(reply, add_special_tokens=False)["input_ids"]
    assert not truncated
    assert ex.input_ids == prompt_ids + reply_ids + [end]
    assert ex.labels == [IGNORE_INDEX] * len(prompt_ids) + reply_ids + [end]
    assert prompt_input_ids(chat_tok, ARTICLE_PROMPT, fmt=fmt) == prompt_ids


def test_llama2_style_template_gets_no_empty_system_block(chat_tok):
    chat_tok_l2 = _with_template(chat_tok, LLAMA2_TEMPLATE)
    fmt = resolve_format(chat_tok_l2)
    assert fmt.template == "chat" and not fmt.system_turn and fmt.end_token == "</s>"
    assert fmt.render(chat_tok_l2, "退货？") == "<s>[INST] 退货？ [/INST]"


def test_template_errors_name_the_key(chat_tok, tiny_base):
    from transformers import AutoTokenizer

    no_system = _with_template(chat_tok, NO_SYSTEM_TEMPLATE)
    assert resolve_format(no_system) == PromptFormat(template="chat")  # no system turn, EOS ends a reply
    with pytest.raises(ConfigError, match=r"^cfg.yaml:7: system_prompt: the base model's chat template rejects"):
        resolve_format(no_system, "chat", "你是客服", where=lambda key: "cfg.yaml:7: ")
    with pytest.raises(ConfigError, match=r"prompt_template: chat, but the base model's tokenizer has no chat"):
        resolve_format(AutoTokenizer.from_pretrained(tiny_base), "chat")


def _with_template(tok, template):
    import copy

    other = copy.deepcopy(tok)
    other.chat_template = template
    return other


def test_manifest_record_round_trips_and_old_manifests_read_as_trained(chat_tok, tiny_base):
    from transformers import AutoTokenizer

    fmt = resolve_format(chat_tok, "chat", "系统")
    assert PromptFormat.from_manifest({"prompt": fmt.to_record()}) == fmt
    # before the record: what training did then (one user turn, the template's default, EOS)
    assert PromptFormat.from_manifest({}, chat_tok) == PromptFormat(template="chat")
    assert "SmolLM" in PromptFormat.from_manifest({}, chat_tok).render(chat_tok, "hi")
    assert PromptFormat.from_manifest({}, AutoTokenizer.from_pretrained(tiny_base)).template == "plain"
    with pytest.raises(ValueError, match="prompt.template 'jinja' is not one of plain, raw, chat"):
        PromptFormat.from_manifest({"prompt": {"template": "jinja"}})


def test_a_broken_prompt_record_names_the_manifest(tmp_path):
    from replyloop.drafting import DraftingError, adapter_prompt_format

    (tmp_path / "manifest.json").write_text(json.dumps({"base_model": "m", "prompt": {"template": "jinja"}}),
                                            encoding="utf-8")
    with pytest.raises(DraftingError, match=rf"^{tmp_path / 'manifest.json'}: prompt.template 'jinja' is not one of"):
        adapter_prompt_format(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"base_model": "m"}), encoding="utf-8")
    assert adapter_prompt_format(tmp_path) is None  # no record, no tokenizer: the server's chat template


# -- token lengths ----------------------------------------------------------------------------------

def test_token_length_report_counts_cut_and_dropped(tiny_base):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_base)
    pairs = [(r["prompt"], r["response"]) for r in sample_rows()]
    _, full = tokenize_records(tok, pairs, 4096)
    lengths = sorted(full.full_lengths)
    assert full.truncated == full.dropped == 0 and full.warning() is None
    report = full.report()
    assert report["max"] == lengths[-1] and report["p50"] == lengths[len(lengths) // 2 - 1]
    limit = report["p50"]
    _, cut = tokenize_records(tok, pairs, limit)
    assert cut.full_lengths == full.full_lengths  # lengths before cutting
    assert cut.truncated == sum(1 for n in lengths if n > limit) - cut.dropped
    assert cut.report()["cut_share"] == pytest.approx((cut.truncated + cut.dropped) / len(pairs), abs=1e-4)
    assert cut.warning().startswith(f"{cut.truncated} of 180 samples are longer than max_seq_length {limit} and were cut")
    # at most 5% cut: no warning
    nearly = sorted(lengths)[int(len(lengths) * 0.96)]
    _, few = tokenize_records(tok, pairs, nearly)
    assert 0 < few.truncated <= 9 and few.warning() is None
    assert TokenStats().report()["max"] == 0


# -- through `replyloop train`, drafting and the vLLM backend ----------------------------------------

TRAIN_YAML = """\
base_model: {base}
train_data_dir: data
metadata_path: prompts.csv
output_dir: out/adapter
batch_size: 4
max_seq_length: {max_len}
max_steps: 4
eval_steps: 4
save_steps: 100
learning_rate: 0.02
target_modules: [q_proj, v_proj]
{extra}"""


def _article_data(root):
    """The sample set with the article's 客户问： prefix on every prompt."""
    (root / "data").mkdir()
    with (root / "data" / "prompts.csv").open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["prompt", "response"])
        for r in sample_rows():
            writer.writerow([f"客户问：{r['prompt']}", r["response"]])


def test_train_records_the_prompt_format_and_reports_token_lengths(tmp_path, chat_base):
    from helpers import cli_subprocess

    _article_data(tmp_path)
    config = tmp_path / "train.yaml"
    config.write_text(TRAIN_YAML.format(base=chat_base, max_len=64, extra="system_prompt: 你是电商客服。\n"),
                      encoding="utf-8")
    r = cli_subprocess("train", "--config", config, env={"OMP_NUM_THREADS": "1"}, cwd=tmp_path)  # paths: from cwd
    assert r.returncode == 0, r.stderr
    manifest = json.loads((tmp_path / "out" / "adapter" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["prompt"] == {"template": "chat", "system_prompt": "你是电商客服。", "system_turn": False,
                                  "end_token": "<|im_end|>"}
    assert manifest["config"]["prompt_template"] == "auto" and manifest["config"]["system_prompt"] == "你是电商客服。"
    lengths = manifest["metrics"]["token_lengths"]
    assert lengths["p50"] <= lengths["p95"] <= lengths["max"] and lengths["max"] > 64
    line = next(x for x in r.stderr.splitlines() if x.startswith("token lengths of 180 samples"))
    assert line == (f"token lengths of 180 samples (prompt + reply): p50 {lengths['p50']}, p95 {lengths['p95']}, "
                    f"max {lengths['max']}; max_seq_length 64: {manifest['metrics']['truncated']} truncated, "
                    f"{manifest['metrics']['dropped']} dropped")
    assert f"{config}:" in r.stderr and "TruncationWarning:" in r.stderr and "raise max_seq_length to about" in r.stderr
    assert all(x.startswith("replyloop-progress {") for x in r.stdout.splitlines()[:-1])


def test_bad_prompt_template_is_a_config_error_naming_file_and_line(tmp_path, tiny_base):
    from helpers import cli

    _article_data(tmp_path)
    config = tmp_path / "train.yaml"
    config.write_text(TRAIN_YAML.format(base=tiny_base, max_len=128, extra="prompt_template: jinja\n"),
                      encoding="utf-8")
    r = cli("train", "--config", config)
    assert r.exit_code == 2 and f"{config}:12" in r.output and "prompt_template" in r.output
    config.write_text(TRAIN_YAML.format(base=tiny_base, max_len=128, extra="prompt_template: chat\n"),
                      encoding="utf-8")
    r = cli("train", "--config", config)
    assert r.exit_code == 2, r.output
    assert r.output == (f"Error: {config}:12: prompt_template: chat, but the base model's tokenizer has no chat "
                        "template (use plain or raw)\n")
    assert not (tmp_path / "out").exists()


def test_drafting_and_the_vllm_backend_build_the_manifest_prompt(tmp_path, tiny_base, workspace):
    """An adapter trained with prompt_template: raw is drafted from the raw prompt locally; the
    OpenAI backend sends /completions with that exact text, and chat adapters their messages."""
    from replyloop.drafting import LocalModels, adapter_prompt_format
    from replyloop.registry import Registry
    from replyloop.training.config import make_train_config
    from replyloop.training.recipe import run_training

    _article_data(tmp_path)
    cfg = make_train_config(root=tmp_path, **{**FAST, "max_steps": 2, "base_model": str(tiny_base),
                                              "train_data_dir": "data", "metadata_path": "prompts.csv",
                                              "output_dir": "out/raw", "prompt_template": "raw",
                                              "system_prompt": "你是客服。"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = run_training(cfg, progress=lambda e: None, notice=lambda s: None).output_dir
    config, store = workspace
    row = Registry(store).register(out)
    local = LocalModels(device="cpu")
    local.activate(row)
    assert local.prompt_format == PromptFormat(template="raw", system_prompt="你是客服。")
    assert local.prompt_format.render(local.tokenizer, ARTICLE_PROMPT) == "你是客服。\n" + ARTICLE_PROMPT
    assert adapter_prompt_format(out) == local.prompt_format


@pytest.fixture
def fake_openai():
    import threading
    from http.server import ThreadingHTTPServer

    from test_drafting import FakeOpenAI

    class Both(FakeOpenAI):
        def do_POST(self):  # noqa: N802
            if self.path.endswith("/completions") and not self.path.endswith("/chat/completions"):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                FakeOpenAI.requests.append((self.path, body))
                data = json.dumps({"choices": [{"index": 0, "text": " 您好。 "}]}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            super().do_POST()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Both)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    FakeOpenAI.requests = []
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", FakeOpenAI.requests
    server.shutdown()
    server.server_close()


def test_vllm_backend_sends_the_adapters_prompt(fake_openai):
    from replyloop.drafting import OpenAIBackend

    url, requests = fake_openai
    backend = OpenAIBackend(url, max_new_tokens=32)
    assert backend.complete("m-raw", ARTICLE_PROMPT, PromptFormat(template="plain", system_prompt="你是客服。")) == "您好。"
    chat = PromptFormat(template="chat", system_turn=True, end_token="<|im_end|>")
    backend.complete("m-chat", ARTICLE_PROMPT, chat)
    backend.complete("m-old", ARTICLE_PROMPT, None)
    assert requests == [
        ("/v1/completions", {"model": "m-raw", "prompt": "你是客服。\n客户问：收不到验证码怎么办？\n客服答：",
                             "max_tokens": 32, "temperature": 0}),
        ("/v1/chat/completions", {"model": "m-chat", "messages": [{"role": "system", "content": ""},
                                                                  {"role": "user", "content": ARTICLE_PROMPT}],
                                  "max_tokens": 32, "temperature": 0}),
        ("/v1/chat/completions", {"model": "m-old", "messages": [{"role": "user", "content": ARTICLE_PROMPT}],
                                  "max_tokens": 32, "temperature": 0}),
    ]


def test_chatml_export_uses_the_training_configs_system_prompt(workspace, tmp_path):
    from helpers import cli

    config, store = workspace
    assert cli("data", "import", SAMPLES).exit_code == 0
    config.train_config_path.write_text("base_model: m\noutput_dir: o\nsystem_prompt: 你是电商客服。\n", encoding="utf-8")
    out = tmp_path / "chat.jsonl"
    r = cli("data", "export", out, "--format", "chatml")
    assert r.exit_code == 0, r.output
    first = json.loads(out.read_text(encoding="utf-8").splitlines()[0])
    assert first["messages"][0] == {"role": "system", "content": "你是电商客服。"}
    r = cli("data", "export", out, "--format", "chatml", "--system-prompt", "另一个")
    assert json.loads(out.read_text(encoding="utf-8").splitlines()[0])["messages"][0]["content"] == "另一个"
