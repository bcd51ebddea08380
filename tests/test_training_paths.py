"""Issue 13, part 1 and 3: task_type names, the path rule (the directory the command runs in,
then the config's folder; metadata_path as given, then in train_data_dir), every place tried
in the error, checkpoints in output_dir kept after the run, notes, and a pipeline run's copy
whose messages name the user's file."""

import json
import shutil

import pytest
import yaml

from helpers import cli
from replyloop.errors import ConfigError
from replyloop.training.config import load_train_config, run_config_data
from training_fixtures import FAST, SAMPLES, tiny_base  # noqa: F401

BASE = "base_model: ./models/base\noutput_dir: ./output/x\ntrain_data_dir: ./data\n"


def project(root, files=("data/metadata.csv",), config="configs/train.yaml", text=BASE):
    (root / "models" / "base").mkdir(parents=True)
    (root / "models" / "base" / "config.json").write_text("{}", encoding="utf-8")
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SAMPLES, root / name)
    (root / config).parent.mkdir(parents=True, exist_ok=True)
    (root / config).write_text(text, encoding="utf-8")
    return root / config


@pytest.mark.parametrize("value", ["text-generation", "CAUSAL_LM", "causal_lm", "Text-Generation", " TEXT-GENERATION "])
def test_task_type_accepts_the_names_such_configs_use(tmp_path, value):
    path = tmp_path / "t.yaml"
    path.write_text(BASE + f'task_type: "{value}"\n', encoding="utf-8")
    assert load_train_config(path).task_type == "CAUSAL_LM"


def test_another_task_type_lists_the_accepted_values(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(BASE + "task_type: SEQ_2_SEQ_LM\n", encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_train_config(path)
    assert str(exc.value) == (f"{path}:4: key 'task_type': 'SEQ_2_SEQ_LM' is not a task replyloop trains; "
                              "accepted: CAUSAL_LM, text-generation (any case; both train a causal LM)")


def test_paths_resolve_from_the_directory_the_command_runs_in(tmp_path, monkeypatch):
    """The article's layout: configs/x.yaml run from the project root, ./data meaning the root's."""
    config = project(tmp_path, files=["data/prompts.csv"],
                     text=BASE + 'metadata_path: "./data/prompts.csv"\nlogging_dir: ./output/x/logs\n')
    monkeypatch.chdir(tmp_path)
    cfg = load_train_config("configs/train.yaml")
    cfg.check_paths()
    assert cfg.path("train_data_dir") == tmp_path / "data"
    assert cfg.metadata_file == tmp_path / "data" / "prompts.csv"  # as given, not joined onto train_data_dir
    assert cfg.path("base_model") == tmp_path / "models" / "base"
    assert cfg.output_path == tmp_path / "output" / "x"
    assert cfg.logging_path == tmp_path / "output" / "x" / "logs"
    assert config.parent == tmp_path / "configs"


def test_metadata_path_relative_to_train_data_dir_still_works(tmp_path, monkeypatch):
    project(tmp_path, files=["data/prompts.csv"], text=BASE + "metadata_path: prompts.csv\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_train_config("configs/train.yaml")
    cfg.check_paths()
    assert cfg.metadata_file == tmp_path / "data" / "prompts.csv"
    absolute = tmp_path / "elsewhere.csv"
    shutil.copy(SAMPLES, absolute)
    cfg = load_train_config("configs/train.yaml", metadata_path=str(absolute))
    assert cfg.metadata_file == absolute


def test_inputs_fall_back_to_the_config_files_folder(tmp_path, monkeypatch):
    """A config written relative to its own folder still runs from anywhere (inputs only)."""
    config = project(tmp_path / "proj", config="train.yaml")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    cfg = load_train_config(config)
    cfg.check_paths()
    assert cfg.path("base_model") == tmp_path / "proj" / "models" / "base"
    assert cfg.metadata_file == tmp_path / "proj" / "data" / "metadata.csv"
    assert cfg.output_path == tmp_path / "elsewhere" / "output" / "x"  # outputs: where the command runs


def test_a_missing_path_names_the_key_the_line_and_every_place_tried(tmp_path, monkeypatch):
    config = project(tmp_path, files=[], text=BASE + 'metadata_path: "./data/prompts.csv"\n'
                                                     'resume_from_checkpoint: ./output/x/checkpoint-500\n')
    (tmp_path / "data").mkdir()
    shutil.rmtree(tmp_path / "models")
    monkeypatch.chdir(tmp_path)
    result = cli("train", "--config", "configs/train.yaml")
    assert result.exit_code == 2
    c, r = "configs/train.yaml", tmp_path
    assert result.output.splitlines() == [
        f"Error: {c}:1: base_model: ./models/base does not exist (tried {r / 'models/base'}, "
        f"{r / 'configs/models/base'}); a local model directory is needed, replyloop never downloads models",
        f"{c}:4: metadata_path: ./data/prompts.csv does not exist (tried {r / 'data/prompts.csv'}, "
        f"{r / 'configs/data/prompts.csv'}, {r / 'data/data/prompts.csv'})",
        f"{c}:5: resume_from_checkpoint: ./output/x/checkpoint-500 does not exist (tried "
        f"{r / 'output/x/checkpoint-500'}, {r / 'configs/output/x/checkpoint-500'}, "
        f"{r / 'output/x/output/x/checkpoint-500'}); {r / 'output/x'} holds no checkpoint yet"]
    assert not (tmp_path / "output").exists()  # nothing written


def test_a_folder_is_not_a_metadata_file(tmp_path, monkeypatch):
    project(tmp_path, files=["data/prompts.csv"], text=BASE + "metadata_path: prompts.csv\n")
    (tmp_path / "prompts.csv").mkdir()  # a folder of that name where the command runs: not the CSV
    monkeypatch.chdir(tmp_path)
    cfg = load_train_config("configs/train.yaml")
    cfg.check_paths()
    assert cfg.metadata_file == tmp_path / "data" / "prompts.csv"


def test_an_ambiguous_metadata_path_is_an_error(tmp_path, monkeypatch):
    project(tmp_path, files=["prompts.csv", "data/prompts.csv"], text=BASE + "metadata_path: prompts.csv\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as exc:
        load_train_config("configs/train.yaml").check_paths()
    assert str(exc.value) == (f"configs/train.yaml:4: metadata_path: prompts.csv is ambiguous: both "
                              f"{tmp_path / 'prompts.csv'} and {tmp_path / 'data/prompts.csv'} exist; write the "
                              f"path you mean (e.g. {tmp_path / 'prompts.csv'})")


TRAIN = BASE.replace("./models/base", "{base}") + "".join(
    f"{k}: {json.dumps(v)}\n" for k, v in FAST.items() if k not in ("max_steps", "save_steps", "eval_steps"))


def _without_token_lengths(text: str) -> str:
    """Output less the token-length report every run prints first."""
    return "".join(line for line in text.splitlines(True) if not line.startswith("token lengths of "))


def _run(config, **kw):
    from replyloop.training.recipe import run_training

    notes = []
    result = run_training(load_train_config(config, **kw), progress=lambda e: None, notice=notes.append)
    return result, notes


def test_checkpoints_logs_and_notes_of_a_run(tmp_path, tiny_base, monkeypatch):
    """Checkpoints in output_dir/checkpoint-<step> kept after the run (the rename keeps them and a
    logging_dir inside output_dir); resume by path, by name and `true`; notes for other CSVs
    and for save_steps beyond the run."""
    from peft import PeftModel
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from transformers import AutoModelForCausalLM

    text = TRAIN.format(base=tiny_base) + "max_steps: 6\nsave_steps: 2\neval_steps: 3\nlogging_dir: ./output/x/logs\n"
    config = project(tmp_path, files=["data/metadata.csv", "data/old_export.csv"], text=text)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "output" / "x"
    out.mkdir(parents=True)
    (out / "NOTES.txt").write_text("a stray file", encoding="utf-8")
    first, notes = _run(config)
    assert notes == [f"train_data_dir {tmp_path / 'data'} holds 1 other CSV file(s) that are not trained on: "
                     f"old_export.csv; only metadata_path {tmp_path / 'data/metadata.csv'} is read"]
    assert first.manifest["notes"] == notes and first.manifest["dataset"]["other_csv"] == [
        str(tmp_path / "data" / "old_export.csv")]
    assert sorted(p.name for p in out.iterdir()) == [  # NOTES.txt: replaced with the rest of the old dir
        "README.md", "adapter_config.json", "adapter_model.safetensors", "checkpoint-2", "checkpoint-4", "logs",
        "manifest.json"]
    acc = EventAccumulator(str(out / "logs"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]
    base = AutoModelForCausalLM.from_pretrained(str(tiny_base))
    assert PeftModel.from_pretrained(base, str(out / "checkpoint-4")).peft_config["default"].r == 8

    # a path that does not exist lists the checkpoints that do
    with pytest.raises(ConfigError) as exc:
        _run(config, resume_from_checkpoint="./output/x/checkpoint-3")
    assert str(exc.value).endswith(f"; {out} holds checkpoint-2, checkpoint-4")
    # by path, by name inside output_dir, and true = the latest: all continue to the same result
    for value in ("./output/x/checkpoint-4", "checkpoint-4", True):
        resumed, notes = _run(config, resume_from_checkpoint=value)
        assert resumed.manifest["resumed_from"] == str(out / "checkpoint-4")
        assert notes[-1] == (f"{config}:11: save_steps is 2 and this run ends at step 6: it writes no further "
                             "checkpoint, so if it is interrupted it starts again from step 4; set save_steps "
                             "below 2 to be able to resume")
        for key in ("steps", "train_loss", "eval_loss", "best_step"):
            assert resumed.manifest["metrics"][key] == first.manifest["metrics"][key]
    # a fresh run into the same output_dir: told, and its first checkpoint replaces the earlier run's
    fresh, notes = _run(config, max_steps=3)
    assert notes[-1] == (f"output_dir {out} holds checkpoint-2, checkpoint-4 from an earlier run; this run "
                         "starts fresh and its first checkpoint replaces them (set resume_from_checkpoint to "
                         "continue from one instead)")
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]


def test_save_steps_beyond_the_run_is_said_when_it_starts(tmp_path, tiny_base, monkeypatch):
    text = TRAIN.format(base=tiny_base) + "max_steps: 3\nsave_steps: 100\neval_steps: 3\n"
    config = project(tmp_path, text=text)
    monkeypatch.chdir(tmp_path)
    result = cli("train", "--config", "configs/train.yaml")
    assert result.exit_code == 0, result.output
    assert _without_token_lengths(result.stderr) == ("Note: configs/train.yaml:11: save_steps is 100 and this run ends at step 3: it "
                             "writes no checkpoint, so if it is interrupted it starts again from step 0; set "
                             "save_steps below 3 to be able to resume\n")
    assert not list((tmp_path / "output" / "x").glob("checkpoint-*"))
    assert config.exists()


def test_data_changed_on_resume_names_what_the_user_wrote(tmp_path, tiny_base, monkeypatch):
    from replyloop.training.checkpointing import ResumeDataError

    text = TRAIN.format(base=tiny_base) + "max_steps: 4\nsave_steps: 2\neval_steps: 2\nkeep_checkpoints: 1\n"
    config = project(tmp_path, text=text)
    monkeypatch.chdir(tmp_path)
    _run(config)
    meta = tmp_path / "data" / "metadata.csv"
    meta.write_text(meta.read_text(encoding="utf-8") + "新问题,新回答,物流查询,\n", encoding="utf-8")
    config.write_text(text + "resume_from_checkpoint: true\n", encoding="utf-8")
    with pytest.raises(ResumeDataError) as exc:
        _run(config)
    line = len(text.splitlines()) + 1
    assert str(exc.value).endswith(f"restore the file or start fresh with resume_from_checkpoint: false "
                                   f"({config}:{line})")
    config.write_text(text, encoding="utf-8")
    result = cli("train", "--config", "configs/train.yaml", "--resume")
    assert result.exit_code == 1
    assert result.output.rstrip().endswith("restore the file or start fresh without --resume")


def test_a_pipeline_runs_copy_resolves_from_the_users_file_and_names_its_lines(tmp_path, tiny_base, monkeypatch,
                                                                             workspace):
    """The pipeline writes runs/run-N/train.yaml from the user's config with run_config_data:
    relative paths resolved from the user's file, errors naming the user's file and line."""
    ws = tmp_path / "ws"
    (ws / "models").mkdir(parents=True)
    shutil.copytree(tiny_base, ws / "models" / "base")
    user = ws / "train.yaml"
    user.write_text("# the team's config\nbase_model: models/base\noutput_dir: unused\n"
                    "target_modules: [q_proj, query_key_value]\nmax_steps: 2\n", encoding="utf-8")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # the scheduler runs from anywhere
    from replyloop.dataio import read_samples

    _, db = workspace
    db.add_samples(read_samples(SAMPLES))
    overrides = {"dataset": "store", "store_path": str(db.path), "output_dir": str(ws / "adapters" / "r1"),
                 "train_data_dir": None}
    data = run_config_data(user, overrides, cwd=ws)
    assert data["base_model"] == str(ws / "models" / "base")
    assert data["generated_from"] == {"file": str(user), "overrides": ["dataset", "output_dir", "store_path"]}
    assert "train_data_dir" not in data  # None: removed
    run = ws / "runs" / "run-1" / "train.yaml"
    run.parent.mkdir(parents=True)
    run.write_text("# generated\n" + yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    cfg = load_train_config(run)
    assert cfg.where("target_modules") == f"{user}:4: "  # the user's line
    assert cfg.where("output_dir").startswith(f"{run}:")  # the pipeline's own key: the copy
    result = cli("train", "--config", run)  # the trainer's own check, as the pipeline's child runs it
    assert result.exit_code == 2, result.output
    assert _without_token_lengths(result.output).startswith(f"Error: {user}:4: target_modules: query_key_value not in the model base")

    user.write_text(user.read_text(encoding="utf-8").replace("models/base", "models/gone"), encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        run_config_data(user, overrides, cwd=ws)
    assert str(exc.value) == (f"{user}:2: base_model: models/gone does not exist ({ws / 'models/gone'}); a local "
                              f"model directory is needed, replyloop never downloads models")
