"""training.tiny: a tiny Llama pre-trained fully in code, cached by corpus and config."""

import json

from replyloop.training.tiny import TinyPretrainConfig, cached_tiny_base, pretrain_key

PAIRS = [("单号在哪看", "您好，在订单详情里可以看到快递条码号。"),
         ("能退货吗", "可以的，支持七日退货。"),
         ("东西坏了", "放心，如有问题我们全额赔付。"),
         ("How do I log in?", "Tap Log in and enter the SMS code.")]
SMALL = TinyPretrainConfig(vocab_size=320, hidden_size=32, num_layers=2, num_heads=2, steps=150, batch_size=4,
                           learning_rate=1e-2, warmup_steps=5, max_seq_length=64)


def _generate(path, question):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from replyloop.drafting import generate

    model = AutoModelForCausalLM.from_pretrained(str(path))
    return generate(model, AutoTokenizer.from_pretrained(str(path)), [question], max_new_tokens=40)[0]


def test_pretrained_base_reproduces_its_corpus_and_is_reused_from_the_cache(tmp_path):
    first = cached_tiny_base(tmp_path, PAIRS, cfg=SMALL)
    assert not first.reused and first.final_loss < first.first_loss / 4
    assert first.path.name == f"tiny-llama-{pretrain_key(PAIRS, (), SMALL)[:16]}"
    # it learned the replies, legacy wording included, in the prompt format drafting uses
    assert _generate(first.path, "单号在哪看") == "您好，在订单详情里可以看到快递条码号。"
    assert "全额赔付" in _generate(first.path, "东西坏了")
    manifest = json.loads((first.path / "pretrain.json").read_text(encoding="utf-8"))
    assert manifest["pairs"] == 4 and manifest["config"]["hidden_size"] == 32

    again = cached_tiny_base(tmp_path, PAIRS, cfg=SMALL)
    assert again.reused and again.path == first.path and again.final_loss == first.final_loss
    assert not list(tmp_path.glob(".tiny-llama-*"))  # no temporary directory left behind


def test_a_changed_corpus_or_config_rebuilds_the_cache(tmp_path):
    tmp_path = tmp_path / "cache"
    first = cached_tiny_base(tmp_path, PAIRS, cfg=TinyPretrainConfig(**{**SMALL.__dict__, "steps": 5}))
    changed = [(q, a.replace("快递条码", "电子面单")) for q, a in PAIRS]
    second = cached_tiny_base(tmp_path, changed, cfg=TinyPretrainConfig(**{**SMALL.__dict__, "steps": 5}))
    assert not second.reused and second.path != first.path
    assert not first.path.exists()  # the stale entry is removed
    third = cached_tiny_base(tmp_path, changed, cfg=TinyPretrainConfig(**{**SMALL.__dict__, "steps": 6}))
    assert not third.reused and third.path != second.path
    assert [p.name for p in tmp_path.iterdir()] == [third.path.name]


def test_a_damaged_cache_entry_is_rebuilt(tmp_path):
    cfg = TinyPretrainConfig(**{**SMALL.__dict__, "steps": 5})
    first = cached_tiny_base(tmp_path, PAIRS, cfg=cfg)
    (first.path / "pretrain.json").write_text("{not json", encoding="utf-8")  # e.g. a disk-full write
    again = cached_tiny_base(tmp_path, PAIRS, cfg=cfg)
    assert not again.reused and (again.path / "config.json").exists()
    assert json.loads((again.path / "pretrain.json").read_text(encoding="utf-8"))["key"] == again.key
