"""Every CLI command has help with an example and is documented in the README;
every shipped YAML file loads."""

import re
from pathlib import Path

import pytest
import typer

from replyloop.cli.main import app

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def all_commands():
    group = typer.main.get_command(app)

    def walk(cmd, prefix):
        subcommands = getattr(cmd, "commands", None)
        if subcommands:
            if getattr(cmd, "callback", None) and prefix and cmd.help:  # a group that also runs (replyloop train)
                yield prefix, cmd
            for name, sub in subcommands.items():
                yield from walk(sub, prefix + [name])
        else:
            yield prefix, cmd

    return [(" ".join(path), cmd) for path, cmd in walk(group, [])]


COMMANDS = all_commands()


def test_there_are_commands():
    names = {name for name, _ in COMMANDS}
    assert {"init", "data import", "data export", "data stats", "data snapshot", "retrain"} <= names


@pytest.mark.parametrize("name,cmd", COMMANDS, ids=[n for n, _ in COMMANDS])
def test_command_has_help_and_example(name, cmd):
    assert cmd.help and cmd.help.strip(), f"replyloop {name} has no help"
    assert "Example:" in cmd.help, f"replyloop {name} has no Example: line in its docstring"


@pytest.mark.parametrize("name", [n for n, _ in COMMANDS])
def test_command_is_in_readme(name):
    assert re.search(rf"`replyloop {re.escape(name)}\b", README), f"`replyloop {name}` is not documented in README.md"


def test_readme_quick_start_commands_match_ci():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    test_command = ci.strip().splitlines()[-1]
    assert test_command.startswith("pip install torch==2.13.0")
    assert f"```bash\n{test_command}\n```" in README
    assert "pip install torch==2.13.0 && pip install -e . && replyloop demo" in README


def test_every_shipped_yaml_loads():
    import yaml

    files = [p for p in ROOT.rglob("*.yaml") if ".venv" not in p.parts and "site-packages" not in p.parts]
    assert files
    for path in files:
        yaml.safe_load(path.read_text(encoding="utf-8"))


def test_every_config_key_is_documented():
    from replyloop.config import ConfigFile

    for section, field in ConfigFile.model_fields.items():
        for key in field.annotation.model_fields:
            assert f"{section}.{key}" in README or f"`{key}`" in README, f"{section}.{key} is not in README.md"
