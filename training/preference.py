"""Preference training: DPO or KTO on top of an SFT adapter, with TRL's trainers.

``objective: dpo`` trains on the snapshot's DPO pairs (an edit: the supervisor's text is chosen,
the draft rejected), ``objective: kto`` on its KTO rows (approved text desirable, rejected or
edited-away drafts undesirable); see replyloop/preferences.py for how decisions become rows.
The train split of the snapshot's rows is trained on; its held-out rows (their questions are
held out of the samples too) are measured before and after: the mean log-likelihood margin
``log p(chosen) - log p(rejected)`` of the held-out pairs is in the manifest.

The model is the base with ``init_adapter`` (the SFT adapter, or the champion) loaded as a
trainable ``PeftModel``, and ``ref_model=None``: TRL then keeps a frozen copy of that adapter as
the reference (the SFT policy; no second model in memory). Prompts are rendered here with the
SFT adapter's prompt format (``PromptFormat.render``), so the preference step trains on the text
drafting feeds the model, and TRL gets finished prompt strings.

The output contract is the SFT recipe's: ``output_dir`` is replaced atomically by the adapter
plus ``manifest.json`` (with ``objective`` and ``preferences``: the rows' sha256 and counts);
``output_dir/checkpoint-<step>/`` are HF Trainer checkpoints marked complete by a
``state.json`` written after each one, resumable with ``--resume``.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from pathlib import Path

from replyloop.errors import ConfigError, TrainingError
from replyloop.training import checkpointing as ckpt
from replyloop.training.config import TrainConfig
from replyloop.training.data import DatasetTooSmallError, load_records
from replyloop.training.prompting import PromptFormat, adds_bos, prompt_input_ids, resolve_format
from replyloop.training.recipe import LoRAFinetuneRecipe, Notice, Progress, TrainResult

KIND = {"dpo": "dpo", "kto": "kto"}


class TooFewPreferencesError(DatasetTooSmallError):
    """The snapshot has fewer preference rows than objective: dpo | kto needs (bad input: exit 2)"""

    exit_code = 2


def rows_sha256(rows: list[dict]) -> str:
    """The fingerprint of the preference rows trained on (recorded in the manifest and checkpoints)."""
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps([row["prompt"], row["chosen"], row["rejected"], row["label"]],
                            ensure_ascii=False).encode("utf-8") + b"\n")
    return h.hexdigest()


def completion_logprob(model, tokenizer, fmt: PromptFormat, prompt: str, completion: str) -> float:
    """Summed log-probability of ``completion`` (and the reply's end token) after ``prompt``,
    tokenised as drafting feeds it (``prompt_input_ids``)."""
    import torch

    p_ids = prompt_input_ids(tokenizer, prompt, fmt=fmt)
    c_ids = list(tokenizer(completion, add_special_tokens=False)["input_ids"]) + [fmt.end_id(tokenizer)]
    ids = torch.tensor([p_ids + c_ids], device=next(model.parameters()).device)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].float()
    logp = torch.log_softmax(logits, dim=-1)
    targets = ids[0, 1:]
    picked = logp.gather(1, targets[:, None])[:, 0]
    return float(picked[len(p_ids) - 1:].sum())


def preference_margin(model, tokenizer, fmt: PromptFormat, pairs: list[tuple[str, str, str]]) -> float | None:
    """Mean of ``log p(chosen) - log p(rejected)`` over (prompt, chosen, rejected) pairs; None without pairs."""
    if not pairs:
        return None
    was_training = model.training
    model.eval()
    total = sum(completion_logprob(model, tokenizer, fmt, p, c) - completion_logprob(model, tokenizer, fmt, p, r)
                for p, c, r in pairs)
    if was_training:
        model.train()
    return total / len(pairs)


class PreferenceRecipe(LoRAFinetuneRecipe):
    """The SFT recipe's checks, model loading and atomic output, with TRL's DPO/KTO loop."""

    def __init__(self, cfg: TrainConfig, progress: Progress | None = None, notice: Notice | None = None):
        super().__init__(cfg, progress=progress, notice=notice)
        self.objective = cfg.objective
        self.kind = KIND[cfg.objective]

    # -- setup ------------------------------------------------------------------------------

    def setup(self) -> None:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        cfg = self.cfg
        cfg.check_paths()
        self.device, self.precision = self._setup_device(device=cfg.device, precision=cfg.precision,
                                                         quantization=cfg.quantization)
        base_path = self._resolve_base_model(cfg)
        if not cfg.init_adapter:  # checked here, not in the config: the pipeline sets it per run (champion)
            raise ConfigError(f"{cfg.where('objective')}objective: {self.objective} trains on top of an SFT adapter: "
                              f"set init_adapter to its directory (or champion)")
        self.init_adapter = self._resolve_init_adapter(cfg)
        self._check_init_adapter(cfg, self.init_adapter)
        resume_path = self._resume_path(cfg)
        resume_state = ckpt.read_state(resume_path) if resume_path is not None else None
        if resume_path is not None and not (resume_path / "trainer_state.json").exists():
            raise TrainingError(f"cannot resume from {resume_path}: it is a checkpoint of objective: sft training, "
                                f"not of objective: {self.objective}; {self._fresh_hint()}")
        saved_data = resume_state.get("data") if resume_state else None
        resume_snapshot = saved_data.get("snapshot_hash") if saved_data and cfg.snapshot is None else None
        self.records = load_records(cfg, snapshot=resume_snapshot)  # the snapshot (created when none is named)
        self.snapshot_hash = self.records.snapshot_hash
        self._load_rows(Path(self.records.description["path"]))
        self.tokenizer = self._setup_tokenizer(base_path)
        self.prompt_format = self._prompt_format()
        self.data_state = {"source": self.records.description.get("path"), "snapshot_hash": self.snapshot_hash,
                           "records": len(self.train_rows), "records_sha256": self.rows_hash,
                           "examples_sha256": self.rows_hash, "objective": self.objective}
        if resume_state is not None:
            diffs = ckpt.warn_config_mismatch(resume_state["config"], cfg.to_record(), resume_path)
            ckpt.check_resume_data(saved_data, self.data_state, resume_path, config_differs=bool(diffs),
                                   fresh=self._fresh_hint())
            self.run_id = resume_state.get("run_id") or self.run_id
        self.resumed_from = resume_path
        self._resume = resume_path

        import torch

        torch.manual_seed(self.seed)
        model = self._setup_model(base_path=base_path, init_adapter=self.init_adapter)
        self.lora = _lora(model)
        self.heldout_pairs = [(r["prompt"], r["chosen"], r["rejected"]) for r in self.heldout_dpo]
        self.margin_before = preference_margin(model, self.tokenizer, self.prompt_format, self.heldout_pairs)
        self.trainer = self._setup_trainer(model)
        self.accelerator = self.trainer.accelerator
        self.world = self.accelerator.num_processes
        self.is_main = self.accelerator.is_main_process
        self.model = self.trainer.model

    def _load_rows(self, store_path: Path) -> None:
        from replyloop import preferences
        from replyloop.store import Store

        with Store(store_path) as store:
            rows = list(preferences.iter_rows(store, self.snapshot_hash, self.kind))
            self.heldout_dpo = [r for r in preferences.iter_rows(store, self.snapshot_hash, "dpo", "heldout")]
        self.train_rows = [r for r in rows if r["split"] == "train"]
        self.heldout_rows = [r for r in rows if r["split"] == "heldout"]
        self.rows_hash = rows_sha256(self.train_rows)
        need, where = self.cfg.min_preference_rows, self.cfg.where("objective")
        have = len(self.train_rows)
        what = {"dpo": "preference pairs", "kto": "preference rows"}[self.kind]
        how = {"dpo": "edits, and a rejected draft followed by an approved one, make pairs",
               "kto": "every approval, edit and rejection makes rows"}[self.kind]
        held = f" (and {len(self.heldout_rows)} held out)" if self.heldout_rows else ""
        if have < need:
            raise TooFewPreferencesError(
                f"{where}objective: {self.objective} needs at least {need} {what} in the train split of snapshot "
                f"{self.snapshot_hash[:12]}, it has {have}{held} ({how}; min_preference_rows sets the minimum)")
        if self.kind == "kto":
            good = sum(1 for r in self.train_rows if r["label"])
            if good in (0, have):
                missing = "undesirable (rejected or edited) drafts" if good else "desirable (approved) replies"
                raise TooFewPreferencesError(f"{where}objective: kto needs both desirable and undesirable rows; the "
                                           f"train split of snapshot {self.snapshot_hash[:12]} has no {missing}")
            if self.cfg.batch_size < 2:
                raise TrainingError(f"{self.cfg.where('batch_size')}batch_size: objective: kto needs batch_size of at "
                                    f"least 2 (its KL term pairs each row with another row of the batch)")
            self.desirable, self.undesirable = good, have - good
        if self.cfg.batch_size > have:
            raise TooFewPreferencesError(f"{self.cfg.where('batch_size')}batch_size is {self.cfg.batch_size}, but the "
                                       f"train split of snapshot {self.snapshot_hash[:12]} has {have} {what}")

    def _prompt_format(self) -> PromptFormat:
        """The SFT adapter's prompt format (what drafting feeds it), else the config's."""
        manifest = self.init_adapter / "manifest.json"
        if manifest.exists():
            try:
                record = json.loads(manifest.read_text(encoding="utf-8"))
                if isinstance(record.get("prompt"), dict):
                    return PromptFormat.from_record(record["prompt"])
            except (ValueError, OSError):
                pass
        return resolve_format(self.tokenizer, self.cfg.prompt_template, self.cfg.system_prompt, where=self.cfg.where)

    def _render(self, prompt: str) -> str:
        text = self.prompt_format.render(self.tokenizer, prompt)
        bos = self.tokenizer.bos_token
        if self.prompt_format.template == "chat" and bos and text.startswith(bos) and adds_bos(self.tokenizer):
            text = text[len(bos):]  # TRL tokenises with special tokens: the BOS once, not twice
        return text

    def _completion(self, text: str) -> str:
        end = self.prompt_format.end_token
        return text + end if end and end != self.tokenizer.eos_token else text  # TRL appends EOS itself

    def _dataset(self):
        from datasets import Dataset

        if self.kind == "dpo":
            return Dataset.from_list([{"prompt": self._render(r["prompt"]), "chosen": self._completion(r["chosen"]),
                                       "rejected": self._completion(r["rejected"])} for r in self.train_rows])
        return Dataset.from_list([{"prompt": self._render(r["prompt"]), "completion": self._completion(r["chosen"]),
                                   "label": bool(r["label"])} for r in self.train_rows])

    def _setup_trainer(self, model):
        cfg = self.cfg
        common = dict(
            output_dir=str(self.output_dir), per_device_train_batch_size=cfg.batch_size,
            gradient_accumulation_steps=cfg.gradient_accumulation_steps, num_train_epochs=cfg.epochs,
            max_steps=cfg.max_steps or -1, learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.lr_scheduler,
            warmup_steps=cfg.warmup_steps, weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm or 0.0,
            save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=cfg.keep_checkpoints,
            logging_steps=1, report_to=[], disable_tqdm=True, seed=cfg.seed, data_seed=cfg.seed,
            use_cpu=self.device == "cpu", bf16=self.precision == "bf16", fp16=self.precision == "fp16",
            activation_checkpointing=cfg.gradient_checkpointing, beta=cfg.beta, max_length=cfg.max_seq_length,
            dataset_num_proc=None)
        callbacks = [_Checkpoints(self), _Events(self)]
        import datasets
        from transformers.trainer_callback import PrinterCallback

        datasets.disable_progress_bars()
        if self.kind == "dpo":
            from trl import DPOConfig, DPOTrainer

            trainer = DPOTrainer(model=model, ref_model=None, args=DPOConfig(**common), train_dataset=self._dataset(),
                                 processing_class=self.tokenizer, callbacks=callbacks)
        else:
            from trl import KTOConfig, KTOTrainer

            args = KTOConfig(**common, desirable_weight=cfg.desirable_weight,
                             undesirable_weight=cfg.undesirable_weight)
            trainer = KTOTrainer(model=model, ref_model=None, args=args, train_dataset=self._dataset(),
                                 processing_class=self.tokenizer, callbacks=callbacks)
        trainer.remove_callback(PrinterCallback)  # progress goes through the recipe's events
        return trainer

    # -- training ----------------------------------------------------------------------------

    def train(self) -> None:
        t0 = time.perf_counter()
        self.trainer.train(resume_from_checkpoint=str(self._resume) if self._resume else None)
        self._train_time = time.perf_counter() - t0
        model = self.accelerator.unwrap_model(self.trainer.model)
        if "ref" in getattr(model, "peft_config", {}):
            model.delete_adapter("ref")  # TRL's frozen reference copy: not part of the output
        self.model = model
        state = self.trainer.state
        p = self.progress
        p.step = state.global_step
        losses = [e["loss"] for e in state.log_history if "loss" in e]
        p.last_loss = losses[-1] if losses else None
        p.best_step = p.step
        self.best_state = ckpt.trainable_state(model)  # the last weights: no held-out loss to pick by
        self.margin_after = preference_margin(model, self.tokenizer, self.prompt_format, self.heldout_pairs)
        self.last_logs = next((e for e in reversed(state.log_history) if "loss" in e), {})

    # -- output ------------------------------------------------------------------------------

    def manifest(self) -> dict:
        from replyloop import timeutil
        from replyloop.training.recipe import library_versions

        import trl

        p = self.progress
        prefs = {"kind": self.kind, "rows_sha256": self.rows_hash, "train_rows": len(self.train_rows),
                 "heldout_rows": len(self.heldout_rows), "heldout_pairs": len(self.heldout_pairs)}
        if self.kind == "kto":
            prefs.update(desirable=self.desirable, undesirable=self.undesirable)
        rewards = {k.replace("rewards/", "reward_"): v for k, v in getattr(self, "last_logs", {}).items()
                   if k.startswith("rewards/")}
        return {
            "objective": self.objective,
            "base_model": str(self._resolve_base_model(self.cfg)),
            "snapshot_hash": self.snapshot_hash,
            "prompt": self.prompt_format.to_record(),
            "dataset": {**self.records.description, "samples": len(self.train_rows),
                        "train_samples": len(self.train_rows), "eval_samples": len(self.heldout_rows)},
            "preferences": prefs,
            "config": {**self.cfg.to_record(), **self.lora},
            "lora": self.lora,
            "metrics": {"train_loss": p.last_loss, "eval_loss": None, "best_step": p.best_step, "steps": p.step,
                        "heldout_margin_before": _round(self.margin_before),
                        "heldout_margin_after": _round(getattr(self, "margin_after", None)), **rewards,
                        "train_seconds": round(self._train_time, 2)},
            "versions": {**library_versions(), "trl": trl.__version__},
            "created_at": timeutil.now_iso(),
            "init_adapter": str(self.init_adapter),
            "resumed_from": str(self.resumed_from) if self.resumed_from else None,
            "notes": self.notes,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _lora(model) -> dict:
    from replyloop.training.recipe import _lora_settings

    return _lora_settings(model)


def _callback_base():
    from transformers import TrainerCallback

    return TrainerCallback


class _Checkpoints(_callback_base()):
    """After HF Trainer wrote ``checkpoint-<step>``: its ``state.json`` (run id, config, data),
    written last and atomically, marks it complete for ``--resume`` and the output swap."""

    def __init__(self, recipe: PreferenceRecipe):
        self.recipe = recipe

    def on_save(self, args, state, control, **kwargs):
        r = self.recipe
        if not state.is_world_process_zero:
            return control
        folder = Path(args.output_dir) / f"{ckpt.PREFIX}{state.global_step}"
        losses = [e["loss"] for e in state.log_history if "loss" in e]
        progress = ckpt.TrainingProgress(step=state.global_step, last_loss=losses[-1] if losses else None)
        record = {"progress": progress.state_dict(), "config": r.cfg.to_record(), "data": r.data_state,
                  "run_id": r.run_id, "objective": r.objective}
        tmp = folder / "state.json.tmp"
        tmp.write_text(json.dumps(record, ensure_ascii=False, indent=2), encoding="utf-8")
        tmp.replace(folder / "state.json")
        return control


class _Events(_callback_base()):
    """TRL's log lines as the recipe's progress events (``replyloop-progress`` lines, or the bar)."""

    def __init__(self, recipe: PreferenceRecipe):
        self.recipe = recipe
        self.t0 = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            event = {"step": state.global_step, "total_steps": state.max_steps, "loss": round(float(logs["loss"]), 6),
                     "tokens_per_s": 0.0, "objective": self.recipe.objective,
                     "elapsed_s": round(time.perf_counter() - self.t0, 1)}
            for key in ("rewards/margins", "rewards/chosen", "rewards/rejected", "kl"):
                if key in logs:
                    event[key.replace("rewards/", "reward_")] = round(float(logs[key]), 6)
            self.recipe._emit(event)
        return control


def summary_line(result: TrainResult) -> str:
    """What ``replyloop train`` prints when a preference run finished (in the current language)."""
    from replyloop.i18n import _

    m, p = result.manifest["metrics"], result.manifest["preferences"]
    before, after = m.get("heldout_margin_before"), m.get("heldout_margin_after")
    margin = (_("held-out margin log p(chosen) - log p(rejected) {before} -> {after} on {pairs} pair(s)").format(
        before=f"{before:.2f}", after=f"{after:.2f}", pairs=p["heldout_pairs"])
        if before is not None and after is not None else _("no held-out pairs"))
    loss = _("n/a") if m["train_loss"] is None else f"{m['train_loss']:.4f}"
    return _("Wrote {path}: objective {objective}, {steps} steps on {rows} {kind} row(s), loss {loss}, {margin}").format(
        path=result.output_dir, objective=result.manifest["objective"], steps=m["steps"], rows=p["train_rows"],
        kind=p["kind"], loss=loss, margin=margin)


def run_preference_training(cfg: TrainConfig, progress: Progress | None = None,
                            notice: Notice | None = None) -> TrainResult:
    """``objective: dpo | kto``: train ``init_adapter`` on the snapshot's preference rows and write
    ``output_dir`` atomically (the SFT recipe's output contract)."""
    from replyloop.training.recipe import run_recipe

    return run_recipe(PreferenceRecipe(cfg, progress=progress, notice=notice))
