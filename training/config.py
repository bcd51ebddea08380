"""The training config: lora-scripts keys as they are, plus replyloop's own.

An existing lora-scripts YAML runs unchanged; a key neither knows is an error naming
the key, the file and the line. Relative paths are resolved against the config file's
directory (the workspace, for the pipeline's ``train.yaml``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from replyloop.errors import ConfigError
from replyloop.yamlfile import YamlDoc, load_yaml, parse_model

PATH_KEYS = ("train_data_dir", "base_model", "output_dir", "logging_dir", "store_path", "init_adapter")


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # -- lora-scripts keys ------------------------------------------------------------------
    base_model: str
    output_dir: str
    train_data_dir: str | None = None
    metadata_path: str = "metadata.csv"  # relative to train_data_dir
    task_type: Literal["CAUSAL_LM"] = "CAUSAL_LM"
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
    resume_from_checkpoint: bool | str = False  # true: the latest checkpoint of this output_dir; or a path

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
    keep_checkpoints: int = Field(2, ge=1)

    # -- prompt format (recorded in the manifest; drafting and evaluation read it from there) ----
    prompt_template: Literal["auto", "plain", "raw", "chat"] = "auto"  # auto: chat if the tokenizer has one, else plain
    system_prompt: str | None = None  # empty: no system text, and no chat-template default either

    _doc: YamlDoc | None = PrivateAttr(None)
    _root: Path | None = PrivateAttr(None)

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

    # -- paths and locations ------------------------------------------------------------------

    def where(self, key: str) -> str:
        """``file:line`` of a key, for messages ("" when the config was built in code)."""
        return f"{self._doc.where((key,))}: " if self._doc is not None else ""

    def path(self, key: str) -> Path | None:
        value = getattr(self, key)
        if value is None:
            return None
        p = Path(value).expanduser()
        if not p.is_absolute() and self._root is not None:
            p = self._root / p
        return p

    @property
    def output_path(self) -> Path:
        return self.path("output_dir").resolve()

    @property
    def logging_path(self) -> Path:
        return self.path("logging_dir") or self.output_path.with_name(self.output_path.name + ".logs")

    @property
    def checkpoints_path(self) -> Path:
        """Resume checkpoints live next to the output, never inside it."""
        return self.output_path.with_name(self.output_path.name + ".checkpoints")

    @property
    def metadata_file(self) -> Path:
        meta = Path(self.metadata_path).expanduser()
        return meta if meta.is_absolute() else self.path("train_data_dir") / meta

    def to_record(self) -> dict:
        """The config as written into the manifest and checkpoints."""
        return self.model_dump(mode="json")


def load_train_config(path: str | Path, **overrides) -> TrainConfig:
    """Parse a lora-scripts-style YAML file; all problems reported together with file:line."""
    path = Path(path)
    doc = load_yaml(path)
    data = doc.data if doc.data is not None else {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    data = {**data, **overrides}
    cfg = parse_model(doc, TrainConfig, data=data)
    cfg._doc = doc
    cfg._root = path.resolve().parent
    return cfg


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
    cfg._root = Path(root).resolve() if root else None
    return cfg
