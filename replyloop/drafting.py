"""Drafting replies: route the conversation to the champion or the canary, generate, check policies.

The local backend keeps ONE base model in memory and attaches every adapter it has served
as a named LoRA adapter (peft ``load_adapter`` / ``set_adapter``), so switching between the
champion and the canary costs nothing. The ``openai`` backend sends the question to an
OpenAI-compatible server (e.g. vLLM with ``--enable-lora``), naming the adapter as the model.

torch / transformers / peft are imported when the first draft is made, not at import time.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from replyloop.config import Config
from replyloop.errors import ReplyloopError
from replyloop.registry import Registry
from replyloop.store import Store
from replyloop.training.prompting import PromptFormat, needs_bos, prompt_input_ids, resolve_format


class DraftingError(ReplyloopError):
    """Drafting failed"""


@dataclass
class DraftResult:
    text: str
    model_id: int | None
    model_name: str
    verdict: str                       # pass | warn | block (policy engine)
    violations: list[dict] = field(default_factory=list)
    latency_s: float = 0.0
    backend: str = "local"

    def to_dict(self) -> dict:
        return asdict(self)


def generate(model, tokenizer, questions: Sequence[str], *, max_new_tokens: int, batch_size: int = 16,
             min_new_tokens: int = 0, prompt_format: PromptFormat | None = None) -> list[str]:
    """Greedy replies to ``questions``, batched with left padding (inputs sorted by length to
    waste little padding); returned in the order given. ``prompt_format`` is the adapter's
    (``LocalModels.prompt_format``; None: ``auto`` with no system prompt); generation stops at
    its end token (e.g. ``<|im_end|>``) or EOS."""
    import torch

    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    fmt = prompt_format or resolve_format(tokenizer)
    bos = needs_bos(tokenizer, fmt)
    stop = fmt.stop_ids(tokenizer)
    prompts = [prompt_input_ids(tokenizer, q, bos=bos, fmt=fmt) for q in questions]  # the ids training used
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[str | None] = [None] * len(prompts)
    step = max(1, batch_size)
    for start in range(0, len(order), step):
        idx = order[start:start + step]
        enc = tokenizer.pad({"input_ids": [prompts[i] for i in idx]}, padding=True, return_tensors="pt")
        enc = {k: v.to(model.device) for k, v in enc.items()}
        with torch.inference_mode():
            gen = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens,
                                 min_new_tokens=min(min_new_tokens, max_new_tokens),
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=stop or None)
        width = enc["input_ids"].shape[1]
        for row, i in enumerate(idx):
            out[i] = tokenizer.decode(gen[row, width:], skip_special_tokens=True).strip()
    return out  # type: ignore[return-value]


def drafting_device(setting: str, *, cuda_available: bool, bf16_supported: bool) -> tuple[str, str]:
    """``(device, dtype name)`` the local backend loads the base model with.

    ``setting`` is ``drafting.device``: ``auto`` takes CUDA when there is one. On CUDA the model
    is loaded in bfloat16 (float16 on GPUs without bf16), on the CPU always in float32, whatever
    dtype the checkpoint was saved in."""
    if setting not in ("auto", "cpu", "cuda"):
        raise DraftingError(f"drafting.device: {setting!r} is not one of auto, cpu, cuda")
    if setting == "cuda" and not cuda_available:
        raise DraftingError("drafting.device: cuda was asked for, but CUDA is not available on this machine;"
                            " use drafting.device: auto or cpu")
    if setting == "cpu" or not cuda_available:
        return "cpu", "float32"
    return "cuda", "bfloat16" if bf16_supported else "float16"


class LocalModels:
    """One base model in memory with the registry's adapters attached by name."""

    def __init__(self, device: str = "auto"):
        self.device_setting = device
        self.base_model: str | None = None
        self.model = None
        self.tokenizer = None
        self.adapters: dict[str, str] = {}   # adapter name -> path
        self.formats: dict[str, PromptFormat] = {}  # adapter name -> its manifest's prompt format
        self.prompt_format: PromptFormat | None = None  # the active adapter's
        self.base_loads = 0

    @staticmethod
    def adapter_name(model_row: dict) -> str:
        return f"model-{model_row['id']}"

    def _load_base(self, base_model: str) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        cuda = torch.cuda.is_available()
        device, dtype = drafting_device(self.device_setting, cuda_available=cuda,
                                        bf16_supported=cuda and torch.cuda.is_bf16_supported())
        kwargs: dict = {"dtype": getattr(torch, dtype)}  # explicit: "auto" would keep a bf16 checkpoint bf16 on CPU
        if device == "cuda":
            kwargs["device_map"] = "cuda"
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(base_model)
            self.model = AutoModelForCausalLM.from_pretrained(base_model, **kwargs)
        except OSError as exc:
            raise DraftingError(f"cannot load base model {base_model!r}: {exc}") from None
        self.model.eval()
        self.base_model = base_model
        self.adapters = {}
        self.formats = {}
        self.base_loads += 1

    def activate(self, model_row: dict):
        """The model with ``model_row``'s adapter active (loading the base only when it changes)."""
        from peft import PeftModel

        base = model_row["base_model"]
        if self.model is None or base != self.base_model:
            self._load_base(base)
        path = model_row.get("adapter_path")
        if not path or not (Path(path) / "adapter_config.json").is_file():
            raise DraftingError(f"model {model_row['name']}: adapter directory {path} is missing")
        name = self.adapter_name(model_row)
        if name not in self.adapters:
            if not isinstance(self.model, PeftModel):
                self.model = PeftModel.from_pretrained(self.model, path, adapter_name=name)
            else:
                self.model.load_adapter(path, adapter_name=name)
            self.model.eval()
            self.adapters[name] = path
            self.formats[name] = adapter_prompt_format(path, self.tokenizer)
        self.model.set_adapter(name)
        self.prompt_format = self.formats[name]
        return self.model, self.tokenizer


def adapter_prompt_format(adapter_dir: str | Path, tokenizer=None) -> PromptFormat | None:
    """The prompt format recorded in an adapter's manifest.json (``prompt``). An adapter without
    one (trained before it was recorded, or outside replyloop) gets ``auto`` for ``tokenizer``;
    None when no tokenizer is at hand (the OpenAI backend then sends one user message)."""
    from replyloop.registry import read_manifest

    try:
        manifest = read_manifest(adapter_dir)
    except ReplyloopError:
        manifest = {}
    if manifest.get("prompt") is None and tokenizer is None:
        return None
    try:
        return PromptFormat.from_manifest(manifest, tokenizer)
    except ValueError as exc:
        raise DraftingError(f"{Path(adapter_dir) / 'manifest.json'}: {exc}") from None


class OpenAIBackend:
    """An OpenAI-compatible ``/chat/completions`` endpoint (vLLM multi-LoRA: the model name is
    the adapter's name in ``--lora-modules``)."""

    def __init__(self, base_url: str, max_new_tokens: int, timeout: float = 30.0, api_key: str | None = None):
        if not base_url:
            raise DraftingError("drafting.openai_base_url is empty (needed by drafting.backend: openai)")
        self.base_url = base_url.rstrip("/")
        self.max_new_tokens = max_new_tokens
        self.timeout = timeout
        self.api_key = api_key

    def complete(self, model_name: str, question: str, prompt_format: PromptFormat | None = None) -> str:
        """A chat adapter gets ``/chat/completions`` with the adapter's messages (its system
        prompt, or an empty system message where training used one to keep the template's
        default out); a plain or raw adapter gets ``/completions`` with the exact prompt text."""
        fmt = prompt_format or PromptFormat(template="chat")  # no record: the server's chat template
        if fmt.template == "chat":
            body = {"model": model_name, "messages": fmt.messages(question)}
            endpoint, answer = "chat/completions", lambda choice: choice["message"]["content"]
        else:
            body = {"model": model_name, "prompt": fmt.text(question)}
            endpoint, answer = "completions", lambda choice: choice["text"]
        body = json.dumps({**body, "max_tokens": self.max_new_tokens, "temperature": 0}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        url = f"{self.base_url}/{endpoint}"
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                payload = json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:300]
            raise DraftingError(f"{url}: HTTP {exc.code} for model {model_name!r}: {detail}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise DraftingError(f"{url}: {getattr(exc, 'reason', exc)}") from None
        except json.JSONDecodeError:
            raise DraftingError(f"{url}: the response is not JSON") from None
        try:
            return answer(payload["choices"][0]).strip()
        except (KeyError, IndexError, TypeError, AttributeError):
            raise DraftingError(f"{url}: unexpected response shape: {str(payload)[:200]}") from None


def load_policy_engine(config: Config):
    """The policy engine for ``config.policies_dir``, or None when evaluation.policy is not installed."""
    try:
        from replyloop.evaluation.policy import load_policies
    except ImportError:
        return None
    return load_policies(config.policies_dir)


def check_policies(engine, text: str) -> tuple[str, list[dict]]:
    if engine is None:
        return "warn", [{"rule": "policy-engine-missing", "severity": "warn",
                         "message": "the policy engine is not installed: this draft was not checked",
                         "start": 0, "end": 0, "match": "", "suggestion": None}]
    res = engine.check(text)
    return res.verdict, [v.to_dict() for v in res.violations]


class Drafter:
    """Drafts for the bot and the CLI. Thread-safe (one generation at a time)."""

    _NOT_LOADED = object()

    def __init__(self, config: Config, store: Store, policy_engine=_NOT_LOADED):
        self.config = config
        self.store = store
        self.registry = Registry(store, keep_adapters=config.file.training.keep_adapters)
        self.local = LocalModels(device=config.file.drafting.device)
        self._engine = policy_engine
        self._lock = threading.Lock()
        opts = config.file.drafting
        self.backend = opts.backend
        self._remote = OpenAIBackend(opts.openai_base_url, opts.max_new_tokens) if opts.backend == "openai" else None

    @property
    def policy_engine(self):
        if self._engine is Drafter._NOT_LOADED:
            self._engine = load_policy_engine(self.config)
        return self._engine

    def draft(self, question: str, conversation_id: str | None = None, *, model: int | str | None = None,
              min_new_tokens: int = 0) -> DraftResult:
        """Draft a reply with the model this conversation is routed to (or ``model``)."""
        if not question or not question.strip():
            raise DraftingError("the question is empty")
        row = self.registry.get(model) if model is not None else self.registry.route(conversation_id)
        started = time.perf_counter()
        if self._remote is not None:
            text = self._remote.complete(row["name"], question.strip(),
                                         adapter_prompt_format(row["adapter_path"]) if row.get("adapter_path") else None)
        else:
            with self._lock:
                m, tok = self.local.activate(row)
                text = generate(m, tok, [question.strip()], max_new_tokens=self.config.file.drafting.max_new_tokens,
                                batch_size=1, min_new_tokens=min_new_tokens,
                                prompt_format=self.local.prompt_format)[0]
        latency = time.perf_counter() - started
        verdict, violations = check_policies(self.policy_engine, text)
        return DraftResult(text=text, model_id=row["id"], model_name=row["name"], verdict=verdict,
                           violations=violations, latency_s=latency, backend=self.backend)
