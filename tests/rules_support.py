"""Seeded reviews and a workspace policy folder for the rule-proposal, /reply and drift tests."""

from __future__ import annotations

import shutil
from pathlib import Path

from replyloop import paths
from replyloop.config import load_config

# (draft, final, reviewer): what supervisors changed, and how often
TERM_EDITS = [  # 包邮 -> 免运费: 4 edits by 2 supervisors -> a terminology proposal
    ("本单包邮，请放心。", "本单免运费，请放心。", "USUP1"),
    ("亲，全场包邮哦。", "亲，全场免运费哦。", "USUP2"),
    ("这件商品包邮吗？包邮的。", "这件商品免运费吗？免运费的。", "USUP1"),
    ("满99元包邮。", "满99元免运费。", "USUP2"),
]
DELETE_EDITS = [  # 保证当天到账 deleted: 4 edits by 2 supervisors -> a banned-phrase proposal
    ("退款保证当天到账，请耐心等待。", "退款请耐心等待。", "USUP1"),
    ("已为您退款，保证当天到账。", "已为您退款。", "USUP2"),
    ("您好，保证当天到账，请查收。", "您好，请查收。", "USUP2"),
    ("保证当天到账，如有疑问请联系我们。", "如有疑问请联系我们。", "USUP1"),
]
BELOW_EDITS = [
    ("请稍等片刻。", "请您稍候。", "USUP1"),            # 2 times only
    ("麻烦稍等片刻哦。", "麻烦您稍候哦。", "USUP2"),
    ("小哥会联系您。", "快递员会联系您。", "USUP1"),      # 3 times, one supervisor only
    ("小哥今天派送。", "快递员今天派送。", "USUP1"),
    ("请等小哥电话。", "请等快递员电话。", "USUP1"),
    ("请提供快递条码。", "请提供电子面单。", "USUP1"),    # covered by the shipped terminology
    ("您的快递条码是多少？", "您的电子面单是多少？", "USUP2"),
    ("快递条码在哪里看？", "电子面单在哪里看？", "USUP1"),
]


def seed_edits(store, edits, category: str = "售后服务") -> list[int]:
    """One question + draft + edit review per entry; returns the review ids."""
    ids = []
    for n, (draft, final, reviewer) in enumerate(edits):
        qid = store.add_question(f"问题 {draft}", f"conv-{len(ids)}-{n}-{draft}", category, source="http")
        did = store.add_draft(qid, draft, model_name="seed")
        ids.append(store.decide(did, "edit", reviewer, final_text=final).review["id"])
    return ids


def use_workspace_policies(config) -> Path:
    """Copy the shipped policies into the workspace and point policies.dir at them (file and object)."""
    target = config.root / "policies"
    shutil.copytree(paths.default_policies_dir(), target, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    text = config.source.read_text(encoding="utf-8").replace('policies:\n  dir: ""', "policies:\n  dir: policies")
    config.source.write_text(text, encoding="utf-8")
    config.file = load_config(config.source).file
    return target
