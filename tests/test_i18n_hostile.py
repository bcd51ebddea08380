"""Hostile tests of the Chinese interface (issue 22): what production throws at the bot and the
weekly report in a workspace made with the defaults (zh-CN). Bolt is real and requests are signed
(bot_support's HTTP server), Slack is bot/fake_slack.py, the store is a real SQLite file, the CLI a
real subprocess where its exit code matters.

- a slow, rate-limited or failing users.info (the per-user language lookup) never delays a click's
  ack, and an edit modal still opens well inside Slack's 3 s trigger_id window;
- customer text full of format fields, mentions, mrkdwn, RTL marks and emoji is shown literally in
  every translated template, escaped, within Slack's limits;
- the weekly report of a week across a year boundary with only rejections and categories that
  spell message ids;
- ``ui.language`` typos: accepted tags work, the rest are an ``Error:`` naming the field (exit 2).
"""

from __future__ import annotations

import json
import re
import time

import pytest

from bot_support import PhraseRules, close_env, make_env
from helpers import cli_subprocess
from replyloop.bot import cards
from test_i18n_cards import english_words, limits_hold, no_invalid_calls, texts_by_block, visible_texts

HOSTILE = ("{} {0} {draft_id} {reviewer} %s %(x)s {{x}} *粗体* _斜_ ~删~ `代码` <!channel> <!here> <@U123> "
           "<https://evil.example|点我> &lt; \u202e反向\u202c 😀🙏")


@pytest.fixture
def zh_env(chinese, workspace):
    config, _store = workspace
    assert config.file.ui.language == "zh-CN"  # what `replyloop init` writes
    e = make_env(workspace, checker=PhraseRules())
    yield e
    close_env(e)


def _timed(call):
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


# -- 2. the per-user language lookup never holds up a click -------------------------------------

def test_a_slow_rate_limited_or_failing_users_info_never_delays_the_ack_or_the_modal(zh_env):
    """users.info answers after 3 s, then 429 (Retry-After 20), then 500: every click is acked at
    once and its edit modal opens within ~2 s (Slack expires a trigger_id after 3 s; before the fix
    the bot's client retried for a minute), in the workspace's language; an en-US supervisor reads
    English once Slack answers again, a ja-JP one (unsupported) reads the workspace's Chinese."""
    env = zh_env
    env.fake.user_locales.update({"USUP1": "en-US", "USUP2": "ja-JP"})
    languages = env.bot.languages

    def edit(user, conversation, failure=None):
        languages._cache.clear()
        env.fake.clear()
        if failure:
            failure()
        d, card = env.post_card(conversation=conversation)
        response, ack = _timed(lambda: env.sim.click(card, "edit", user=user))
        assert response.status == 200 and ack < 1.0, ack
        [opened], waited = _timed(lambda: env.fake.wait_for("views.open", timeout=10))
        assert ack + waited < 2.6, ack + waited  # the lookup gives up after 2 s
        return d, opened.params["view"]

    env.fake.delay("users.info", 3.0)
    d, view = edit("USUP1", "slow")
    assert view["title"]["text"] == f"编辑草稿 #{d}"  # the lookup gave up after 2 s: Chinese
    env.fake.delay("users.info", 0)

    d, view = edit("USUP1", "429", lambda: env.fake.fail_next("users.info", 429, retry_after=20, count=10))
    assert view["title"]["text"] == f"编辑草稿 #{d}"
    assert len(env.fake.calls_to("users.info:failed")) == 1  # no retries
    # while Slack asks to wait, nobody's locale is looked up (no hammering), and /retrain answers at once
    (response, ack) = _timed(lambda: env.sim.command("/retrain", "status", user="USUP2"))
    assert response.status == 200 and ack < 1.0
    [answer] = env.fake.wait_for("response_url")
    assert answer.params["text"].startswith("*上次训练以来通过的样本：*")
    assert len(env.fake.calls_to("users.info:failed")) == 1 and env.fake.calls_to("users.info") == []
    languages._paused_until = 0.0  # Retry-After has passed
    env.fake.fail_next("users.info", 0)  # drop what is left of the 429s
    env.fake._failures.clear()

    d, view = edit("USUP1", "500", lambda: env.fake.fail_next("users.info", 500, count=10))
    assert view["title"]["text"] == f"编辑草稿 #{d}"
    assert len(env.fake.calls_to("users.info:failed")) == 1
    env.fake._failures.clear()

    d, view = edit("USUP1", "recovered")  # Slack answers again: the en-US supervisor's own language
    assert (view["title"]["text"], view["submit"]["text"], view["close"]["text"]) == (
        f"Edit draft #{d}", "Approve edit", "Cancel")
    d, view = edit("USUP2", "ja")
    assert view["title"]["text"] == f"编辑草稿 #{d}"
    assert english_words(visible_texts(view)) == []
    no_invalid_calls(env.fake)


def test_per_user_locale_off_never_calls_users_info(chinese, workspace):
    """``ui.per_user_locale: false``: an en-US supervisor reads the workspace's Chinese in their
    modal, notice and App Home, and the bot never calls users.info (no users:read scope needed)."""
    config, _store = workspace
    config.file.ui.per_user_locale = False
    env = make_env(workspace, checker=PhraseRules())
    try:
        env.fake.user_locales["USUP1"] = "en-US"
        d, card = env.post_card()
        env.sim.click(card, "edit", user="USUP1")
        [opened] = env.fake.wait_for("views.open")
        assert opened.params["view"]["title"]["text"] == f"编辑草稿 #{d}"
        assert env.sim.submit(opened, user="USUP1", values={cards.REPLY_BLOCK: ""}).json()["errors"] == {
            cards.REPLY_BLOCK: "回复不能为空。"}
        env.sim.home_opened("USUP1")
        [home] = env.fake.wait_for("views.publish")
        assert texts_by_block(home.params["view"]["blocks"])["queue"] == "*审核队列：* 1 条草稿待审核"
        assert [c.method for c in env.fake.calls if c.method.startswith("users.info")] == []
    finally:
        close_env(env)


# -- 1 + 3. every surface, with hostile customer text ----------------------------------------------

def _all_texts(call) -> list[str]:
    """Every text a call shows: its fallback text, its blocks' texts, a view's texts."""
    params = call.params
    out = [params["text"]] if isinstance(params.get("text"), str) else []
    blocks = params.get("blocks")
    if isinstance(blocks, str):
        blocks = json.loads(blocks)
    view = params.get("view")
    if isinstance(view, str):
        view = json.loads(view)
    return out + visible_texts(blocks or []) + visible_texts(view or {})


def test_hostile_customer_text_is_shown_literally_in_every_chinese_surface(zh_env):
    """A question, draft, category and conversation id full of format fields ({draft_id}, {0}, %s),
    mentions (<!channel>), links, mrkdwn, RTL marks and emoji, 10,000 characters long: the card, the
    reject modal, a 3,000-character Chinese reason, the decided card, the notices, App Home, /retrain
    and /reply all render (no KeyError / IndexError from a translated template), show the text
    literally and escaped (no mention or link injection, also in the fallback texts), stay Chinese
    and within Slack's limits."""
    env = zh_env
    d1, card = env.post_card(question=HOSTILE + "问" * 10000, draft=HOSTILE + "答" * 10000, category=HOSTILE,
                             conversation=HOSTILE)
    by = texts_by_block(card.params["blocks"])
    escaped = cards.escape(HOSTILE)
    assert by["question"].startswith("*客户问题*\n>" + escaped)
    assert f"*分类：* {escaped}\n" in by["meta"] and by["meta"].endswith(f"*会话：* {escaped}")
    assert card.params["blocks"][0]["text"]["text"] == f"审核草稿 #{d1}"
    assert card.params["text"].startswith(f"审核草稿 #{d1}：" + escaped)
    # a supervisor's edit with the hostile text, rejected by the policy; then empty; then a reject
    env.sim.click(card, "edit", user="USUP2")
    [opened] = env.fake.wait_for("views.open")
    assert opened.params["view"]["title"]["text"] == f"编辑草稿 #{d1}"
    body = env.sim.submit(opened, user="USUP2", values={cards.REPLY_BLOCK: HOSTILE + "保证退款"}).json()
    assert body["errors"][cards.REPLY_BLOCK].startswith("违反拦截级政策规则：")
    assert env.sim.submit(opened, user="USUP2", values={cards.REPLY_BLOCK: ""}).json()["errors"] == {
        cards.REPLY_BLOCK: "回复不能为空。"}
    env.sim.click(card, "reject", user="USUP1")
    opened = env.fake.wait_for("views.open", 2)[1]
    reason = HOSTILE + "因" * (3000 - len(HOSTILE))
    assert env.sim.submit(opened, user="USUP1", values={cards.REASON_BLOCK: reason}).body == ""
    [update] = env.fake.wait_for("chat.update")
    decision = texts_by_block(update.params["blocks"])["decision"]
    assert decision.startswith(":x: <@USUP1> 于 ") and f" 驳回\n*原因：* {escaped}因" in decision
    assert env.wait_review(d1)["reason"] == reason  # stored whole, clipped only on the card
    # double clicks, an outsider, App Home, the commands
    env.sim.click(card, "approve", user="USUP2")
    env.sim.click(card, "approve", user="USUP2")
    env.sim.click(card, "edit", user="UOUTSIDER")
    env.sim.home_opened("USUP1")
    for text in ("help", "status", "history", HOSTILE):
        env.sim.command("/retrain", text, user="USUP1")
    env.sim.command("/reply", HOSTILE, user="USUP1")
    notes = env.fake.wait_for("chat.postEphemeral", 3)
    by_user = {}
    for note in notes:  # listeners run on a pool: the notices come in any order
        by_user.setdefault(note.params["user"], []).append(note.params["text"])
    assert [t.startswith(f"草稿 #{d1} 已被 <@USUP1> 于 ") for t in by_user["USUP2"]] == [True, True]
    assert by_user["UOUTSIDER"] == ["只有主管可以审核草稿。请联系管理员把你加入 `slack.supervisors`。"]
    [home] = env.fake.wait_for("views.publish")
    answers = env.fake.wait_for("response_url", 5)
    assert sum(a.params["text"].startswith("未知选项 ") for a in answers) == 1
    [reply] = [a for a in answers if a.params.get("blocks")]
    assert reply.params["text"] == "已通过的回复：" + escaped  # the fallback text too: no <!channel>
    assert env.store.scalar("SELECT count(*) FROM reviews") == 1

    shown = [t for c in env.fake.calls if c.method in (
        "chat.postMessage", "chat.update", "chat.postEphemeral", "views.open", "views.publish", "response_url")
        for t in _all_texts(c)]
    raw = re.compile(r"<!channel>|<!here>|<@U123>|<https://evil")
    assert [t[:80] for t in shown if raw.search(t)] == []
    assert all("{draft_id} {reviewer}" not in t or escaped[:20] in t for t in shown)
    for call in [card, update]:
        limits_hold(call.params["blocks"])
    for call in [*env.fake.calls_to("views.open"), home]:
        limits_hold(call.params["view"])
    no_invalid_calls(env.fake)
    words = english_words([t.replace(escaped, " ") for t in _all_texts(card) + _all_texts(update)
                           + _all_texts(home) + [n.params["text"] for n in notes]])
    assert words == []


# -- 4. the weekly report: a year boundary, only rejections, categories that spell message ids ----

def test_weekly_report_across_a_year_boundary_with_only_rejections_and_msgid_categories(workspace, chinese, tmp_path):
    """2026-W53 in Asia/Shanghai (28 Dec 2026 - 3 Jan 2027): only rejections, in categories a
    customer named like the report's own words ("model", "Approve", "champion", "(no model)",
    "block") or with format fields and markup; a 9-digit sample count and tiny shares. The report
    renders in Chinese with no missing glyph in its charts (emoji and Arabic in the data read "?"
    there; before the fix they were empty boxes), keeps every category as written in report.md
    (before the fix "(no model)" read 无模型, the missing model's word), groups the digits, and puts a
    review at Sunday 23:59 local in W53 and one at Monday 00:00 local in 2027-W01."""
    import datetime as dt
    import warnings

    from replyloop.config import load_config
    from replyloop.evaluation.report import collect_weekly_report, render_markdown, write_weekly_report
    from replyloop.evaluation.report_slack import summary_text
    from test_report import _evaluation, _model, _review

    config, store = workspace
    config = load_config(config.source)
    assert config.file.ui.language == "zh-CN" and config.file.scheduler.timezone == "Asia/Shanghai"
    v = _model(store, "v1", "champion")
    cats = ["model", "Approve", "champion", "(no model)", "block", "{draft_id} {0}", "a|b\nc", "<!channel>",
            "退货😀", "ملف"]
    for i, cat in enumerate(cats):  # Sunday 3 Jan 2027 23:59 in Shanghai: still 2026-W53
        _review(store, "2027-01-03T15:59:00+00:00", cat, "reject", v, draft=f"草稿{i}",
                violations=[{"rule": "model", "severity": "warn", "match": "{0}"},
                                {"rule": "规则🙏", "severity": "block", "match": "x"}], verdict="warn")
    _review(store, "2027-01-03T16:00:00+00:00", "下周", "reject", v)  # Monday 00:00 local: 2027-W01
    _evaluation(store, v, "2027-01-01T00:00:00+00:00", 0.000012, {"model": 0.9999999, "退货😀": 0.5, "ملف": 0.4},
                n=123456789, unknown=0.00001)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = collect_weekly_report(config, store, "2026-W53", now=dt.datetime(2027, 1, 5, tzinfo=dt.timezone.utc))
        write_weekly_report(report, tmp_path / "W53")
    assert [str(w.message) for w in caught if "missing from" in str(w.message)] == []
    md = (tmp_path / "W53" / "report.md").read_text(encoding="utf-8")
    assert md.startswith("# 一致性周报 2026年第53周\n\n2026年12月28日 至 2027年1月3日（Asia/Shanghai）")
    assert "| 2026年第53周 | 10 | 0 | 0 | 10 | – |" in md  # only rejections; the Monday one is not in it
    assert "下周" not in md
    rows = {line.split(" | ")[0][2:] for line in md.splitlines() if line.endswith(" | 1 | 0 | 0 | 1 | 0.0% | – |")}
    assert rows == {"model", "Approve", "champion", "(no model)", "block", "{draft_id} {0}", "a\\|b c", "<!channel>",
                    "退货😀", "ملف"}
    assert "| 2026年第53周 | 冠军 | v1 (#1) | #1 | 123,456,789 | 0.000 | " in md
    assert "| model | 警告 | 10 | 10 |" in md and "| 规则🙏 | 拦截 | 10 | 10 |" in md  # a rule id is shown as it is; its severity in Chinese
    assert "- 自动化率（原样通过）：**0.0%**（已审核 10 条草稿中 0 条）；2026年第52周：" in md
    text = summary_text(report)
    assert "2026年第53周" in text and "<!channel>" not in text

    nxt = collect_weekly_report(config, store, "2027-W01", now=dt.datetime(2027, 1, 12, tzinfo=dt.timezone.utc))
    md = render_markdown(nxt)  # no charts this time: they were drawn above
    assert md.startswith("# 一致性周报 2027年第1周\n\n2027年1月4日 至 2027年1月10日（Asia/Shanghai）")
    assert "| 2027年第1周 | 1 | 0 | 0 | 1 | – |" in md and "| 2026年第53周 | 10 | 0 | 0 | 10 | – |" in md
    assert "| 下周 | 1 | 0 | 0 | 1 | 0.0% | – |" in md


# -- 5. ui.language typos in replyloop.yaml ----------------------------------------------------------

def _set_language(config, value: str) -> None:
    text, n = re.subn(r"(?m)^  language: .*$", f"  language: {value}", config.source.read_text(encoding="utf-8"))
    assert n == 1
    config.source.write_text(text, encoding="utf-8")


def test_ui_language_typos_are_accepted_tags_or_an_error_naming_the_field(workspace, chinese):
    """Tags people write for the two languages work (zh-cn, ZH, zh_CN, zh-Hans, en_US, EN-gb); any
    other value (a language name, ja, a number, a list, a mapping, empty, null) is an ``Error:``
    naming the file, line and ``ui.language``, exit 2 — through the real CLI (`replyloop data stats`,
    `replyloop serve`) and load_config. The same for ``$REPLYLOOP_LANGUAGE``."""
    from replyloop.config import load_config
    from replyloop.errors import ConfigError

    config, _store = workspace
    line = next(n for n, text in enumerate(config.source.read_text(encoding="utf-8").splitlines(), 1)
                if text.startswith("  language: "))
    for value, want in [("zh-cn", "zh-CN"), ("ZH", "zh-CN"), ("zh_CN", "zh-CN"), ("zh-Hans", "zh-CN"),
                        ("en_US", "en"), ("EN-gb", "en"), ('"en"', "en")]:
        _set_language(config, value)
        assert load_config(config.source).file.ui.language == want, value
    for value in ("chinese", "ja", "5", "[en]", "{zh: CN}", "''", "null", "中文"):
        _set_language(config, value)
        with pytest.raises(ConfigError) as caught:
            load_config(config.source)
        assert f"{config.source}:{line}: key 'ui.language'" in str(caught.value), value

    _set_language(config, "zh-cn")
    result = cli_subprocess("data", "stats")
    assert result.returncode == 0 and result.stdout.startswith("样本：0"), result.stderr
    for command, value in ((("data", "stats"), "chinese"), (("serve",), "[en]")):
        _set_language(config, value)
        result = cli_subprocess(*command, timeout=60)
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert result.stderr.strip() == (f"Error: {config.source}:{line}: key 'ui.language': Input should be "
                                         "'zh-CN' or 'en'"), result.stderr

    # the process-wide override: a tag works, a typo is an Error too (before: silently the workspace's)
    _set_language(config, "zh-CN")
    result = cli_subprocess("data", "stats", env={"REPLYLOOP_LANGUAGE": "en-US"})
    assert result.returncode == 0 and result.stdout.startswith("Samples: 0"), result.stderr
    result = cli_subprocess("data", "stats", env={"REPLYLOOP_LANGUAGE": "english"})
    assert result.returncode == 2 and result.stderr.strip() == (
        "Error: $REPLYLOOP_LANGUAGE='english': not a language replyloop speaks (zh-CN or en); unset it to use "
        f"ui.language from {config.source}"), result.stderr


# -- 1. the real `replyloop serve` in a workspace made with the defaults --------------------------

def test_replyloop_serve_with_the_default_config_speaks_chinese_and_logs_english(replyloop_home, chinese):
    """`replyloop serve --http` (a real subprocess) in a workspace from the default template: a
    question through /intake gets a Chinese card, a signed Approve click decides it (the decided card
    Chinese), a second click gets a Chinese notice, App Home and /retrain status read Chinese, and
    the bot's log lines (at debug level) stay English (no translated word in them), no traceback."""
    import yaml

    from replyloop.bot.fake_slack import FakeSlack
    from replyloop.bot.simulate import Simulator
    from test_reliability import SIGNING_SECRET as SECRET, Serve, post_intake, write_serve_config

    with FakeSlack() as slack:
        write_serve_config(replyloop_home, slack)
        path = replyloop_home / "replyloop.yaml"
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert data["ui"]["language"] == "zh-CN"
        data["slack"]["supervisors"] = ["USUP1", "USUP2"]
        data.setdefault("logging", {})["level"] = "debug"  # every log line the bot writes
        path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
        serve = Serve(replyloop_home, "--no-scheduler")
        try:
            url = serve.wait_listening()
            status, body = post_intake(url, {"conversation_id": "c-{0}", "question": HOSTILE,
                                             "draft": "您好，{0} {} 请在订单详情页申请电子发票。"})
            assert status == 201 and body["ok"] is True, body
            [card] = slack.wait_for("chat.postMessage", timeout=20)
            assert card.params["blocks"][0]["text"]["text"] == f"审核草稿 #{body['draft_id']}"
            assert english_words([t.replace(cards.escape(HOSTILE), " ") for t in _all_texts(card)]) == []
            sim = Simulator(url, SECRET, slack)
            try:
                assert sim.click(card, "approve", user="USUP1").status == 200
                [update] = slack.wait_for("chat.update", timeout=20)
                assert update.params["blocks"][0]["text"]["text"] == f"草稿 #{body['draft_id']}：已通过"
                sim.click(card, "approve", user="USUP2")
                [note] = slack.wait_for("chat.postEphemeral", timeout=20)
                assert note.params["text"].startswith(f"草稿 #{body['draft_id']} 已由 <@USUP1> 于 ")
                sim.home_opened("USUP2")
                [home] = slack.wait_for("views.publish", timeout=20)
                assert texts_by_block(home.params["view"]["blocks"])["queue"] == "*审核队列：* 0 条草稿待审核"
                sim.command("/retrain", "status", user="USUP1")
                [answer] = slack.wait_for("response_url", timeout=20)
                assert answer.params["text"].startswith("*上次训练以来通过的样本：* 1（阈值 50）")
            finally:
                sim.close()
            no_invalid_calls(slack)
        finally:
            assert serve.stop() in (0, -15)
    output = "".join(serve.output)
    assert "Traceback" not in output, output
    translated = ("审核", "草稿", "通过", "驳回", "冠军", "训练", "主管", "样本")
    # every log line but slack_sdk's debug dumps of the payloads it sends (the Chinese texts themselves)
    own = [line for line in serve.output if " bot.slack_sdk: " not in line[:60]]
    assert any(" replyloop.bot." in line for line in own) and any(" bot.bolt: " in line for line in own), output
    assert [line for line in own if any(w in line for w in translated)] == [], own
