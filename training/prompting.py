"""How a customer question becomes model input. Drafting and evaluation use the same function."""

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
