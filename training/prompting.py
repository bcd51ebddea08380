"""How a customer question becomes model input. Training, drafting and evaluation use the same
functions: ``render_prompt`` for the text, ``prompt_input_ids`` for the token ids."""

from __future__ import annotations

PLAIN_TEMPLATE = "客户问：{prompt}\n客服答："


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer, prompt: str) -> str:
    """The text the model sees before its reply.

    The tokenizer's chat template (one user turn plus the generation prompt) when it has
    one, else ``"客户问：{prompt}\\n客服答："``.
    """
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    return PLAIN_TEMPLATE.format(prompt=prompt)


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts its BOS token in front of a text when asked for special tokens
    (Llama / Mistral / Gemma style tokenizers do; Qwen's does not)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    probe = "a"
    with_special = tokenizer(probe, add_special_tokens=True)["input_ids"]
    without = tokenizer(probe, add_special_tokens=False)["input_ids"]
    return with_special[:1] == [bos] and without[:1] != [bos]


def needs_bos(tokenizer) -> bool:
    """Whether ``prompt_input_ids`` puts a BOS in front of the prompt: the plain template with a
    tokenizer that normally adds one (a chat template writes its own)."""
    return not has_chat_template(tokenizer) and adds_bos(tokenizer)


def prompt_input_ids(tokenizer, prompt: str, *, bos: bool | None = None) -> list[int]:
    """The token ids of the prompt, exactly as training and generation feed them to the model.

    A chat template is tokenised without extra special tokens (the template writes the BOS it
    wants, as ``apply_chat_template(tokenize=True)`` does); the plain template gets the
    tokenizer's BOS exactly once when the tokenizer normally adds one, and nothing else (no EOS).
    ``bos`` is ``needs_bos(tokenizer)``, worked out once by callers that tokenise many prompts.
    """
    ids = list(tokenizer(render_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"])
    if (needs_bos(tokenizer) if bos is None else bos) and ids[:1] != [tokenizer.bos_token_id]:
        ids.insert(0, tokenizer.bos_token_id)
    return ids
