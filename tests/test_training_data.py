"""Tokenisation, loss mask, truncation, batching and packing (logits equal per-sample ones)."""

import torch

from replyloop.training.data import (IGNORE_INDEX, collate_packed, collate_padded, epoch_batches, split_eval,
                           tokenize_pair, tokenize_records)
from replyloop.training.prompting import PLAIN_TEMPLATE, render_prompt
from replyloop.training.recipe import token_loss_sum
from training_fixtures import sample_rows, tiny_base  # noqa: F401


def _tokenizer(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def test_plain_template_without_chat_template(tiny_base):
    tok = _tokenizer(tiny_base)
    assert render_prompt(tok, "怎么退货？") == PLAIN_TEMPLATE.format(prompt="怎么退货？") == "客户问：怎么退货？\n客服答："


def test_loss_mask_is_exactly_the_prompt(tiny_base):
    tok = _tokenizer(tiny_base)
    row = sample_rows()[0]
    prompt_ids = tok(render_prompt(tok, row["prompt"]))["input_ids"]
    response_ids = tok(row["response"], add_special_tokens=False)["input_ids"]
    ex, truncated = tokenize_pair(tok, row["prompt"], row["response"], max_seq_length=512)
    assert not truncated
    n = len(prompt_ids)
    assert ex.input_ids == prompt_ids + response_ids + [tok.eos_token_id]
    assert ex.labels == [IGNORE_INDEX] * n + response_ids + [tok.eos_token_id]
    assert tok.decode(ex.input_ids[:n]) == render_prompt(tok, row["prompt"])
    assert tok.decode(ex.input_ids[n:-1]) == row["response"]
    padded = collate_padded([ex, ex], pad_id=tok.pad_token_id, pad_to=len(ex) + 3)
    assert padded["labels"][0, -3:].tolist() == [IGNORE_INDEX] * 3
    assert padded["attention_mask"][0].tolist() == [1] * len(ex) + [0] * 3


def test_truncation_is_counted_never_silent(tiny_base):
    tok = _tokenizer(tiny_base)
    rows = sample_rows()[:20]
    pairs = [(r["prompt"], r["response"]) for r in rows] + [("长" * 200, "好的")]
    examples, stats = tokenize_records(tok, pairs, max_seq_length=40)
    assert stats.samples == 21 and stats.dropped == 1  # the prompt alone is longer than 40 tokens
    assert stats.truncated == 20 and all(len(e) == 40 for e in examples)
    full, full_stats = tokenize_records(tok, pairs[:20], max_seq_length=4096)
    assert full_stats.truncated == 0 and full_stats.dropped == 0


def test_batches_are_a_pure_function_of_seed_and_epoch():
    lengths = list(range(10, 60))
    a = epoch_batches(lengths, 4, seed=1, epoch=0, group_by_length=False)
    assert a == epoch_batches(lengths, 4, seed=1, epoch=0, group_by_length=False)
    assert a != epoch_batches(lengths, 4, seed=1, epoch=1, group_by_length=False)
    assert sorted(i for b in a for i in b) == list(range(50))
    grouped = epoch_batches(lengths, 4, seed=1, epoch=0, group_by_length=True)
    assert sorted(i for b in grouped for i in b) == list(range(50))
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in grouped)
    assert spread < sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in a)
    train, held = split_eval(list(range(50)), 0.1, seed=3)
    assert len(held) == 5 and sorted(train + held) == list(range(50))


def test_packed_logits_equal_per_sample_logits(tiny_base):
    from transformers import AutoModelForCausalLM

    tok = _tokenizer(tiny_base)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_base), attn_implementation="sdpa").eval()
    examples = [tokenize_pair(tok, r["prompt"], r["response"], 512)[0] for r in sample_rows()[:3]]
    batch = collate_packed(examples)
    assert batch["position_ids"][0].tolist() == [p for e in examples for p in range(len(e))]
    labels = batch.pop("labels")
    with torch.no_grad():
        packed = model(**batch).logits[0]
        start, per_sample_loss = 0, 0.0
        for ex in examples:
            alone = model(torch.tensor([ex.input_ids])).logits
            assert torch.allclose(packed[start:start + len(ex)], alone[0], atol=1e-5)
            per_sample_loss += token_loss_sum(alone, torch.tensor([ex.labels])).item()
            start += len(ex)
        packed_loss = token_loss_sum(packed[None], labels).item()
    assert abs(packed_loss - per_sample_loss) < 1e-3
    # Without the block-diagonal mask the second sample would see the first: the test can tell.
    leaky = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
    n0 = len(examples[0])
    assert not torch.allclose(leaky[n0:n0 + len(examples[1])], packed[n0:n0 + len(examples[1])], atol=1e-3)
