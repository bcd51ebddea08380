"""The training config: lora-scripts keys, our keys, errors with file and line."""

from pathlib import Path

import pytest

from replyloop.errors import ConfigError
from replyloop.training.config import load_train_config

ROOT = Path(__file__).resolve().parent.parent


def test_lora_scripts_yaml_loads_unchanged(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    path = tmp_path / "configs" / "train.yaml"
    path.write_text(
        "train_data_dir: ./data\nmetadata_path: metadata.csv\nbase_model: ./models/base\ntask_type: CAUSAL_LM\n"
        "lora_rank: 16\nlora_alpha: 32\nlora_dropout: 0.05\ntarget_modules: [q_proj, v_proj]\nbatch_size: 2\n"
        "gradient_accumulation_steps: 4\nepochs: 2\nlearning_rate: 0.0001\nmax_seq_length: 256\n"
        "output_dir: ./output\nsave_steps: 50\nlogging_dir: ./logs\nresume_from_checkpoint: false\n",
        encoding="utf-8")
    monkeypatch.chdir(tmp_path)  # run from the project root, as lora-scripts users do
    cfg = load_train_config("configs/train.yaml")
    assert cfg.lora_rank == 16 and cfg.target_modules == ["q_proj", "v_proj"]
    assert cfg.metadata_file == tmp_path / "data" / "metadata.csv"  # not there yet: train_data_dir's
    assert cfg.output_path == (tmp_path / "output").resolve()  # outputs: the directory the command runs in
    assert cfg.logging_path == tmp_path / "logs"


def test_unknown_keys_are_named_with_their_lines(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("base_model: b\noutput_dir: o\ntrain_data_dir: d\nlora_rnk: 8\nwarmup_ratio: 0.1\n",
                    encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_train_config(path)
    assert str(exc.value) == (f"{path}:4: key 'lora_rnk': unknown key\n"
                              f"{path}:5: key 'warmup_ratio': unknown key")


def test_bad_values_and_cross_field_checks(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("base_model: b\noutput_dir: o\nlora_rank: 0\nquantization: 8bit\n", encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_train_config(path)
    message = str(exc.value)
    assert f"{path}:3: key 'lora_rank'" in message
    assert f"{path}:4: key 'quantization'" in message
    path.write_text("base_model: b\noutput_dir: o\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="dataset: folder needs train_data_dir"):
        load_train_config(path)


def test_missing_required_keys(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("dataset: store\n", encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_train_config(path)
    assert "key 'base_model': required key is missing" in str(exc.value)
    assert "key 'output_dir': required key is missing" in str(exc.value)


def test_shipped_example_config_loads():
    cfg = load_train_config(ROOT / "training" / "examples" / "train.yaml")
    assert cfg.dataset == "store" and cfg.packing is True


def test_shipped_article_config_is_the_articles_and_loads():
    from test_training_article import ARTICLE_YAML

    path = ROOT / "training" / "examples" / "cs_lora.yaml"
    keys = [line for line in path.read_text(encoding="utf-8").splitlines() if line and not line.startswith("#")]
    assert keys == ARTICLE_YAML.splitlines()[1:]  # the article's lines, unchanged
    cfg = load_train_config(path)
    assert cfg.task_type == "CAUSAL_LM" and cfg.save_steps == 100
