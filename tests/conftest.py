"""Shared fixtures. Every test runs with REPLYLOOP_HOME in a fresh temp dir and no network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["PYTHONPATH"] = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
os.environ.setdefault("OMP_NUM_THREADS", "1")
# The tests written against English strings read English: $REPLYLOOP_LANGUAGE overrides a workspace's
# ui.language (zh-CN in a new one) for the process and its children. Tests of the Chinese interface
# take the `chinese` fixture, which removes the override (tests/test_i18n*.py).
os.environ["REPLYLOOP_LANGUAGE"] = "en"


@pytest.fixture(autouse=True)
def replyloop_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("REPLYLOOP_HOME", str(home))
    for name in ("SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "SLACK_SIGNING_SECRET", "REPLYLOOP_INTAKE_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture
def chinese(monkeypatch):
    """No language override: a workspace's own ui.language applies (zh-CN by default)."""
    monkeypatch.delenv("REPLYLOOP_LANGUAGE", raising=False)
    from replyloop import i18n

    yield
    i18n.set_workspace_language(None)


@pytest.fixture
def workspace(replyloop_home):
    """An initialised workspace: (Config, Store) with the default config file."""
    from replyloop.config import load_config, write_default_config
    from replyloop.store import Store

    path = write_default_config(replyloop_home)
    config = load_config(path)
    store = Store(config.db_path)
    yield config, store
    store.close()


@pytest.fixture
def samples_csv() -> Path:
    return ROOT / "replyloop" / "samples" / "cs_samples.csv"
