"""Training and generation feed the model the same prompt ids (one function,
training.prompting.prompt_input_ids), for tokenizers that add BOS and for ones that do not."""

from __future__ import annotations

import shutil

import pytest
import torch
from training_fixtures import sample_rows, tiny_base  # noqa: F401 - fixture

from replyloop.drafting import generate
from replyloop.training.data import IGNORE_INDEX, tokenize_pair
from replyloop.training.prompting import adds_bos, prompt_input_ids, render_prompt

CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")
QUESTIONS = ["退货运费谁出？", "为什么别人都能收到验证码，就我收不到", "发票怎么开"]


@pytest.fixture(scope="module")
def bos_base(tiny_base, tmp_path_factory):
    """The tiny base whose tokenizer puts <s> in front of every text (Llama/Mistral style)."""
    from tokenizers import processors
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("bos") / "base"
    shutil.copytree(tiny_base, out)
    tok = AutoTokenizer.from_pretrained(out)
    backend = tok.backend_tokenizer
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.bos_token_id)])
    PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>",
                            eos_token="</s>").save_pretrained(out)
    return out


def _tok(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


class RecordingModel(torch.nn.Module):
    """A real model whose ``generate`` also keeps the prompt ids it was given (padding removed)."""

    def __init__(self, model):
        super().__init__()
        self.inner = model
        self.prompts: list[list[int]] = []

    @property
    def device(self):
        return self.inner.device

    def generate(self, input_ids, attention_mask, **kwargs):
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
            self.prompts.append([i for i, m in zip(ids, mask) if m])
        return self.inner.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)


def _training_prompt_ids(tok, question):
    ex, _ = tokenize_pair(tok, question, "您好，可以的。", max_seq_length=512)
    n = next(i for i, label in enumerate(ex.labels) if label != IGNORE_INDEX)
    return ex.input_ids[:n], ex


def test_bos_tokenizer_training_and_generation_prompt_ids_are_equal(bos_base):
    from transformers import AutoModelForCausalLM

    tok = _tok(bos_base)
    assert adds_bos(tok)
    model = RecordingModel(AutoModelForCausalLM.from_pretrained(bos_base).eval())
    generate(model, tok, QUESTIONS, max_new_tokens=3, batch_size=2)
    assert len(model.prompts) == len(QUESTIONS)
    by_length = sorted(QUESTIONS, key=lambda q: len(prompt_input_ids(tok, q)))  # generate's batching order
    for question, fed in zip(by_length, model.prompts):
        train_ids, _ = _training_prompt_ids(tok, question)
        assert fed == train_ids == prompt_input_ids(tok, question)
        assert train_ids[0] == tok.bos_token_id and train_ids.count(tok.bos_token_id) == 1
        assert train_ids[1:] == tok(render_prompt(tok, question), add_special_tokens=False)["input_ids"]


def test_bos_tokenizer_label_masking_stays_exact(bos_base):
    tok = _tok(bos_base)
    prompt_ids, ex = _training_prompt_ids(tok, QUESTIONS[0])
    response_ids = tok("您好，可以的。", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert ex.labels == [IGNORE_INDEX] * len(prompt_ids) + response_ids
    assert ex.input_ids == prompt_ids + response_ids


def test_chat_template_that_writes_bos_gets_it_once(bos_base):
    tok = _tok(bos_base)
    tok.chat_template = CHAT_TEMPLATE
    rendered = render_prompt(tok, QUESTIONS[0])
    assert rendered.startswith("<s><|user|>")
    train_ids, _ = _training_prompt_ids(tok, QUESTIONS[0])
    assert train_ids == prompt_input_ids(tok, QUESTIONS[0])
    assert train_ids.count(tok.bos_token_id) == 1 and train_ids[0] == tok.bos_token_id
    # what apply_chat_template(tokenize=True) gives: the template's own special tokens only
    assert train_ids == tok(rendered, add_special_tokens=False)["input_ids"]


def test_tokenizer_without_bos_is_unchanged(tiny_base):
    tok = _tok(tiny_base)
    assert not adds_bos(tok)
    for row in sample_rows()[:5]:
        text = render_prompt(tok, row["prompt"])
        before_training = tok(text)["input_ids"]
        before_generation = tok(text, add_special_tokens=False)["input_ids"]
        assert prompt_input_ids(tok, row["prompt"]) == before_training == before_generation
        assert _training_prompt_ids(tok, row["prompt"])[0] == before_training
