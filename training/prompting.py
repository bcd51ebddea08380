"""How a customer question becomes model input. Training, drafting, evaluation and the vLLM
backend use the same functions: ``PromptFormat.render`` for the text, ``prompt_input_ids`` for
the token ids, ``PromptFormat.messages`` for a chat server.

A ``PromptFormat`` is resolved once, at training time, from the config keys ``prompt_template``
and ``system_prompt`` and the base model's tokenizer (``resolve_format``), and recorded in the
adapter's manifest (``manifest["prompt"]``); drafting and evaluation read it back
(``PromptFormat.from_manifest``), so an adapter is always fed the text it was trained on.

Templates:

- ``plain``: ``客户问：{question}\\n客服答：``. A prompt that already starts with ``客户问：``
  (or ``客户问:``) or ends with ``客服答：`` is not wrapped twice: those are removed first.
- ``raw``: the prompt exactly as written in the data.
- ``chat``: the tokenizer's chat template (one user turn plus the generation prompt).
- ``auto`` (the default of the ``prompt_template`` key): ``chat`` when the tokenizer has a chat
  template, else ``plain``. The manifest records what it resolved to.

System prompt: ``plain``/``raw`` put a non-empty ``system_prompt`` on its own line in front of
the prompt. ``chat`` sends it as the system message. With an empty system prompt, a chat
template that writes its own default system prompt when the conversation has none (SmolLM2's
"You are a helpful AI assistant named SmolLM...", Qwen2.5's "You are Qwen...") gets an empty
system message instead, so no text the user did not write reaches the model
(``system_turn: true`` in the manifest). To keep a template's default, write it out as
``system_prompt``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

from replyloop.errors import ConfigError

PLAIN_TEMPLATE = "客户问：{prompt}\n客服答："
TEMPLATES = ("plain", "raw", "chat")
_PLAIN_PREFIX = re.compile(r"^\s*客户问\s*[：:]\s*")
_PLAIN_SUFFIX = re.compile(r"\s*客服答\s*[：:]\s*$")
_PROBE_USER, _PROBE_REPLY = "ping-question", "pong-reply"


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def plain_question(prompt: str) -> str:
    """The question without a ``客户问：`` prefix or ``客服答：`` suffix the data already has."""
    return _PLAIN_SUFFIX.sub("", _PLAIN_PREFIX.sub("", prompt, count=1), count=1)


@dataclass(frozen=True)
class PromptFormat:
    """How one adapter's prompts are built (resolved: never ``auto``)."""

    template: str = "plain"           # plain | raw | chat
    system_prompt: str = ""
    system_turn: bool = False          # chat: send a system message even when system_prompt is empty
    end_token: str | None = None       # the token that ends a reply (trained on, stops generation); None: EOS

    def messages(self, question: str) -> list[dict]:
        """The conversation a chat template (or an OpenAI-compatible server) gets."""
        turns = [{"role": "system", "content": self.system_prompt}] if self.system_prompt or self.system_turn else []
        return turns + [{"role": "user", "content": question}]

    def text(self, question: str) -> str:
        """The prompt text for ``plain`` and ``raw`` (no tokenizer needed: a completions server gets this)."""
        if self.template == "chat":
            raise ValueError("a chat prompt is built by the tokenizer's chat template (use render)")
        body = PLAIN_TEMPLATE.format(prompt=plain_question(question)) if self.template == "plain" else question
        return f"{self.system_prompt}\n{body}" if self.system_prompt else body

    def render(self, tokenizer, question: str) -> str:
        """The text the model sees before its reply."""
        if self.template == "chat":
            return tokenizer.apply_chat_template(self.messages(question), tokenize=False, add_generation_prompt=True)
        return self.text(question)

    def end_id(self, tokenizer) -> int | None:
        if self.end_token is None:
            return tokenizer.eos_token_id
        token_id = tokenizer.convert_tokens_to_ids(self.end_token)
        return token_id if token_id is not None and token_id != tokenizer.unk_token_id else tokenizer.eos_token_id

    def stop_ids(self, tokenizer) -> list[int]:
        """Token ids generation stops at: the reply's end token and the tokenizer's EOS."""
        ids = [self.end_id(tokenizer), tokenizer.eos_token_id]
        return [i for n, i in enumerate(ids) if i is not None and i not in ids[:n]]

    def to_record(self) -> dict:
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict) -> PromptFormat:
        template = record.get("template")
        if template not in TEMPLATES:
            raise ValueError(f"prompt.template {template!r} is not one of {', '.join(TEMPLATES)}")
        return cls(template=template, system_prompt=record.get("system_prompt") or "",
                   system_turn=bool(record.get("system_turn")), end_token=record.get("end_token"))

    @classmethod
    def from_manifest(cls, manifest: dict, tokenizer=None) -> PromptFormat:
        """The format an adapter was trained with. A manifest from before prompt formats were
        recorded (no ``prompt`` entry) gets what training did then: the tokenizer's chat template
        with one user turn (its default system prompt included) and EOS, else ``plain``."""
        record = manifest.get("prompt")
        if isinstance(record, dict):
            return cls.from_record(record)
        if tokenizer is None:
            raise ValueError("a manifest without a prompt entry needs the tokenizer")
        return cls(template="chat" if has_chat_template(tokenizer) else "plain")


def _chat(tokenizer, messages: list[dict], generation: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)


def _template_default_system(tokenizer) -> bool:
    """Whether the chat template writes text of its own when the conversation has no system
    message (it is then longer than the same conversation with an empty system message)."""
    user = [{"role": "user", "content": _PROBE_USER}]
    try:
        with_empty = _chat(tokenizer, [{"role": "system", "content": ""}] + user, True)
    except Exception:  # a template that rejects system messages (Gemma) writes none of its own
        return False
    return len(with_empty) < len(_chat(tokenizer, user, True))


def _chat_end_token(tokenizer, fmt: PromptFormat) -> str | None:
    """The first special token the template writes after an assistant reply (``<|im_end|>``,
    ``</s>``, ``<|eot_id|>``); None when it writes none (then EOS is used)."""
    msgs = fmt.messages(_PROBE_USER)
    try:
        prompt = _chat(tokenizer, msgs, True)
        full = _chat(tokenizer, msgs + [{"role": "assistant", "content": _PROBE_REPLY}], False)
    except Exception:
        return None
    at = full.find(_PROBE_REPLY, len(prompt) if full.startswith(prompt) else 0)
    if at < 0:
        return None
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    after = tokenizer(full[at + len(_PROBE_REPLY):], add_special_tokens=False)["input_ids"]
    for token_id in after:
        if token_id in special:
            return tokenizer.convert_ids_to_tokens(token_id)
    return None


def resolve_format(tokenizer, prompt_template: str = "auto", system_prompt: str | None = None,
                   *, where: Callable[[str], str] = lambda key: "") -> PromptFormat:
    """The ``PromptFormat`` for a base model's tokenizer and the config's keys. ``where(key)`` is
    the config's ``file:line: `` prefix of a key, for errors."""
    system = system_prompt or ""
    template = prompt_template
    if template == "auto":
        template = "chat" if has_chat_template(tokenizer) else "plain"
    if template not in TEMPLATES:
        raise ConfigError(f"{where('prompt_template')}prompt_template: {prompt_template!r} is not one of auto, {', '.join(TEMPLATES)}")
    if template != "chat":
        return PromptFormat(template=template, system_prompt=system)
    if not has_chat_template(tokenizer):
        raise ConfigError(f"{where('prompt_template')}prompt_template: chat, but the base model's tokenizer has no chat template "
                          "(use plain or raw)")
    if system:
        try:
            _chat(tokenizer, [{"role": "system", "content": system}, {"role": "user", "content": _PROBE_USER}], True)
        except Exception as exc:
            raise ConfigError(f"{where('system_prompt')}system_prompt: the base model's chat template rejects a system message "
                              f"({exc}); remove system_prompt") from None
    fmt = PromptFormat(template="chat", system_prompt=system,
                       system_turn=not system and _template_default_system(tokenizer))
    return replace(fmt, end_token=_chat_end_token(tokenizer, fmt))


def render_prompt(tokenizer, prompt: str, fmt: PromptFormat | None = None) -> str:
    """The text the model sees before its reply (``fmt`` None: ``auto`` with no system prompt)."""
    return (fmt or resolve_format(tokenizer)).render(tokenizer, prompt)


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


def needs_bos(tokenizer, fmt: PromptFormat | None = None) -> bool:
    """Whether ``prompt_input_ids`` puts a BOS in front of the prompt: a plain or raw prompt with
    a tokenizer that normally adds one (a chat template writes its own)."""
    template = fmt.template if fmt is not None else ("chat" if has_chat_template(tokenizer) else "plain")
    return template != "chat" and adds_bos(tokenizer)


def prompt_input_ids(tokenizer, prompt: str, *, bos: bool | None = None, fmt: PromptFormat | None = None) -> list[int]:
    """The token ids of the prompt, exactly as training and generation feed them to the model.

    A chat template is tokenised without extra special tokens (the template writes the BOS it
    wants, as ``apply_chat_template(tokenize=True)`` does); a plain or raw prompt gets the
    tokenizer's BOS exactly once when the tokenizer normally adds one, and nothing else (no EOS).
    ``bos`` is ``needs_bos(tokenizer, fmt)``, worked out once by callers that tokenise many prompts.
    """
    fmt = fmt or resolve_format(tokenizer)
    ids = list(tokenizer(fmt.render(tokenizer, prompt), add_special_tokens=False)["input_ids"])
    if (needs_bos(tokenizer, fmt) if bos is None else bos) and ids[:1] != [tokenizer.bos_token_id]:
        ids.insert(0, tokenizer.bos_token_id)
    return ids
