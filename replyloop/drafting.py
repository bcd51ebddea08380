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
    latency_s: float = 0.0             # load_s + generate_s
    backend: str = "local"
    load_s: float = 0.0                # loading the base model / switching the adapter (0 when already loaded)
    generate_s: float = 0.0            # generating the reply (the remote call for the openai backend)

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
        self.runtime = RuntimeLoRA.from_config(config)  # deliver21: vLLM runtime LoRA loading, or None

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
        loaded = started
        if self._remote is not None:
            if self.runtime is not None:  # deliver21: only a model the server lists drafts
                row = serve_with_runtime_lora(self, row)
            fmt = adapter_prompt_format(row["adapter_path"]) if row.get("adapter_path") else None
            if (fmt is None or fmt.template == "chat") and not self.config.file.serving.chat_template:
                problem = chat_template_problem(row.get("base_model"))  # deliver21: the server's template
                if problem:
                    raise DraftingError(f"model {row['name']}: {problem}")
            text = self._remote.complete(row["name"], question.strip(), fmt)
        else:
            with self._lock:
                m, tok = self.local.activate(row)
                loaded = time.perf_counter()
                text = generate(m, tok, [question.strip()], max_new_tokens=self.config.file.drafting.max_new_tokens,
                                batch_size=1, min_new_tokens=min_new_tokens,
                                prompt_format=self.local.prompt_format)[0]
        finished = time.perf_counter()
        verdict, violations = check_policies(self.policy_engine, text)
        return DraftResult(text=text, model_id=row["id"], model_name=row["name"], verdict=verdict,
                           violations=violations, latency_s=finished - started, backend=self.backend,
                           load_s=loaded - started, generate_s=finished - loaded)


# -- deliver21: runtime LoRA loading on the openai backend (vLLM) ---------------------------------


class RuntimeLoRAError(DraftingError):
    """The drafting server could not load the adapter"""


def chat_template_problem(base_model: str | None) -> str | None:
    """Why ``/chat/completions`` cannot build the prompt training used, or None: a base model
    directory (readable here) without a chat template (``chat_template`` in tokenizer_config.json
    or a ``chat_template.jinja`` / ``.json`` file). A base that is not a directory here is not
    judged (the server's own copy is)."""
    if not base_model or not Path(base_model).is_dir():
        return None
    d = Path(base_model)
    if (d / "chat_template.jinja").is_file() or (d / "chat_template.json").is_file():
        return None
    try:
        if json.loads((d / "tokenizer_config.json").read_text(encoding="utf-8")).get("chat_template"):
            return None
    except (OSError, ValueError):
        pass
    return (f"base model {base_model} has no chat template, so the server's /v1/chat/completions cannot build "
            "the prompt this adapter was trained with; train it with prompt_template: plain (served through "
            "/v1/completions), or start vLLM with --chat-template FILE and set serving.chat_template to FILE")


class RuntimeLoRA:
    """vLLM's runtime LoRA endpoints (``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``):
    ``POST /v1/load_lora_adapter`` / ``/v1/unload_lora_adapter`` with ``lora_name`` (the
    registry's model name) and ``lora_path`` (the adapter directory as the server sees it, through
    ``serving.path_map``), and ``GET /v1/models``, which lists what the server can draft with."""

    CACHE_S = 5.0

    def __init__(self, base_url: str, path_map: dict[str, str] | None = None, timeout: float = 120.0,
                 api_key: str | None = None, chat_template: str = ""):
        if not base_url:
            raise DraftingError("drafting.openai_base_url is empty (needed by serving.runtime_lora)")
        self.base_url = base_url.rstrip("/")
        self.path_map = dict(path_map or {})
        self.timeout = timeout
        self.api_key = api_key
        self.chat_template = chat_template
        self._names: set[str] | None = None
        self._read_at = 0.0
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config: Config) -> "RuntimeLoRA | None":
        opts = config.file.serving
        if config.file.drafting.backend != "openai" or not opts.runtime_lora:
            return None
        return cls(config.file.drafting.openai_base_url, opts.path_map, opts.load_timeout_s,
                   chat_template=opts.chat_template)

    def server_path(self, path: str) -> str:
        """``path`` as the server sees it: the longest matching ``serving.path_map`` prefix replaced."""
        best = ""
        for local in self.path_map:
            prefix = local.rstrip("/")
            if (path == prefix or path.startswith(prefix + "/")) and len(prefix) > len(best):
                best = prefix
        if not best:
            return path
        key = next(k for k in self.path_map if k.rstrip("/") == best)
        return self.path_map[key].rstrip("/") + path[len(best):]

    def _call(self, method: str, endpoint: str, body: dict | None = None, timeout: float | None = None):
        url = f"{self.base_url}/{endpoint}"
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout) as resp:
                return resp.status, resp.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode("utf-8", "replace")[:500]
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise RuntimeLoRAError(f"{url}: {getattr(exc, 'reason', exc)}") from None

    def models(self, fresh: bool = False) -> set[str]:
        """The model ids ``GET /v1/models`` lists (the base and every LoRA loaded), cached briefly."""
        with self._lock:
            if not fresh and self._names is not None and time.monotonic() - self._read_at < self.CACHE_S:
                return set(self._names)
        status, text = self._call("GET", "models", timeout=min(self.timeout, 30.0))
        if status != 200:
            raise RuntimeLoRAError(f"{self.base_url}/models: HTTP {status}: {text[:200]}")
        try:
            names = {m["id"] for m in json.loads(text)["data"]}
        except (ValueError, KeyError, TypeError):
            raise RuntimeLoRAError(f"{self.base_url}/models: unexpected response: {text[:200]}") from None
        with self._lock:
            self._names, self._read_at = names, time.monotonic()
        return set(names)

    def load(self, model_row: dict) -> None:
        """Load the model's adapter and check that ``/v1/models`` lists it; RuntimeLoRAError says why not."""
        name, path = model_row["name"], model_row.get("adapter_path")
        if not path:
            raise RuntimeLoRAError(f"model {name} has no adapter directory")
        fmt = adapter_prompt_format(path)
        if (fmt is None or fmt.template == "chat") and not self.chat_template:
            problem = chat_template_problem(model_row.get("base_model"))
            if problem:
                raise RuntimeLoRAError(f"model {name}: {problem}")
        if name in self.models(fresh=True):
            return
        served = self.server_path(str(path))
        status, text = self._call("POST", "load_lora_adapter", {"lora_name": name, "lora_path": served})
        if status != 200 and "already" not in text.lower():
            raise RuntimeLoRAError(f"{self.base_url}/load_lora_adapter answered HTTP {status} for {name} "
                                   f"({served}): {text[:300]}")
        if name not in self.models(fresh=True):
            raise RuntimeLoRAError(f"{self.base_url}/load_lora_adapter accepted {name} ({served}) but "
                                   "/v1/models does not list it")

    def unload(self, name: str) -> None:
        status, text = self._call("POST", "unload_lora_adapter", {"lora_name": name})
        if status != 200:
            raise RuntimeLoRAError(f"{self.base_url}/unload_lora_adapter answered HTTP {status} for {name}: {text[:300]}")
        with self._lock:
            self._names = None

    def ensure(self, model_row: dict) -> None:
        """Load the adapter unless the server lists it already (cheap when it does)."""
        if model_row["name"] not in self.models():
            self.load(model_row)

    def prune(self, store: Store, keep_adapters: int) -> list[str]:
        """Unload registry models the server still holds that no longer serve: rejected ones and
        retired ones beyond the newest ``keep_adapters`` (kept loaded for a quick rollback). Names
        the registry does not know (the base model, modules from ``--lora-modules``) are left alone.
        Returns the unloaded names; a failure is logged, not raised."""
        import logging

        rows = store.query("SELECT name, status FROM models WHERE status IN ('retired', 'rejected')"
                           " ORDER BY coalesce(retired_at, rolled_back_at, created_at) DESC, id DESC")
        retired = [r["name"] for r in rows if r["status"] == "retired"]
        drop = set(retired[keep_adapters:]) | {r["name"] for r in rows if r["status"] == "rejected"}
        try:
            loaded = self.models(fresh=True)
        except RuntimeLoRAError as exc:
            logging.getLogger(__name__).warning("cannot unload retired adapters: %s", exc)
            return []
        out = []
        for name in sorted(drop & loaded):
            try:
                self.unload(name)
                out.append(name)
            except RuntimeLoRAError as exc:
                logging.getLogger(__name__).warning("unloading %s failed: %s", name, exc)
        return out


def serve_with_runtime_lora(drafter: "Drafter", row: dict) -> dict:
    """The model to draft with: ``row`` when the server has (or can load) its adapter, else the
    champion (drafting keeps using the previous one); DraftingError when neither is servable."""
    runtime = drafter.runtime
    try:
        runtime.ensure(row)
        return row
    except RuntimeLoRAError as exc:
        champion = drafter.registry.champion()
        if champion is None or champion["id"] == row["id"]:
            raise
        import logging
        logging.getLogger(__name__).warning("drafting with champion %s instead of %s: %s", champion["name"],
                                            row["name"], exc)
        runtime.ensure(champion)
        return champion


def serving_note(config: Config, store: Store, model: dict) -> str | None:
    """Before the pipeline makes ``model`` the canary or champion: with ``serving.runtime_lora``,
    load its adapter into the drafting server (checked in ``/v1/models``). Returns why it could
    not be loaded, or None (also when runtime loading is off)."""
    runtime = RuntimeLoRA.from_config(config)
    if runtime is None:
        return None
    try:
        runtime.load(model)
    except RuntimeLoRAError as exc:
        return str(exc)
    return None


def unload_retired(config: Config, store: Store) -> list[str]:
    """After a registry change: unload retired adapters past ``training.keep_adapters`` (and
    rejected ones) from the drafting server, when ``serving.runtime_lora`` is on."""
    runtime = RuntimeLoRA.from_config(config)
    return runtime.prune(store, config.file.training.keep_adapters) if runtime is not None else []
