"""The review flow in the supervisors' language (issue 22): the review card, the decided card, the
edit and reject modals with their validation errors, ephemeral notices and App Home, rendered
through bolt (signed HTTP requests) against the fake Slack, in Chinese (a new workspace's
default), in English (``ui.language: en``) and per user (a Slack locale of en-US in a zh-CN
workspace reads English modals and App Home while the channel's card stays Chinese)."""

from __future__ import annotations

import dataclasses
import json
import re
import time

import pytest

from bot_support import PhraseRules, close_env, make_env
from replyloop.bot import cards

SHANGHAI = "Asia/Shanghai"


class ChineseRules(PhraseRules):
    """The shipped policies' kind of rules: Chinese messages and suggestions (a real checker,
    the engine's result shape)."""

    RULES = {"全额赔付": ("full-compensation", "block", "不得承诺全额赔付（赔付以审核结果为准）", "按规定为您申请赔付"),
             "绝对没问题": ("absolute-assurance", "warn", "避免绝对化保证", "我们会尽力")}


# -- what people see in Block Kit JSON ----------------------------------------------------------

def visible_texts(obj) -> list[str]:
    """Every text a person reads in a message's blocks or a view: plain_text and mrkdwn objects
    (headers, sections, context, buttons, labels, modal title / submit / close)."""
    out = []
    if isinstance(obj, dict):
        if obj.get("type") in ("plain_text", "mrkdwn") and isinstance(obj.get("text"), str):
            out.append(obj["text"])
        for key, value in obj.items():
            if key not in ("private_metadata", "value", "initial_value"):  # machine data / the user's own text
                out += visible_texts(value)
    elif isinstance(obj, list):
        for item in obj:
            out += visible_texts(item)
    return out


MARKUP = re.compile(r"<[@#!][^>]*>|:[a-z0-9_+-]+:|`[^`]*`")  # mentions, emoji, code (rule ids, config keys)
ALLOWED = {"AI", "chrF", "replyloop"}  # the terms Chinese support teams use as they are


def english_words(texts: list[str]) -> list[str]:
    words = []
    for text in texts:
        words += [w for w in re.findall(r"[A-Za-z]{2,}", MARKUP.sub(" ", text)) if w not in ALLOWED]
    return words


def limits_hold(view_or_blocks) -> None:
    """Slack counts characters: modal title / submit / close <= 24, button <= 75, header <= 150."""
    def walk(obj):
        if isinstance(obj, dict):
            if obj.get("type") == "button":
                assert len(obj["text"]["text"]) <= 75, obj
            if obj.get("type") == "header":
                assert len(obj["text"]["text"]) <= 150, obj
            if obj.get("type") == "modal":
                for key in ("title", "submit", "close"):
                    assert len(obj[key]["text"]) <= 24, obj[key]
            for value in obj.values():
                walk(value)
        elif isinstance(obj, list):
            for item in obj:
                walk(item)

    walk(view_or_blocks)


def texts_by_block(blocks) -> dict:
    return {b.get("block_id"): "\n".join(visible_texts(b)) for b in blocks}


def no_invalid_calls(fake) -> None:
    """The fake Slack refuses (``METHOD:invalid``) a message or view over Block Kit's limits."""
    bad = [c.method for c in fake.calls if c.method.endswith(":invalid")]
    assert not bad, bad


@pytest.fixture
def zh_env(chinese, workspace):
    config, _store = workspace
    assert config.file.ui.language == "zh-CN"  # a new workspace's default
    e = make_env(workspace, checker=ChineseRules())
    yield e
    close_env(e)


@pytest.fixture
def en_env(chinese, workspace):
    """``ui: {language: en}`` in the workspace's replyloop.yaml (no process-wide override)."""
    from replyloop.config import load_config
    from replyloop.store import Store

    config, store = workspace
    text = config.source.read_text(encoding="utf-8").replace("  language: zh-CN ", "  language: en ")
    assert "  language: en " in text
    config.source.write_text(text, encoding="utf-8")
    config = load_config(config.source)
    assert config.file.ui.language == "en"
    e = make_env((config, store), checker=ChineseRules())
    yield e
    close_env(e)


def seed_champion(store) -> None:
    from test_bot_status_chrf import seed

    seed(store, 0.74)  # chrF decided the gate: the warning line shows too


def test_review_flow_reads_chinese_in_a_new_workspace(zh_env):
    env = zh_env
    seed_champion(env.store)
    # the review card (a warning: Approve is offered), the channel's language
    d1, card = env.post_card(question="我的订单什么时候到？", draft="您的订单绝对没问题，三天内送达。", category="物流查询",
                             conversation="c-1")
    blocks = card.params["blocks"]
    by = texts_by_block(blocks)
    assert blocks[0]["text"]["text"] == f"审核草稿 #{d1}"
    assert card.params["text"] == f"审核草稿 #{d1}：我的订单什么时候到？"
    assert by["question"] == "*客户问题*\n>我的订单什么时候到？"
    assert by["draft"].startswith("*AI 草稿*\n您的订单*~绝对没问题~*")
    assert by["meta"] == "*分类：* 物流查询\n*模型：* 外部\n*政策：* :warning: 警告\n*会话：* c-1"
    assert by["policy"] == (":warning: *政策警告*\n• `absolute-assurance`（警告）：避免绝对化保证 — “绝对没问题”"
                            "\n   _建议：_ 我们会尽力")
    assert [b["text"]["text"] for b in blocks[-1]["elements"]] == ["通过", "编辑", "驳回"]
    assert english_words(visible_texts(blocks) + [card.params["text"]]) == []

    # a blocked draft: no Approve, the policy head says why
    d2, blocked = env.post_card(question="包裹丢了怎么办？", draft="放心，我们全额赔付。", category="售后", conversation="c-2")
    by = texts_by_block(blocked.params["blocks"])
    assert by["policy"].startswith(":no_entry: *被政策拦截* — 请编辑后再通过\n• `full-compensation`（拦截）")
    assert "*政策：* :no_entry: 拦截" in by["meta"]
    assert english_words(visible_texts(blocked.params["blocks"])) == []

    # Approve -> the decided card (chat.update), in the channel's language
    assert env.sim.click(card, "approve", user="USUP1").status == 200
    [update] = env.fake.wait_for("chat.update")
    review = env.wait_review(d1)
    with_lang = cards.when(review["created_at"], SHANGHAI)
    assert re.fullmatch(r"\d{4}年\d{1,2}月\d{1,2}日 \d{2}:\d{2}:\d{2}", with_lang)
    by = texts_by_block(update.params["blocks"])
    assert update.params["blocks"][0]["text"]["text"] == f"草稿 #{d1}：已通过"
    assert update.params["text"] == f"草稿 #{d1} 已由 <@USUP1> 通过"
    assert by["final"] == "*已通过的回复*\n您的订单绝对没问题，三天内送达。"
    assert by["decision"] == f":white_check_mark: <@USUP1> 于 {with_lang} 通过"
    shown = [t for b in update.params["blocks"] if b.get("block_id") != "golden" for t in visible_texts(b)]
    assert english_words(shown + [update.params["text"]]) == []  # the golden block is bot/golden.py's (i18n-cmds)

    # a second click: the ephemeral notice, in the clicker's language
    env.sim.click(card, "approve", user="USUP2")
    [note] = env.fake.wait_for("chat.postEphemeral")
    assert note.params["text"] == f"草稿 #{d1} 已由 <@USUP1> 于 {with_lang} 通过。"
    # someone who is not a supervisor
    env.sim.click(blocked, "edit", user="UOUTSIDER")
    notes = env.fake.wait_for("chat.postEphemeral", 2)
    assert notes[1].params["text"] == "只有主管可以审核草稿。请联系管理员把你加入 `slack.supervisors`。"
    assert english_words([n.params["text"] for n in notes]) == []

    # the edit modal, its validation errors, the decision
    env.sim.click(blocked, "edit", user="USUP2")
    [opened] = env.fake.wait_for("views.open")
    view = opened.params["view"]
    assert (view["title"]["text"], view["submit"]["text"], view["close"]["text"]) == (f"编辑草稿 #{d2}", "编辑后通过", "取消")
    assert texts_by_block(view["blocks"])[cards.REPLY_BLOCK] == "回复"
    assert english_words(visible_texts(view)) == []
    body = env.sim.submit(opened, user="USUP2", values={cards.REPLY_BLOCK: "我们全额赔付给您。"}).json()
    assert body == {"response_action": "errors", "errors": {
        cards.REPLY_BLOCK: "违反拦截级政策规则：不得承诺全额赔付（赔付以审核结果为准）（“全额赔付”）"}}
    body = env.sim.submit(opened, user="USUP2", values={cards.REPLY_BLOCK: "  "}).json()
    assert body["errors"] == {cards.REPLY_BLOCK: "回复不能为空。"}
    assert env.sim.submit(opened, user="USUP2", values={cards.REPLY_BLOCK: "我们会按规定为您申请赔付。"}).body == ""
    edited = env.fake.wait_for("chat.update", 2)[1]
    assert edited.params["blocks"][0]["text"]["text"] == f"草稿 #{d2}：编辑后通过"
    assert texts_by_block(edited.params["blocks"])["final"] == "*编辑后的回复（已通过）*\n我们会按规定为您申请赔付。"

    # the reject modal, its validation error, the rejected card
    d3, third = env.post_card(question="能开发票吗？", draft="不能。", category="发票", conversation="c-3")
    env.sim.click(third, "reject", user="USUP1")
    opened = env.fake.wait_for("views.open", 2)[1]
    view = opened.params["view"]
    assert (view["title"]["text"], view["submit"]["text"]) == (f"驳回草稿 #{d3}", "驳回")
    assert texts_by_block(view["blocks"])[cards.REASON_BLOCK] == "原因（选填）"
    assert english_words(visible_texts(view)) == []
    body = env.sim.submit(opened, user="USUP1", values={cards.REASON_BLOCK: "太" * 3001}).json()
    assert body["errors"] == {cards.REASON_BLOCK: "原因超过 3000 个字符。"}
    env.sim.submit(opened, user="USUP1", values={cards.REASON_BLOCK: "语气生硬"})
    rejected = env.fake.wait_for("chat.update", 3)[2]
    by = texts_by_block(rejected.params["blocks"])
    assert rejected.params["blocks"][0]["text"]["text"] == f"草稿 #{d3}：已驳回"
    assert by["draft"] == "*已驳回的草稿*\n~不能。~"
    assert by["decision"].endswith(" 驳回\n*原因：* 语气生硬")
    assert english_words(visible_texts(rejected.params["blocks"]) + [rejected.params["text"]]) == []

    # App Home, in the user's language (no Slack locale: the workspace's)
    assert env.sim.home_opened("USUP1").status == 200
    [publish] = env.fake.wait_for("views.publish")
    home = publish.params["view"]
    by = texts_by_block(home["blocks"])
    assert by["queue"] == "*审核队列：* 0 条草稿待审核"
    assert re.fullmatch(r"\*本周（自 \d{4}年\d{1,2}月\d{1,2}日 起）\*\n• <@USUP1>：通过 1，编辑后通过 0，驳回 1\n"
                        r"• <@USUP2>：通过 0，编辑后通过 1，驳回 0", by["approvals"]), by["approvals"]
    assert re.fullmatch(r"\*冠军模型：\* `cs-lora-0001`（编号 1） — 一致性 0\.812，chrF 0\.213，达标占比 0\.700，"
                        r"门禁通过（\d{4}/\d{1,2}/\d{1,2} \d{2}:\d{2}） :warning: 向量模型读不懂参考回复，门禁由 chrF 判定\n"
                        r"\*灰度模型：\* 无", by["models"]), by["models"]
    assert english_words(visible_texts(home)) == []

    # /retrain status and history: the texts bot/cards.py builds
    env.sim.command("/retrain", "status", user="USUP1")
    [answer] = env.fake.wait_for("response_url")
    lines = answer.params["text"].splitlines()
    assert lines[:2] == ["*上次训练以来通过的样本：* 2（阈值 50）", "*进行中：* 无"]
    assert lines[2].startswith("*冠军模型：* `cs-lora-0001`（编号 1） — 一致性 0.812，chrF 0.213")
    assert english_words(lines) == []
    env.sim.command("/retrain", "history", user="USUP1")
    assert env.fake.wait_for("response_url", 2)[1].params["text"] == "还没有训练记录。"

    for call in [card, blocked, third, *env.fake.calls_to("chat.update")]:
        limits_hold(call.params["blocks"])
    for call in [*env.fake.calls_to("views.open"), publish]:
        limits_hold(call.params["view"])
    no_invalid_calls(env.fake)


def test_ui_language_en_gives_todays_english(en_env):
    env = en_env
    d1, card = env.post_card(draft="您的订单绝对没问题。", conversation="c-1")
    by = texts_by_block(card.params["blocks"])
    assert card.params["blocks"][0]["text"]["text"] == f"Review draft #{d1}"
    assert by["question"].startswith("*Customer question*\n>")
    assert by["meta"] == "*Category:* 物流查询\n*Model:* external\n*Policy:* :warning: warn\n*Conversation:* c-1"
    assert by["policy"].startswith(":warning: *Policy warning*\n• `absolute-assurance` (warn): 避免绝对化保证 — “绝对没问题”"
                                   "\n   _suggestion:_ 我们会尽力")
    assert [b["text"]["text"] for b in card.params["blocks"][-1]["elements"]] == ["Approve", "Edit", "Reject"]
    env.sim.click(card, "edit", user="USUP1")
    [opened] = env.fake.wait_for("views.open")
    view = opened.params["view"]
    assert (view["title"]["text"], view["submit"]["text"], view["close"]["text"]) == (
        f"Edit draft #{d1}", "Approve edit", "Cancel")
    assert env.sim.submit(opened, user="USUP1", values={cards.REPLY_BLOCK: ""}).json()["errors"] == {
        cards.REPLY_BLOCK: "The reply is empty."}
    env.sim.submit(opened, user="USUP1", values={cards.REPLY_BLOCK: "您的订单三天内送达。"})
    [update] = env.fake.wait_for("chat.update")
    review = env.wait_review(d1)
    assert update.params["blocks"][0]["text"]["text"] == f"Draft #{d1}: edited and approved"
    with env_language("en"):
        when = cards.when(review["created_at"], SHANGHAI)
    assert texts_by_block(update.params["blocks"])["decision"] == f":pencil2: Edited and approved by <@USUP1> at {when}"
    env.sim.click(card, "reject", user="USUP2")
    [note] = env.fake.wait_for("chat.postEphemeral")
    assert note.params["text"] == f"Draft #{d1} was already edited and approved by <@USUP1> at {when}."
    env.sim.home_opened("USUP1")
    [publish] = env.fake.wait_for("views.publish")
    by = texts_by_block(publish.params["view"]["blocks"])
    assert by["queue"] == "*Review queue:* 0 draft(s) waiting"
    assert by["approvals"].endswith("\n• <@USUP1>: 0 approved, 1 edited, 0 rejected")
    assert by["models"] == "*Champion:* none\n*Canary:* none"
    no_invalid_calls(env.fake)


def env_language(tag):
    from replyloop import i18n

    return i18n.language(tag)


def test_a_supervisor_with_an_english_slack_locale_reads_english_alone(zh_env):
    """USUP2's Slack locale is en-US: their modal, its errors, their notices and App Home are
    English; the channel's card they decide on stays Chinese, and USUP1 still reads Chinese."""
    from bot_support import GROUP_MEMBER

    env = zh_env
    env.fake.user_locales["USUP2"] = "en-US"
    # the user's language is looked up after the ack: a slow users.info never delays a click's answer
    d0, first = env.post_card(conversation="c-0")
    env.fake.user_locales[GROUP_MEMBER] = "en-US"
    env.fake.delay("users.info", 1.5)
    for _click in range(2):  # the second click is answered with a notice in the user's language
        started = time.monotonic()
        assert env.sim.click(first, "approve", user=GROUP_MEMBER).status == 200
        assert time.monotonic() - started < 1.0
    [update] = env.fake.wait_for("chat.update")
    assert update.params["blocks"][0]["text"]["text"] == f"草稿 #{d0}：已通过"  # the channel's language
    [note] = env.fake.wait_for("chat.postEphemeral")
    assert note.params["text"].startswith(f"Draft #{d0} was already approved by <@{GROUP_MEMBER}> at ")
    env.fake.delay("users.info", 0)
    env.fake.clear()
    d1, card = env.post_card(conversation="c-1")
    assert card.params["blocks"][0]["text"]["text"] == f"审核草稿 #{d1}"
    env.sim.click(card, "edit", user="USUP2")
    [opened] = env.fake.wait_for("views.open")
    view = opened.params["view"]
    assert (view["title"]["text"], view["submit"]["text"], view["close"]["text"]) == (
        f"Edit draft #{d1}", "Approve edit", "Cancel")
    assert texts_by_block(view["blocks"])["question"].startswith("*Customer question*")
    # the errors ride on the ack in the modal's language (its private_metadata): with the locale
    # cache empty and users.info slow, the answer is still English and quick
    assert json.loads(view["private_metadata"])["lang"] == "en"
    env.bot.languages._cache.clear()
    env.fake.delay("users.info", 2.0)
    started = time.monotonic()
    body = env.sim.submit(opened, user="USUP2", values={cards.REPLY_BLOCK: "我们全额赔付。"}).json()
    assert time.monotonic() - started < 1.5
    assert body["errors"][cards.REPLY_BLOCK].startswith("Breaks a blocking policy rule: 不得承诺全额赔付")
    env.fake.delay("users.info", 0)
    for lang in ("fr", ["en"], None, "x" * 5000):  # a hostile or missing lang: the user's own language
        meta = {**json.loads(view["private_metadata"]), "lang": lang}
        hostile = {**opened.params["view"], "private_metadata": json.dumps(meta)}
        forged = dataclasses.replace(opened, params={**opened.params, "view": hostile})
        assert env.sim.submit(forged, user="USUP2", values={cards.REPLY_BLOCK: ""}).json()["errors"] == {
            cards.REPLY_BLOCK: "The reply is empty."}
    env.sim.submit(opened, user="USUP2", values={cards.REPLY_BLOCK: "我们会尽快为您处理。"})
    [update] = env.fake.wait_for("chat.update")  # the channel's card: the workspace's language
    assert update.params["blocks"][0]["text"]["text"] == f"草稿 #{d1}：编辑后通过"
    assert " 编辑后通过" in texts_by_block(update.params["blocks"])["decision"]
    env.sim.click(card, "approve", user="USUP2")
    env.sim.click(card, "approve", user="USUP1")
    notes = {n.params["user"]: n.params["text"] for n in env.fake.wait_for("chat.postEphemeral", 2)}
    assert notes["USUP2"].startswith(f"Draft #{d1} was already edited and approved by <@USUP2> at ")
    assert notes["USUP1"].startswith(f"草稿 #{d1} 已由 <@USUP2> 于 ")
    env.sim.home_opened("USUP2")
    env.sim.home_opened("USUP1")
    homes = {c.params["user_id"]: texts_by_block(c.params["view"]["blocks"]) for c in env.fake.wait_for("views.publish", 2)}
    assert homes["USUP2"]["queue"] == "*Review queue:* 0 draft(s) waiting"
    assert homes["USUP1"]["queue"] == "*审核队列：* 0 条草稿待审核"
    assert len(env.fake.calls_to("users.info")) == 3  # once per user, cached (USUP2 again after the clear)
    no_invalid_calls(env.fake)


def test_chinese_titles_and_buttons_fit_slacks_limits_with_the_longest_ids(chinese):
    """A draft id of 19 digits (SQLite's largest) and a 3,000-character question: still within
    every limit in Chinese (Slack counts characters)."""
    from replyloop import i18n
    from replyloop.bot.fake_slack import block_kit_errors, view_errors

    draft = {"id": 2**63 - 1, "question": "问" * 3000, "text": "答" * 3000, "category": "类" * 400,
             "conversation_id": "c" * 5000, "model_name": "m", "verdict": "pass", "violations": [],
             "decision": "reject", "reviewer": "U1", "decided_at": "2026-12-02T03:00:00+00:00", "reason": "因" * 3000,
             "final_text": None}
    with i18n.language("zh-CN"):
        for view in (cards.edit_modal(draft, "C1", "1.0"), cards.reject_modal(draft, "C1", "1.0")):
            assert view_errors(view) == []
            limits_hold(view)
            assert view["title"]["text"].startswith("编辑草稿 #") or view["title"]["text"].startswith("驳回草稿 #")
        for _text, blocks in (cards.review_card(draft), cards.decided_card(draft, SHANGHAI)):
            assert block_kit_errors(blocks) == []
            limits_hold(blocks)
        assert "2026年12月2日 11:00:00" in texts_by_block(cards.decided_card(draft, SHANGHAI)[1])["decision"]


def test_socket_mode_speaks_the_users_language_and_the_channels(chinese, workspace):
    """The same over Socket Mode (``replyloop serve`` without HTTP): the card its sweeper posts is
    Chinese; an en-US supervisor's edit modal and its error are English; the updated card stays
    Chinese."""
    from test_bot_socket_mode import SECRETS, finish, start, wait_connected

    env = start(workspace, SECRETS, drafts=1)
    try:
        wait_connected(env)
        env.fake.user_locales["USUP2"] = "en-US"
        card = env.card(1)
        assert card.params["blocks"][0]["text"]["text"] == "审核草稿 #1"
        env.fake.socket_send("interactive", env.sim.block_action(card, "edit", user="USUP2"))
        [opened] = env.fake.wait_for("views.open")
        assert opened.params["view"]["title"]["text"] == "Edit draft #1"
        eid = env.fake.socket_send("interactive", env.sim.view_submission(opened, "USUP2", {cards.REPLY_BLOCK: " "}))
        assert env.fake.wait_for_ack(eid)["payload"] == {"response_action": "errors",
                                                         "errors": {cards.REPLY_BLOCK: "The reply is empty."}}
        env.fake.socket_send("interactive", env.sim.view_submission(opened, "USUP2", {cards.REPLY_BLOCK: "好的，马上处理。"}))
        [update] = env.fake.wait_for("chat.update")
        assert update.params["blocks"][0]["text"]["text"] == "草稿 #1：编辑后通过"
        assert update.params["text"] == "草稿 #1 已由 <@USUP2> 编辑后通过"
    finally:
        finish(env)
    assert env.errors == []
