"""Slack "Add to golden suite": from the decided card to a validated case in evals/<suite>.yaml,
over signed requests against the local fake Slack."""

from __future__ import annotations

import time

import yaml

from replyloop.bot import cards, golden as bot_golden
from bot_support import *  # noqa: F401,F403  (fixtures and constants)
from bot_support import OUTSIDER, wait_until
from replyloop.evaluation import golden

DRAFT = "您好，马上为您办理，我们承诺七天内全额退款，谢谢。"
EDITED = "您好，我们会按售后规则为您办理，谢谢。"


def inputs(view: dict) -> dict[str, str]:
    return {b["block_id"]: b["element"].get("initial_value", "") for b in view["blocks"] if b["type"] == "input"}


def decided_card(env):
    """A draft edited by a supervisor; returns (draft id, the chat.update of its decided card)."""
    draft_id, card = env.post_card(question="定制商品可以退吗？", draft=DRAFT)
    env.sim.click(card, "edit", user="USUP1")
    [opened] = env.fake.wait_for("views.open")
    assert env.sim.submit(opened, user="USUP1", values={cards.REPLY_BLOCK: EDITED}).status == 200
    [update] = env.fake.wait_for("chat.update")
    return draft_id, update


def open_add(env, draft_id: int, update, user: str = "USUP1", count: int = 2):
    card = {"channel": update.params["channel"], "ts": update.params["ts"], "blocks": update.params["blocks"]}
    assert env.sim.click(card, bot_golden.ADD, user=user, value=str(draft_id)).status == 200
    return env.fake.wait_for("views.open", count=count)[-1]


def test_add_to_golden_suite_from_the_decided_card(env):
    draft_id, update = decided_card(env)
    [section] = [b for b in update.params["blocks"] if b.get("block_id") == "golden"]
    assert section["accessory"]["action_id"] == bot_golden.ADD and section["accessory"]["value"] == str(draft_id)
    assert not any(b["type"] == "actions" for b in update.params["blocks"])  # still no buttons block
    opened = open_add(env, draft_id, update)
    view = opened.params["view"]
    assert view["callback_id"] == bot_golden.VIEW
    values = inputs(view)
    assert values[bot_golden.QUESTION_BLOCK] == "定制商品可以退吗？"
    assert values[bot_golden.REFERENCE_BLOCK] == EDITED
    assert values[bot_golden.ID_BLOCK] == f"draft-{draft_id}" and values[bot_golden.SUITE_BLOCK] == "slack"
    suggested = yaml.safe_load(values[bot_golden.ASSERT_BLOCK])
    assert suggested[0] == {"type": "not-contains", "value": ["马上", "我们承诺七天内全额退款"]}  # what the edit deleted
    assert {"type": "policy-clean"} in suggested
    # submit as prefilled: written, valid, audit-logged, the supervisor told where
    resp = env.sim.submit(opened, user="USUP1", values=values)
    assert resp.status == 200 and resp.body == ""
    path = env.config.root / "evals" / "slack.yaml"
    [suite] = golden.load_suites(env.config.root / "evals")
    [case] = suite.cases
    assert (case.id, case.question, case.reference, suite.path) == (f"draft-{draft_id}", "定制商品可以退吗？", EDITED, path)
    assert golden.check_case(case, EDITED).results[0].passed
    assert not golden.check_case(case, DRAFT).results[0].passed  # the deleted promise fails the case
    row = env.store.one("SELECT * FROM audit_log WHERE action = 'golden.add'")
    assert (row["actor"], row["entity"], row["entity_id"]) == ("USUP1", "golden_case", f"draft-{draft_id}")
    [notice] = env.fake.wait_for("chat.postEphemeral")
    assert notice.params["user"] == "USUP1" and f"`draft-{draft_id}` to `slack.yaml` (line 2)" in notice.params["text"]
    before = path.read_text(encoding="utf-8")

    # the same id again: the error sits on the id field, the file is unchanged
    body = env.sim.submit(opened, user="USUP1", values=values).json()
    assert body["response_action"] == "errors"
    assert body["errors"] == {bot_golden.ID_BLOCK: "duplicate case id (first at slack.yaml:2)"}
    # a bad assertion and bad YAML: on the assertions field
    body = env.sim.submit(opened, user="USUP1", values={**values, bot_golden.ID_BLOCK: "new-1",
                                                         bot_golden.ASSERT_BLOCK: "- {type: regex, value: '(('}"}).json()
    assert "regex '((' does not compile" in body["errors"][bot_golden.ASSERT_BLOCK]
    body = env.sim.submit(opened, user="USUP1", values={**values, bot_golden.ID_BLOCK: "new-2",
                                                         bot_golden.ASSERT_BLOCK: "- {type: contains"}).json()
    assert body["errors"][bot_golden.ASSERT_BLOCK].startswith("Not valid YAML")
    bomb = "- &a [x, x, x, x, x, x, x, x, x]\n- &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n- [*b, *b, *b, *b, *b, *b, *b]"
    body = env.sim.submit(opened, user="USUP1", values={**values, bot_golden.ID_BLOCK: "new-3",
                                                         bot_golden.ASSERT_BLOCK: bomb}).json()
    assert "anchors and aliases" in body["errors"][bot_golden.ASSERT_BLOCK]
    body = env.sim.submit(opened, user="USUP1", values={**values, bot_golden.SUITE_BLOCK: "../../etc"}).json()
    assert "suite name" in body["errors"][bot_golden.SUITE_BLOCK]
    assert path.read_text(encoding="utf-8") == before
    assert env.store.scalar("SELECT count(*) FROM audit_log WHERE action = 'golden.add'") == 1
    # a second case goes into the same file, which stays valid
    assert env.sim.submit(opened, user="USUP1", values={**values, bot_golden.ID_BLOCK: "custom-return"}).body == ""
    assert [c.id for c in golden.load_suites(env.config.root / "evals")[0].cases] == [f"draft-{draft_id}", "custom-return"]


def test_only_supervisors_add_golden_cases(env):
    draft_id, update = decided_card(env)
    card = {"channel": update.params["channel"], "ts": update.params["ts"], "blocks": update.params["blocks"]}
    env.sim.click(card, bot_golden.ADD, user=OUTSIDER, value=str(draft_id))
    wait_until(lambda: env.fake.calls_to("chat.postEphemeral"))
    assert len(env.fake.calls_to("views.open")) == 1  # only the edit modal
    # a forged submission by an outsider writes nothing
    opened = open_add(env, draft_id, update)
    resp = env.sim.submit(opened, user=OUTSIDER, values=inputs(opened.params["view"]))
    assert resp.status == 200
    wait_until(lambda: len(env.fake.calls_to("chat.postEphemeral")) == 2)
    assert "Only supervisors" in env.fake.calls_to("chat.postEphemeral")[-1].params["text"]
    time.sleep(0.1)
    assert not (env.config.root / "evals").exists() or not golden.suite_files(env.config.root / "evals")


def test_rejected_card_has_no_golden_button(env):
    draft_id, card = env.post_card()
    env.sim.click(card, "reject", user="USUP1")
    [opened] = env.fake.wait_for("views.open")
    env.sim.submit(opened, user="USUP1", values={cards.REASON_BLOCK: "wrong"})
    [update] = env.fake.wait_for("chat.update")
    assert not [b for b in update.params["blocks"] if b.get("block_id") == "golden"]
