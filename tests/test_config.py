from pathlib import Path

import pytest

from helpers import cli
from replyloop.config import load_config, write_default_config
from replyloop.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_default_config_loads_and_resolves_paths(replyloop_home):
    path = write_default_config(replyloop_home)
    config = load_config(path)
    assert config.db_path == replyloop_home / "replyloop.db"
    assert config.file.scheduler.min_new_samples == 50
    assert config.policies_dir.name == "policies"
    assert config.slack.review_channel == "cs-review"


def test_unknown_key_names_file_line_and_key(tmp_path):
    path = write(tmp_path / "replyloop.yaml", "store:\n  path: x.db\nscheduler:\n  min_new_sampels: 10\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert str(exc.value) == f"{path}:4: key 'scheduler.min_new_sampels': unknown key"


def test_wrong_type_and_all_errors_reported_together(tmp_path):
    path = write(tmp_path / "replyloop.yaml",
                 "scheduler:\n  min_new_samples: many\nevaluation:\n  floor: 3\nbogus: 1\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    lines = str(exc.value).splitlines()
    assert len(lines) == 3
    assert lines[0].startswith(f"{path}:2: key 'scheduler.min_new_samples': ")
    assert lines[1].startswith(f"{path}:4: key 'evaluation.floor': ")
    assert lines[2] == f"{path}:5: key 'bogus': unknown key"


def test_invalid_yaml_names_line(tmp_path):
    path = write(tmp_path / "replyloop.yaml", "store:\n  path: [unclosed\n")
    with pytest.raises(ConfigError, match=r"replyloop.yaml:\d+: invalid YAML"):
        load_config(path)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("text, message", [
    ("slack:\n  review_chanel: x\n", "2: key 'slack.review_chanel': unknown key"),
    ("store:\n  path: a.db\nstore:\n  heldout_share: 0.2\n", "3: duplicate key 'store' (first at line 1)"),
])
def test_cli_config_error_exit_code_2_no_traceback(replyloop_home, text, message):
    write(replyloop_home / "replyloop.yaml", text)
    result = cli("data", "stats")
    assert result.exit_code == 2
    assert result.stderr == f"Error: {replyloop_home / 'replyloop.yaml'}:{message}\n"
    assert "Traceback" not in result.output


def test_cli_without_workspace_says_how_to_create_one(replyloop_home):
    result = cli("data", "stats")
    assert result.exit_code == 2
    assert "replyloop init" in result.stderr


def test_secrets_come_from_environment_and_are_redacted(monkeypatch):
    from replyloop.config import Secrets

    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-secret-value")
    secrets = Secrets.from_env()
    assert secrets.slack_bot_token == "xoxb-secret-value"
    assert "xoxb" not in repr(secrets)


def test_template_documents_every_key():
    from replyloop.config import ConfigFile, template_text
    import yaml

    data = yaml.safe_load(template_text())
    for section, model in ConfigFile.model_fields.items():
        keys = set(model.annotation.model_fields)
        assert set(data[section]) == keys, section


@pytest.mark.parametrize("text, message", [
    # PyYAML keeps the last of two equal keys: the first store: section would be lost silently
    ("store:\n  path: a.db\nstore:\n  heldout_share: 0.2\n", "3: duplicate key 'store' (first at line 1)"),
    ("scheduler:\n  min_new_samples: 10\n  min_new_samples: 20\n",
     "3: duplicate key 'scheduler.min_new_samples' (first at line 2)"),
])
def test_duplicate_key_is_an_error_naming_file_and_line(tmp_path, text, message):
    path = write(tmp_path / "replyloop.yaml", text)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert str(exc.value) == f"{path}:{message}"
