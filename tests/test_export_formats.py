"""`data export` for LLaMA-Factory and axolotl, checked against each tool's documented schema.

LLaMA-Factory (hiyouga/LLaMA-Factory data/README.md): a ``dataset_dir`` holds
``dataset_info.json``, whose entry per dataset names ``file_name``, ``formatting`` (alpaca or
sharegpt) and ``columns`` (alpaca: prompt/query/response[/system] -> instruction/input/output;
sharegpt: messages -> conversations, with ``tags`` role_tag/content_tag/user_tag/assistant_tag).
axolotl (docs/dataset-formats/conversation.qmd): ``type: chat_template`` reads ``field_messages``,
each message's ``role`` / ``content`` named by ``message_property_mappings``.
"""

import json
import re
from pathlib import Path

import pytest
import yaml

from helpers import cli, cli_subprocess
from replyloop.pii import Scrubber

ROOT = Path(__file__).resolve().parent.parent
# the keys LLaMA-Factory's data/README.md documents for an entry and for its columns / tags
LF_ENTRY_KEYS = {"hf_hub_url", "ms_hub_url", "script_url", "file_name", "formatting", "ranking", "subset",
                 "folder", "columns", "tags", "file_sha1", "split", "num_samples"}
LF_COLUMNS = {"prompt", "query", "response", "history", "messages", "system", "tools", "images", "chosen",
              "rejected", "kto_tag"}
LF_TAGS = {"role_tag", "content_tag", "user_tag", "assistant_tag", "observation_tag", "function_tag", "system_tag"}


@pytest.fixture
def ws(workspace, samples_csv):
    config, store = workspace
    assert cli("data", "import", samples_csv).exit_code == 0
    return config, store


def lf_examples(dataset_dir: Path, name: str) -> list[tuple[str, str, str | None]]:
    """Read a dataset as LLaMA-Factory does: its entry in dataset_info.json, then the file it
    names, each record through the entry's columns (defaults from data/README.md). Returns
    (human prompt, model response, system) per record."""
    info = json.loads((dataset_dir / "dataset_info.json").read_text(encoding="utf-8"))
    entry = info[name]
    assert set(entry) <= LF_ENTRY_KEYS and "file_name" in entry
    formatting = entry.get("formatting", "alpaca")
    assert formatting in ("alpaca", "sharegpt")
    columns = entry.get("columns", {})
    assert set(columns) <= LF_COLUMNS
    data = json.loads((dataset_dir / entry["file_name"]).read_text(encoding="utf-8"))
    assert isinstance(data, list)
    out = []
    for record in data:
        system = record[columns["system"]] if "system" in columns else None
        if formatting == "alpaca":
            prompt = record[columns.get("prompt", "instruction")]
            query = record.get(columns.get("query", "input")) or ""
            response = record[columns.get("response", "output")]
            out.append((prompt + ("\n" + query if query else ""), response, system))
            continue
        tags = entry.get("tags", {})
        assert set(tags) <= LF_TAGS
        role, content = tags.get("role_tag", "from"), tags.get("content_tag", "value")
        user, assistant = tags.get("user_tag", "human"), tags.get("assistant_tag", "gpt")
        messages = record[columns.get("messages", "conversations")]
        # human in odd positions, gpt in even ones (data/README.md)
        assert [m[role] for m in messages] == [user, assistant] * (len(messages) // 2)
        out.append((messages[0][content], messages[1][content], system))
    return out


def test_llama_factory_alpaca_export_matches_the_documented_schema(ws, tmp_path):
    config, store = ws
    out = tmp_path / "LLaMA-Factory" / "data"
    out.mkdir(parents=True)
    theirs = {"alpaca_en_demo": {"file_name": "alpaca_en_demo.json"}}
    (out / "dataset_info.json").write_text(json.dumps(theirs), encoding="utf-8")
    result = cli_subprocess("data", "export", out, "--format", "llama-factory", "--no-scrub-pii",
                            cwd=config.root)
    assert result.returncode == 0, result.stderr
    assert f"Wrote 180 sample(s) to {out / 'replyloop.json'}" in result.stdout
    assert "dataset: replyloop" in result.stdout
    info = json.loads((out / "dataset_info.json").read_text(encoding="utf-8"))
    assert info["alpaca_en_demo"] == theirs["alpaca_en_demo"]  # the folder's other datasets are kept
    assert info["replyloop"] == {"file_name": "replyloop.json", "formatting": "alpaca",
                                 "columns": {"prompt": "instruction", "query": "input", "response": "output"}}
    got = lf_examples(out, "replyloop")
    want = [(s["prompt"], s["response"], None) for s in store.samples()]
    assert got == want and len(got) == 180


def test_llama_factory_sharegpt_export_with_system_prompt(ws, tmp_path):
    config, store = ws
    out = tmp_path / "lf"
    result = cli("data", "export", out, "--format", "llama-factory-sharegpt", "--system-prompt", "你是客服。",
                 "--no-scrub-pii")
    assert result.exit_code == 0, result.output
    entry = json.loads((out / "dataset_info.json").read_text(encoding="utf-8"))["replyloop"]
    assert entry["formatting"] == "sharegpt" and entry["columns"] == {"messages": "conversations", "system": "system"}
    got = lf_examples(out, "replyloop")
    assert got == [(s["prompt"], s["response"], "你是客服。") for s in store.samples()]
    # alpaca with a system prompt gets the documented "system" column
    assert cli("data", "export", out, "--format", "llama-factory", "--system-prompt", "你是客服。").exit_code == 0
    entry = json.loads((out / "dataset_info.json").read_text(encoding="utf-8"))["replyloop"]
    assert entry["columns"]["system"] == "system" and lf_examples(out, "replyloop")[0][2] == "你是客服。"


def test_llama_factory_export_bad_targets_write_nothing(ws, tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    broken = '{"alpaca_en_demo": {"file_name": "a.json"},\n  oops\n}'
    (out / "dataset_info.json").write_text(broken, encoding="utf-8")
    result = cli_subprocess("data", "export", out, "--format", "llama-factory")
    assert result.returncode == 2
    assert result.stderr.startswith(f"Error: {out / 'dataset_info.json'}:2: not valid JSON")
    assert sorted(p.name for p in out.iterdir()) == ["dataset_info.json"]  # nothing written, theirs intact
    assert (out / "dataset_info.json").read_text(encoding="utf-8") == broken
    a_file = tmp_path / "data.json"
    a_file.write_text("x", encoding="utf-8")
    result = cli("data", "export", a_file, "--format", "llama-factory")
    assert result.exit_code == 2 and "is a file; --format llama-factory writes replyloop.json" in result.output
    assert a_file.read_text(encoding="utf-8") == "x"


def readme_axolotl_snippet() -> dict:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("### `replyloop data export"):]
    section = section[:section.index("\n### ", 5)]
    block = re.search(r"```yaml\n(datasets:.*?)```", section, re.S).group(1)
    return yaml.safe_load(block)


def test_chatml_export_fits_the_readmes_axolotl_datasets_entry(ws, tmp_path):
    config, store = ws
    snippet = readme_axolotl_snippet()
    entry = snippet["datasets"][0]
    assert entry["type"] == "chat_template" and entry["ds_type"] == "json"
    out = tmp_path / Path(entry["path"])
    # the export command the snippet's comment gives, with its path under tmp_path
    command = re.search(r"path: (\S+)\s+# replyloop (data export .*)", (ROOT / "README.md").read_text(encoding="utf-8"))
    args = command.group(2).split()
    assert args[:3] == ["data", "export", entry["path"]]
    result = cli(*args[:2], out, *args[3:], "--system-prompt", "你是客服。")
    assert result.exit_code == 0, result.output
    roles = entry["message_property_mappings"]
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == store.sample_count() == 180
    scrub = Scrubber().scrub  # the export masks personal data by default
    for record, sample in zip(lines, store.samples()):
        messages = record[entry["field_messages"]]
        assert [m[roles["role"]] for m in messages] == ["system", "user", "assistant"]
        assert [m[roles["content"]] for m in messages] == ["你是客服。", scrub(sample["prompt"]),
                                                           scrub(sample["response"])]
        assert set(entry["roles_to_train"]) <= {m[roles["role"]] for m in messages}
