"""The retrain pipeline: snapshot -> train -> evaluate -> gate -> canary / champion -> notify.

One function, ``run_pipeline``, used by the scheduler's threshold job, ``/retrain now`` and
``replyloop retrain``. Training runs as a separate process from ``training.command`` (a
template), with its log captured and its progress written to ``training_runs``; evaluation
runs in this process, or as one more from ``evaluation.command``. One run at a
time (``RunLock``); on any failure the run is marked failed, its partial output removed, and the
champion and the dataset are left as they were.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from replyloop import timeutil
from replyloop.childenv import child_env
from replyloop.config import Config
from replyloop.errors import EXIT_GATE_FAILED, ConfigError, ConflictError, ReplyloopError, TrainingError
from replyloop.i18n import N_, _, language, workspace
from replyloop.phrases import Phrase, localized
from replyloop.locking import RunLock, pid_alive, process_identity, same_process
from replyloop.messages import Message, bold, code_block, icon, message
from replyloop.registry import Registry
from replyloop.store import Store

log = logging.getLogger(__name__)

Notify = Callable[[str], None]
Progress = Callable[[dict], None]  # {"stage": ..., ...} and the trainer's progress events
PROGRESS_PREFIX = "replyloop-progress "
TRIGGER_WORDS = {"cli": N_("cli"), "scheduler": N_("scheduler"), "slack": N_("slack")}  # shown as in English


@dataclass
class Due:
    """Whether the threshold job should start a run, and why."""

    due: bool
    new_samples: int
    threshold: int
    reason: str                      # a Phrase: English as a str (--json); ``localized(reason)`` for people
    snapshot_hash: str | None = None


@dataclass
class PipelineResult:
    run_id: int | None
    status: str                      # succeeded | failed | config-error | skipped | dry-run
    message: str                     # what was posted and shown (ui.language); to_dict(): its English rendering
    model_id: int | None = None
    model_name: str | None = None
    gate_passed: bool | None = None
    action: str | None = None        # canary | champion | rejected | waiting (the server could not load it)
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The result for --json: ``message`` in English whatever the language (``_posted``)."""
        out = asdict(self)
        out["message"] = getattr(self.message, "english", self.message)
        return out


# -- when to run -------------------------------------------------------------------------------


def check_due(config: Config, store: Store, now: dt.datetime | None = None) -> Due:
    """Enough approved samples since the champion's snapshot, and long enough since the last run."""
    sched = config.file.scheduler
    snap = store.baseline_snapshot()
    new = store.samples_since(snap, source="review")
    canary = Registry(store).canary()
    if canary is not None:
        return Due(False, new, sched.min_new_samples,
                   Phrase(N_("canary {model} is still being judged; the next run waits for its promotion or rollback"),
                          model=canary["name"]), snap)
    if new < sched.min_new_samples:
        return Due(False, new, sched.min_new_samples,
                   Phrase(N_("{new} new approved sample(s) since the champion's snapshot; {needed} needed"),
                          new=new, needed=sched.min_new_samples), snap)
    last = store.one("SELECT started_at FROM training_runs ORDER BY started_at DESC LIMIT 1")
    if last is not None:
        elapsed = (now or timeutil.now()) - timeutil.parse(last["started_at"])
        wait = dt.timedelta(hours=sched.min_interval_hours)
        if elapsed < wait:
            return Due(False, new, sched.min_new_samples,
                       Phrase(N_("last run started {hours} h ago; min_interval_hours is {interval}"),
                              hours=f"{elapsed.total_seconds() / 3600:.1f}", interval=sched.min_interval_hours), snap)
    return Due(True, new, sched.min_new_samples,
               Phrase(N_("{new} new approved sample(s) >= {needed}"), new=new, needed=sched.min_new_samples), snap)


# -- run records -------------------------------------------------------------------------------


def _update_run(store: Store, run_id: int, **values) -> None:
    sets = ", ".join(f"{k} = ?" for k in values)
    with store.transaction() as db:
        db.execute(f"UPDATE training_runs SET {sets} WHERE id = ?", (*values.values(), run_id))


def _fail_run(store: Store, run_id: int, error: str) -> None:
    with store.transaction():
        _update_run(store, run_id, status="failed", error=error[:4000], finished_at=timeutil.now_iso())
        store.audit("pipeline", "run.failed", "training_run", run_id, {"error": error[:500]})


def remove_run_scratch(output_dir: str | Path | None) -> None:
    """Delete what the trainer keeps beside ``output_dir`` while it runs: temp dirs
    (``.<name>.tmp-*``, ``.<name>.old-*``, ``<name>.tmp*``) and its resume checkpoints
    (``<name>/checkpoint-<step>``, ``<name>/.tmp-checkpoint-*``, and the older layout's
    ``<name>.checkpoints``: LoRA weights and optimizer moments; the pipeline never resumes)."""
    if not output_dir:
        return
    out = Path(output_dir)
    inside = [*out.glob("checkpoint-*"), *out.glob(".tmp-checkpoint-*")] if out.is_dir() and not out.is_symlink() else []
    for tmp in [*out.parent.glob(f".{out.name}.*"), *out.parent.glob(f"{out.name}.tmp*"),
                out.with_name(f"{out.name}.checkpoints"), *inside]:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists() or tmp.is_symlink():
            tmp.unlink(missing_ok=True)


def remove_partial_output(output_dir: str | Path | None) -> None:
    """Delete what an unfinished run wrote: its output dir, its checkpoints and any temp dirs
    the trainer left beside it, and its ``<name>.logs`` (the trainer's default log dir)
    (callers check first that no model row points to it: ``_abandon_output``)."""
    if not output_dir:
        return
    out = Path(output_dir)
    remove_run_scratch(out)
    for path in (out.with_name(f"{out.name}.logs"), out):
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)


def _is_orphaned_child(run: dict) -> bool:
    """Whether ``run['pid']`` is still the run's child (trainer or evaluator), which leads its own
    process group: the same start time and boot as recorded at launch. After a machine restart
    or pid reuse the pid may name an unrelated process, which must not be killed. A row without
    a recorded start time (from before it was recorded) falls back to the command line."""
    pid = run["pid"]
    if not pid or not pid_alive(pid):
        return False
    same = same_process(pid, run.get("pid_started"))
    if same is False:
        return False
    if same is None and not _looks_like_run_child(pid):
        return False
    try:
        return os.getpgid(pid) == pid  # started with start_new_session: it leads its group
    except OSError:
        return False


def _looks_like_run_child(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False  # no /proc: cannot tell, so leave it alone
    text = b" ".join(argv).decode("utf-8", "replace")
    return "replyloop" in text and ("train" in text or "eval" in text)


def recover(store: Store) -> list[int]:
    """After a crash: mark runs whose process is gone as failed, kill an orphaned trainer,
    remove partial output and release a stale lock. Returns the ids of the runs cleaned up."""
    cleaned = []
    lock = RunLock(store)
    holder = lock.holder()
    stale_lock = holder is not None and lock.is_stale(holder)
    for run in store.query("SELECT * FROM training_runs WHERE status IN ('queued', 'running')"):
        owner_alive = holder is not None and holder.get("run_id") == run["id"] and not stale_lock
        if owner_alive:
            continue
        if _is_orphaned_child(run):
            try:
                os.killpg(run["pid"], signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        error = "the pipeline process died before the run finished (recovered at restart)"
        _abandon_output(store, run["output_dir"], error)
        _fail_run(store, run["id"], error)
        cleaned.append(run["id"])
    if stale_lock:
        with store.transaction() as db:
            db.execute("DELETE FROM locks WHERE name = ? AND owner_pid = ?", (holder["name"], holder["owner_pid"]))
            store.audit("pipeline", "lock.recovered", "lock", holder["name"], {"pid": holder["owner_pid"]})
    return cleaned


# -- training as a separate process ---------------------------------------------------------------


PLACEHOLDER_PREFIX = "CHANGE-ME"  # replyloop.config.BASE_MODEL_PLACEHOLDER, written by `replyloop init`
# the keys the pipeline sets per run (the team's values for them are replaced or removed)
RUN_KEYS = ("dataset", "store_path", "snapshot", "output_dir", "logging_dir", "init_adapter",
            "resume_from_checkpoint", "train_data_dir", "metadata_path")


@dataclass
class TrainingSource:
    """The team's training config (``training.config``), checked before a run is created."""

    path: Path
    data: dict  # its keys, validated, less the ones the pipeline sets, with paths made absolute


def _key_where(doc, key: str) -> str:
    return doc.where((key,)) if doc.line_of((key,)) else str(doc.path)


def load_training_source(config: Config) -> TrainingSource:
    """Read and check the workspace's training config the way a run would use it, so a missing
    file, an unset ``base_model`` or an invalid key is a ``ConfigError`` naming the user's file,
    line and key before any run is recorded. Relative paths resolve by the training config's rule
    (``training.config.run_config_data``: the workspace folder, then the file's folder)."""
    from replyloop.yamlfile import load_yaml
    from replyloop.training.config import run_config_data

    source = config.train_config_path
    named = "training.config in the workspace config"
    if config.source is not None and config.source.exists():
        named = f"training.config at {load_yaml(config.source).where(('training', 'config'))}"
    if not source.exists():
        raise ConfigError(f"{source}: training config not found ({named}); run `replyloop init` in the "
                          "workspace to write a commented one, then set base_model in it")
    doc = load_yaml(source)
    data = doc.data if doc.data is not None else {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys at the top level")
    base = data.get("base_model")
    if base is None or (isinstance(base, str) and (not base.strip() or base.strip().startswith(PLACEHOLDER_PREFIX))):
        shown = ("is missing" if base is None else
                 "is not set (still the placeholder written by `replyloop init`)" if base.strip() else "is empty")
        raise ConfigError(f"{_key_where(doc, 'base_model')}: base_model {shown}: set base_model to a "
                          "local model directory (config.json, weights and tokenizer, e.g. one saved "
                          "with save_pretrained)")
    # Validated as the run will see it (errors name the user's file and line); a local trainer
    # ({python} ...) sees this machine's files, so its input paths are checked too; a remote one
    # (srun, kubectl) may not.
    overrides = {"dataset": "store", "store_path": str(config.db_path), "snapshot": None,
                 "output_dir": str(config.adapters_dir / "run"), "logging_dir": None, "init_adapter": None,
                 "resume_from_checkpoint": False, "train_data_dir": None, "metadata_path": None}
    data = run_config_data(source, overrides, cwd=config.root,
                           check_paths="{python}" in config.file.training.command)
    data = {k: v for k, v in data.items() if k not in RUN_KEYS}
    return TrainingSource(path=source, data=data)


def write_run_train_config(source: TrainingSource, store: Store, run_id: int, snapshot_hash: str,
                           output_dir: Path, run_dir: Path, init_adapter: str | None) -> Path:
    """The team's training config with this run's dataset, output and starting adapter; the copy
    carries absolute paths and ``generated_from``, so the trainer's messages name the user's file."""
    data = dict(source.data)
    data.update({
        "dataset": "store",
        "store_path": str(store.path.resolve()),
        "snapshot": snapshot_hash,
        "output_dir": str(output_dir),
        "logging_dir": str(run_dir / "tensorboard"),
        "resume_from_checkpoint": False,
    })
    if init_adapter is not None:
        data["init_adapter"] = init_adapter
    # the keys this run set or removed (the others are the user's, named by file and line)
    set_here = sorted({k for k in RUN_KEYS if k in data} | {"train_data_dir", "metadata_path"})
    data["generated_from"] = {**data.get("generated_from", {"file": str(source.path.absolute())}), "overrides": set_here}
    target = run_dir / "train.yaml"
    target.write_text(f"# generated for run #{run_id} from {source.path}\n"
                      + yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return target


def _command_argv(key: str, template: str, **values) -> list[str]:
    """``template`` (the config key ``key``) filled in with ``values``, split like a shell would;
    an unknown placeholder names the key and the placeholders it may use."""
    try:
        command = template.format(**values)
    except (KeyError, IndexError) as exc:
        allowed = ", ".join("{" + name + "}" for name in values)
        raise ConfigError(f"{key}: unknown placeholder {exc} (use {allowed})") from None
    return shlex.split(command)


def training_argv(config: Config, train_config: Path, run_id: int, output_dir: Path) -> list[str]:
    return _command_argv("training.command", config.file.training.command, python=shlex.quote(sys.executable),
                         config=shlex.quote(str(train_config)), run_id=run_id,
                         output_dir=shlex.quote(str(output_dir)), workspace=shlex.quote(str(config.root)))


def evaluation_argv(config: Config, model: dict, run_id: int) -> list[str]:
    if config.source is None:
        raise ConfigError("evaluation.command needs the workspace's replyloop.yaml to pass as {config}")
    return _command_argv("evaluation.command", config.file.evaluation.command, python=shlex.quote(sys.executable),
                         config=shlex.quote(str(config.source)), model=model["id"],
                         model_name=shlex.quote(model["name"]), run_id=run_id,
                         workspace=shlex.quote(str(config.root)))


def evaluate_candidate(config: Config, store: Store, run_id: int, model: dict, run_dir: Path,
                       lock: RunLock) -> tuple:
    """Evaluate the new model against the champion: in this process, or with ``evaluation.command``
    as a separate process (the GPU host) that stores its evaluation in the database. Returns the
    gate's verdict and the evaluation report (a dict)."""
    from replyloop.evaluation.evaluate import EvaluationError, evaluate_model
    from replyloop.evaluation.gate import GateResult

    if not config.file.evaluation.command:
        report = evaluate_model(config, store, model["id"], against="champion", actor="pipeline")
        return report.gate, report.to_dict()
    argv = evaluation_argv(config, model, run_id)
    log_path = run_dir / "eval.log"
    before = store.scalar("SELECT coalesce(max(id), 0) FROM evaluations")
    code = run_training_process(store, run_id, argv, log_path, lock)
    row = store.one("SELECT gate_passed, gate, report FROM evaluations WHERE model_id = ? AND id > ?"
                    " ORDER BY id DESC LIMIT 1", (model["id"], before))
    # `replyloop eval` exits 3 when the gate fails (1 before cli16: an older install on the GPU host);
    # anything else, or no stored evaluation, is an error
    if code not in (0, EXIT_GATE_FAILED, 1) or row is None:
        raise EvaluationError(child_failure("evaluation", code, log_path,
                                            "" if row else f" and stored no evaluation of model {model['name']}"))
    return GateResult.from_stored(row["gate_passed"], json.loads(row["gate"])), json.loads(row["report"])


def run_training_process(store: Store, run_id: int, argv: list[str], log_path: Path, lock: RunLock,
                         env: dict | None = None, poll_s: float = 0.5, progress: Progress | None = None) -> int:
    """Launch a child of the run (training; evaluation with ``evaluation.command``), capture its
    log, copy progress lines into the run row (and pass each event to ``progress``); returns the
    exit code."""
    with log_path.open("ab") as logfile:
        proc = subprocess.Popen(argv, stdout=logfile, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=child_env(env))  # without the bot's secrets
    _update_run(store, run_id, pid=proc.pid, pid_started=process_identity(proc.pid))  # see recover()
    offset, last_beat = 0, 0.0
    try:
        while True:
            code = proc.poll()
            offset = _read_progress(store, run_id, log_path, offset, progress)
            if time.monotonic() - last_beat > 5:
                lock.heartbeat()
                last_beat = time.monotonic()
            if code is not None:
                return code
            time.sleep(poll_s)
    except BaseException:
        with_kill(proc)
        raise


def with_kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _read_progress(store: Store, run_id: int, log_path: Path, offset: int, progress: Progress | None = None) -> int:
    with log_path.open("rb") as fh:
        fh.seek(offset)
        chunk = fh.read()
    end = chunk.rfind(b"\n")
    if end < 0:
        return offset
    # merge every event of the chunk: the last line may be an evaluation event without a
    # training loss, which must not hide the loss of the step event just before it
    values: dict = {}
    for line in chunk[: end + 1].decode("utf-8", "replace").splitlines():
        if line.startswith(PROGRESS_PREFIX):
            try:
                event = json.loads(line[len(PROGRESS_PREFIX):])
            except ValueError:
                continue
            if not isinstance(event, dict):
                continue
            values.update({k: event[k] for k in ("step", "total_steps", "loss") if event.get(k) is not None})
            if progress is not None:
                try:
                    progress(event)
                except Exception:  # a display problem must not fail the run
                    log.exception("progress display failed")
    if values:
        _update_run(store, run_id, **values)
    return offset + end + 1


def _log_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    return [ln.rstrip() for ln in text.splitlines() if not ln.startswith(PROGRESS_PREFIX) and ln.strip()]


def log_tail(path: Path, lines: int = 15) -> str:
    return "\n".join(_log_lines(path)[-lines:])


def log_error_lines(path: Path, max_lines: int = 12) -> tuple[str, list[str]]:
    """Why a child failed, from its log: ``(headline, lines)``. The ``Error: ...`` message the
    CLI prints (with its continuation lines); else the end of a Python traceback (the last frame,
    headed by the exception line); else the log's last lines. Progress lines are left out."""
    lines = _log_lines(path)
    starts = [i for i, ln in enumerate(lines) if ln.startswith("Error:")]
    if starts:
        found = lines[starts[-1]:][:max_lines]
        return found[0], found
    tb = [i for i, ln in enumerate(lines) if ln.startswith("Traceback (most recent call last)")]
    if tb:
        body = lines[tb[-1] + 1:]
        frames = [i for i, ln in enumerate(body) if ln.lstrip().startswith('File "')]
        found = (body[frames[-1]:] if frames else body)[-max_lines:]
        return found[-1], found
    found = lines[-max_lines:]
    return (found[-1] if found else ""), found


def child_failure(what: str, code: int, log_path: Path, extra: str = "") -> str:
    """``training exited with code 1: Error: ...``, then the error lines and the log's path."""
    headline, found = log_error_lines(log_path)
    head = f"{what} exited with code {code}{extra}"
    if code < 0:
        try:
            head = f"{what} exited with code {code} (killed by {signal.Signals(-code).name}){extra}"
        except ValueError:
            pass
    if not found:
        return f"{head}; its log {log_path} is empty"
    rest = [ln for ln in found if ln != headline] if found[0] == headline else found
    return f"{head}: {headline}\n" + "".join(ln + "\n" for ln in rest) + f"(full log: {log_path})"


# -- the pipeline ----------------------------------------------------------------------------------


def run_pipeline(config: Config, store: Store, trigger: str = "cli", requested_by: str | None = None,
                 notify: Notify | None = None, dry_run: bool = False,
                 progress: Progress | None = None) -> PipelineResult:
    """Snapshot, train, evaluate, gate, register; never touches the champion unless the gate passed.

    The training config is checked first: a missing file, an unset ``base_model`` or an invalid
    key returns status ``config-error`` and records no run. ``progress`` receives
    ``{"stage": "training", "run_id", "log_path"}``, the trainer's progress events, and
    ``{"stage": "evaluating"}``."""
    say = notify or (lambda message: None)
    show = progress or (lambda event: None)
    lock = RunLock(store)
    if dry_run:
        return _dry_run(config, store, lock)
    canary = Registry(store).canary()
    if canary is not None:
        raise ConflictError(f"model {canary['name']} is the canary: promote it or roll it back first "
                            "(`replyloop models promote` / `replyloop models rollback`)")
    try:
        source = load_training_source(config)
        if config.file.training.preference != "off" and source.data.get("objective", "sft") != "sft":  # train18
            raise ConfigError(f"{source.path}: objective: {source.data['objective']} with training.preference: "
                              f"{config.file.training.preference}: the pipeline trains SFT first, then the "
                              f"preference step; set objective: sft (or remove it), or training.preference: off")
    except ConfigError as exc:
        return _config_error(store, str(exc), trigger, requested_by, say)
    lock.acquire()
    run_id = None
    output_dir = None
    try:
        registry = Registry(store, keep_adapters=config.file.training.keep_adapters)
        snapshot = store.create_snapshot(config.file.store.heldout_share, config.file.store.split_seed,
                                         actor=requested_by or trigger)
        started = timeutil.now()
        with store.transaction() as db:
            run_id = db.execute(
                "INSERT INTO training_runs (status, trigger, requested_by, snapshot_hash, started_at)"
                " VALUES ('running', ?, ?, ?, ?)", (trigger, requested_by, snapshot.hash, started.isoformat())
            ).lastrowid
            store.audit(requested_by or trigger, "run.start", "training_run", run_id, {"snapshot": snapshot.hash})
        lock.set_run(run_id)
        name = f"rl-{started:%Y%m%d-%H%M%S}-r{run_id}"
        output_dir = config.adapters_dir / name
        run_dir = config.resolve("runs") / f"run-{run_id}"
        run_dir.mkdir(parents=True, exist_ok=True)
        champion = registry.champion()
        init = champion["adapter_path"] if (champion and config.file.training.from_champion) else None
        train_yaml = write_run_train_config(source, store, run_id, snapshot.hash, output_dir, run_dir, init)
        argv = training_argv(config, train_yaml, run_id, output_dir)
        log_path = run_dir / "train.log"
        _update_run(store, run_id, config=json.dumps({"argv": argv, "train_config": str(train_yaml)}),
                    output_dir=str(output_dir), log_path=str(log_path))
        say(_started_message(run_id, trigger, requested_by, snapshot, champion["name"] if init else None))
        show({"stage": "training", "run_id": run_id, "log_path": str(log_path)})
        code = run_training_process(store, run_id, argv, log_path, lock, progress=progress)
        if code == 2:  # the trainer's exit code for a bad config (a check only the trainer can make)
            raise ConfigError("config error: " + child_failure("training", code, log_path))
        if code != 0:
            raise TrainingError(child_failure("training", code, log_path))
        if not (output_dir / "adapter_config.json").exists():
            raise TrainingError(f"training finished but {output_dir} holds no adapter")

        remove_run_scratch(output_dir)  # a trainer that left checkpoints: the pipeline never resumes them
        model = registry.register(output_dir, run_id=run_id, name=name)
        _update_run(store, run_id, model_id=model["id"])
        lock.heartbeat()
        # train18: training.preference: a DPO/KTO step on top of the SFT adapter, same snapshot
        preference = config.file.training.preference
        pref_model, choice = None, None
        if preference != "off":
            pref_model, choice = _train_preference(config, store, registry, source, run_id, snapshot.hash,
                                                   output_dir, run_dir, name, preference, lock, progress, show)
        show({"stage": "evaluating", "run_id": run_id, "model": model["name"]})
        gate, evaluation = evaluate_candidate(config, store, run_id, model, run_dir, lock)
        if pref_model is not None:  # train18: SFT and SFT+preference, the better one that passes
            model, gate, evaluation, choice = _choose_candidate(config, store, registry, run_id, run_dir, lock,
                                                                (model, gate, evaluation), pref_model, preference)
            _update_run(store, run_id, model_id=model["id"])
        # -- deliver21: with vLLM runtime LoRA the server loads the adapter first; when it cannot,
        # the registry change waits (the model stays a candidate, the champion keeps drafting)
        from replyloop.drafting import serving_note
        load_error = serving_note(config, store, model) if gate.passed else None
        # -- end deliver21
        if gate.passed and load_error is not None:
            action = "waiting"
        elif gate.passed:
            percent = config.file.scheduler.canary_percent
            if registry.champion() is not None and percent > 0:
                registry.start_canary(model["id"], percent, actor="pipeline")
                action = "canary"
            else:
                registry.promote(model["id"], actor="pipeline", reason="passed the gate (no canary stage)")
                action = "champion"
        else:
            with language("en"):  # a stored reason: the audit log's language
                reasons = "; ".join(gate.reasons)
            registry.reject(model["id"], actor="pipeline", reason="failed the gate: " + reasons)
            action = "rejected"
        if action in ("canary", "champion", "rejected") and load_error is None:  # deliver21
            from replyloop.drafting import unload_retired
            unload_retired(config, store)
        with store.transaction():
            _update_run(store, run_id, status="succeeded", finished_at=timeutil.now_iso())
            store.audit("pipeline", "run.finished", "training_run", run_id,
                        {"model_id": model["id"], "gate_passed": gate.passed, "action": action})
        if action != "waiting":
            result_text = _posted(_result_message, run_id, model["name"], gate, action, config)
        else:  # deliver21: the drafting server could not load the adapter
            result_text = _posted(_waiting_message, run_id, model["name"], gate, load_error, registry.champion())
        if choice:  # train18: which candidate, and why
            english = result_text.english
            result_text = message(*result_text.parts, "\n" + choice)
            result_text.english = english + "\n" + choice
        say(result_text)
        return PipelineResult(run_id, "succeeded", result_text, model["id"], model["name"], gate.passed, action,
                              {"evaluation": evaluation})
    except BaseException as exc:
        error = str(exc) or exc.__class__.__name__
        if run_id is not None:
            _abandon_output(store, output_dir, error)
            _fail_run(store, run_id, error)
        say(_failure_message(run_id, error))
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        if isinstance(exc, ReplyloopError):
            return PipelineResult(run_id, "failed", error)
        log.exception("pipeline run %s failed", run_id, extra={"run_id": run_id})
        return PipelineResult(run_id, "failed", f"{exc.__class__.__name__}: {error}")
    finally:
        lock.release()


def _train_preference(config: Config, store: Store, registry: Registry, source: TrainingSource, run_id: int,
                      snapshot_hash: str, sft_dir: Path, run_dir: Path, name: str, preference: str, lock: RunLock,
                      progress: Progress | None, show) -> tuple[dict | None, str | None]:
    """train18: ``training.preference``: train ``objective: <preference>`` on top of the SFT adapter
    ``sft_dir`` on the same snapshot and register it. Returns (model, None), or (None, why not)
    when the step could not run (too few preference rows, a failed trainer): the SFT candidate
    then goes on alone."""
    pref_dir = config.adapters_dir / f"{name}-{preference}"
    pref_run = run_dir / preference
    pref_run.mkdir(parents=True, exist_ok=True)
    data = TrainingSource(path=source.path, data={**source.data, "objective": preference})
    train_yaml = write_run_train_config(data, store, run_id, snapshot_hash, pref_dir, pref_run, str(sft_dir))
    log_path = pref_run / "train.log"
    show({"stage": "training", "run_id": run_id, "log_path": str(log_path), "objective": preference})
    code = run_training_process(store, run_id, training_argv(config, train_yaml, run_id, pref_dir), log_path,
                                lock, progress=progress)
    if code != 0 or not (pref_dir / "adapter_config.json").exists():
        remove_partial_output(pref_dir)
        first, _lines = log_error_lines(log_path)
        why = first.removeprefix("Error: ") or f"exit code {code}"
        return None, f"Preference step ({preference}) not run: {why}; the SFT adapter is the candidate."
    remove_run_scratch(pref_dir)
    return registry.register(pref_dir, run_id=run_id, name=f"{name}-{preference}"), None


def _score(evaluation: dict) -> tuple[float, float]:
    c = evaluation.get("consistency") or {}
    return (c.get("mean") or 0.0, c.get("chrf_mean") or 0.0)


def _choose_candidate(config: Config, store: Store, registry: Registry, run_id: int, run_dir: Path, lock: RunLock,
                      sft: tuple, pref_model: dict, preference: str) -> tuple:
    """train18: evaluate the preference adapter on the same held-out questions as the SFT one; the
    better one that passes the gate stays the candidate (the other is rejected), and the returned
    line says which and why. Both failing: the SFT one is reported (both are rejected)."""
    sft_model, sft_gate, sft_eval = sft
    pref_gate, pref_eval = evaluate_candidate(config, store, run_id, pref_model, run_dir / preference, lock)
    s, p = _score(sft_eval), _score(pref_eval)
    label = f"SFT+{preference.upper()}"
    scores = (f"{label} {p[0]:.3f} (chrF {p[1]:.1f}) vs SFT-only {s[0]:.3f} (chrF {s[1]:.1f}) on the same "
              f"{sft_eval.get('n', '?')} held-out questions")
    if pref_gate.passed and (not sft_gate.passed or p > s):
        why = "it scored higher and passed the gate" if sft_gate.passed else "SFT-only failed the gate"
        chosen, other, gate, evaluation = pref_model, sft_model, pref_gate, pref_eval
        line = f"Candidate: {label} ({pref_model['name']}): {why}; {scores}."
    else:
        why = ("it scored at least as high" if pref_gate.passed else
               f"{label} failed the gate" + ("" if sft_gate.passed else " too"))
        chosen, other, gate, evaluation = sft_model, pref_model, sft_gate, sft_eval
        line = f"Candidate: SFT-only ({sft_model['name']}): {why}; {scores}."
    registry.reject(other["id"], actor="pipeline", reason=f"not chosen: {line}")
    return chosen, gate, evaluation, line


# -- what the pipeline posts: in the workspace's language (ui.language), whoever started the run --

def _started_message(run_id: int, trigger: str, requested_by: str | None, snapshot, incremental_from: str | None):
    with workspace():
        word = TRIGGER_WORDS.get(trigger, trigger)
        by = (_(" by <@{user}>").format(user=requested_by)
              if requested_by and requested_by.startswith("U") else "")
        source = (_(", incremental from {model}").format(model=incremental_from) if incremental_from
                  else _(", from the base model"))
        return message(icon("hourglass_flowing_sand"), _(
            "Retrain run #{run_id} started ({trigger}{by}): snapshot {snapshot} with {train} training and"
            " {heldout} held-out samples{source}.").format(
                run_id=run_id, trigger=_(word), by=by, snapshot=snapshot.hash, train=snapshot.train,
                heldout=snapshot.heldout, source=source))


def _posted(build, *args) -> Message:
    """``build(*args)`` in the workspace's language (what is posted and shown), remembering its
    English rendering as ``.english`` for --json (a machine format, the same in every language)."""
    with language("en"):
        english = build(*args)
    with workspace():
        text = build(*args)
    if not isinstance(text, Message):
        text = message(text)
    text.english = str(english)
    return text


def _waiting_message(run_id: int, name: str, gate, load_error: str, champion: dict | None) -> Message:
    """deliver21: the gate passed but the drafting server could not load the adapter."""
    text = _("Run #{run_id}: {model} passed the gate, but the drafting server could not load it: {error}. The"
             " registry change waits: it stays a candidate and {champion} keeps drafting. Once the server has"
             " it, run replyloop models {command} {model_name}.")
    parts = _bold_parts(text, {"model": name, "champion": champion["name"] if champion else _("no model")},
                        run_id=run_id, error=load_error, command="canary" if champion else "promote",
                        model_name=name)
    return message(icon("warning"), *parts, code_block(gate.verdict()))


def _bold_parts(text: str, bolds: dict[str, str], **values) -> list:
    """A translated sentence as message parts: the ``bolds`` placeholders become bold parts (in
    the translation's own order), the others are filled in."""
    import re

    names = "|".join(re.escape("{" + k + "}") for k in bolds)
    parts = []
    for i, piece in enumerate(re.split(f"({names})", text)):
        if i % 2:
            parts.append(bold(bolds[piece[1:-1]]))
        elif piece:
            parts.append(piece.format(**values))
    return parts


def _failure_message(run_id: int | None, error: str) -> str:
    """The failure as posted: the first line, then the error lines in a code block."""
    first, _sep, rest = error.partition("\n")
    rest = rest.strip()
    if len(rest) > 2500:  # Slack shows long messages collapsed; the log has everything
        rest = "...\n" + rest[-2500:]
    with workspace():
        unchanged = _("The champion is unchanged.")
        return message(icon("x"), _("Retrain run #{run_id} failed: {error}").format(run_id=run_id or "-", error=first),
                       code_block(rest) if rest else "", "\n" + unchanged if not rest else unchanged)


def _config_error(store: Store, error: str, trigger: str, requested_by: str | None, say: Notify) -> PipelineResult:
    """A training config that cannot run: no run row, an audit entry and one message. The
    scheduler's job meets the same error every few minutes: it is posted once, then only logged
    until the error changes."""
    last = store.one("SELECT id, detail FROM audit_log WHERE action IN ('run.config_error', 'run.start')"
                     " ORDER BY id DESC LIMIT 1")  # a run started since: the error is new again
    repeated = (last is not None and last["detail"] is not None
                and json.loads(last["detail"]).get("error") == error[:2000])
    with workspace():
        text = message(icon("warning"), _("Retrain not started: the training config needs fixing."),
                       code_block(error[:2500]))
    if trigger == "scheduler" and repeated:
        log.warning("retrain not started (config error, already posted): %s", error)
    else:
        with store.transaction():
            store.audit(requested_by or trigger, "run.config_error", "training_run", None, {"error": error[:2000]})
        log.warning("retrain not started (config error): %s", error)
        say(text)
    return PipelineResult(None, "config-error", error)


def _abandon_output(store: Store, output_dir: Path | None, error: str) -> None:
    """After a failed run: delete unregistered output; a registered candidate (evaluation failed)
    is rejected so it never serves, and its adapter stays for inspection."""
    if not output_dir:
        return
    row = store.one("SELECT id, status FROM models WHERE adapter_path IN (?, ?)",
                    (str(output_dir), str(Path(output_dir).resolve())))
    if row is None:
        remove_partial_output(output_dir)
        return
    remove_run_scratch(output_dir)  # the registered adapter stays; its checkpoints are of no use
    if row["status"] == "candidate":
        Registry(store).reject(row["id"], actor="pipeline", reason="run failed: " + error.splitlines()[0])


def _result_message(run_id: int, name: str, gate, action: str, config: Config) -> Message:
    icon_name, text = {
        "canary": ("large_yellow_circle", _("Run #{run_id}: {model} passed the gate and is now the canary for"
                                            " {percent}% of new conversations.")),
        "champion": ("white_check_mark", _("Run #{run_id}: {model} passed the gate and is now the champion.")),
        "rejected": ("no_entry", _("Run #{run_id}: {model} did not pass the gate; the champion is unchanged.")),
    }[action]
    parts = _bold_parts(text, {"model": name}, run_id=run_id, percent=config.file.scheduler.canary_percent)
    return message(icon(icon_name), *parts, code_block(gate.verdict()))


def _dry_run(config: Config, store: Store, lock: RunLock) -> PipelineResult:
    due = check_due(config, store)
    holder = lock.holder()
    champion = Registry(store).champion()
    init = champion["adapter_path"] if (champion and config.file.training.from_champion) else None
    argv = training_argv(config, Path("<run-dir>/train.yaml"), 0, config.adapters_dir / "<new>")
    try:
        load_training_source(config)
        problem = None
    except ConfigError as exc:
        problem = str(exc)
    evaluation = (shlex.join(evaluation_argv(config, {"id": "<new>", "name": "<new>"}, 0))
                  if config.file.evaluation.command else None)

    def lines() -> str:
        return "\n".join([
            _("Due: {answer} ({reason})").format(answer=_("yes") if due.due else _("no"),
                                                   reason=localized(due.reason)),
            _("Champion: {model}").format(model=champion["name"] if champion else _("(none)")),
            _("Training config: {path} ({state})").format(
                path=config.train_config_path, state=_("ok") if problem is None else _("ERROR, see below")),
            _("Start from: {adapter}").format(adapter=init or _("the base model")),
            _("Command: {command}").format(command=shlex.join(argv)),
            _("Evaluation: {where}").format(where=evaluation or _("in this process")),
            _("Lock: {state}").format(state=_("held by pid {pid}").format(pid=holder["owner_pid"]) if holder
                                      else _("free")),
        ])

    return PipelineResult(None, "dry-run" if problem is None else "config-error", _posted(lines),
                          details={"due": asdict(due), "config_error": problem})
