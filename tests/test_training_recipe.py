"""The training recipe on a tiny Llama: learning, best checkpoint, resume, incremental start,
early stopping, reload and merge fidelity, and every user-facing error."""

import json
import shutil

import pytest
import torch

from replyloop.errors import ConfigError, TrainingError
from replyloop.training.recipe import LoRAFinetuneRecipe, run_training
from training_fixtures import FAST, cfg_factory, data_dir, make_cfg, tiny_base, trained_adapter  # noqa: F401


class Stop(Exception):
    pass


def _events(cfg, stop_at=None):
    events = []

    def progress(event):
        events.append(event)
        if stop_at is not None and event["step"] == stop_at and "loss" in event:
            raise Stop()

    return events, progress


def _logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits


def test_loss_falls_and_output_is_complete(cfg_factory):
    cfg = cfg_factory(max_steps=24, eval_steps=8)
    events, progress = _events(cfg)
    result = run_training(cfg, progress=progress)
    evals = [e["eval_loss"] for e in events if "eval_loss" in e]
    assert len(evals) == 3 and evals[-1] < evals[0] - 0.03
    assert {p.name for p in result.output_dir.iterdir()} >= {
        "adapter_config.json", "adapter_model.safetensors", "manifest.json"}
    manifest = json.loads((result.output_dir / "manifest.json").read_text(encoding="utf-8"))
    assert set(manifest) >= {"base_model", "snapshot_hash", "dataset", "config", "metrics", "versions",
                             "created_at", "init_adapter"}
    m = manifest["metrics"]
    assert m["steps"] == 24 and m["eval_loss"] == pytest.approx(min(evals), abs=1e-6)
    assert m["best_step"] == 8 * (1 + evals.index(min(evals)))
    assert m["train_tokens"] > 0 and m["truncated"] > 0  # max_seq_length 96 cuts some replies
    assert manifest["snapshot_hash"] is None and manifest["dataset"]["type"] == "folder"
    assert list(cfg.logging_path.glob("events.out.tfevents.*"))
    # the last keep_checkpoints (2) checkpoints stay in output_dir, each a loadable adapter
    assert sorted(p.name for p in cfg.output_path.glob("checkpoint-*")) == ["checkpoint-16", "checkpoint-20"]
    assert (cfg.output_path / "checkpoint-20" / "adapter_model.safetensors").exists()
    step_lines = [e for e in events if "loss" in e]
    assert [e["step"] for e in step_lines] == list(range(1, 25))
    assert all(e["total_steps"] == 24 and e["tokens_per_s"] > 0 for e in step_lines)


def test_resume_after_interruption_matches_an_uninterrupted_run(tmp_path, tiny_base, data_dir):
    shutil.copytree(data_dir, tmp_path / "b" / "data")
    plain = run_training(make_cfg(tmp_path, tiny_base, output_dir="a/adapter"), progress=lambda e: None)
    cfg = make_cfg(tmp_path / "b", tiny_base)
    _, progress = _events(cfg, stop_at=10)
    with pytest.raises(Stop):
        run_training(cfg, progress=progress)
    # a killed run leaves nothing that looks finished: its checkpoints, no adapter or manifest
    assert sorted(p.name for p in cfg.output_path.iterdir()) == ["checkpoint-4", "checkpoint-8"]
    assert not list(cfg.output_path.parent.glob(".adapter.tmp-*"))
    events, progress = _events(cfg)
    resumed = run_training(make_cfg(tmp_path / "b", tiny_base, resume_from_checkpoint=True), progress=progress)
    assert events[0]["step"] == 9
    a, b = plain.manifest["metrics"], resumed.manifest["metrics"]
    assert b["steps"] == a["steps"] == 12
    assert b["train_loss"] == a["train_loss"] and b["eval_loss"] == a["eval_loss"]
    assert b["best_step"] == a["best_step"] and b["train_tokens"] == a["train_tokens"]
    from safetensors.torch import load_file

    wa = load_file(plain.output_dir / "adapter_model.safetensors")
    wb = load_file(resumed.output_dir / "adapter_model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_with_a_changed_config_warns_field_by_field(cfg_factory):
    from replyloop.training.checkpointing import ResumeMismatchWarning

    cfg = cfg_factory()
    _, progress = _events(cfg, stop_at=5)
    with pytest.raises(Stop):
        run_training(cfg, progress=progress)
    with pytest.warns(ResumeMismatchWarning) as record:
        run_training(cfg_factory(resume_from_checkpoint=True, learning_rate=0.01), progress=lambda e: None)
    messages = [str(w.message) for w in record if w.category is ResumeMismatchWarning]  # not TruncationWarning
    assert messages == ["resuming from checkpoint-4 with a different config: "
                        "learning_rate: checkpoint has 0.02, config has 0.01"]


def _approve(store, question, reply, category="物流查询"):
    qid = store.add_question(question, "c-resume", category)
    store.decide(store.add_draft(qid, reply), "approve", "U1")


def test_resume_from_the_store_keeps_the_checkpoints_snapshot(cfg_factory, workspace, samples_csv):
    from safetensors.torch import load_file

    from replyloop.dataio import read_samples

    _, store = workspace
    store.add_samples(read_samples(samples_csv))
    store_cfg = {"dataset": "store", "train_data_dir": None}
    plain = run_training(cfg_factory(**store_cfg, output_dir="plain"), progress=lambda e: None)
    snapshot = plain.manifest["snapshot_hash"]
    cfg = cfg_factory(**store_cfg)
    _, progress = _events(cfg, stop_at=10)
    with pytest.raises(Stop):
        run_training(cfg, progress=progress)
    state = json.loads((cfg.output_path / "checkpoint-8" / "state.json").read_text(encoding="utf-8"))
    assert state["data"]["snapshot_hash"] == snapshot
    # approvals while the run was down: a new snapshot would have other batches and another split
    for i in range(6):
        _approve(store, f"新问题{i}：包裹显示已签收但我没收到", f"很抱歉，我们马上联系快递核实第{i}件包裹。")
    n_snapshots = store.scalar("SELECT count(*) FROM snapshots")
    resumed = run_training(cfg_factory(**store_cfg, resume_from_checkpoint=True), progress=lambda e: None)
    assert resumed.manifest["snapshot_hash"] == snapshot
    assert resumed.manifest["dataset"]["snapshot"] == snapshot
    assert store.scalar("SELECT count(*) FROM snapshots") == n_snapshots  # no new snapshot taken
    a, b = plain.manifest["metrics"], resumed.manifest["metrics"]
    assert (b["steps"], b["train_loss"], b["eval_loss"], b["train_tokens"]) == (
        a["steps"], a["train_loss"], a["eval_loss"], a["train_tokens"])
    wa = load_file(plain.output_dir / "adapter_model.safetensors")
    wb = load_file(resumed.output_dir / "adapter_model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_on_a_changed_csv_is_an_error_naming_the_file(cfg_factory, data_dir):
    from replyloop.training.checkpointing import ResumeDataError

    cfg = cfg_factory()
    _, progress = _events(cfg, stop_at=5)
    with pytest.raises(Stop):
        run_training(cfg, progress=progress)
    meta = data_dir / "metadata.csv"
    lines = meta.read_text(encoding="utf-8").splitlines(keepends=True)
    meta.write_text("".join(lines[:1] + lines[2:]), encoding="utf-8")  # one sample fewer
    with pytest.raises(ResumeDataError, match=rf"cannot resume from .*checkpoint-4: the training data in "
                                              rf"{meta} changed since the checkpoint \(180 samples then, 179 now\)"):
        run_training(cfg_factory(resume_from_checkpoint=True), progress=lambda e: None)
    meta.write_text("".join(lines), encoding="utf-8")  # restored: resumes
    resumed = run_training(cfg_factory(resume_from_checkpoint=True), progress=lambda e: None)
    assert resumed.manifest["metrics"]["steps"] == 12


def test_resume_from_a_checkpoint_without_data_record_warns(cfg_factory):
    from replyloop.training.checkpointing import ResumeMismatchWarning

    cfg = cfg_factory()
    _, progress = _events(cfg, stop_at=5)
    with pytest.raises(Stop):
        run_training(cfg, progress=progress)
    state_path = cfg.output_path / "checkpoint-4" / "state.json"
    state = json.loads(state_path.read_text(encoding="utf-8"))
    del state["data"]  # as written before checkpoints recorded their data
    state_path.write_text(json.dumps(state), encoding="utf-8")
    with pytest.warns(ResumeMismatchWarning, match="does not record its training data, so replyloop cannot check "
                                                   r"that .*metadata.csv is unchanged"):
        resumed = run_training(cfg_factory(resume_from_checkpoint=True), progress=lambda e: None)
    assert resumed.manifest["metrics"]["steps"] == 12


def test_resume_with_another_snapshot_in_the_config_is_an_error(cfg_factory, workspace, samples_csv):
    from replyloop.dataio import read_samples
    from replyloop.training.checkpointing import ResumeDataError

    _, store = workspace
    store.add_samples(read_samples(samples_csv))
    cfg = cfg_factory(dataset="store", train_data_dir=None)
    _, progress = _events(cfg, stop_at=5)
    with pytest.raises(Stop):
        run_training(cfg, progress=progress)
    _approve(store, "新问题：发票怎么开", "请在订单详情页申请电子发票。", "售后服务")
    other = store.create_snapshot(0.15).hash
    with pytest.raises(ResumeDataError, match=f"it trained on snapshot [0-9a-f]{{16}}, the config names snapshot {other}"):
        run_training(cfg_factory(dataset="store", train_data_dir=None, snapshot=other, resume_from_checkpoint=True),
                     progress=lambda e: None)


def test_resume_without_checkpoint_is_an_error(cfg_factory):
    with pytest.raises(TrainingError, match="resume_from_checkpoint: no checkpoint in"):
        run_training(cfg_factory(resume_from_checkpoint=True), progress=lambda e: None)


def test_incremental_training_starts_from_the_adapter(cfg_factory, trained_adapter, workspace, tmp_path, tiny_base):
    from safetensors.torch import load_file

    from replyloop.training.recipe import AdapterMismatchError

    # a config that asks for another shape than the adapter it continues is an error naming both
    with pytest.raises(AdapterMismatchError) as exc:
        run_training(cfg_factory(init_adapter=str(trained_adapter), lora_rank=4, lora_alpha=16,
                                 target_modules=["q_proj", "v_proj"]), progress=lambda e: None)
    assert str(exc.value).splitlines() == [
        f"lora_rank: 4, but init_adapter {trained_adapter} was trained with r=8; set lora_rank: 8 or remove "
        "lora_rank (a continued adapter keeps its shape), or remove init_adapter to train a new adapter",
        f"target_modules: [q_proj, v_proj], but init_adapter {trained_adapter} was trained on [down_proj, "
        "gate_proj, q_proj, up_proj, v_proj]; set target_modules to those or remove it, or remove init_adapter "
        "to train a new adapter"]
    values = {**FAST, "init_adapter": str(trained_adapter), "learning_rate": 0.0, "max_steps": 2}
    del values["target_modules"]  # left out: the adapter's
    result = run_training(make_cfg(tmp_path, tiny_base, lora_alpha=16, **values), progress=lambda e: None)
    before = load_file(trained_adapter / "adapter_model.safetensors")
    after = load_file(result.output_dir / "adapter_model.safetensors")
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert result.manifest["init_adapter"] == str(trained_adapter.resolve())
    # the manifest records what was trained: the adapter's shape, not the defaults (4 attention modules)
    assert result.manifest["lora"] == {"lora_rank": 8, "lora_alpha": 16, "lora_dropout": 0.1, "target_modules": [
        "down_proj", "gate_proj", "q_proj", "up_proj", "v_proj"]}
    assert result.manifest["config"]["target_modules"] == result.manifest["lora"]["target_modules"]

    config, store = workspace
    with pytest.raises(TrainingError, match="has no champion model yet"):
        run_training(cfg_factory(init_adapter="champion"), progress=lambda e: None)
    with store.transaction() as db:
        db.execute("INSERT INTO models (name, adapter_path, base_model, status, created_at)"
                   " VALUES ('m1', ?, 'tiny', 'champion', '2026-01-01')", (str(trained_adapter),))
    champion = run_training(cfg_factory(init_adapter="champion", max_steps=1, output_dir="out/c"),
                            progress=lambda e: None)
    assert champion.manifest["init_adapter"] == str(trained_adapter.resolve())


def test_early_stopping_fires_and_keeps_the_best(cfg_factory):
    result = run_training(cfg_factory(learning_rate=0.0, max_steps=40, eval_steps=2, early_stopping_patience=2),
                          progress=lambda e: None)
    m = result.manifest["metrics"]
    assert m["stopped_early"] is True and m["steps"] == 6 and m["best_step"] == 2


def test_saved_adapter_reloads_with_identical_logits_and_merge_matches(cfg_factory, tiny_base, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from replyloop.training.merge import export_adapter, merge_adapter

    recipe = LoRAFinetuneRecipe(cfg_factory(max_steps=6, eval_steps=3), progress=lambda e: None)
    try:
        recipe.setup()
        recipe.train()
        result = recipe.save_output()
        model = recipe.accelerator.unwrap_model(recipe.model).eval()
        ids = recipe.train_examples[0].input_ids
        trained = _logits(model, ids)
    finally:
        recipe.cleanup()
    base = AutoModelForCausalLM.from_pretrained(str(tiny_base))
    reloaded = PeftModel.from_pretrained(base, str(result.output_dir)).eval()
    assert torch.equal(_logits(reloaded, ids), trained)
    assert recipe.evaluate() == pytest.approx(result.manifest["metrics"]["eval_loss"], abs=1e-6)

    merged_dir = merge_adapter(result.output_dir, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir)).eval()
    assert (_logits(merged, ids) - trained).abs().max().item() < 1e-5
    assert json.loads((merged_dir / "manifest.json").read_text())["merged_from"] == str(result.output_dir)
    exported = export_adapter(result.output_dir, tmp_path / "exported")
    assert sorted(p.name for p in exported.iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                         "manifest.json"]


def test_store_dataset_trains_on_the_snapshot_train_split(cfg_factory, workspace, samples_csv):
    from replyloop.dataio import read_samples

    config, store = workspace
    store.add_samples(read_samples(samples_csv))
    result = run_training(cfg_factory(dataset="store", train_data_dir=None, max_steps=2), progress=lambda e: None)
    snap = store.latest_snapshot()
    assert result.manifest["snapshot_hash"] == snap["hash"]
    train = store.snapshot_samples(snap["hash"], "train")
    d = result.manifest["dataset"]
    assert d["train_samples"] + d["eval_samples"] == len(train) < snap["sample_count"]
    again = run_training(cfg_factory(dataset="store", train_data_dir=None, snapshot=snap["hash"], max_steps=1,
                                     output_dir="out/b"), progress=lambda e: None)
    assert again.manifest["snapshot_hash"] == snap["hash"]


# -- errors --------------------------------------------------------------------------------------

def test_base_model_missing(cfg_factory, tmp_path):
    with pytest.raises(ConfigError) as exc:
        run_training(cfg_factory(base_model="models/nope"), progress=lambda e: None)
    assert str(exc.value) == (f"base_model: models/nope does not exist ({tmp_path / 'models' / 'nope'}); a local "
                              f"model directory is needed, replyloop never downloads models")


def test_unknown_target_modules_list_the_existing_ones(cfg_factory):
    with pytest.raises(ConfigError) as exc:
        run_training(cfg_factory(target_modules=["q_proj", "query_key_value"]), progress=lambda e: None)
    assert str(exc.value) == ("target_modules: query_key_value not in the model base; it has: "
                              "down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only messages")
@pytest.mark.parametrize("values, message", [
    ({"device": "cuda"}, "device: cuda was asked for, but CUDA is not available on this machine"),
    ({"precision": "bf16"}, "precision: bf16 needs CUDA, which is not available here; use precision: fp32"),
    ({"precision": "fp16"}, "precision: fp16 needs CUDA"),
    ({"quantization": "4bit"}, "quantization: 4bit: QLoRA needs CUDA and bitsandbytes (CUDA not available"),
])
def test_cuda_features_without_cuda(cfg_factory, values, message):
    with pytest.raises(TrainingError) as exc:
        run_training(cfg_factory(**values), progress=lambda e: None)
    assert message in str(exc.value)


def test_empty_dataset_and_dataset_smaller_than_a_batch(cfg_factory, data_dir):
    from replyloop.training.data import DatasetTooSmallError

    meta = data_dir / "metadata.csv"
    lines = meta.read_text(encoding="utf-8").splitlines()
    meta.write_text(lines[0] + "\n", encoding="utf-8")
    with pytest.raises(DatasetTooSmallError, match=f"dataset is empty: {meta} has no samples"):
        run_training(cfg_factory(), progress=lambda e: None)
    meta.write_text("\n".join(lines[:4]) + "\n", encoding="utf-8")
    with pytest.raises(DatasetTooSmallError) as exc:
        run_training(cfg_factory(eval_ratio=0.0), progress=lambda e: None)
    assert str(exc.value) == (f"dataset is smaller than one batch: 3 training sample(s) (0 more held out) "
                              f"from {meta}, batch_size is 4")
