"""Preference training (objective: dpo | kto) on top of an SFT adapter, with the tiny model:
the DPO step widens the held-out margin log p(chosen) - log p(rejected), KTO trains, resume
continues, and too few pairs is a clear error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from eval_fixtures import sample_rows
from training_fixtures import tiny_base  # noqa: F401  (session fixture)

BAD = ("您好，我们承诺全额赔付。", "请联系我们。请联系我们。", "这个问题我们不清楚。")
SFT = dict(lora_rank=8, lora_alpha=16, lora_dropout=0.0, batch_size=8, max_seq_length=96, packing=False,
           learning_rate=3e-3, lr_scheduler="constant", eval_ratio=0.0, eval_steps=1000, save_steps=1000,
           target_modules=["q_proj", "v_proj"], max_steps=6)
PREF = dict(SFT, objective="dpo", learning_rate=2e-3, beta=0.1, max_steps=6, save_steps=3, batch_size=4)


def seed_reviews(store, n_edits: int = 60) -> str:
    """The sample set as approved samples, plus reviews of drafts: an edit replacing a bad draft
    by the sample's answer for each of ``n_edits`` questions, some approvals and rejections.
    Returns the snapshot (which freezes the preference rows)."""
    from replyloop.dataio import read_samples
    from eval_fixtures import SAMPLES_CSV

    store.add_samples(read_samples(SAMPLES_CSV))
    rows = sample_rows()
    for i, row in enumerate(rows[:n_edits]):
        qid = store.add_question(row["prompt"], f"c{i}")
        draft = store.add_draft(qid, BAD[i % len(BAD)], model_name="m1")
        store.decide(draft, "edit", "USUP1", final_text=row["response"])
    for i, row in enumerate(rows[n_edits:n_edits + 10]):
        qid = store.add_question(row["prompt"], f"a{i}")
        store.decide(store.add_draft(qid, row["response"], model_name="m1"), "approve", "USUP1")
    return store.create_snapshot(0.15, "replyloop").hash


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_base):  # noqa: F811
    """A store with reviews, its snapshot, and an SFT adapter trained on that snapshot."""
    from replyloop.store import Store
    from replyloop.training.config import make_train_config
    from replyloop.training.recipe import run_training

    root = tmp_path_factory.mktemp("pref")
    db = root / "replyloop.db"
    with Store(db) as store:
        snap = seed_reviews(store)
    cfg = make_train_config(root=root, **SFT, base_model=str(tiny_base), dataset="store", store_path=str(db),
                            snapshot=snap, output_dir=str(root / "sft"))
    run_training(cfg, progress=lambda e: None)
    return {"root": root, "db": db, "snapshot": snap, "sft": root / "sft", "base": tiny_base}


def pref_cfg(world, out: str, **values):
    from replyloop.training.config import make_train_config

    return make_train_config(root=world["root"], **{**PREF, "base_model": str(world["base"]), "dataset": "store",
                                                    "store_path": str(world["db"]), "snapshot": world["snapshot"],
                                                    "init_adapter": str(world["sft"]),
                                                    "output_dir": str(world["root"] / out), **values})


def heldout_pairs(world) -> list[tuple[str, str, str]]:
    from replyloop import preferences
    from replyloop.store import Store

    with Store(world["db"]) as store:
        return [(r["prompt"], r["chosen"], r["rejected"])
                for r in preferences.iter_rows(store, world["snapshot"], "dpo", "heldout")]


def measured_margin(base: Path, adapter: Path, pairs) -> float:
    """Mean summed log p(chosen) - log p(rejected) under ``adapter``, computed here from the
    logits (prompt tokens as drafting builds them, then the reply and its end token)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from replyloop.training.prompting import PromptFormat, prompt_input_ids

    tok = AutoTokenizer.from_pretrained(str(base))
    fmt = PromptFormat.from_manifest(json.loads((adapter / "manifest.json").read_text(encoding="utf-8")), tok)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32),
                                      str(adapter)).eval()

    def logp(prompt, reply):
        p = prompt_input_ids(tok, prompt, fmt=fmt)
        ids = p + tok(reply, add_special_tokens=False)["input_ids"] + [fmt.end_id(tok)]
        with torch.no_grad():
            out = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, :-1].float(), -1)
        return sum(out[i - 1, ids[i]].item() for i in range(len(p), len(ids)))

    return sum(logp(p, c) - logp(p, r) for p, c, r in pairs) / len(pairs)


def test_dpo_widens_the_heldout_margin(world):
    from replyloop.training.recipe import run_training

    pairs = heldout_pairs(world)
    assert len(pairs) >= 3, "the snapshot holds some edited questions out"
    result = run_training(pref_cfg(world, "dpo"), progress=lambda e: None)
    out = result.output_dir
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["objective"] == "dpo"
    assert manifest["snapshot_hash"] == world["snapshot"]
    prefs = manifest["preferences"]
    assert prefs["kind"] == "dpo" and prefs["train_rows"] + prefs["heldout_rows"] == 60
    assert len(prefs["rows_sha256"]) == 64 and prefs["heldout_pairs"] == len(pairs)
    assert manifest["prompt"] == json.loads((world["sft"] / "manifest.json").read_text())["prompt"]
    assert not (out / "ref").exists(), "TRL's reference copy is not part of the output"
    before = measured_margin(world["base"], world["sft"], pairs)
    after = measured_margin(world["base"], out, pairs)
    assert after > before + 1.0, (before, after)
    assert manifest["metrics"]["heldout_margin_after"] == pytest.approx(after, abs=0.05)
    # checkpoints: HF Trainer's checkpoint-N (marked complete by state.json) kept beside the adapter
    assert (out / "checkpoint-3" / "state.json").exists()



class Interrupted(Exception):
    pass


def test_an_interrupted_dpo_run_resumes_from_its_checkpoint(world):
    """A run that dies after checkpoint-3 leaves output_dir without an adapter; --resume
    continues from checkpoint-3 to the same weights as the uninterrupted run."""
    import torch
    from safetensors.torch import load_file

    from replyloop.training.recipe import run_training

    def die_at_step_5(event):
        if event.get("step") == 5:
            raise Interrupted

    with pytest.raises(Interrupted):
        run_training(pref_cfg(world, "dpo-cut"), progress=die_at_step_5)
    cut = world["root"] / "dpo-cut"
    assert not (cut / "manifest.json").exists() and (cut / "checkpoint-3" / "state.json").exists()
    again = run_training(pref_cfg(world, "dpo-cut", resume_from_checkpoint=True), progress=lambda e: None)
    manifest = json.loads((cut / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["resumed_from"].endswith("checkpoint-3") and manifest["metrics"]["steps"] == 6
    assert again.output_dir == cut
    whole = world["root"] / "dpo"
    if not (whole / "manifest.json").exists():
        run_training(pref_cfg(world, "dpo"), progress=lambda e: None)
    a, b = load_file(cut / "adapter_model.safetensors"), load_file(whole / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)

    # resuming on other preference rows (a newer snapshot with one more edit) is an error
    from replyloop.store import Store
    from replyloop.training.checkpointing import ResumeDataError

    db = world["root"] / "newer.db"
    shutil.copy(world["db"], db)
    with Store(db) as store:
        row = sample_rows()[100]
        qid = store.add_question(row["prompt"], "late")
        store.decide(store.add_draft(qid, BAD[0], model_name="m1"), "edit", "USUP1", final_text=row["response"])
        newer = store.create_snapshot(0.15, "replyloop").hash
    with pytest.raises(ResumeDataError, match=f"it trained on snapshot {world['snapshot']}"):
        run_training(pref_cfg(world, "dpo-cut", store_path=str(db), snapshot=newer,
                              resume_from_checkpoint=str(cut / "checkpoint-6")), progress=lambda e: None)


def test_kto_trains_on_desirable_and_undesirable_rows(world):
    from replyloop.training.recipe import run_training

    result = run_training(pref_cfg(world, "kto", objective="kto", max_steps=3, save_steps=100, undesirable_weight=1.5),
                          progress=lambda e: None)
    manifest = result.manifest
    assert manifest["objective"] == "kto"
    p = manifest["preferences"]
    assert p["desirable"] > 0 and p["undesirable"] > 0
    assert manifest["metrics"]["steps"] == 3 and manifest["metrics"]["train_loss"] is not None
    assert (result.output_dir / "adapter_model.safetensors").exists()


def test_too_few_pairs_is_an_error_naming_the_numbers(world, tmp_path):
    from replyloop.store import Store
    from replyloop.training.data import DatasetTooSmallError
    from replyloop.training.recipe import run_training

    db = tmp_path / "few.db"
    with Store(db) as store:
        snap = seed_reviews(store, n_edits=3)
    with pytest.raises(DatasetTooSmallError) as info:
        run_training(pref_cfg(world, "few", store_path=str(db), snapshot=snap), progress=lambda e: None)
    text = str(info.value)
    assert "objective: dpo needs at least 8 preference pairs" in text
    assert f"snapshot {snap[:12]}" in text and "edits" in text
    assert not (world["root"] / "few").exists()


PREF_YAML = """\
base_model: {base}
output_dir: {out}
dataset: store
store_path: {db}
snapshot: {snap}
objective: {objective}
{init}lora_rank: 8
batch_size: 4
max_seq_length: 96
max_steps: 2
save_steps: 100
learning_rate: 0.002
"""


def test_replyloop_train_runs_dpo_from_a_yaml_and_reports_the_margin(world, tmp_path):
    from helpers import cli

    config = tmp_path / "dpo.yaml"
    config.write_text(PREF_YAML.format(base=world["base"], out=tmp_path / "out", db=world["db"],
                                       snap=world["snapshot"], objective="dpo",
                                       init=f"init_adapter: {world['sft']}\n"), encoding="utf-8")
    r = cli("train", "--config", config)
    assert r.exit_code == 0, r.output
    last = r.output.strip().splitlines()[-1]
    assert last.startswith(f"Wrote {tmp_path / 'out'}: objective dpo, 2 steps on ") and "held-out margin" in last
    assert json.loads((tmp_path / "out" / "manifest.json").read_text(encoding="utf-8"))["objective"] == "dpo"


def test_user_mistakes_are_errors_naming_file_line_and_numbers(world, tmp_path):
    from helpers import cli
    from replyloop.store import Store

    config = tmp_path / "kto.yaml"
    # no init_adapter: nothing to train on top of
    config.write_text(PREF_YAML.format(base=world["base"], out=tmp_path / "out", db=world["db"],
                                       snap=world["snapshot"], objective="kto", init=""), encoding="utf-8")
    r = cli("train", "--config", config)
    assert r.exit_code == 2 and r.output.startswith("Error: ") and str(config) in r.output, r.output
    assert "objective: kto trains on top of an SFT adapter: set init_adapter" in r.output
    # a typo in objective
    config.write_text(PREF_YAML.format(base=world["base"], out=tmp_path / "out", db=world["db"],
                                       snap=world["snapshot"], objective="orpo",
                                       init=f"init_adapter: {world['sft']}\n"), encoding="utf-8")
    r = cli("train", "--config", config)
    assert r.exit_code == 2 and f"{config}:6" in r.output and "objective" in r.output, r.output
    # a store with three edits: too few pairs, and the numbers named
    db = tmp_path / "few.db"
    with Store(db) as store:
        snap = seed_reviews(store, n_edits=3)
    config.write_text(PREF_YAML.format(base=world["base"], out=tmp_path / "out", db=db, snap=snap,
                                       objective="dpo", init=f"init_adapter: {world['sft']}\n"), encoding="utf-8")
    r = cli("train", "--config", config)
    assert r.exit_code == 2, r.output
    assert r.output.startswith(f"Error: {config}:6: objective: dpo needs at least 8 preference pairs in the train "
                               f"split of snapshot {snap[:12]}, it has ")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_the_pipeline_trains_dpo_on_top_of_the_champion_and_registers_it(replyloop_home, tiny_base):  # noqa: F811
    """The team's training config says objective: dpo (after a first SFT run made a champion):
    the next run trains DPO on top of the champion, registers the result and gates it."""
    import yaml

    from pipeline_fixtures import make_workspace
    from replyloop.pipeline import run_pipeline

    config, store = make_workspace(replyloop_home, tiny_base, steps=4)
    first = run_pipeline(config, store)
    assert first.status == "succeeded" and first.action == "champion", first.message
    rows = sample_rows()
    for i, row in enumerate(rows[:40]):
        qid = store.add_question(row["prompt"], f"p{i}")
        store.decide(store.add_draft(qid, BAD[i % len(BAD)], model_name="m1"), "edit", "USUP1",
                     final_text=row["response"])
    train_yaml = replyloop_home / "train.yaml"
    data = yaml.safe_load(train_yaml.read_text(encoding="utf-8"))
    data.update({"objective": "dpo", "max_steps": 2, "batch_size": 4, "learning_rate": 0.002})
    train_yaml.write_text(yaml.safe_dump(data), encoding="utf-8")
    second = run_pipeline(config, store)
    assert second.status == "succeeded", second.message
    model = store.one("SELECT adapter_path FROM models WHERE id = ?", (second.model_id,))
    manifest = json.loads((Path(model["adapter_path"]) / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["objective"] == "dpo" and manifest["preferences"]["train_rows"] >= 8
    champion = store.one("SELECT adapter_path FROM models WHERE id = ?", (first.model_id,))["adapter_path"]
    assert Path(manifest["init_adapter"]) == Path(champion).resolve()


@pytest.mark.slow
def test_pipeline_preference_setting_picks_the_better_candidate_and_says_why(replyloop_home, tiny_base):  # noqa: F811
    """training.preference: dpo. Without enough pairs the run notes that the preference step did
    not run and goes on with SFT; with them, it trains SFT then DPO on the same snapshot, evaluates
    both on the same held-out questions, keeps the better one that passes and rejects the other."""
    from pipeline_fixtures import make_workspace
    from replyloop.pipeline import run_pipeline

    config, store = make_workspace(replyloop_home, tiny_base, steps=4)
    config.file.training.preference = "dpo"
    messages = []
    first = run_pipeline(config, store, notify=messages.append)
    assert first.status == "succeeded" and first.action == "champion", first.message
    assert "Preference step (dpo) not run: " in messages[-1] and "needs at least 8 preference pairs" in messages[-1]
    assert "the SFT adapter is the candidate" in messages[-1]

    for i, row in enumerate(sample_rows()[:40]):
        qid = store.add_question(row["prompt"], f"p{i}")
        store.decide(store.add_draft(qid, BAD[i % len(BAD)], model_name="m1"), "edit", "USUP1",
                     final_text=row["response"])
    second = run_pipeline(config, store, notify=messages.append)
    assert second.status == "succeeded", second.message
    run_models = store.query("SELECT id, name, status FROM models WHERE run_id = ? ORDER BY id", (second.run_id,))
    assert [m["name"].endswith("-dpo") for m in run_models] == [False, True]
    evals = {r["model_id"]: json.loads(r["report"]) for r in
             store.query("SELECT model_id, report FROM evaluations WHERE model_id IN (?, ?)",
                         tuple(m["id"] for m in run_models))}
    sft, dpo = (evals[m["id"]] for m in run_models)
    assert sft["snapshot_hash"] == dpo["snapshot_hash"] and sft["n"] == dpo["n"]
    assert [i["question"] for i in sft["items"]] == [i["question"] for i in dpo["items"]]
    better = run_models[1] if dpo["consistency"]["mean"] > sft["consistency"]["mean"] else run_models[0]
    worse = run_models[0] if better is run_models[1] else run_models[1]
    assert second.model_id == better["id"]
    assert store.one("SELECT status FROM models WHERE id = ?", (better["id"],))["status"] == "canary"
    assert store.one("SELECT status FROM models WHERE id = ?", (worse["id"],))["status"] == "rejected"
    label = "SFT+DPO" if better is run_models[1] else "SFT-only"
    assert f"Candidate: {label} ({better['name']}): " in messages[-1]
    assert f"on the same {sft['n']} held-out questions" in messages[-1]


@pytest.mark.slow
def test_kill_9_during_a_dpo_run_then_resume(world, tmp_path):
    """`replyloop train` killed with SIGKILL once checkpoint-2 is complete: output_dir holds no
    adapter or manifest, and `--resume` finishes the run from checkpoint-2."""
    import os
    import signal
    import subprocess
    import sys
    import time

    config = tmp_path / "dpo.yaml"
    out = tmp_path / "out"
    config.write_text(PREF_YAML.format(base=world["base"], out=out, db=world["db"], snap=world["snapshot"],
                                       objective="dpo", init=f"init_adapter: {world['sft']}\n")
                      .replace("max_steps: 2\nsave_steps: 100", "max_steps: 40\nsave_steps: 2"), encoding="utf-8")
    proc = subprocess.Popen([sys.executable, "-m", "replyloop", "train", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
    deadline = time.time() + 240
    while not (out / "checkpoint-2" / "state.json").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (out / "checkpoint-2" / "state.json").exists()
    assert not (out / "manifest.json").exists() and not (out / "adapter_model.safetensors").exists()
    from helpers import cli

    r = cli("train", "--config", config, "--resume")
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["metrics"]["steps"] == 40 and "checkpoint-" in manifest["resumed_from"]


def test_pipeline_preference_with_a_preference_objective_is_a_config_error(replyloop_home, tiny_base):  # noqa: F811
    import yaml

    from pipeline_fixtures import make_workspace
    from replyloop.pipeline import run_pipeline

    config, store = make_workspace(replyloop_home, tiny_base, steps=4)
    config.file.training.preference = "kto"
    train_yaml = replyloop_home / "train.yaml"
    train_yaml.write_text(yaml.safe_dump({**yaml.safe_load(train_yaml.read_text()), "objective": "dpo"}))
    result = run_pipeline(config, store)
    assert result.status == "config-error" and result.run_id is None
    assert "objective: dpo with training.preference: kto" in result.message and str(train_yaml) in result.message
    assert store.scalar("SELECT count(*) FROM training_runs") == 0
