"""The CLI's human-readable output in the workspace's language (issue 22), through real
`python -m replyloop` subprocesses: Chinese in a workspace made with the defaults, today's English
with `ui.language: en` or REPLYLOOP_LANGUAGE=en, and --json byte-identical in both."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from test_registry import fake_adapter

BLOCKED = "我们保证全额赔付，请提供快递条码"


def _run(*args, cwd: Path, lang: str | None = None, columns: str = "200") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "REPLYLOOP_LANGUAGE"}
    env["COLUMNS"] = columns
    env["REPLYLOOP_HOME"] = str(cwd)  # the workspace is the folder the command runs in
    if lang:
        env["REPLYLOOP_LANGUAGE"] = lang
    return subprocess.run([sys.executable, "-m", "replyloop", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=120)


def _all(commands, **kw) -> list[subprocess.CompletedProcess]:
    """Commands that only read the workspace, two at a time (the machine has two cores)."""
    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(lambda args: _run(*args, **kw), commands))


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """`replyloop init --samples` with the defaults (no language override: zh-CN), two registered
    models (one the champion, with an evaluation), a snapshot, and `replyloop-en.yaml` beside
    `replyloop.yaml`: the same workspace with `ui.language: en`."""
    root = tmp_path_factory.mktemp("i18n-cli") / "cs"
    init = _run("init", root, "--samples", cwd=root.parent)
    assert init.returncode == 0, init.stderr
    adapters = root.parent / "adapters"
    steps = [("models", "register", fake_adapter(adapters, "rl-first", snapshot="3add0ca2cff15b88")),
             ("models", "register", fake_adapter(adapters, "rl-second")),
             ("models", "promote", "1", "--force", "--reason", "first"),
             ("data", "snapshot")]
    outputs = []
    for args in steps:
        proc = _run(*args, cwd=root)
        assert proc.returncode == 0, (args, proc.stderr)
        outputs.append(proc.stdout)
    text = (root / "replyloop.yaml").read_text(encoding="utf-8")
    assert "  language: zh-CN" in text  # the default workspace reads Chinese
    (root / "replyloop-en.yaml").write_text(text.replace("  language: zh-CN", "  language: en"), encoding="utf-8")
    return root, init.stdout, outputs


def test_init_and_the_first_steps_print_chinese(ws):
    root, init_out, steps = ws
    assert init_out.splitlines() == [
        f"已写入 {root / 'replyloop.yaml'}",
        f"已写入 {root / 'train.yaml'}：请在其中把 base_model 设为本地模型目录",
        f"数据库 {root / 'replyloop.db'} 已就绪",
        "已导入 180 条样本，跳过 0 条重复",
    ]
    assert steps == ["模型 1 rl-first：候选\n", "模型 2 rl-second：候选\n", "已晋升 模型 1 rl-first：冠军\n",
                     "快照 3add0ca2cff15b88：训练 149 条，留出 31 条（已创建）\n"]
    again = _run("init", root, cwd=root.parent)  # an existing workspace: kept, said in its language
    assert again.stdout.startswith(f"{root / 'replyloop.yaml'} 已存在，保留不动（如需覆盖，请加 --force）。\n")
    again_en = _run("init", root, cwd=root.parent, lang="en")
    assert again_en.stdout.startswith(f"{root / 'replyloop.yaml'} already exists; keeping it (use --force to overwrite).\n")


def test_read_commands_print_chinese_by_default(ws):
    root, _init, _steps = ws
    stats, models, check, fixed, show, outbox, rules, recover, bad = _all([
        ("data", "stats"), ("models", "list"), ("check", BLOCKED), ("check", "--fix", "请提供快递条码"),
        ("models", "show", "1"), ("outbox", "list"), ("rules", "list"), ("retrain", "--recover"), ("check",),
    ], cwd=root)

    assert stats.returncode == 0, stats.stderr
    assert stats.stdout.startswith("样本：180   问题：0   待审核：0\n冠军模型的快照：3add0ca2cff15b88   此后通过：0\n")
    for header in ("┃ 类别 ", "┃ 样本 ┃", "┃ 来源 ", "│ 导入 │"):
        assert header in stats.stdout, stats.stdout
    assert not re.search(r"[A-Za-z]", stats.stdout.split("\n", 1)[1].replace("3add0ca2cff15b88", "")), stats.stdout

    assert models.returncode == 0, models.stderr
    head = models.stdout.splitlines()[1]
    assert [c.strip() for c in head.strip("┃").split("┃")] == [
        "模型", "名称", "状态", "灰度 %", "快照", "均值", "门槛", "晋升", "适配器"]
    assert "│ 冠军 " in models.stdout and "│ 候选 " in models.stdout, models.stdout
    assert "champion" not in models.stdout and "candidate" not in models.stdout

    assert check.returncode == 1  # the exit code does not depend on the language
    assert "┃ 结论 " in check.stdout and "│ 拦截 " in check.stdout and "full-compensation (拦截)" in check.stdout
    assert check.stdout.rstrip().endswith("1 条回复：拦截 1，警告 0，通过 0"), check.stdout
    assert fixed.returncode == 0 and "│ 修正后 " in fixed.stdout and "请提供电子面单" in fixed.stdout

    assert show.stdout.startswith(f"模型 1 rl-first：冠军\n  适配器路径：{root.parent / 'adapters' / 'rl-first'}\n")
    assert "  审核：0（通过 0，编辑后通过 0，驳回 0；无需编辑即通过 无）\n  尚未评估\n" in show.stdout
    assert re.search(r"  晋升时间：20\d\d年\d+月\d+日 \d\d:\d\d:\d\d\n", show.stdout), show.stdout
    assert outbox.stdout == "已送达 0，待发送 0，死信 0\n"
    assert rules.stdout == "没有规则建议。\n"
    assert recover.stdout == "已恢复 0 次运行：无\n"
    assert (bad.returncode, bad.stdout, bad.stderr) == (2, "", "Error: 请给出 TEXT 或 --file（二者选一）\n")


def test_ui_language_en_and_the_environment_give_todays_english(ws):
    root, _init, _steps = ws
    config = root / "replyloop-en.yaml"
    stats, models, check, fixed, show, outbox, rules, recover, bad = _all([
        ("data", "stats", "-c", config), ("models", "list", "-c", config), ("check", "-c", config, BLOCKED),
        ("check", "-c", config, "--fix", "请提供快递条码"), ("models", "show", "1", "-c", config),
        ("outbox", "list", "-c", config), ("rules", "list", "-c", config), ("retrain", "--recover", "-c", config),
        ("check", "-c", config),
    ], cwd=root)
    assert stats.stdout.startswith("Samples: 180   questions: 0   pending reviews: 0\n"
                                   "Champion's snapshot: 3add0ca2cff15b88   approved since: 0\n"), stats.stdout
    assert "┃ Category " in stats.stdout and "┃ Samples ┃" in stats.stdout and "│ import │" in stats.stdout
    assert not re.search(r"[\u4e00-\u9fff]", stats.stdout.replace("退换货政策", "").replace("物流查询", "")
                         .replace("售后服务", "").replace("支付失败", "").replace("登录异常", ""))
    head = models.stdout.splitlines()[1]
    assert [c.strip() for c in head.strip("┃").split("┃")] == [
        "model", "name", "status", "canary %", "snapshot", "mean", "gate", "promoted", "adapter"]
    assert "│ champion " in models.stdout and "│ candidate " in models.stdout
    assert check.returncode == 1 and "┃ verdict " in check.stdout and "│ block " in check.stdout
    assert check.stdout.rstrip().endswith("1 reply(ies): 1 blocked, 0 warned, 0 passed")
    assert "│ fixed " in fixed.stdout
    assert show.stdout.startswith("model 1 rl-first: champion\n  adapter_path: ")
    assert "  reviews: 0 (approved 0, edited 0, rejected 0; approved without edit n/a)\n  not evaluated yet\n" \
        in show.stdout
    assert outbox.stdout == "0 delivered, 0 pending, 0 dead-lettered\n"
    assert rules.stdout == "No rule proposals.\n"
    assert recover.stdout == "Recovered 0 run(s): none\n"
    assert (bad.returncode, bad.stderr) == (2, "Error: give either TEXT or --file (exactly one)\n")
    # REPLYLOOP_LANGUAGE=en in the Chinese workspace: the same English
    env_stats = _run("data", "stats", cwd=root, lang="en")
    assert env_stats.stdout == stats.stdout


def test_json_output_is_byte_identical_in_both_languages(ws):
    root, _init, _steps = ws
    commands = [("data", "stats", "--json"), ("check", "--json", "--fix", BLOCKED), ("models", "list", "--json"),
                ("models", "show", "1", "--json"), ("rules", "list", "--json"), ("outbox", "list", "--json"),
                ("data", "snapshot", "--json")]
    zh = _all(commands, cwd=root)
    en = _all([(*args, "-c", root / "replyloop-en.yaml") for args in commands], cwd=root)
    for args, a, b in zip(commands, zh, en):
        assert a.returncode == b.returncode, args
        assert a.stdout == b.stdout, args
        assert a.stdout.strip(), args
        for line in (a.stdout.splitlines() if args[0] == "check" else [a.stdout]):
            json.loads(line)  # still JSON
    assert json.loads(zh[2].stdout)[0]["status"] == "champion"  # stored words, not translated ones
    assert json.loads(zh[1].stdout)["verdict"] == "block"


def test_retrain_progress_lines_follow_the_language(chinese):
    """What `replyloop retrain` prints off a terminal while it trains (RunDisplay), in both languages."""
    import io

    from replyloop import i18n
    from replyloop.cli.pipeline import RunDisplay

    events = [{"stage": "training", "run_id": 7, "log_path": "/w/runs/7/train.log"},
              {"step": 1, "total_steps": 30, "loss": 2.34567, "tokens_per_s": 812.4, "eta_s": 3725},
              {"step": 10, "eval_loss": 1.5, "best_eval_loss": 1.25, "best_step": 5},
              {"stage": "evaluating", "model": "rl-7"}]
    out = {}
    for lang in ("zh-CN", "en"):
        stream = io.StringIO()
        display = RunDisplay(stream=stream)
        with i18n.language(lang):
            for event in events:
                display(event)
        out[lang] = stream.getvalue().splitlines()
    assert out["zh-CN"] == ["训练运行 #7；日志：/w/runs/7/train.log",
                            "第 1/30 步  损失 2.3457  812 token/秒  预计剩余 1:02:05",
                            "第 10 步：留出损失 1.5000（最佳 1.2500，在第 5 步）",
                            "训练完成；正在用留出问题评估 rl-7 ……"]
    assert out["en"] == ["Training run #7; log: /w/runs/7/train.log",
                         "step 1/30  loss 2.3457  812 tokens/s  ETA 1:02:05",
                         "step 10: held-out loss 1.5000 (best 1.2500 at step 5)",
                         "Training done; evaluating rl-7 on the held-out questions ..."]
