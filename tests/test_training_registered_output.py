"""Registered adapters are immutable: Registry.register marks the directory and training (or merge /
export) refuses to replace it; an unregistered output_dir is still replaced as before."""

from __future__ import annotations

import json

import pytest
from training_fixtures import cfg_factory, data_dir, tiny_base, trained_adapter  # noqa: F401 - fixtures

from replyloop.registry import REGISTERED_MARKER, Registry, registered_marker
from replyloop.training.recipe import LoRAFinetuneRecipe, OutputRegisteredError, run_training


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _quiet(event):
    return None


def test_register_writes_the_marker(workspace, cfg_factory):
    config, store = workspace
    out = run_training(cfg_factory(max_steps=2), progress=_quiet).output_dir
    assert registered_marker(out) is None
    row = Registry(store).register(out)
    marker = json.loads((out / REGISTERED_MARKER).read_text(encoding="utf-8"))
    assert marker["model_id"] == row["id"] and marker["name"] == row["name"]
    assert marker["db_path"] == str(config.db_path.resolve())
    # registering again returns the row and puts a missing marker back
    (out / REGISTERED_MARKER).unlink()
    assert Registry(store).register(out)["id"] == row["id"]
    assert registered_marker(out)["model_id"] == row["id"]


def test_training_into_a_registered_output_dir_is_refused_and_leaves_it_untouched(workspace, cfg_factory):
    config, store = workspace
    cfg = cfg_factory(max_steps=2)
    out = run_training(cfg, progress=_quiet).output_dir
    reg = Registry(store)
    champion = reg.promote(reg.register(out)["id"], "alice", force=True)
    before = _snapshot(out)
    with pytest.raises(OutputRegisteredError) as info:
        run_training(cfg_factory(max_steps=2), progress=_quiet)
    message = str(info.value)
    assert str(out) in message and repr(champion["name"]) in message and "new directory" in message
    assert _snapshot(out) == before
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(".")) == []  # no temp dir left


def test_registered_while_training_save_output_refuses(workspace, cfg_factory):
    config, store = workspace
    out = run_training(cfg_factory(max_steps=2), progress=_quiet).output_dir
    recipe = LoRAFinetuneRecipe(cfg_factory(max_steps=2), progress=_quiet)
    try:
        recipe.setup()  # not registered yet: the early check passes
        recipe.train()
        Registry(store).register(out)
        before = _snapshot(out)
        with pytest.raises(OutputRegisteredError, match="registered adapters are never replaced"):
            recipe.save_output()
    finally:
        recipe.cleanup()
    assert _snapshot(out) == before
    assert not any(out.parent.glob(f".{out.name}.tmp-*"))


def test_an_unregistered_output_dir_is_still_replaced(cfg_factory):
    out = run_training(cfg_factory(max_steps=2), progress=_quiet).output_dir
    (out / "stale.txt").write_text("from an older run", encoding="utf-8")
    first = json.loads((out / "manifest.json").read_text(encoding="utf-8"))["created_at"]
    again = run_training(cfg_factory(max_steps=2), progress=_quiet).output_dir
    assert again == out and not (out / "stale.txt").exists()
    assert (out / "adapter_model.safetensors").exists()
    assert json.loads((out / "manifest.json").read_text(encoding="utf-8"))["created_at"] >= first


def test_merge_and_export_refuse_a_registered_directory(workspace, trained_adapter, cfg_factory, tmp_path):
    from replyloop.errors import TrainingError
    from replyloop.training.merge import export_adapter, merge_adapter

    config, store = workspace
    target = run_training(cfg_factory(max_steps=2), progress=_quiet).output_dir
    Registry(store).register(target)
    before = _snapshot(target)
    with pytest.raises(TrainingError, match="registered model"):
        export_adapter(trained_adapter, target)
    with pytest.raises(TrainingError, match="registered model"):
        merge_adapter(trained_adapter, target)
    assert _snapshot(target) == before
    assert not any(p.name.startswith(".") for p in target.parent.iterdir())


def test_prune_still_deletes_a_marked_retired_adapter(workspace, cfg_factory, tmp_path):
    config, store = workspace
    reg = Registry(store, keep_adapters=0)
    first = run_training(cfg_factory(max_steps=2, output_dir="out/first"), progress=_quiet).output_dir
    second = run_training(cfg_factory(max_steps=2, output_dir="out/second"), progress=_quiet).output_dir
    a = reg.promote(reg.register(first)["id"], "alice", force=True)
    reg.promote(reg.register(second)["id"], "alice", force=True)
    assert reg.get(a["id"])["status"] == "retired" and reg.get(a["id"])["adapter_deleted_at"]
    assert not first.exists() and (second / REGISTERED_MARKER).exists()
