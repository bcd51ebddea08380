"""The load benchmark, run small (no timing asserts), and the manifest."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_bot_load_small(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bot_load
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    result = bot_load.main(["--cards", "40", "--users", "4", "--double", "0.25", "--think-ms", "0",
                            "--baseline-requests", "20", "--timeout", "60", "--json", str(tmp_path / "r.json")])
    assert result["lost"] == 0 and result["duplicated"] == 0
    assert result["http_status"] == {200: result["clicks"]}
    assert result["ephemeral_notices"] == result["double_clicks"]
    assert (tmp_path / "r.json").exists()


def test_manifest_declares_what_the_bot_uses():
    manifest = yaml.safe_load((ROOT / "bot" / "manifest.yaml").read_text(encoding="utf-8"))
    scopes = set(manifest["oauth_config"]["scopes"]["bot"])
    assert {"chat:write", "commands", "usergroups:read", "channels:history", "files:write"} <= scopes
    assert [c["command"] for c in manifest["features"]["slash_commands"]] == ["/retrain", "/reply"]
    settings = manifest["settings"]
    assert settings["interactivity"]["is_enabled"] is True
    assert set(settings["event_subscriptions"]["bot_events"]) == {"app_home_opened", "message.channels",
                                                                   "message.groups"}
    assert settings["socket_mode_enabled"] is True
    assert manifest["features"]["app_home"]["home_tab_enabled"] is True
