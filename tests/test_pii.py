"""PII masking: what is masked (landlines, full-width digits, spaced ID cards...) and what must stay."""

from __future__ import annotations

import pytest

from helpers import cli
from replyloop.pii import Scrubber


@pytest.mark.parametrize("text,masked,kind", [
    ("座机010-12345678", "座机[PHONE]", "phone"),
    ("0755-12345678", "[PHONE]", "phone"),
    ("(010)12345678", "[PHONE]", "phone"),
    ("（０１０）１２３４５６７８", "[PHONE]", "phone"),
    ("电话 020 87654321 转 123", "电话 [PHONE] 转 123", "phone"),
    ("１３８００１３８０００", "[PHONE]", "phone"),
    ("手机：１３８ ００１３ ８０００。", "手机：[PHONE]。", "phone"),
    ("+86 1380 013 8000", "[PHONE]", "phone"),
    ("0086 138 0013 8000", "[PHONE]", "phone"),
    ("+8613800138000", "[PHONE]", "phone"),
    ("我的手机138 0013 8000收不到验证码", "我的手机[PHONE]收不到验证码", "phone"),
    ("身份证号110105 19491231 002X", "身份证号[ID_CARD]", "id_card"),
    ("身份证110105-19491231-0021已登记", "身份证[ID_CARD]已登记", "id_card"),
    ("身份证１１０１０１１９９００３０７１２３ｘ", "身份证[ID_CARD]", "id_card"),
    ("订单号是12345678901", "订单号是[ORDER]", "order"),
    ("订单号为：12345678901", "订单号为：[ORDER]", "order"),
    ("订单号：ＡＢ１２３４５６７８９", "订单号：[ORDER]", "order"),
    ("订单号 2026112712345678 没到", "订单号 [ORDER] 没到", "order"),
    ("请联系 help@example.com", "请联系 [EMAIL]", "email"),
    ("电话01012345678", "电话[PHONE]", "phone"),  # run together: only after a phone word
    ("座机：075512345678", "座机：[PHONE]", "phone"),
    ("Tel 01012345678", "Tel [PHONE]", "phone"),
])
def test_masked(text, masked, kind):
    scrubber = Scrubber()
    assert scrubber.scrub(text) == masked
    assert dict(scrubber.counts) == {kind: 1}


@pytest.mark.parametrize("text", [
    "价格1299元", "¥12999.00", "价格：１２９９元", "2026-11-27", "2026年11月27日", "营业时间 10:30-18:00",
    "到货时间2026-01-05 09:00", "3件 0.5kg", "邮编100000", "优惠码 20261127", "版本 v0.12.3",
    "SKU 0755123", "库存0件", "满300减50，共2件", "退款1299.00元已于2026/11/27到账",
    # 0-led codes customers need to read: invoice code, UPC barcode, a serial number
    "发票代码 044031900111", "商品条码 036000291452", "编号0755123456",
])
def test_not_masked(text):
    scrubber = Scrubber()
    assert scrubber.scrub(text) == text
    assert not +scrubber.counts


def test_unmasked_text_keeps_its_full_width_characters():
    assert Scrubber().scrub("订单号＃１２３４５６７８９，共３件") == "订单号＃[ORDER]，共３件"


def test_landlines_follow_the_phone_switch():
    assert Scrubber(phone=False).scrub("座机010-12345678 手机13800138000") == "座机010-12345678 手机13800138000"


def test_export_masks_landlines_and_full_width_numbers(workspace, tmp_path):
    _, store = workspace
    from replyloop.store import SampleIn

    store.add_samples([SampleIn("座机0755-12345678，手机１３８００１３８０００", "订单号是12345678901，价格1299元")])
    out = tmp_path / "o.jsonl"
    result = cli("data", "export", out, "--format", "jsonl")
    assert result.exit_code == 0, result.output
    assert "PII masked: order 1, phone 2" in result.stdout
    text = out.read_text(encoding="utf-8")
    assert "座机[PHONE]，手机[PHONE]" in text and "订单号是[ORDER]，价格1299元" in text
