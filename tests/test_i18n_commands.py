"""Issue 22, the slash commands and the other bot flows in Chinese and English: `/retrain` and
`/reply` answers, a rule proposal card with its Edit modal, the "Add to golden suite" modal,
rendered through bolt (signed requests) against the local fake Slack.

A workspace made with the defaults reads Chinese; `ui: {language: en}` gives today's English;
what one user sees alone follows that user's Slack locale, what a channel reads stays in the
workspace's language."""

from __future__ import annotations

import json
import re

import pytest

from bot_support import OUTSIDER, REVIEW, close_env, make_env, seed_models, wait_until
from replyloop.bot import golden as bot_golden, proposals as bot_proposals
from replyloop.bot.fake_slack import block_kit_errors, view_errors
from replyloop.config import load_config
from replyloop.evaluation import proposals as props
from rules_support import DELETE_EDITS, TERM_EDITS, seed_edits, use_workspace_policies
from test_reply_search import seed as seed_faq

# ASCII words that may stay in Chinese texts: product, format and config names a Chinese team
# uses as they are (YAML, Slack, chrF, README), config values people type (warn / block) and the
# golden assertion type names (the keys of the YAML they edit)
ALLOWED = {"YAML", "Slack", "chrF", "ID", "README", "Golden", "suites", "warn", "block", "AI",
           "contains", "not", "regex", "similar", "chrf", "policy", "clean", "terminology", "max", "min",
           "chars", "repetitive", "reply", "min_score"}
VISIBLE = ("plain_text", "mrkdwn")


def visible_texts(obj) -> list[str]:
    """Every text a person sees in Block Kit JSON (text objects, a message's notification text);
    never ids, values, metadata or prefilled input (that is the user's data)."""
    out = []
    if isinstance(obj, dict):
        if obj.get("type") in VISIBLE and isinstance(obj.get("text"), str):
            out.append(obj["text"])
        for key, value in obj.items():
            if key in ("initial_value", "value", "private_metadata", "action_id", "block_id", "callback_id"):
                continue
            if key == "text" and isinstance(value, str):
                if obj.get("type") not in VISIBLE:
                    out.append(value)  # a message's own text
                continue
            out += visible_texts(value)
    elif isinstance(obj, list):
        for item in obj:
            out += visible_texts(item)
    return out


def english_words(texts: list[str]) -> list[str]:
    """ASCII words left in texts once data is set aside: `code`, <@mentions|links>, :emoji:,
    paths and file names, and the allowed technical words."""
    found = []
    for text in texts:
        text = re.sub(r"```.*?```|`[^`]*`", " ", text, flags=re.S)
        text = re.sub(r"[\w<>-]*[/.][\w<>./-]*[A-Za-z][\w<>./-]*|\bcs-lora-\d+", " ", text)  # paths, file names
        text = re.sub(r"<[^>]*>|:[a-z_]+:", " ", text)
        found += [w for w in re.findall(r"[A-Za-z][A-Za-z_]+", text) if w not in ALLOWED]
    return found


def assert_all_chinese(texts: list[str]) -> None:
    assert texts and not english_words(texts), (english_words(texts), texts)
    assert any(re.search(r"[\u4e00-\u9fff]", t) for t in texts)


def assert_modal_limits(view: dict) -> None:
    assert view_errors(view) == [], view_errors(view)
    for key in ("title", "submit", "close"):
        assert 0 < len(view[key]["text"]) <= 24, view[key]


def assert_buttons_fit(blocks: list[dict]) -> None:
    assert block_kit_errors(blocks) == []
    for b in blocks:
        for el in b.get("elements", []) + ([b["accessory"]] if b.get("accessory") else []):
            if el.get("type") == "button":
                assert 0 < len(el["text"]["text"]) <= 75


def english_workspace(workspace):
    """The same workspace with `ui: {language: en}` in replyloop.yaml."""
    config, store = workspace
    text = config.source.read_text(encoding="utf-8")
    config.source.write_text(re.sub(r"(?m)^(\s*language:) zh-CN", r"\1 en", text, count=1), encoding="utf-8")
    again = load_config(config.source)
    assert again.ui.language == "en"
    return again, store


def command(env, name, text, user, n):
    """Run a slash command; the text of the n-th answer on a response_url."""
    resp = env.sim.command(name, text, user=user)
    assert (resp.status, resp.body) == (200, "")
    return env.fake.wait_for("response_url", n)[n - 1].params


# -- /retrain --------------------------------------------------------------------------------


def test_retrain_answers_in_chinese_english_and_the_users_own_locale(workspace, chinese):
    seed_models(workspace[1], canary=False, running_run=2, finished_run=1)
    env = make_env(workspace)
    try:
        usage = command(env, "/retrain", "help", "USUP1", 1)["text"]
        assert usage == "用法：`/retrain` 或 `/retrain status`、`/retrain history`、`/retrain now`（仅主管）。"
        status = command(env, "/retrain", "status", "USUP1", 2)["text"]
        lines = status.splitlines()
        assert lines[0] == "*上次训练以来通过的样本：* 0（阈值 50）"
        assert re.fullmatch(r"\*进行中：\* 训练 #2（定时任务），第 12/30 步，损失 1\.2345，开始于 \d{4}/\d{1,2}/\d{1,2} \d{1,2}:\d\d",
                            lines[1]), lines[1]
        assert lines[2].startswith("*冠军模型：* `cs-lora-0001`（编号 1） — 一致性 0.812，达标占比 0.700，门禁通过（")
        history = command(env, "/retrain", "history", "USUP1", 3)["text"].splitlines()
        assert history[0] == "*最近的训练*"
        assert history[1].startswith("• #2 进行中（定时任务），开始于 ")
        assert history[2].startswith("• #1 成功（Slack, <@USUP1>），开始于 ") and history[2].endswith(
            "，损失 0.5000 → `cs-lora-0001`")
        assert "，结束于 " in history[2]
        refused = command(env, "/retrain", "now", OUTSIDER, 4)["text"]
        assert refused == "只有主管可以发起重新训练。"
        unknown = command(env, "/retrain", "sideways", OUTSIDER, 5)["text"]
        assert unknown.startswith("未知选项 `sideways`。用法：")
        assert_all_chinese([usage, status, *history, refused, unknown])

        # one user's Slack locale is English: their own answers are English, the channel's stay Chinese
        env.fake.user_locales["USUP2"] = "en-US"
        env.fake.user_locales["UENGLISH"] = "en-US"  # (a user's locale is cached: a user not seen yet)
        assert command(env, "/retrain", "now", "UENGLISH", 6)["text"] == "Only supervisors can start a retrain."
        started = command(env, "/retrain", "now", "USUP2", 7)
        assert started["response_type"] == "in_channel"
        assert started["text"] == "<@USUP2> 发起了重新训练。训练、评估和门禁完成后我会在这里报告。"
        wait_until(lambda: env.pipeline.calls)
        assert env.pipeline.calls == [{"trigger": "slack", "requested_by": "USUP2"}]
        assert command(env, "/retrain", "status", "USUP2", 8)["text"].startswith(
            "*Approved samples since the last training:* 0 (threshold 50)")
    finally:
        close_env(env)

    env = make_env(english_workspace(workspace))  # ui.language: en, today's English
    try:
        status = command(env, "/retrain", "", "USUP1", 1)["text"].splitlines()
        assert status[0] == "*Approved samples since the last training:* 0 (threshold 50)"
        assert status[1].startswith("*Running:* run #2 (scheduler), step 12/30, loss 1.2345, since ")
        assert status[2].startswith("*Champion:* `cs-lora-0001` (id 1) — consistency 0.812, share above threshold"
                                    " 0.700, gate passed (")
        assert command(env, "/retrain", "now", OUTSIDER, 2)["text"] == "Only supervisors can start a retrain."
        assert command(env, "/retrain", "help", OUTSIDER, 3)["text"] == (
            "Usage: `/retrain` or `/retrain status`, `/retrain history`, `/retrain now` (supervisors).")
    finally:
        close_env(env)


# -- /reply ----------------------------------------------------------------------------------


def test_reply_answers_in_chinese_and_english(workspace, chinese):
    config, store = workspace
    seed_faq(store)
    config.file.reply.embedding_model = "none"
    env = make_env(workspace)
    try:
        got = command(env, "/reply", "验证码收不到怎么办", OUTSIDER, 1)
        assert got["response_type"] == "ephemeral" and got["text"] == "已通过的回复：验证码收不到怎么办"
        sections = [b["text"]["text"] for b in got["blocks"] if b["type"] == "section"]
        assert sections[0] == "*已通过的回复：* 验证码收不到怎么办"
        assert re.match(r"\*1\. 登录异常\* · <@USUP1> 于 \d{4}/\d{1,2}/\d{1,2} \d{1,2}:\d\d 通过 · 得分 0\.\d\d\n>",
                        sections[1]), sections[1]
        assert sections[2] == "*复制：*\n```请检查手机是否拦截了短信，60秒后可重新获取验证码。```"
        assert_all_chinese(visible_texts({k: got[k] for k in ("text", "blocks")}))
        assert block_kit_errors(got["blocks"]) == []
        nothing = command(env, "/reply", "zzzz qqqq", OUTSIDER, 2)
        [note] = [b for b in nothing["blocks"] if b["type"] == "context"]
        assert re.fullmatch(r"没有与此问题足够接近的已通过回复（最高分 0\.\d\d，reply\.min_score 0\.10）；请换个说法，或询问主管。",
                            note["elements"][0]["text"]), note
        usage = command(env, "/reply", "   ", OUTSIDER, 3)["text"]
        assert usage == "用法：`/reply <客户问题>`，例如 `/reply 收不到验证码怎么办`。"
        assert_all_chinese([note["elements"][0]["text"], usage])
    finally:
        close_env(env)

    config, store = english_workspace(workspace)
    config.file.reply.embedding_model = "none"
    env = make_env((config, store))
    try:
        got = command(env, "/reply", "验证码收不到怎么办", OUTSIDER, 1)
        sections = [b["text"]["text"] for b in got["blocks"] if b["type"] == "section"]
        assert sections[0] == "*Approved answers for:* 验证码收不到怎么办"
        assert sections[1].startswith("*1. 登录异常* · approved by <@USUP1> at ")
        assert sections[2] == "*Copy:*\n```请检查手机是否拦截了短信，60秒后可重新获取验证码。```"
        assert command(env, "/reply", "", OUTSIDER, 2)["text"] == (
            "Usage: `/reply <the customer's question>`, e.g. `/reply 收不到验证码怎么办`.")
    finally:
        close_env(env)


# -- rule proposals --------------------------------------------------------------------------


def post_proposal(env):
    seed_edits(env.store, TERM_EDITS)
    [p] = props.propose(env.config, env.store).opened
    bot_proposals.post_cards(env.bot.client, env.store, env.config.file.slack.review_channel, [p])
    card = next(c for c in env.fake.calls_to("chat.postMessage")
                if any(b.get("block_id") == f"rule_{p['id']}" for b in c.params.get("blocks", [])))
    return p, card


def test_rule_proposal_card_and_edit_modal_in_chinese(workspace, chinese):
    config, _store = workspace
    folder = use_workspace_policies(config)
    env = make_env(workspace)
    try:
        env.fake.user_locales["USUP2"] = "en-US"  # a supervisor who reads English
        p, card = post_proposal(env)
        blocks = card.params["blocks"]
        assert card.params["text"] == f"规则建议 #{p['id']}：术语：包邮 → 免运费（4 次编辑，2 位主管）[待处理]"
        assert blocks[0]["text"]["text"] == (f":bulb: *规则建议 #{p['id']}*（从主管的编辑中发现）\n"
                                             "*术语：* 应说 *免运费*，不说 ~包邮~")
        assert blocks[1]["elements"][0]["text"] == "2 位主管共编辑 4 次：<@USUP1>, <@USUP2>"
        assert [b["text"]["text"] for b in blocks[3]["elements"]] == ["采纳", "编辑", "忽略"]
        assert_buttons_fit(blocks)
        assert_all_chinese(visible_texts({"text": card.params["text"], "blocks": blocks}))

        # Edit: the modal in the clicking user's language (the workspace's here)
        env.sim.click(card, bot_proposals.EDIT, user="USUP1")
        [opened] = env.fake.wait_for("views.open")
        view = opened.params["view"]
        assert (view["title"]["text"], view["submit"]["text"], view["close"]["text"]) == (
            f"规则建议 #{p['id']}", "采纳", "取消")
        assert [b["label"]["text"] for b in view["blocks"]] == ["推荐用语", "避免用语（逗号分隔）"]
        assert_modal_limits(view)
        assert_all_chinese(visible_texts(view))
        errors = env.sim.submit(opened, user="USUP1", values={bot_proposals.PREFERRED_BLOCK: "免运费",
                                                               bot_proposals.AVOID_BLOCK: " , "}).json()
        assert errors == {"response_action": "errors", "errors": {bot_proposals.AVOID_BLOCK: "请至少填写一个短语。"}}

        # not a supervisor: told why, in Chinese; a supervisor's Accept updates the card in the
        # workspace's language even when that supervisor reads English
        env.sim.click(card, bot_proposals.ACCEPT, user=OUTSIDER)
        [notice] = env.fake.wait_for("chat.postEphemeral")
        assert notice.params["text"] == "只有主管可以采纳、编辑或忽略规则建议。"
        env.sim.click(card, bot_proposals.ACCEPT, user="USUP2")
        [update] = env.fake.wait_for("chat.update")
        decided = update.params["blocks"][-1]["elements"][0]["text"]
        assert re.fullmatch(r":white_check_mark: <@USUP2> 于 \S+ \d{1,2}:\d\d 采纳：已写入 `.+proposal-\d+\.yaml`", decided), decided
        assert_all_chinese(visible_texts({"text": update.params["text"], "blocks": update.params["blocks"]}))
        env.sim.click(card, bot_proposals.DISMISS, user="USUP2")  # already decided: told so, in English
        wait_until(lambda: len(env.fake.calls_to("chat.postEphemeral")) == 2)
        again = env.fake.calls_to("chat.postEphemeral")[1].params["text"]
        assert again.startswith(f"Rule proposal #{p['id']}: :white_check_mark: Accepted by <@USUP2> at ")
        assert (folder / f"proposal-{p['id']}.yaml").exists()
    finally:
        close_env(env)


def test_rule_proposal_card_in_english(workspace):
    """`ui: {language: en}`: the card as before issue 22."""
    config, store = english_workspace(workspace)
    use_workspace_policies(config)
    env = make_env((config, store))
    try:
        p, card = post_proposal(env)
        assert card.params["text"] == f"Rule proposal #{p['id']}: #{p['id']} terminology 包邮 → 免运费 (4 edits, 2 supervisors) [open]"
        blocks = card.params["blocks"]
        assert blocks[0]["text"]["text"] == (f":bulb: *Rule proposal #{p['id']}* (mined from supervisors' edits)\n"
                                             "*Terminology:* say *免运费*, not ~包邮~")
        assert [b["text"]["text"] for b in blocks[3]["elements"]] == ["Accept", "Edit", "Dismiss"]
        env.sim.click(card, bot_proposals.EDIT, user="USUP1")
        view = env.fake.wait_for("views.open")[0].params["view"]
        assert (view["title"]["text"], view["submit"]["text"], view["close"]["text"]) == (
            f"Rule proposal #{p['id']}", "Accept", "Cancel")
    finally:
        close_env(env)


# -- "Add to golden suite" -------------------------------------------------------------------


def open_golden(env, user="USUP1", count=1):
    qid = env.store.add_question("定制商品可以退吗？", "conv-golden", "售后服务", source="http")
    draft_id = env.store.add_draft(qid, "您好，马上为您办理，我们承诺七天内全额退款。", model_name="seed")
    env.store.decide(draft_id, "edit", "USUP1", final_text="您好，我们会按售后规则为您办理。")
    from replyloop import i18n

    with i18n.workspace():  # the decided card's button, as the channel sees it
        button = bot_golden.card_block(env.store.get_draft(draft_id))
    card = {"channel": REVIEW, "ts": "1700000000.000100", "blocks": button}
    assert env.sim.click(card, bot_golden.ADD, user=user, value=str(draft_id)).status == 200
    return button, env.fake.wait_for("views.open", count=count)[-1]


def test_golden_suite_modal_in_chinese_and_english(workspace, chinese):
    env = make_env(workspace)
    try:
        button, opened = open_golden(env)
        assert button[0]["text"]["text"] == "这个问题以后都要这样回答吗？"
        assert button[0]["accessory"]["text"]["text"] == "加入黄金测试集"
        assert_buttons_fit(button)
        view = opened.params["view"]
        assert (view["title"]["text"], view["submit"]["text"], view["close"]["text"]) == (
            "加入黄金测试集", "添加用例", "取消")
        assert [b["label"]["text"] for b in view["blocks"]] == [
            "测试集（文件 evals/<suite>.yaml）", "用例 ID（在所有测试集中唯一）", "客户问题", "参考回复（已通过的回复）",
            "断言（YAML 列表）"]
        assert_modal_limits(view)
        assert_all_chinese(visible_texts(view) + visible_texts(button))
        values = {b["block_id"]: b["element"]["initial_value"] for b in view["blocks"]}
        body = env.sim.submit(opened, user="USUP1", values={**values, bot_golden.ID_BLOCK: "",
                                                             bot_golden.ASSERT_BLOCK: "- [unclosed"}).json()
        assert body["errors"][bot_golden.ID_BLOCK] == "必填。"
        assert body["errors"][bot_golden.ASSERT_BLOCK].startswith("不是有效的 YAML（第 ")
        assert env.sim.submit(opened, user="USUP1", values=values).status == 200
        [notice] = env.fake.wait_for("chat.postEphemeral")
        assert re.fullmatch(r"已将黄金用例 `draft-\d+` 添加到 `slack\.yaml`（第 2 行）。运行 `replyloop eval MODEL --suite slack` 即可执行。",
                            notice.params["text"]), notice.params["text"]
    finally:
        close_env(env)

    env = make_env(english_workspace(workspace))
    try:
        button, opened = open_golden(env)
        view = opened.params["view"]
        assert button[0]["accessory"]["text"]["text"] == "Add to golden suite"
        assert (view["title"]["text"], view["submit"]["text"], view["close"]["text"]) == (
            "Add to golden suite", "Add case", "Cancel")
        assert [b["label"]["text"] for b in view["blocks"]][:2] == [
            "Suite (the file evals/<suite>.yaml)", "Case id (unique across the suites)"]
    finally:
        close_env(env)


def test_the_english_word_check_can_fail():
    """The helper above finds English left in a Chinese text (and lets data through)."""
    assert english_words(["*冠军模型：* `cs-lora-0001` <@USUP1> :bulb: evals/slack.yaml"]) == []
    assert english_words(["*冠军模型：* none", "Add case"]) == ["none", "Add", "case"]
    assert visible_texts({"type": "modal", "callback_id": "x", "title": {"type": "plain_text", "text": "T"},
                          "blocks": [{"type": "input", "element": {"initial_value": "data"},
                                      "label": {"type": "plain_text", "text": "L"}}]}) == ["T", "L"]


def test_a_slow_users_info_never_delays_the_ack_of_a_click(workspace, chinese):
    """The user's language is looked up (users.info) only when their own text is worded, after
    the ack: a refused click and an Accept answer Slack at once while users.info takes 3 s."""
    import time

    use_workspace_policies(workspace[0])
    env = make_env(workspace)
    try:
        p, card = post_proposal(env)
        env.fake.delay("users.info", 3.0)
        for user in (OUTSIDER, "USUP1"):
            started = time.monotonic()
            assert env.sim.click(card, bot_proposals.ACCEPT, user=user).status == 200
            assert time.monotonic() - started < 1.5, user
        [update] = env.fake.wait_for("chat.update")  # the card, in the workspace's language
        assert update.params["blocks"][-1]["elements"][0]["text"].startswith(":white_check_mark: <@USUP1> 于 ")
        [notice] = env.fake.wait_for("chat.postEphemeral")  # worded once users.info answered
        assert notice.params["text"] == "只有主管可以采纳、编辑或忽略规则建议。"
        env.fake.delay("users.info", 0)
    finally:
        close_env(env)


def test_app_home_automation_blocks_in_the_users_language(workspace, chinese):
    """App Home's per-intent automation lines and buttons (automation.enabled): Chinese by
    default, English for a user whose Slack locale is English."""
    config, store = workspace
    config.file.automation.enabled = True
    for n, category in enumerate(("物流查询", "售后服务")):
        store.add_question(f"问题{n}", f"conv-auto-{n}", category, source="http")
    env = make_env(workspace)
    try:
        env.bot.automation.pin("物流查询", "USUP1", allow=False, reason="test")
        env.fake.user_locales["UENGLISH"] = "en-US"
        for n, user in enumerate(("USUP1", "UENGLISH"), 1):
            assert env.sim.home_opened(user).status == 200
            view = env.fake.wait_for("views.publish", n)[n - 1].params["view"]
            view = json.loads(view) if isinstance(view, str) else view
            assert view_errors(view) == []
            lines = {b["block_id"]: b for b in view["blocks"] if str(b.get("block_id", "")).startswith("automation_")}
            texts = [b["text"]["text"] for b in lines.values()]
            buttons = [b["accessory"]["text"]["text"] for b in lines.values()]
            if user == "USUP1":
                assert texts == ["*售后服务*：人工审核 - 0/0 条未经编辑直接通过，置信下限 无",
                                 "*物流查询*：人工审核，固定为人工审核 - 0/0 条未经编辑直接通过，置信下限 无"]
                assert buttons == ["固定为人工", "允许"]
                assert_all_chinese(texts + buttons)
            else:
                assert texts == ["*售后服务*: manual - 0/0 approved without edit, lower bound n/a",
                                 "*物流查询*: manual, pinned manual - 0/0 approved without edit, lower bound n/a"]
                assert buttons == ["Pin manual", "Allow"]
    finally:
        close_env(env)
