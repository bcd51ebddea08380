"""The language machinery (issue 22): catalogs complete and in step with the code, the language
chosen per workspace / process / Slack user, locale-aware numbers and dates."""

from __future__ import annotations

import ast
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from replyloop import i18n
from replyloop.i18n_catalog import KEYWORDS, problems, source_roots

ROOT = Path(__file__).resolve().parent.parent


def test_every_message_id_has_a_chinese_translation_with_the_same_placeholders():
    found = problems()  # untranslated, fuzzy, placeholder mismatch, stale .mo
    assert not found, "\n".join(found[:40]) + f"\n({len(found)} problems: python -m replyloop.i18n_catalog update, translate, compile)"


def test_the_check_catches_a_missing_fuzzy_and_mismatched_entry(tmp_path, monkeypatch):
    """The completeness test above can fail: a fresh catalog with one wrong entry of each kind."""
    from replyloop import i18n_catalog as cat

    po = tmp_path / "zh_CN" / "LC_MESSAGES" / "replyloop.po"
    monkeypatch.setattr(cat, "po_path", lambda lang="zh-CN": po)
    catalog = cat.extract()
    ids = [m.id for m in catalog if m.id and isinstance(m.id, str)]
    from babel.messages.catalog import Catalog

    broken = Catalog(locale="zh_CN", domain="replyloop")
    for mid in ids:
        if mid != "{year}-W{week:02d}":
            broken.add(mid, mid)
    broken.add("{year}-W{week:02d}", "{year}年第周")  # a placeholder lost
    cat.write_po(broken, po)
    found = cat.problems()
    assert any("placeholders ['year'] != ['week', 'year']" in line for line in found)
    assert any("out of date" in line for line in found)  # no .mo beside it
    broken["{year}-W{week:02d}"].flags.add("fuzzy")
    broken["{year}-W{week:02d}"].string = "{year}年第{week}周"
    cat.write_po(broken, po)
    assert any("fuzzy" in line for line in cat.problems())
    del broken["{year}-W{week:02d}"]
    cat.write_po(broken, po)
    assert any("no entry" in line for line in cat.problems())


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in KEYWORDS:
            yield node


def test_translated_strings_are_literals_not_f_strings():
    """Babel extracts only literal ids: `_(f"…{x}")` or `_(variable)` would never be translated."""
    bad = []
    for root in source_roots():
        for path in root.rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for call in _calls(tree):
                n = 2 if call.func.id in ("ngettext", "pgettext") else 1
                args = call.args[:n]
                if call.func.id == "_" and any(isinstance(a, ast.Name) for a in call.args):
                    # `_(SOME_CONSTANT)` translating an N_() constant is fine
                    continue
                if not all(isinstance(a, ast.Constant) and isinstance(a.value, str) for a in args):
                    bad.append(f"{path.relative_to(root.parent)}:{call.lineno}")
    assert not bad, f"non-literal message ids: {bad}"


def test_language_tags_from_slack_configs_and_environments():
    assert i18n.normalize("zh-CN") == i18n.normalize("zh_CN.UTF-8") == i18n.normalize("zh") == "zh-CN"
    assert i18n.normalize("zh-TW") == "zh-CN"  # only Simplified Chinese is translated
    assert i18n.normalize("en-US") == i18n.normalize("en_GB") == "en"
    assert i18n.normalize("ja-JP") is None and i18n.normalize("") is None


def test_a_new_workspace_reads_chinese_and_en_gives_english(tmp_path, chinese):
    from replyloop.config import load_config, write_default_config

    config = load_config(write_default_config(tmp_path / "zh"))
    assert config.ui.language == "zh-CN"
    assert i18n.week_label(2026, 49) == "2026年第49周"
    (tmp_path / "en").mkdir()
    (tmp_path / "en" / "replyloop.yaml").write_text("ui:\n  language: en\n", encoding="utf-8")
    load_config(tmp_path / "en" / "replyloop.yaml")
    assert i18n.week_label(2026, 49) == "2026-W49"
    with i18n.language("zh-CN"):  # one user's own locale wins inside the block
        assert i18n.week_label(2026, 5) == "2026年第5周"
    assert i18n.current_language() == "en"


def test_the_environment_overrides_the_workspace_for_the_process(tmp_path, chinese, monkeypatch):
    from replyloop.config import load_config, write_default_config

    load_config(write_default_config(tmp_path))
    monkeypatch.setenv("REPLYLOOP_LANGUAGE", "en")
    assert i18n.week_label(2026, 49) == "2026-W49"


def test_an_unknown_language_is_an_error_naming_the_field(tmp_path):
    (tmp_path / "replyloop.yaml").write_text("ui:\n  language: fr\n", encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "replyloop", "data", "stats", "--config", str(tmp_path / "replyloop.yaml")],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "Error:" in out.stderr and "ui.language" in out.stderr


def test_numbers_percentages_and_dates_follow_the_locale(chinese):
    moment = datetime(2026, 12, 2, 3, 0, tzinfo=timezone.utc)
    with i18n.language("zh-CN"):
        assert i18n.fmt_percent(0.4236, 1) == "42.4%"
        assert i18n.fmt_number(12345.6, 1) == "12,345.6"
        assert i18n.fmt_datetime(moment, "Asia/Shanghai") == "2026年12月2日 11:00:00"  # in the workspace's zone
    with i18n.language("en"):
        assert i18n.fmt_datetime(moment, "Asia/Shanghai").startswith("Dec 2, 2026, 11:00:00")


def test_a_slack_users_locale_is_looked_up_once_and_falls_back_to_the_workspace(chinese):
    """Real HTTP against the fake Slack: users.info with include_locale, cached per user."""
    from slack_sdk import WebClient

    from replyloop.bot.fake_slack import FakeSlack
    from replyloop.bot.language import UserLanguages

    with FakeSlack() as fake:
        fake.user_locales["UEN"] = "en-US"
        client = WebClient(token="xoxb-test", base_url=fake.base_url)
        langs = UserLanguages(client)
        i18n.set_workspace_language("zh-CN")
        for _attempt in range(3):
            with i18n.language(langs.lazy("UEN")):
                assert i18n.week_label(2026, 49) == "2026-W49"
            with i18n.language(langs.lazy("UZH")):  # no locale from Slack: the workspace's
                assert i18n.week_label(2026, 49) == "2026年第49周"
        assert len(fake.calls_to("users.info")) == 2  # once per user
        fake.fail_next("users.info", status=500, count=5)
        with i18n.language(UserLanguages(client).lazy("UEN")):  # Slack down: the workspace's language
            assert i18n.week_label(2026, 49) == "2026年第49周"
        off = UserLanguages(client, enabled=False)
        with i18n.language(off.lazy("UEN")):
            assert i18n.week_label(2026, 49) == "2026年第49周"


def _binds_underscore(scope) -> list[int]:
    """Lines where a function (or comprehension) binds `_` locally: `for _ in`, `a, _ = ...`, `with ... as _`."""
    lines = []
    for node in ast.walk(scope):
        if isinstance(node, ast.Name) and node.id == "_" and isinstance(node.ctx, ast.Store):
            lines.append(node.lineno)
    return lines


def test_no_module_that_translates_rebinds_the_underscore():
    """`from replyloop.i18n import _` plus `for _ in range(3)` in the same function is an
    UnboundLocalError at the first `_()` of that function: found statically, in every module."""
    bad = []
    for root in source_roots():
        for path in root.rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            imports_it = any(isinstance(n, ast.ImportFrom) and n.module == "replyloop.i18n"
                             and any(a.name == "_" and a.asname in (None, "_") for a in n.names)
                             for n in ast.walk(tree))
            if not imports_it:
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                    bad += [f"{path.relative_to(root.parent)}:{n}" for n in _binds_underscore(node)]
            bad += [f"{path.relative_to(root.parent)}:{n.lineno}" for n in tree.body
                    if isinstance(n, (ast.Assign, ast.For)) and _binds_underscore(n)]
    assert not bad, f"`_` rebound where it translates: {sorted(set(bad))}"
