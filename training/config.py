"""The training config: lora-scripts keys as they are, plus replyloop's own.

An existing lora-scripts YAML runs unchanged; a key neither knows is an error naming
the key, the file and the line.

Relative paths (one rule, documented in README "Training"): a path resolves against the
directory the command runs in (as lora-scripts users run ``python train.py --config
configs/x.yaml`` from their project root). An *input* path (``train_data_dir``,
``base_model``, ``store_path``, ``init_adapter``, ``resume_from_checkpoint``) that does not
exist there is tried in the config file's folder. ``metadata_path`` that exists as given is
used as it is; otherwise it is tried relative to ``train_data_dir`` (where it defaults to
``metadata.csv``). Outputs (``output_dir``, ``logging_dir``) are relative to the directory the
command runs in. A missing input names the key, its file:line and every place tried.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator
from pydantic_core import PydanticCustomError

from replyloop.errors import ConfigError
from replyloop.yamlfile import YamlDoc, load_yaml, parse_model

# Inputs: tried in the directory the command runs in, then in the config file's folder.
INPUT_KEYS = ("train_data_dir", "base_model", "store_path", "init_adapter", "resume_from_checkpoint")
# Outputs: relative to the directory the command runs in.
OUTPUT_KEYS = ("output_dir", "logging_dir")
PATH_KEYS = (*INPUT_KEYS, "metadata_path", *OUTPUT_KEYS)
# task_type values of lora-scripts / HF-style configs (compared case-insensitively); all mean a causal LM.
TASK_TYPES = ("CAUSAL_LM", "text-generation")


class GeneratedFrom(BaseModel):
    """Set by the pipeline in a run's copy (``runs/run-N/train.yaml``): the user's file, and the
    keys the pipeline set itself. Messages about the other keys name the user's file and line."""

    model_config = ConfigDict(extra="forbid")

    file: str
    overrides: list[str] = Field(default_factory=list)


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # -- lora-scripts keys ------------------------------------------------------------------
    base_model: str
    output_dir: str
    train_data_dir: str | None = None
    metadata_path: str = "metadata.csv"  # as given, else relative to train_data_dir
    task_type: str = "CAUSAL_LM"  # CAUSAL_LM or text-generation (any case); stored as CAUSAL_LM
    lora_rank: int = Field(8, ge=1)
    lora_alpha: float = Field(16, gt=0)
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | str = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    batch_size: int = Field(4, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    epochs: int = Field(3, ge=1)
    learning_rate: float = Field(2e-4, ge=0.0)
    max_seq_length: int = Field(512, ge=8)
    save_steps: int = Field(100, ge=1)
    logging_dir: str | None = None  # default: <output_dir>.logs
    resume_from_checkpoint: bool | str = False  # true: the latest output_dir/checkpoint-N; or a path

    # -- replyloop keys -----------------------------------------------------------------------
    dataset: Literal["folder", "store"] = "folder"
    store_path: str | None = None  # dataset: store; default: the workspace database
    snapshot: str | None = None  # dataset: store; default: a new (or identical) snapshot
    init_adapter: str | None = None  # an adapter directory, or "champion"
    packing: bool = True  # concatenate each batch into one row: no padding computed
    eval_ratio: float = Field(0.1, ge=0.0, lt=1.0)
    eval_steps: int = Field(50, ge=1)
    early_stopping_patience: int | None = Field(None, ge=1)  # evaluations without improvement
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "fp32"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    gradient_checkpointing: bool = False
    quantization: Literal["4bit"] | None = None
    seed: int = 42
    max_steps: int | None = Field(None, ge=1)
    warmup_steps: int = Field(0, ge=0)
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    keep_checkpoints: int = Field(2, ge=1)  # output_dir/checkpoint-N kept during and after the run
    generated_from: GeneratedFrom | None = None  # set by the pipeline in runs/run-N/train.yaml

    # -- prompt format (recorded in the manifest; drafting and evaluation read it from there) ----
    prompt_template: Literal["auto", "plain", "raw", "chat"] = "auto"  # auto: chat if the tokenizer has one, else plain
    system_prompt: str | None = None  # empty: no system text, and no chat-template default either

    _doc: YamlDoc | None = PrivateAttr(None)
    _source_doc: YamlDoc | None = PrivateAttr(None)
    _cwd: Path | None = PrivateAttr(None)
    _config_dir: Path | None = PrivateAttr(None)
    _flags: dict = PrivateAttr(default_factory=dict)  # key -> the command-line option that set it

    @field_validator("task_type", mode="before")
    @classmethod
    def _task_type(cls, value):
        if isinstance(value, str) and value.strip().lower() in {t.lower() for t in TASK_TYPES}:
            return "CAUSAL_LM"
        raise PydanticCustomError("task_type", "{value} is not a task replyloop trains; accepted: {accepted} "
                                  "(any case; both train a causal LM)",
                                  {"value": repr(value), "accepted": ", ".join(TASK_TYPES)})

    @field_validator("target_modules")
    @classmethod
    def _modules_not_empty(cls, value):
        if isinstance(value, list) and not value:
            raise ValueError("must name at least one module (e.g. q_proj, v_proj) or be 'all-linear'")
        return value

    @model_validator(mode="after")
    def _cross_checks(self):
        if self.dataset == "folder" and not self.train_data_dir:
            raise ValueError("dataset: folder needs train_data_dir (or set dataset: store)")
        return self

    # -- where a key was written ----------------------------------------------------------------

    def where(self, key: str) -> str:
        """``file:line: `` of a key, for messages: the user's file for a key the pipeline copied
        from it; ``--resume: `` for a key the command line set; "" when built in code."""
        if key in self._flags:
            return ""
        src = self.generated_from
        if src is not None and self._source_doc is not None and key not in src.overrides \
                and self._source_doc.line_of((key,)):
            return f"{self._source_doc.where((key,))}: "
        return f"{self._doc.where((key,))}: " if self._doc is not None else ""

    def named(self, key: str) -> str:
        """How the user set ``key``: ``--resume`` or ``resume_from_checkpoint (file:line)``."""
        if key in self._flags:
            return self._flags[key]
        where = self.where(key).rstrip(": ")
        return f"{key} ({where})" if where else key

    @property
    def source_file(self) -> Path | None:
        """The user's config file (for a pipeline run: the file its copy was made from)."""
        if self.generated_from is not None:
            return Path(self.generated_from.file)
        return self._doc.path if self._doc is not None else None

    # -- paths ---------------------------------------------------------------------------------

    def candidates(self, key: str) -> list[Path]:
        """Every place a relative path of ``key`` is looked for, in order (see the module docstring)."""
        value = getattr(self, key)
        if value is None or isinstance(value, bool) or (key == "init_adapter" and value == "champion"):
            return []
        p = Path(value).expanduser()
        if p.is_absolute():
            return [p]
        cwd = self._cwd or Path.cwd()
        if key == "metadata_path":
            found = []
            if "metadata_path" in self.model_fields_set:
                found += [cwd / p] + ([self._config_dir / p] if self._config_dir else [])
            data_dir = self.path("train_data_dir")
            if data_dir is not None:
                found.append(data_dir / p)
            return _unique(found) or [cwd / p]
        bases = [cwd]
        if key in INPUT_KEYS and self._config_dir is not None:
            bases.append(self._config_dir)
        if key == "resume_from_checkpoint":
            bases.append(self.output_path)  # `checkpoint-100` alone: one of output_dir's
        return _unique(b / p for b in bases)

    def path(self, key: str) -> Path | None:
        """The path of ``key``: the first candidate that exists, else the first one (for
        ``metadata_path``: the one in ``train_data_dir``), absolute."""
        found = self.candidates(key)
        if not found:
            return None
        if key == "metadata_path":  # a file: a folder of that name does not count
            return next((c for c in found if c.is_file()), found[-1]).absolute()
        return next((c for c in found if c.exists()), found[0]).absolute()

    @property
    def output_path(self) -> Path:
        return self.path("output_dir").resolve()

    @property
    def logging_path(self) -> Path:
        return self.path("logging_dir") or self.output_path.with_name(self.output_path.name + ".logs")

    @property
    def metadata_file(self) -> Path:
        return self.path("metadata_path")

    def check_paths(self) -> None:
        """Every input path exists (all problems in one ConfigError naming key, file:line and
        each place tried); called before anything is loaded."""
        problems = []

        def missing(key: str, what: str, hint: str = "") -> None:
            tried = self.candidates(key)
            places = tried[0] if len(tried) == 1 else "tried " + ", ".join(map(str, tried))
            problems.append(f"{self.where(key)}{key}: {getattr(self, key)} {what} ({places}){hint}")

        def exists(key: str) -> bool:
            test = Path.is_file if key == "metadata_path" else Path.exists
            return any(test(c) for c in self.candidates(key))

        base = self.path("base_model")
        if not exists("base_model"):
            missing("base_model", "does not exist", "; a local model directory is needed, "
                    "replyloop never downloads models")
        elif not (base / "config.json").is_file():
            problems.append(f"{self.where('base_model')}base_model: {base} has no config.json (a local model "
                            f"directory saved with save_pretrained is needed; replyloop never downloads models)")
        if self.dataset == "folder" and self.train_data_dir:
            if not exists("train_data_dir"):
                missing("train_data_dir", "does not exist")
            elif not self.path("train_data_dir").is_dir():
                problems.append(f"{self.where('train_data_dir')}train_data_dir: {self.path('train_data_dir')} "
                                f"is not a directory")
            elif not exists("metadata_path"):
                missing("metadata_path", "does not exist")
            else:
                problems += self._ambiguous_metadata()
        if self.store_path and not exists("store_path"):
            missing("store_path", "does not exist")
        if self.init_adapter and self.init_adapter != "champion" and not exists("init_adapter"):
            missing("init_adapter", "does not exist")
        if isinstance(self.resume_from_checkpoint, str) and not exists("resume_from_checkpoint"):
            from replyloop.training.checkpointing import list_checkpoints

            have = list_checkpoints(self.output_path)
            listed = (f"; {self.output_path} holds {', '.join(p.name for p in have)}" if have
                      else f"; {self.output_path} holds no checkpoint yet")
            missing("resume_from_checkpoint", "does not exist", listed)
        if problems:
            raise ConfigError("\n".join(problems))

    def _ambiguous_metadata(self) -> list[str]:
        found = [c for c in self.candidates("metadata_path") if c.is_file()]
        if len({c.resolve() for c in found}) > 1:
            return [f"{self.where('metadata_path')}metadata_path: {self.metadata_path} is ambiguous: both "
                    f"{found[0]} and {found[-1]} exist; write the path you mean (e.g. {found[0]})"]
        return []

    def resolved_paths(self) -> dict[str, str]:
        """The set path keys, absolute (what a run's copy of this config carries)."""
        found = {}
        for key in PATH_KEYS:
            value = getattr(self, key)
            if key == "metadata_path" and (self.dataset != "folder" or not self.train_data_dir):
                continue
            if isinstance(value, str) and self.candidates(key):
                found[key] = str(self.path(key))
        return found

    def to_record(self) -> dict:
        """The config as written into the manifest and checkpoints."""
        return self.model_dump(mode="json", exclude={"generated_from"})


def _unique(paths) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        if p not in out:
            out.append(p)
    return out


def _load(path: Path, overrides: dict) -> tuple[YamlDoc, dict, TrainConfig]:
    doc = load_yaml(path)
    data = doc.data if doc.data is not None else {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    data = {**data, **overrides}
    for key in [k for k, v in overrides.items() if v is None]:
        data.pop(key)
    return doc, data, parse_model(doc, TrainConfig, data=data)


def load_train_config(path: str | Path, *, resume: bool = False, cwd: str | Path | None = None,
                      **overrides) -> TrainConfig:
    """Parse a lora-scripts-style YAML file; all problems reported together with file:line.

    ``resume=True`` is the command line's ``--resume`` (messages name it); ``cwd`` is the
    directory relative paths start from (default: the current one)."""
    path = Path(path)
    flags = {}
    if resume:
        overrides["resume_from_checkpoint"] = True
        flags["resume_from_checkpoint"] = "--resume"
    doc, _, cfg = _load(path, overrides)
    cfg._doc = doc
    cfg._flags = flags
    cfg._cwd = Path(cwd).absolute() if cwd else Path.cwd()
    cfg._config_dir = path.absolute().parent
    if cfg.generated_from is not None:
        try:
            cfg._source_doc = load_yaml(cfg.generated_from.file)
        except ConfigError:
            cfg._source_doc = None  # the user's file changed or vanished since: name the copy
    return cfg


def run_config_data(source: str | Path, overrides: dict[str, Any], *, cwd: str | Path | None = None,
                    check_paths: bool = True) -> dict:
    """For a pipeline run: the user's training config ``source`` with ``overrides`` (a value of
    None removes the key), validated and its input paths checked, with errors naming ``source``
    and its lines; relative paths resolved by the rule above (from ``cwd`` and ``source``'s
    folder) and written absolute. Dump the result as the run's ``train.yaml``: the trainer then
    resolves nothing from the copy's folder, and its messages name ``source``'s lines.
    ``check_paths=False``: the trainer runs elsewhere (srun, kubectl) and may see other files."""
    source = Path(source)
    cfg = load_train_config(source, cwd=cwd, **overrides)
    if check_paths:
        cfg.check_paths()
    _, data, _ = _load(source, overrides)
    data.update(cfg.resolved_paths())
    data["generated_from"] = {"file": str(source.absolute()),
                              "overrides": sorted(k for k, v in overrides.items() if v is not None)}
    return data


def make_train_config(root: str | Path | None = None, **values) -> TrainConfig:
    """A config built in code (tests, pipeline); relative paths resolve against ``root``."""
    try:
        cfg = TrainConfig(**values)
    except Exception as exc:  # pydantic ValidationError -> one ConfigError listing every problem
        from pydantic import ValidationError

        if not isinstance(exc, ValidationError):
            raise
        lines = [f"key '{'.'.join(map(str, e['loc'])) or '(config)'}': {e['msg']}" for e in exc.errors()]
        raise ConfigError("\n".join(lines)) from None
    base = Path(root).absolute() if root else Path.cwd()
    cfg._cwd = base
    cfg._config_dir = base if root else None
    return cfg
