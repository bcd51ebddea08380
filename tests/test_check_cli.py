"""`replyloop check`: output formats and exit codes."""

from __future__ import annotations

import json

from helpers import cli, cli_subprocess


def test_blocked_text_exits_1_with_json():
    result = cli("check", "--json", "我们保证全額賠付")
    assert result.exit_code == 1, result.output
    row = json.loads(result.stdout)
    assert row == {"id": None, "verdict": "block", "violations": [{
        "rule": "full-compensation", "severity": "block", "message": "不得承诺全额赔付（赔付以审核结果为准）",
        "start": 4, "end": 8, "match": "全額賠付", "suggestion": None}]}


def test_warn_and_pass_exit_0():
    assert cli("check", "这个绝对没问题").exit_code == 0
    result = cli("check", "--json", "您好，请提供订单号")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {"id": None, "verdict": "pass", "violations": []}


def test_table_output():
    result = cli("check", "请提供快递条码")
    assert result.exit_code == 0
    assert "warn" in result.stdout and "快递条码" in result.stdout and "电子面单" in result.stdout
    assert "1 reply(ies): 0 blocked, 1 warned, 0 passed" in result.stdout


def test_fix():
    result = cli("check", "--json", "--fix", "请提供快递条码，支持7日退货")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["fixed"] == "请提供电子面单，支持七天无理由退货"


def test_file_of_replies(tmp_path):
    path = tmp_path / "replies.jsonl"
    lines = [{"id": "a", "text": "全额赔付"}, {"id": "b", "text": "我们无法承诺全额赔付"}, {"id": 3, "text": "绝对没问题"}]
    path.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n\n", encoding="utf-8")
    result = cli("check", "--json", "--file", path)
    assert result.exit_code == 1
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["id"], r["verdict"]) for r in rows] == [("a", "block"), ("b", "pass"), (3, "warn")]
    table = cli("check", "--file", path)
    assert table.exit_code == 1 and "3 reply(ies): 1 blocked, 1 warned, 1 passed" in table.stdout


def test_bad_jsonl_line_exits_2_with_file_and_line(tmp_path):
    path = tmp_path / "replies.jsonl"
    path.write_text('{"id": 1, "text": "ok"}\n{"id": 2, "txt": "oops"}\n', encoding="utf-8")
    result = cli("check", "--file", path)
    assert result.exit_code == 2
    assert result.output.strip().endswith(f"Error: {path}:2: 'text' must be a string")
    path.write_text('{"id": 1, "text": "ok"}\nnot json\n', encoding="utf-8")
    assert f"{path}:2: bad JSON" in cli("check", "--file", path).output


def test_usage_errors_exit_2(tmp_path):
    result = cli("check")
    assert result.exit_code == 2
    assert "Error: give either TEXT or --file (exactly one)" in result.output
    assert cli("check", "--file", tmp_path / "missing.jsonl").exit_code == 2
    assert cli("check", "--bogus-option", "x").exit_code == 2


def test_bad_policy_dir_exits_2(tmp_path):
    (tmp_path / "p.yaml").write_text("rules:\n  - id: x\n    severity: block\n    message: m\n    patterns: ['(a+)+']\n",
                                     encoding="utf-8")
    result = cli("check", "--policies", tmp_path, "hello")
    assert result.exit_code == 2
    assert f"Error: {tmp_path / 'p.yaml'}:5: rule 'x': pattern '(a+)+'" in result.output


def test_custom_policies_dir(tmp_path):
    (tmp_path / "p.yaml").write_text("rules:\n  - {id: no-free, severity: block, message: m, phrases: [免费]}\n",
                                     encoding="utf-8")
    assert cli("check", "--policies", tmp_path, "全额赔付").exit_code == 0
    assert cli("check", "--policies", tmp_path, "免 費").exit_code == 1


def test_workspace_policies_dir_is_used(workspace, replyloop_home):
    config, _ = workspace
    custom = replyloop_home / "my-policies"
    custom.mkdir()
    (custom / "p.yaml").write_text("rules:\n  - {id: no-free, severity: block, message: m, phrases: [免费]}\n",
                                   encoding="utf-8")
    cfg_path = replyloop_home / "replyloop.yaml"
    text = cfg_path.read_text(encoding="utf-8")
    assert '\npolicies:\n  dir: ""' in text
    cfg_path.write_text(text.replace('\npolicies:\n  dir: ""', "\npolicies:\n  dir: my-policies"), encoding="utf-8")
    from replyloop.config import load_config

    assert load_config(cfg_path).policies_dir == custom
    assert cli("check", "免费").exit_code == 1
    assert cli("check", "全额赔付").exit_code == 0


def test_real_subprocess():
    proc = cli_subprocess("check", "--json", "不用担心，我们全额赔付")
    assert proc.returncode == 1, proc.stderr
    assert json.loads(proc.stdout)["violations"][0]["match"] == "全额赔付"


def test_file_with_unicode_line_separators_in_a_reply(tmp_path):
    # U+2028/U+2029 are common in text pasted from web pages or Slack; json.dumps leaves them raw.
    path = tmp_path / "replies.jsonl"
    lines = [{"id": "a", "text": "您好\u2028我们全额赔付"}, {"id": "b", "text": "稍等\u2029马上处理\x85谢谢"}]
    path.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n", encoding="utf-8")
    result = cli("check", "--json", "--file", path)
    assert result.exit_code == 1, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["id"], r["verdict"]) for r in rows] == [("a", "block"), ("b", "pass")]
