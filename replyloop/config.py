"""The workspace configuration file (``replyloop.yaml``), parsed once into typed objects.

Secrets never live in the file: Slack tokens, the signing secret and the intake
token are read from environment variables (see ``Secrets``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from replyloop import paths
from replyloop.errors import ConfigError
from replyloop.yamlfile import load_yaml, parse_model


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StoreConfig(Section):
    path: str = "replyloop.db"  # relative to the workspace
    heldout_share: float = Field(0.15, ge=0.0, lt=1.0)
    split_seed: str = "replyloop"


class SlackConfig(Section):
    api_base_url: str = "https://slack.com/api/"
    review_channel: str = "cs-review"
    report_channel: str = "cs-quality"
    intake_channel: str = ""
    supervisors: list[str] = Field(default_factory=list)
    supervisor_group: str = ""
    socket_mode: bool = True
    http_port: int = Field(3000, ge=0, le=65535)


class TrainingSection(Section):
    config: str = "train.yaml"  # lora-scripts-style training config, relative to the workspace
    command: str = "{python} -m replyloop train --config {config}"
    from_champion: bool = True
    adapters_dir: str = "adapters"
    keep_adapters: int = Field(5, ge=1)
    # train18: after SFT, DPO/KTO on the same snapshot; the better candidate that passes the gate is kept
    preference: Literal["off", "dpo", "kto"] = "off"

    @field_validator("preference", mode="before")
    @classmethod
    def _preference_off(cls, value):
        return "off" if value is False else value  # YAML reads an unquoted `off` as false


class DegenerationConfig(Section):
    """Gate criteria for degenerate / overfit drafts (pref18; evaluation/degeneration.py, README "Evaluation")."""

    enabled: bool = True
    ngram: int = Field(4, ge=1)                                # character n-gram size for repetition
    max_repeat_share: float = Field(0.5, ge=0.0, le=1.0)       # a draft repeating more n-grams is repetitive
    max_clause_run: int = Field(3, ge=2)                       # ... or with the same clause this many times in a row
    min_length_ratio: float = Field(0.2, ge=0.0)               # draft / reference characters: below is collapse
    max_length_ratio: float = Field(5.0, gt=0.0)               # ... above is explosion
    near_identical: float = Field(90.0, ge=0.0, le=100.0)      # rapidfuzz ratio for "the same reply"
    max_repetitive_share: float = Field(0.2, ge=0.0, le=1.0)
    max_off_length_share: float = Field(0.3, ge=0.0, le=1.0)
    min_distinct2_ratio: float = Field(0.3, ge=0.0)
    max_template_share: float = Field(0.3, ge=0.0, le=1.0)     # above the references' own share
    champion_margin: float = Field(0.1, ge=0.0, le=1.0)        # allowed worsening against the champion


class EvaluationConfig(Section):
    embedding_model: str = ""  # path or name; empty: the bundled all-MiniLM-L6-v2
    threshold: float = Field(0.75, ge=-1.0, le=1.0)
    floor: float = Field(0.5, ge=-1.0, le=1.0)
    tolerance: float = Field(0.02, ge=0.0)
    category_margin: float = Field(0.05, ge=0.0)
    # chrF (character n-grams, reads Chinese with no model): the gate's own floor, tolerance and
    # category margin, calibrated on the shipped sample set (README "Evaluation")
    chrf_floor: float = Field(0.15, ge=0.0, le=1.0)
    chrf_tolerance: float = Field(0.07, ge=0.0, le=1.0)
    chrf_category_margin: float = Field(0.2, ge=0.0, le=1.0)
    # above this share of reference characters mapped to [UNK], embedding similarity is not counted
    max_unknown_share: float = Field(0.2, ge=0.0, le=1.0)
    degeneration: DegenerationConfig = Field(default_factory=DegenerationConfig)
    max_new_tokens: int = Field(96, ge=1)
    batch_size: int = Field(16, ge=1)
    # empty: the pipeline evaluates in its own process; else a command template run like
    # training.command (e.g. on the GPU host), which stores its evaluation in the database
    command: str = ""
    # golden23: golden suites (README "Golden suites"): the directory of evals/*.yaml, and what a
    # failing case does in the gate: block | regressions (only cases the champion passed) | report | off
    golden_dir: str = "evals"
    golden_gate: Literal["block", "regressions", "report", "off"] = "block"


class SchedulerConfig(Section):
    check_every_minutes: float = Field(15, gt=0)
    min_new_samples: int = Field(50, ge=1)
    min_interval_hours: float = Field(6, ge=0)
    canary_percent: int = Field(10, ge=0, le=100)
    canary_min_reviews: int = Field(50, ge=1)
    canary_max_days: float = Field(7, gt=0)
    canary_rate_margin: float = Field(0.05, ge=0.0, le=1.0)
    canary_confidence: float = Field(0.95, ge=0.0, lt=1.0)  # 0: compare the rates as measured
    weekly_report_cron: str = "mon 09:00"
    timezone: str = "Asia/Shanghai"
    misfire_grace_minutes: float = Field(2880, gt=0)


class PoliciesConfig(Section):
    dir: str = ""  # empty: the policies shipped with replyloop


class ReportConfig(Section):
    out_dir: str = "reports"
    weeks: int = Field(8, ge=1)


class ExportConfig(Section):
    scrub_pii: bool = True
    mask_phone: bool = True
    mask_email: bool = True
    mask_id_card: bool = True
    mask_order: bool = True


class DraftingConfig(Section):
    backend: Literal["local", "openai"] = "local"
    openai_base_url: str = ""  # e.g. a vLLM server with multi-LoRA: http://gpu-host:8000/v1
    max_new_tokens: int = Field(96, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"  # local backend: auto = CUDA when available


# -- deliver21: delivery of decided replies (replyloop.outbox), earned automation
# (replyloop.automation) and runtime adapter loading on the openai backend ----------------------

DeliveryTarget = Literal["webhook", "slack_thread"]


class WebhookConfig(Section):
    url: str = ""  # the helpdesk's endpoint (https://); a question's own callback_url goes first
    secret_env: str = "REPLYLOOP_WEBHOOK_SECRET"  # the env var holding the HMAC-SHA256 signing secret
    timeout_s: float = Field(10.0, gt=0)
    allow_plain_http: bool = False  # http:// targets (a receiver on the same host or in tests)


class DeliveryConfig(Section):
    # source of the question (http | slack | import | cli | demo) -> targets; a source not listed
    # delivers nothing (post-hoc QA mode: the customer was answered elsewhere)
    sources: dict[str, list[DeliveryTarget]] = Field(default_factory=dict)
    webhook: WebhookConfig = Field(default_factory=WebhookConfig)
    # /intake's callback_url: hosts allowed ("helpdesk.example.com", "*.example.com"); empty: refused
    callback_hosts: list[str] = Field(default_factory=list)
    # networks a callback_url may resolve into although private / loopback / link-local ("10.2.0.0/16")
    callback_networks: list[str] = Field(default_factory=list)
    max_attempts: int = Field(8, ge=1)      # then the event is dead-lettered (`replyloop outbox retry`)
    backoff_base_s: float = Field(0.25, gt=0)  # first retry within this, doubling, with full jitter
    backoff_max_s: float = Field(300.0, gt=0)
    workers: int = Field(8, ge=1, le=64)    # deliveries in flight at once
    poll_s: float = Field(0.1, gt=0)        # how often the sender looks for due events
    keep_delivered_days: float = Field(30, ge=0)  # delivered events older than this are deleted (0: kept)


class AutomationConfig(Section):
    enabled: bool = False
    min_reviews: int = Field(50, ge=1)         # reviews of the intent (last `window`) before it can earn it
    window: int = Field(200, ge=1)             # the last N reviews counted
    level: float = Field(0.9, gt=0.0, le=1.0)  # Wilson lower bound of approval-without-edit needed
    confidence: float = Field(0.95, gt=0.0, lt=1.0)
    audit_share: float = Field(0.1, ge=0.0, le=1.0)  # would-be auto approvals still reviewed (by hash)
    audit_min: int = Field(10, ge=1)           # audited reviews before the audit rate can revoke
    min_embedding: float = Field(0.85, ge=-1.0, le=1.0)  # to the nearest approved reply of the intent
    min_chrf: float = Field(0.6, ge=0.0, le=1.0)
    min_question_similarity: float = Field(0.5, ge=0.0, le=1.0)  # chrF to the nearest approved question
    max_question_chars: int = Field(200, ge=1)
    complex_words: list[str] = Field(default_factory=lambda: [
        "投诉", "律师", "起诉", "法院", "消协", "工商", "赔偿", "complaint", "lawyer", "lawsuit", "legal", "sue"])


class ServingConfig(Section):
    runtime_lora: bool = False  # POST /v1/load_lora_adapter on canary / promotion (vLLM runtime LoRA)
    # adapter path prefixes as this host sees them -> as the vLLM host sees them
    path_map: dict[str, str] = Field(default_factory=dict)
    load_timeout_s: float = Field(120.0, gt=0)
    # the --chat-template file vLLM was started with, for a base without its own chat template
    chat_template: str = ""
# -- rules19: rule proposals mined from edits, /reply search, drift alarms (README "Rule proposals",
# "/reply", "Drift alarms") --------------------------------------------------------------------
class ProposalsConfig(Section):
    min_occurrences: int = Field(3, ge=1)     # an edit must recur this often ...
    min_supervisors: int = Field(2, ge=1)     # ... by this many different supervisors
    max_phrase_chars: int = Field(16, ge=1)   # longer replaced or deleted spans are rewrites, not terms
    banned_severity: Literal["block", "warn"] = "warn"  # severity of a proposed banned phrase
    schedule: str = "daily 09:00"             # when `replyloop serve` mines and posts proposals ("off": never)


class ReplySearchConfig(Section):
    results: int = Field(3, ge=1, le=10)      # answers shown by /reply
    supervisors_only: bool = False            # true: only supervisors may use /reply
    embedding_model: str = ""                 # "" = evaluation.embedding_model; "none" = characters only
    embedding_weight: float = Field(0.5, ge=0.0, le=1.0)  # score = w * cosine + (1 - w) * character overlap
    min_score: float = Field(0.1, ge=0.0, le=1.0)  # answers below this score are not shown


class DriftConfig(Section):
    schedule: str = "daily 09:30"             # when `replyloop serve` checks the alarms ("off": never)
    recent_reviews: int = Field(100, ge=1)    # the champion's last N reviews against its earlier ones
    min_baseline_reviews: int = Field(50, ge=1)
    rate_margin: float = Field(0.05, ge=0.0, le=1.0)   # alarm when the rate is worse by more than this ...
    confidence: float = Field(0.95, ge=0.0, lt=1.0)    # ... with this confidence (the canary judge's interval)
    blocked_window_drafts: int = Field(200, ge=1)      # the last N drafts ...
    max_blocked_share: float = Field(0.2, ge=0.0, le=1.0)  # ... of which at most this share may be blocked
    max_pending_hours: float = Field(24, gt=0)         # the oldest undecided draft's age limit
# -- end rules19 ---------------------------------------------------------------------------------
# -- ops16: how `replyloop serve` writes its log lines (README "Health, metrics and logs") --
class LoggingConfig(Section):
    format: Literal["text", "logfmt", "json"] = "text"  # one line per record; draft_id / run_id fields
    level: Literal["debug", "info", "warning", "error"] = "info"
# -- end ops16 --


# -- i18n22: the language people read (README "Language") --
class UIConfig(Section):
    language: Literal["zh-CN", "en"] = "zh-CN"  # cards, modals, App Home, messages, the report, the CLI
    per_user_locale: bool = True  # a Slack user's own locale (users.info) for what they alone see

    @field_validator("language", mode="before")
    @classmethod
    def _language_tag(cls, value):
        from replyloop.i18n import normalize

        return normalize(value) or value  # zh, zh_CN, en-US ... are accepted; others fail validation
# -- end i18n22 --


class ConfigFile(Section):
    store: StoreConfig = Field(default_factory=StoreConfig)
    slack: SlackConfig = Field(default_factory=SlackConfig)
    training: TrainingSection = Field(default_factory=TrainingSection)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    policies: PoliciesConfig = Field(default_factory=PoliciesConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    drafting: DraftingConfig = Field(default_factory=DraftingConfig)
    delivery: DeliveryConfig = Field(default_factory=DeliveryConfig)        # deliver21
    automation: AutomationConfig = Field(default_factory=AutomationConfig)  # deliver21
    serving: ServingConfig = Field(default_factory=ServingConfig)          # deliver21
    proposals: ProposalsConfig = Field(default_factory=ProposalsConfig)  # rules19
    reply: ReplySearchConfig = Field(default_factory=ReplySearchConfig)  # rules19
    drift: DriftConfig = Field(default_factory=DriftConfig)  # rules19
    logging: LoggingConfig = Field(default_factory=LoggingConfig)  # ops16
    ui: UIConfig = Field(default_factory=UIConfig)  # i18n22


@dataclass(frozen=True)
class Secrets:
    """Secrets from the environment; never written to a file or a log."""

    slack_bot_token: str | None
    slack_app_token: str | None
    slack_signing_secret: str | None
    intake_token: str | None

    @classmethod
    def from_env(cls) -> "Secrets":
        return cls(
            slack_bot_token=os.environ.get("SLACK_BOT_TOKEN"),
            slack_app_token=os.environ.get("SLACK_APP_TOKEN"),
            slack_signing_secret=os.environ.get("SLACK_SIGNING_SECRET"),
            intake_token=os.environ.get("REPLYLOOP_INTAKE_TOKEN"),
        )

    def __repr__(self) -> str:  # keep tokens out of logs and tracebacks
        return "Secrets(<redacted>)"


@dataclass
class Config:
    """A loaded workspace: the parsed file plus the directory it lives in."""

    root: Path
    file: ConfigFile
    source: Path | None = None

    def resolve(self, value: str | Path) -> Path:
        """A path from the config, relative to the workspace directory."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.root / p)

    @property
    def db_path(self) -> Path:
        return self.resolve(self.file.store.path)

    @property
    def policies_dir(self) -> Path:
        d = self.file.policies.dir
        return self.resolve(d) if d else paths.default_policies_dir()

    @property
    def train_config_path(self) -> Path:
        return self.resolve(self.file.training.config)

    @property
    def adapters_dir(self) -> Path:
        return self.resolve(self.file.training.adapters_dir)

    @property
    def reports_dir(self) -> Path:
        return self.resolve(self.file.report.out_dir)

    def __getattr__(self, name):  # config.store, config.slack, ... read through to the file
        if name in ConfigFile.model_fields:
            return getattr(self.file, name)
        raise AttributeError(name)


def template_text(name: str = "replyloop.yaml") -> str:
    return (paths.package_dir() / "templates" / name).read_text(encoding="utf-8")


# the value ``replyloop init`` writes into train.yaml; the pipeline refuses to run while it is there
BASE_MODEL_PLACEHOLDER = "CHANGE-ME: path to a local model directory"


def load_config(path: str | Path | None = None) -> Config:
    """Load and validate ``replyloop.yaml`` (default: the one in the workspace).

    A missing workspace config is an error (run ``replyloop init``), not a silent default.
    """
    path = Path(path) if path else paths.default_config_path()
    if not path.exists():
        raise ConfigError(f"{path}: file not found (create a workspace with `replyloop init`)")
    doc = load_yaml(path)
    parsed = parse_model(doc, ConfigFile)
    from replyloop import i18n

    override = os.environ.get(i18n.ENV_VAR)
    if override and i18n.normalize(override) is None:  # i18n-hostile: a typo is not silently the workspace's
        raise ConfigError(f"${i18n.ENV_VAR}={override!r}: not a language replyloop speaks (zh-CN or en); "
                          f"unset it to use ui.language from {path}")
    i18n.set_workspace_language(parsed.ui.language)  # what this process displays from now on
    return Config(root=path.resolve().parent, file=parsed, source=path.resolve())


def default_config(root: str | Path) -> Config:
    """Defaults without a file, for library use and tests."""
    return Config(root=Path(root).resolve(), file=ConfigFile())


def write_default_config(root: str | Path, overwrite: bool = False) -> Path:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    target = root / paths.CONFIG_NAME
    if target.exists() and not overwrite:
        raise ConfigError(f"{target}: already exists (use --force to overwrite)")
    target.write_text(template_text(), encoding="utf-8")
    return target


def write_training_template(config: Config) -> Path | None:
    """Write the commented training config at ``training.config`` unless a file is there already
    (a team's own config is never replaced). Returns the path written, or None when kept."""
    target = config.train_config_path
    if target.exists():
        return None
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(template_text("train.yaml"), encoding="utf-8")
        try:
            os.link(tmp, target)  # complete or absent, and never replaces a file that appeared meanwhile
        except FileExistsError:
            raise
        except OSError:  # a filesystem without hard links
            with target.open("x", encoding="utf-8") as fh:
                fh.write(template_text("train.yaml"))
    except FileExistsError:
        return None
    except OSError as exc:
        raise ConfigError(f"{target}: cannot write the training config "
                          f"(training.config in {config.source or 'the config'}): {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return target
