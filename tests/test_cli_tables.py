"""Terminal tables never cut an id, a name or a rewritten text: a table when everything fits,
else one record per block (real `replyloop` subprocesses at the widths the issue names)."""

from __future__ import annotations

import json

import pytest

from helpers import cli, cli_subprocess
from test_registry import fake_adapter

LONG_NAME = "rl-20261202-003139-r1-incremental-from-champion"
HASH = "3add0ca2cff15b88"


@pytest.fixture
def models(workspace, tmp_path):
    config, _ = workspace
    for name in (LONG_NAME, "rl-20261202-010203-r2"):
        adapter = fake_adapter(tmp_path / "adapters", name, snapshot=HASH)
        assert cli("models", "register", adapter).exit_code == 0
    assert cli("models", "promote", "1", "--force").exit_code == 0
    return config


@pytest.mark.parametrize("columns", ["80", "400"])
def test_models_list_shows_every_name_and_hash_whole(models, tmp_path, columns):
    proc = cli_subprocess("models", "list", env={"COLUMNS": columns}, cwd=models.root)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "…" not in out
    for whole in (LONG_NAME, "rl-20261202-010203-r2", HASH, "champion", "candidate",
                  str(tmp_path / "adapters" / LONG_NAME)):
        assert whole in out, out
    assert out.startswith("┏" if columns == "400" else "model 1\n  name: " + LONG_NAME)
    listed = json.loads(cli("models", "list", "--json").stdout)
    assert [m["name"] for m in listed] == [LONG_NAME, "rl-20261202-010203-r2"]


LONG_REPLY = ("请提供快递条码，支持七天无理由退货。如果有任何问题请随时联系我们的客服团队，我们会尽快处理您的请求"
              "并给您满意的答复，快递条码在订单详情页可以找到。")


def test_check_fix_shows_the_whole_rewritten_text_and_messages():
    proc = cli_subprocess("check", "--fix", LONG_REPLY, env={"COLUMNS": "200"})  # cut even at 200 before
    assert proc.returncode == 0, proc.stderr
    fixed = json.loads(cli("check", "--fix", "--json", LONG_REPLY).stdout)
    assert fixed["fixed"] == LONG_REPLY.replace("快递条码", "电子面单")
    out = proc.stdout
    assert "…" not in out
    assert f"fixed: {fixed['fixed']}" in out  # the whole text on one line; the terminal wraps it
    for v in fixed["violations"]:
        assert f"{v['rule']} ({v['severity']}) at {v['start']}-{v['end']} '{v['match']}': {v['message']}" in out


@pytest.mark.parametrize("width", [80, 400])
def test_an_evaluation_summary_prints_as_plain_text_with_every_cell_whole(width):
    """`replyloop eval` prints its Markdown summary (written for Slack and files) without ## / ** / `
    marks, its table whole or one record per block."""
    import io

    from rich.console import Console

    from replyloop.cli.tables import print_markdown

    md = ("## Evaluation of rl-20261202-003139-r1 (model 2)\n\nHeld-out questions: 31 from snapshot `3add0ca2`.\n\n"
          "**Warning: 49% unknown**\n\n| category | n | mean | champion (rl-20261202-010203-r2) mean |\n"
          "| --- | ---: | ---: | ---: |\n| **all** | 31 | 0.466 | 0.347 |\n| 登录异常 | 6 | 0.500 | 0.300 |\n")
    out = io.StringIO()
    print_markdown(md, Console(file=out, width=width))
    text = out.getvalue()
    assert not any(mark in text for mark in ("##", "**", "`", "| ---"))
    for whole in ("Evaluation of rl-20261202-003139-r1 (model 2)", "3add0ca2", "Warning: 49% unknown",
                  "champion (rl-20261202-010203-r2) mean", "登录异常", "0.466", "0.347", "all"):
        assert whole in text
