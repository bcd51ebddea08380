"""One import namespace: the wheel installs bot/, training/, evaluation/ and policies/ as replyloop.bot,
replyloop.training, replyloop.evaluation and replyloop.policies, so nothing clashes with PyPI's
`evaluation` or `policies` packages in a shared environment (README "Install")."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from wheel_support import ROOT, build_wheel_target, run_from_wheel, wheel_env

OLD_NAMES = {"bot", "training", "evaluation", "policies"}
SOURCE_DIRS = ("replyloop", "bot", "training", "evaluation", "policies", "tests", "benchmarks")


def test_no_code_imports_the_old_top_level_names():
    """In a checkout `import bot` would still work (the folder is on sys.path) and load a second copy of
    every module; from the wheel it fails. Every import goes through the replyloop namespace."""
    offenders = []
    for folder in SOURCE_DIRS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in ast.walk(tree):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                offenders += [f"{path.relative_to(ROOT)}:{node.lineno}: {n}" for n in names
                              if n.split(".")[0] in OLD_NAMES]
    assert offenders == []


@pytest.fixture(scope="module")
def wheel_site(tmp_path_factory) -> Path:
    return build_wheel_target(tmp_path_factory.mktemp("wheel"))


def test_the_wheel_has_one_top_level_package_and_its_data(wheel_site, tmp_path):
    top = sorted(p.name for p in wheel_site.iterdir() if p.suffix != ".dist-info" and p.name != "bin")
    assert top == ["replyloop"]
    for data in ("replyloop/samples/cs_samples.csv", "replyloop/templates", "replyloop/policies/promises.yaml",
                 "replyloop/policies/terminology.yaml", "replyloop/bot/manifest.yaml",
                 "replyloop/training/examples/train.yaml", "replyloop/training/examples/cs_lora.yaml",
                 "replyloop/locale/zh_CN/LC_MESSAGES/replyloop.mo"):
        assert (wheel_site / data).exists(), data
    probe = ("import importlib.util as u, json, replyloop, replyloop.bot.app, replyloop.evaluation.policy\n"
             "from replyloop import i18n\n"
             "with i18n.language('zh-CN'): week = i18n.week_label(2026, 49)\n"
             "print(json.dumps({'file': replyloop.__file__, 'week': week, 'old': [n for n in "
             "('bot', 'training', 'evaluation', 'policies') if u.find_spec(n) is not None]}))")
    out = run_from_wheel(wheel_site, cwd=tmp_path, code=probe)
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    assert Path(found["file"]).is_relative_to(wheel_site) and found["old"] == []
    assert found["week"] == "2026年第49周"  # the compiled catalog is package data


def test_init_samples_and_check_run_from_the_wheel_alone(wheel_site, tmp_path):
    ws = tmp_path / "ws"
    env = wheel_env(wheel_site, REPLYLOOP_HOME=str(ws))
    out = run_from_wheel(wheel_site, "init", "--samples", cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Imported 180 sample(s)" in out.stdout and (ws / "train.yaml").is_file()
    # the shipped policies come from the wheel's package data
    out = run_from_wheel(wheel_site, "check", "--json", "我们保证全額賠付", cwd=ws, env=env)
    assert out.returncode == 1, out.stdout + out.stderr
    verdict = json.loads(out.stdout)
    assert verdict["verdict"] == "block" and "full-compensation" in json.dumps(verdict["violations"])
    out = run_from_wheel(wheel_site, "data", "stats", "--json", cwd=ws, env=env)
    assert out.returncode == 0 and json.loads(out.stdout)["samples"] == 180, out.stdout + out.stderr
