"""Preference data from every decision: KTO rows and DPO pairs, frozen in snapshots, exported in TRL's formats."""

from __future__ import annotations

import json

from helpers import cli

from replyloop import preferences
from replyloop.store import SampleIn

Q_SHIP, Q_REFUND, Q_CODE, Q_PAY, Q_SAME = ("发货以后一般几天能到？", "退款多久到账", "收不到验证码怎么办？",
                                         "支付失败怎么办", "怎么查看电子面单")


def seed(store) -> dict:
    """One decision of every kind, as the bot stores them."""
    ids = {}

    def draft(question, text, conv):
        qid = ids.get(question) or store.add_question(question, conv, category="售后服务")
        ids[question] = qid
        return store.add_draft(qid, text, model_name="m1")

    store.decide(draft(Q_SHIP, "您好，发货后一般2-5天送达。", "c1"), "approve", "USUP1")
    store.decide(draft(Q_REFUND, "退款24小时必到，全额赔付。", "c2"), "edit", "USUP1",
                 final_text="您好，退款会在1-3个工作日原路退回。")
    store.decide(draft(Q_CODE, "请联系我们。请联系我们。", "c3"), "reject", "USUP2", reason="没有回答问题")
    # a rejected draft, then a regenerated one approved for the same question: a pair
    store.decide(draft(Q_PAY, "支付失败是您的问题。", "c4"), "reject", "USUP2")
    store.decide(draft(Q_PAY, "您好，请检查银行卡余额或换一种支付方式后重试。", "c4"), "approve", "USUP1")
    # an edit that changed nothing is an approval
    store.decide(draft(Q_SAME, "您好，请在订单详情页查看电子面单。", "c5"), "edit", "USUP1",
                 final_text="您好，请在订单详情页查看电子面单。 ")
    return ids


def test_every_decision_maps_to_kto_rows_and_dpo_pairs(workspace):
    _, store = workspace
    seed(store)
    rows = preferences.collect(store.db.conn)
    kto = [(p.prompt, p.chosen, p.label) for p in rows if p.kind == "kto"]
    dpo = [(p.prompt, p.chosen, p.rejected) for p in rows if p.kind == "dpo"]
    assert kto == [
        (Q_SHIP, "您好，发货后一般2-5天送达。", 1),
        (Q_REFUND, "您好，退款会在1-3个工作日原路退回。", 1),
        (Q_REFUND, "退款24小时必到，全额赔付。", 0),
        (Q_CODE, "请联系我们。请联系我们。", 0),
        (Q_PAY, "支付失败是您的问题。", 0),
        (Q_PAY, "您好，请检查银行卡余额或换一种支付方式后重试。", 1),
        (Q_SAME, "您好，请在订单详情页查看电子面单。", 1),
    ]
    assert dpo == [
        (Q_REFUND, "您好，退款会在1-3个工作日原路退回。", "退款24小时必到，全额赔付。"),
        (Q_PAY, "您好，请检查银行卡余额或换一种支付方式后重试。", "支付失败是您的问题。"),
    ]


def test_snapshots_freeze_preference_rows_under_the_content_hash(workspace):
    _, store = workspace
    store.add_samples([SampleIn("怎么退货", "您好，七天无理由退货请在订单详情申请。", "退换货政策")])
    before = store.create_snapshot(0.0, "s").hash
    assert store.scalar("SELECT count(*) FROM snapshot_preferences") == 0
    seed(store)
    snap = store.create_snapshot(0.0, "s")
    assert snap.created and snap.hash != before
    frozen = store.scalar("SELECT count(*) FROM snapshot_preferences WHERE snapshot_hash = ?", (snap.hash,))
    assert frozen == 9
    # the same content is the same snapshot; a later review does not change what was frozen
    assert store.create_snapshot(0.0, "s").hash == snap.hash
    qid = store.add_question("新问题", "c9")
    store.decide(store.add_draft(qid, "草稿"), "reject", "USUP1")
    later = store.create_snapshot(0.0, "s")
    assert later.hash != snap.hash
    assert len(list(preferences.iter_rows(store, snap.hash, "kto"))) == 7
    assert len(list(preferences.iter_rows(store, later.hash, "kto"))) == 8


def test_heldout_questions_stay_heldout_in_preference_rows(workspace):
    _, store = workspace
    ids = seed(store)
    # the questions' approved samples are in the store; hold out (almost) everything
    snap = store.create_snapshot(0.99, "s")
    held = {r["prompt"] for r in store.snapshot_samples(snap.hash, "heldout")}
    rows = list(preferences.iter_rows(store, snap.hash, "dpo"))
    assert rows and all((r["split"] == "heldout") == (r["prompt"] in held) for r in rows)
    assert list(preferences.iter_rows(store, snap.hash, "dpo", "train")) == [r for r in rows if r["split"] == "train"]
    assert ids


def test_export_kto_and_dpo_read_back_with_trl(workspace, tmp_path):
    from datasets import load_dataset
    from trl.data_utils import is_conversational, maybe_unpair_preference_dataset

    config, store = workspace
    seed(store)
    qid = store.add_question("我的手机号 13812345678 收不到验证码", "c7")
    store.decide(store.add_draft(qid, "请联系我们。"), "edit", "USUP1", final_text="您好，请确认 13812345678 能接收短信。")
    snap = store.create_snapshot(0.0, "s").hash
    r = cli("data", "export", str(tmp_path / "kto.jsonl"), "--format", "kto", "--snapshot", snap)
    assert r.exit_code == 0, r.output
    assert "Wrote 9 unpaired preference rows" in r.output and "phone 3" in r.output  # 2 prompts, 1 reply
    r = cli("data", "export", str(tmp_path / "dpo.jsonl"), "--format", "dpo", "--snapshot", snap)
    assert r.exit_code == 0 and "Wrote 3 preference pairs" in r.output, r.output

    kto = load_dataset("json", data_files=str(tmp_path / "kto.jsonl"), split="train")
    assert kto.column_names == ["prompt", "completion", "label"] and not is_conversational(kto[0])
    assert kto.features["label"].dtype == "bool" and sum(kto["label"]) == 5
    dpo = load_dataset("json", data_files=str(tmp_path / "dpo.jsonl"), split="train")
    assert dpo.column_names == ["prompt", "chosen", "rejected"]
    # TRL's own conversion of paired into unpaired data accepts the DPO file
    unpaired = maybe_unpair_preference_dataset(dpo)
    assert unpaired.column_names == ["prompt", "completion", "label"] and len(unpaired) == 6
    assert not any("13812345678" in json.dumps(row, ensure_ascii=False) for row in dpo)
    # all reviews now, without a snapshot
    r = cli("data", "export", str(tmp_path / "now.jsonl"), "--format", "dpo")
    assert r.exit_code == 0 and "Wrote 3 preference pairs" in r.output


def test_export_preference_mistakes_are_errors(workspace, tmp_path):
    _, store = workspace
    r = cli("data", "export", str(tmp_path), "--format", "kto")
    assert r.exit_code == 2 and "is a directory" in r.output and "Traceback" not in r.output
    r = cli("data", "export", str(tmp_path / "x.jsonl"), "--format", "dpo", "--snapshot", "feedfacefeedface")
    assert r.exit_code == 2 and "not found" in r.output
    r = cli("data", "export", str(tmp_path / "x.jsonl"), "--format", "dpo")
    assert r.exit_code == 0 and "Wrote 0 preference pairs" in r.output and "no reviews gave rows" in r.output
