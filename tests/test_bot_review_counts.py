"""What a decision counts as, and what its card says (real HTTP, signed requests, the fake Slack):
an edit that changed nothing is an approval; a reply already in the dataset says so."""

from __future__ import annotations

from replyloop.bot import cards
from bot_support import *  # noqa: F401,F403  (fixtures and constants)
from replyloop.store import SampleIn
from test_bot_review import blocks_text


def _edit(env, card, user: str, text: str, nth: int = 1):
    env.sim.click(card, "edit", user=user)
    opened = env.fake.wait_for("views.open", count=nth)[-1]
    resp = env.sim.submit(opened, user=user, values={cards.REPLY_BLOCK: text})
    assert resp.status == 200 and resp.body == ""


def test_an_edit_identical_to_the_draft_counts_as_an_approval(env):
    draft_id, card = env.post_card(question="发票怎么开？", draft="请在订单详情页申请电子发票。")
    _edit(env, card, "USUP2", "  请在订单详情页申请电子发票。\n")  # opened the modal, changed nothing
    review = env.wait_review(draft_id)
    assert (review["decision"], review["final_text"]) == ("approve", "请在订单详情页申请电子发票。")
    [sample] = env.store.samples()
    assert sample["response"] == "请在订单详情页申请电子发票。" and sample["review_id"] == review["id"]
    [update] = env.fake.wait_for("chat.update")
    shown = blocks_text(update.params["blocks"])
    assert "Approved by <@USUP2>" in shown and "Edited" not in shown
    assert env.store.scalar("SELECT count(*) FROM reviews WHERE decision = 'edit'") == 0


def test_an_edited_reply_already_in_the_dataset_says_so_on_the_card(env):
    env.store.add_samples([SampleIn("退款多久到账？", "退款会在3个工作日内原路退回。", "退换货政策")])
    draft_id, card = env.post_card(question="退款多久到账？", draft="退款很快。", category="退换货政策")
    _edit(env, card, "USUP1", "退款会在3个工作日内原路退回。")
    review = env.wait_review(draft_id)
    assert review["decision"] == "edit"
    assert env.store.scalar("SELECT count(*) FROM samples") == 1  # no second copy
    [update] = env.fake.wait_for("chat.update")
    shown = blocks_text(update.params["blocks"])
    assert "Edited and approved by <@USUP1>" in shown
    assert "The reply was already in the dataset: no new sample was added." in shown
    # a reply that is new says nothing of the kind
    draft2, card2 = env.post_card(question="运费谁出？", draft="运费您出。", category="退换货政策")
    _edit(env, card2, "USUP1", "质量问题的退货运费由我们承担。", nth=2)
    env.wait_review(draft2)
    updates = env.fake.wait_for("chat.update", count=2)
    assert "already in the dataset" not in blocks_text(updates[-1].params["blocks"])
