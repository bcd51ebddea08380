"""Runtime adapter loading with drafting.backend: openai (vLLM multi-LoRA), against a local
OpenAI-compatible fake with vLLM's /v1/load_lora_adapter, /v1/unload_lora_adapter and /v1/models
that fails on purpose. The real pipeline runs (a stand-in trainer and evaluator as subprocesses:
the serving step is what is tested), the registry, the canary and the Drafter."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
import yaml

from openai_fake import FakeVLLM
from replyloop.drafting import Drafter, DraftingError, RuntimeLoRA, RuntimeLoRAError
from replyloop.registry import Registry

FAKE_TRAINER = textwrap.dedent("""\
    import json, pathlib, sys
    out = pathlib.Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
    (out / "adapter_config.json").write_text("{}")
    (out / "manifest.json").write_text(json.dumps({"base_model": sys.argv[2], "snapshot_hash": "s",
        "prompt": {"template": "chat", "system_prompt": "", "system_turn": False, "end_token": None},
        "metrics": {"train_loss": 1.0}}))
    """)
FAKE_EVALUATOR = textwrap.dedent("""\
    import sqlite3, sys
    db = sqlite3.connect(sys.argv[2] + "/replyloop.db", timeout=30)
    db.execute("INSERT INTO evaluations (model_id, embedding_model, n, mean_similarity, gate_passed, gate, report,"
               " created_at) VALUES (?, 'fake', 10, 0.9, 1, '[]', '{}', datetime('now'))", (int(sys.argv[1]),))
    db.commit()
    """)


@pytest.fixture
def served(replyloop_home):
    """A workspace whose pipeline trains with a stand-in and drafts through a fake vLLM that sees
    the adapters directory at /srv/adapters (the GPU host's mount)."""
    from replyloop.config import load_config, write_default_config
    from replyloop.store import SampleIn, Store

    home = replyloop_home
    base = home / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    (base / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    (home / "fake_train.py").write_text(FAKE_TRAINER)
    (home / "fake_eval.py").write_text(FAKE_EVALUATOR)
    (home / "train.yaml").write_text(f"base_model: {base}\nlora_rank: 8\nmax_steps: 2\ndataset: store\n")
    path = write_default_config(home)
    fake = FakeVLLM(mounts={"/srv/adapters": home / "adapters"})
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["training"].update({"command": f"{sys.executable} {home / 'fake_train.py'} {{output_dir}} {base}",
                             "keep_adapters": 1})
    data["evaluation"]["command"] = f"{sys.executable} {home / 'fake_eval.py'} {{model}} {{workspace}}"
    data["scheduler"].update({"canary_percent": 50, "min_interval_hours": 0})
    data["drafting"].update({"backend": "openai", "openai_base_url": fake.url})
    data["serving"] = {"runtime_lora": True, "path_map": {str(home / "adapters"): "/srv/adapters"}}
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    config = load_config(path)
    store = Store(config.db_path)
    store.add_samples([SampleIn(f"问题 {i}", f"回复 {i}", "物流") for i in range(6)])
    yield config, store, fake
    store.close()
    fake.stop()


def _loads(fake):
    return [body for method, path, body in fake.calls if path == "/v1/load_lora_adapter"]


def test_pipeline_loads_adapters_before_serving_them_and_waits_when_the_server_cannot(served):
    from replyloop.drafting import unload_retired
    from replyloop.pipeline import run_pipeline

    config, store, fake = served
    reg = Registry(store)
    said: list[str] = []

    first = run_pipeline(config, store, notify=said.append)
    assert (first.status, first.action) == ("succeeded", "champion"), first.message
    assert _loads(fake) == [{"lora_name": first.model_name, "lora_path": f"/srv/adapters/{first.model_name}"}]
    assert reg.champion()["name"] == first.model_name
    res = Drafter(config, store).draft("发票怎么开", "conv-1")
    assert (res.model_name, res.text) == (first.model_name, f"您好，这是{first.model_name}的回复。")

    # the server fails to load the next one: the registry change waits and Slack says so
    fake.fail_loads = 1
    second = run_pipeline(config, store, notify=said.append)
    assert (second.status, second.action) == ("succeeded", "waiting"), second.message
    assert reg.get(second.model_id)["status"] == "candidate" and reg.champion()["name"] == first.model_name
    assert "CUDA out of memory (on purpose)" in said[-1]
    assert f"it stays a candidate and *{first.model_name}* keeps drafting" in said[-1]
    assert f"run replyloop models canary {second.model_name}." in said[-1]
    drafter = Drafter(config, store)
    assert {drafter.draft("发票怎么开", f"c-{i}").model_name for i in range(8)} == {first.model_name}

    # an operator starts the canary by hand: the drafter loads it before drafting with it
    reg.start_canary(second.model_id, 50, actor="alice")
    names = {drafter.draft("发票怎么开", f"c-{i}").model_name for i in range(16)}
    assert names == {first.model_name, second.model_name}
    assert second.model_name in fake.loras

    # a server that says "loaded" but does not list it: drafting keeps the champion
    reg.rollback(actor="alice")
    third = run_pipeline(config, store)  # loads fine: the canary
    assert third.action == "canary" and third.model_name in fake.loras
    fake.loras.pop(third.model_name)  # the vLLM host restarted without it
    fake.lie_about_loads = True
    drafter = Drafter(config, store)
    results = [drafter.draft("发票怎么开", f"c-{i}") for i in range(16)]
    assert {r.model_name for r in results} == {first.model_name}  # attributed to who drafted
    assert {r.model_id for r in results} == {reg.champion()["id"]}
    fake.lie_about_loads = False

    # promotion retires the old champion; past keep_adapters (1) retired adapters are unloaded
    drafter.draft("发票怎么开", next(f"c-{i}" for i in range(99) if reg.route(f"c-{i}")["id"] == third.model_id))
    reg.promote(third.model_id, actor="scheduler")
    assert unload_retired(config, store) == []  # one retired (first): kept for a quick rollback
    fourth = run_pipeline(config, store)
    assert fourth.action == "canary"
    reg.promote(fourth.model_id, actor="scheduler")
    assert unload_retired(config, store) == [first.model_name]
    assert set(fake.loras) == {third.model_name, fourth.model_name}
    unloads = [body for method, path, body in fake.calls if path == "/v1/unload_lora_adapter"]
    assert {b["lora_name"] for b in unloads} >= {first.model_name, second.model_name}  # rejected canary too


def test_a_chat_adapter_on_a_base_without_chat_template_is_refused(tmp_path):
    from test_registry import fake_adapter

    base = tmp_path / "base"
    base.mkdir()
    (base / "tokenizer_config.json").write_text("{}")
    adapter = fake_adapter(tmp_path, "m1")  # no prompt record: sent as chat
    with FakeVLLM(mounts={str(tmp_path): tmp_path}) as fake:
        runtime = RuntimeLoRA(fake.url)
        row = {"name": "m1", "adapter_path": str(adapter), "base_model": str(base)}
        with pytest.raises(RuntimeLoRAError, match="has no chat template.*prompt_template: plain.*--chat-template"):
            runtime.load(row)
        assert _loads(fake) == []
        manifest = json.loads((adapter / "manifest.json").read_text())
        manifest["prompt"] = {"template": "plain", "system_prompt": "", "system_turn": False, "end_token": None}
        (adapter / "manifest.json").write_text(json.dumps(manifest))
        runtime.load(row)  # a plain adapter goes through /v1/completions: no template needed
        assert "m1" in fake.loras
        chat = tmp_path / "m2"
        adapter2 = fake_adapter(tmp_path, "m2")
        assert chat == adapter2
        RuntimeLoRA(fake.url, chat_template="/srv/templates/chatml.jinja").load(
            {"name": "m2", "adapter_path": str(adapter2), "base_model": str(base)})  # the server has one
        assert RuntimeLoRA(fake.url).server_path("/elsewhere/x") == "/elsewhere/x"
        mapped = RuntimeLoRA(fake.url, {"/data/adapters/": "/srv/a", "/data": "/mnt"})
        assert mapped.server_path("/data/adapters/run-1") == "/srv/a/run-1"
        assert mapped.server_path("/data/adapters2/run-1") == "/mnt/adapters2/run-1"
    with pytest.raises(DraftingError, match="127.0.0.1:9"):
        RuntimeLoRA("http://127.0.0.1:9/v1").models()


def test_drafting_through_the_server_refuses_a_base_without_chat_template(workspace, tmp_path):
    from test_registry import fake_adapter

    config, store = workspace
    base = tmp_path / "base"
    base.mkdir()
    (base / "tokenizer_config.json").write_text("{}")
    adapter = fake_adapter(tmp_path, "m1")
    manifest = json.loads((adapter / "manifest.json").read_text())
    (adapter / "manifest.json").write_text(json.dumps({**manifest, "base_model": str(base)}))
    with FakeVLLM() as fake:
        fake.loras["m1"] = "/x"
        config.file.drafting.backend, config.file.drafting.openai_base_url = "openai", fake.url
        reg = Registry(store)
        reg.promote(reg.register(adapter)["id"], "alice", force=True)
        with pytest.raises(DraftingError, match="base model .* has no chat template"):
            Drafter(config, store).draft("发票怎么开", "c-1")
        assert not [c for c in fake.calls if c[1] == "/v1/chat/completions"]
        config.file.serving.chat_template = "/srv/chatml.jinja"  # vLLM runs with --chat-template
        assert Drafter(config, store).draft("发票怎么开", "c-1").text == "您好，这是m1的回复。"
