"""/reply and `replyloop reply`: the nearest approved answers over signed slash payloads, the CLI,
ranking on a seeded set, stale answers left out, empty results explained."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from bot_support import OUTSIDER, close_env, make_env
from replyloop.answers import AnswerIndex, HashingEncoder
from replyloop.intake import policy_checker
from rules_support import use_workspace_policies

FAQ = [
    ("收不到验证码怎么办？", "请检查手机是否拦截了短信，60秒后可重新获取验证码。", "登录异常"),
    ("验证码一直收不到", "请确认手机号填写正确，并在设置里关闭短信拦截。", "登录异常"),
    ("订单什么时候发货？", "下单后48小时内发货，发货后可在订单页查看物流。", "物流查询"),
    ("运费怎么算？", "本单包邮，无需另付运费。", "物流查询"),
    ("怎么申请退货？", "在订单页点击“申请售后”，选择退货即可。", "售后服务"),
    ("发票怎么开？", "在订单详情页点击“申请发票”，填写抬头即可。", "发票问题"),
    ("支付失败怎么办？", "请确认银行卡余额充足，或换一种支付方式再试。", "支付失败"),
]


def seed(store, approver="USUP1"):
    """The FAQ as approved answers: through real review decisions (approver and time recorded)."""
    for n, (q, a, cat) in enumerate(FAQ):
        qid = store.add_question(q, f"faq-{n}", cat, source="http")
        did = store.add_draft(qid, a, model_name="seed")
        store.decide(did, "approve", approver)


def test_ranking_on_a_seeded_set_characters_only(workspace):
    config, store = workspace
    seed(store)
    config.file.reply.embedding_model = "none"
    index = AnswerIndex.from_config(config, store)
    found = index.search("验证码收不到怎么办")
    assert [a.question for a in found.answers] == ["收不到验证码怎么办？", "验证码一直收不到", "支付失败怎么办？"]
    assert found.answers[0].score > found.answers[1].score > found.answers[2].score
    assert (found.answers[0].category, found.answers[0].approved_by) == ("登录异常", "USUP1")
    assert found.explanation is None
    # new approvals are in the next search, without a rebuild
    qid = store.add_question("验证码收不到怎么办", "faq-new", "登录异常", source="http")
    store.decide(store.add_draft(qid, "请稍后重新获取验证码。", model_name="seed"), "approve", "USUP2")
    again = index.search("验证码收不到怎么办")
    assert (again.answers[0].question, again.answers[0].approved_by, again.indexed) == ("验证码收不到怎么办", "USUP2", 8)


def test_embedding_and_characters_combined(workspace):
    """A cheap stand-in encoder: the score is w * cosine + (1 - w) * character overlap."""
    config, store = workspace
    seed(store)
    index = AnswerIndex(store, HashingEncoder(), embedding_weight=0.5, min_score=0.0)
    index.refresh()
    [best, *_] = index.search("发票怎么开").answers
    assert best.question == "发票怎么开？"
    assert best.score == pytest.approx(0.5 * best.embedding + 0.5 * best.characters, abs=1e-6)
    assert best.embedding > 0.9 and best.characters > 0.9


@pytest.mark.slow  # loads sentence-transformers and the model in a subprocess: 15-50 s on 2 busy cores
def test_bundled_model_cli(workspace):
    """`replyloop reply` with the bundled embedding model (all-MiniLM-L6-v2) in a real subprocess."""
    config, store = workspace
    seed(store)
    store.close()
    out = subprocess.run([sys.executable, "-m", "replyloop", "reply", "怎么申请退货", "--json",
                          "--config", str(config.source)], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    first = got["answers"][0]
    assert (first["question"], first["category"], first["approved_by"]) == ("怎么申请退货？", "售后服务", "USUP1")
    assert first["embedding"] is not None and len(got["answers"]) == 3


@pytest.fixture
def slack(workspace):
    config, store = workspace
    folder = use_workspace_policies(config)
    config.file.reply.embedding_model = "none"
    env = make_env(workspace, checker=policy_checker(config))
    env.folder = folder
    yield env
    close_env(env)


def reply(env, text, user="USUP1", n=1):
    resp = env.sim.command("/reply", text, user=user)
    assert (resp.status, resp.body) == (200, "")
    return env.fake.wait_for("response_url", n)[n - 1].params


def test_slash_reply_shows_three_answers_ephemerally(slack):
    seed(slack.store)
    got = reply(slack, "验证码收不到怎么办", user=OUTSIDER)  # read-only: anyone may use it
    assert got["response_type"] == "ephemeral"
    blocks = json.dumps(got["blocks"], ensure_ascii=False)
    sections = [b["text"]["text"] for b in got["blocks"] if b["type"] == "section"]
    assert sections[0] == "*Approved answers for:* 验证码收不到怎么办"
    # the approval time in the locale's short form, in scheduler.timezone (i18n22): "12/2/26, 11:41 AM"
    assert re.match(r"\*1\. 登录异常\* · approved by <@USUP1> at \d{1,2}/\d{1,2}/\d{2}, \d{1,2}:\d{2}\W[AP]M · score 0\.\d\d\n",
                    sections[1]), sections[1]
    assert sections[1].endswith("\n>收不到验证码怎么办？")
    assert sections[2] == "*Copy:*\n```请检查手机是否拦截了短信，60秒后可重新获取验证码。```"
    assert sections[3].startswith("*2. 登录异常* · approved by <@USUP1>")
    assert sections[5].startswith("*3. 支付失败*")
    assert len(sections) == 7 and "context" not in blocks


def test_stale_answer_that_now_breaks_a_policy_is_left_out(slack):
    seed(slack.store)
    got = reply(slack, "运费怎么算")
    assert "本单包邮，无需另付运费。" in json.dumps(got["blocks"], ensure_ascii=False)
    # policies change: 包邮 is now a term to avoid (a new file in policies.dir, the bot reloads)
    (slack.folder / "shipping.yaml").write_text("terminology:\n  - preferred: 免运费\n    avoid: [包邮]\n",
                                                encoding="utf-8")
    from replyloop.bot.proposals import reload_policies

    reload_policies(slack.bot)
    got = reply(slack, "运费怎么算", n=2)
    text = json.dumps(got["blocks"], ensure_ascii=False)
    assert "本单包邮" not in text
    [note] = [b for b in got["blocks"] if b["type"] == "context"]
    assert "1 approved answer(s) were left out because they break the current policies (terminology:免运费)." in \
        note["elements"][0]["text"]


def test_empty_results_are_explained(slack):
    got = reply(slack, "验证码收不到怎么办")
    [note] = [b for b in got["blocks"] if b["type"] == "context"]
    assert note["elements"][0]["text"].startswith("There are no approved answers yet")
    seed(slack.store)
    got = reply(slack, "zzzz qqqq", n=2)
    [note] = [b for b in got["blocks"] if b["type"] == "context"]
    assert note["elements"][0]["text"].startswith("No approved answer is close enough to this question (best score")
    got = reply(slack, "   ", n=3)
    assert got["text"].startswith("Usage: `/reply <the customer's question>`")


def test_supervisors_only_when_configured(slack):
    seed(slack.store)
    slack.config.file.reply.supervisors_only = True
    got = reply(slack, "发票怎么开", user=OUTSIDER)
    assert got["text"] == "Only supervisors can use /reply in this workspace (reply.supervisors_only)."
    got = reply(slack, "发票怎么开", user="USUP2", n=2)
    assert "在订单详情页点击“申请发票”" in json.dumps(got["blocks"], ensure_ascii=False)


def test_clustered_embedding_search_agrees_with_the_exact_one(workspace, monkeypatch):
    """Past IVF_MIN samples the embeddings are searched through k-means clusters: the best answer
    stays the exact search's best."""
    import random

    import numpy as np

    from replyloop import answers

    monkeypatch.setattr(answers, "IVF_MIN", 500)
    config, store = workspace
    rng = random.Random(5)
    pool = "的一是在不了有和人这中大为上个我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种"
    rows = [(i + 1, "".join(rng.choice(pool) for _ in range(rng.randint(6, 14))), f"答复{i}", "其他", "U1",
             "2026-11-30T09:00:00+00:00") for i in range(1500)]
    index = AnswerIndex(store, HashingEncoder(), embedding_weight=1.0, min_score=0.0)
    index.add_rows(rows)
    assert index._clusters is not None and index._clusters.size == 1500
    agree = 0
    for _, prompt, *_ in rows[:100]:
        query = prompt[1:]  # one character left out
        combined, emb, _ = index.scores(query)
        exact = index._vectors[:len(index)] @ index.encoder.encode([query])[0]
        agree += int(np.argmax(combined)) == int(np.argmax(exact))
    assert agree >= 95


def test_hostile_questions_and_answers(slack):
    """A 5,000-character question, mrkdwn and mentions in the question, code fences in an answer."""
    qid = slack.store.add_question("怎么改地址？", "faq-x", "物流查询", source="http")
    did = slack.store.add_draft(qid, "在订单页修改地址```<!channel>", model_name="seed")
    slack.store.decide(did, "approve", "USUP1")
    got = reply(slack, "<!channel> *怎么* 改地址？" + "啊" * 5000)
    sections = [b["text"]["text"] for b in got["blocks"] if b["type"] == "section"]
    assert all(len(t) <= 3000 for t in sections)
    assert "<!channel>" not in json.dumps(got["blocks"], ensure_ascii=False)
    assert "&lt;!channel&gt;" in sections[0]
    assert sections[2] == "*Copy:*\n```在订单页修改地址ˋˋˋ&lt;!channel&gt;```"


def test_manifest_has_the_reply_command():
    import yaml

    from replyloop.paths import package_dir

    manifest = yaml.safe_load((package_dir().parent / "bot" / "manifest.yaml").read_text(encoding="utf-8"))
    commands = {c["command"]: c for c in manifest["features"]["slash_commands"]}
    assert commands["/reply"]["url"] == commands["/retrain"]["url"]
    assert "commands" in manifest["oauth_config"]["scopes"]["bot"]

