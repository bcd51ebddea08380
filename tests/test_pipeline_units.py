"""Pipeline pieces that need no model: threshold, lock, crash recovery, scheduler persistence."""

import datetime as dt
from pathlib import Path
import os
import subprocess
import sys
import time

import pytest

from replyloop import timeutil
from replyloop.errors import LockedError
from replyloop.locking import RunLock
from replyloop.pipeline import check_due, recover
from replyloop.store import SampleIn


def approve_n(store, n, start=0):
    for i in range(start, start + n):
        qid = store.add_question(f"问题{i}", f"c{i}", "物流查询")
        store.decide(store.add_draft(qid, f"回答{i}"), "approve", "U1")


def test_threshold_below_and_above(workspace):
    config, store = workspace
    config.file.scheduler.min_new_samples = 5
    store.add_samples([SampleIn("导入的问题", "导入的回答")])  # imports do not count as new approvals
    approve_n(store, 4)
    due = check_due(config, store)
    assert not due.due and due.new_samples == 4 and "5 needed" in due.reason
    approve_n(store, 1, start=4)
    due = check_due(config, store)
    assert due.due and due.new_samples == 5


def test_threshold_counts_from_the_champions_snapshot_and_respects_min_interval(workspace):
    config, store = workspace
    config.file.scheduler.min_new_samples = 2
    approve_n(store, 3)
    snap = store.create_snapshot(0.2)
    with store.transaction() as db:
        db.execute("INSERT INTO models (name, base_model, snapshot_hash, status, promoted_at, created_at)"
                   " VALUES ('m1', 'base', ?, 'champion', ?, ?)", (snap.hash, timeutil.now_iso(), timeutil.now_iso()))
    assert check_due(config, store).new_samples == 0
    approve_n(store, 2, start=10)
    assert check_due(config, store).due
    with store.transaction() as db:
        db.execute("INSERT INTO training_runs (status, trigger, started_at) VALUES ('succeeded', 'cli', ?)",
                   ((timeutil.now() - dt.timedelta(hours=1)).isoformat(),))
    due = check_due(config, store)
    assert not due.due and "min_interval_hours is 6" in due.reason
    config.file.scheduler.min_interval_hours = 0.5
    assert check_due(config, store).due


def test_lock_refuses_a_parallel_run_with_its_status(workspace):
    _, store = workspace
    with store.transaction() as db:
        run_id = db.execute("INSERT INTO training_runs (status, trigger, requested_by, step, total_steps, loss, started_at)"
                            " VALUES ('running', 'slack', 'U1', 7, 30, 1.5, ?)", (timeutil.now_iso(),)).lastrowid
    first = RunLock(store)
    first.acquire(run_id)
    with pytest.raises(LockedError, match=r"run #\d+ is already running \(step 7/30, loss 1.500"):
        RunLock(store).acquire()
    first.release()
    RunLock(store).acquire()  # free again


def test_lock_held_by_another_live_process_is_refused(workspace):
    config, store = workspace
    code = (
        "import sys,time; sys.path.insert(0, %r)\n"
        "from replyloop.store import Store; from replyloop.locking import RunLock\n"
        "s = Store(%r); RunLock(s).acquire(); print('locked', flush=True); time.sleep(30)\n"
    ) % (os.getcwd(), str(config.db_path))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(LockedError, match="already running"):
            RunLock(store).acquire()
    finally:
        proc.kill()
        proc.wait()
    # the owner died without releasing: the next acquire says so, recover() cleans up
    with pytest.raises(LockedError, match="died without releasing the lock"):
        RunLock(store).acquire()
    recover(store)
    RunLock(store).acquire()


def running_run_of_a_dead_process(store, output_dir, model_id=None) -> tuple[int, int]:
    """A training_runs row still 'running' whose process has exited: (run id, its pid)."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with store.transaction() as db:
        run_id = db.execute("INSERT INTO training_runs (status, trigger, output_dir, pid, model_id, started_at)"
                            " VALUES ('running', 'scheduler', ?, ?, ?, ?)",
                            (str(output_dir), dead.pid, model_id, timeutil.now_iso())).lastrowid
    return run_id, dead.pid


def test_recover_marks_dead_run_failed_and_removes_partial_output(workspace, tmp_path):
    config, store = workspace
    partial = config.adapters_dir / "rl-x-r1"
    (partial / "checkpoint-3").mkdir(parents=True)
    tmp_sibling = config.adapters_dir / ".rl-x-r1.tmp-123"
    tmp_sibling.mkdir()
    champion_dir = config.adapters_dir / "champ"
    champion_dir.mkdir()
    (champion_dir / "adapter_config.json").write_text("{}")
    run_id, pid = running_run_of_a_dead_process(store, partial)
    with store.transaction() as db:
        db.execute("INSERT INTO locks (name, owner_pid, owner_host, run_id, acquired_at, heartbeat_at)"
                   " VALUES ('pipeline', ?, ?, ?, ?, ?)",
                   (pid, os.uname().nodename, run_id, timeutil.now_iso(), timeutil.now_iso()))
    assert recover(store) == [run_id]
    run = store.one("SELECT * FROM training_runs WHERE id = ?", (run_id,))
    assert run["status"] == "failed" and "died" in run["error"]
    assert not partial.exists() and not tmp_sibling.exists()
    assert (champion_dir / "adapter_config.json").exists()
    assert store.one("SELECT * FROM locks") is None
    assert recover(store) == []


def test_scheduler_job_store_survives_restart_and_coalesces_missed_runs(workspace):
    from apscheduler.events import EVENT_JOB_EXECUTED
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore

    from replyloop.bot import jobs
    from replyloop.config import load_config

    config, store = workspace
    config = load_config(config.source)
    scheduler = jobs.build_scheduler(config, start=False)
    ids = sorted(job.id for job in scheduler.get_jobs())
    assert ids == sorted([jobs.THRESHOLD_JOB, jobs.CANARY_JOB, jobs.WEEKLY_JOB])
    weekly = scheduler.get_job(jobs.WEEKLY_JOB)
    assert weekly.next_run_time.weekday() == 0 and weekly.next_run_time.hour == 9
    assert str(weekly.next_run_time.tzinfo) == "Asia/Shanghai"
    scheduler.shutdown(wait=False)
    assert store.scalar("SELECT count(*) FROM apscheduler_jobs") == 3

    # the bot is down for a day: the stored next run of the 15-minute job lies 96 runs in the past
    past = timeutil.now() - dt.timedelta(days=1)
    jobstore = SQLAlchemyJobStore(url=f"sqlite:///{config.db_path}", tablename="apscheduler_jobs")
    jobstore.start(scheduler, "default")
    job = jobstore.lookup_job(jobs.THRESHOLD_JOB)
    job._modify(next_run_time=past)
    jobstore.update_job(job)
    jobstore.shutdown()

    again = jobs.build_scheduler(config, start=False)  # the restart keeps the stored run time
    kept = again.get_job(jobs.THRESHOLD_JOB)
    assert abs((kept.next_run_time - past).total_seconds()) < 1
    assert kept.coalesce and kept.misfire_grace_time == 2880 * 60
    executed = []
    again.add_listener(lambda event: executed.append(event.job_id), EVENT_JOB_EXECUTED)
    again.resume()
    deadline = time.monotonic() + 20
    while not executed and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)
    assert executed == [jobs.THRESHOLD_JOB]  # one run for the 96 missed ones
    assert again.get_job(jobs.THRESHOLD_JOB).next_run_time > timeutil.now()
    again.shutdown(wait=True)


def test_weekly_trigger_formats():
    from replyloop.bot.jobs import weekly_trigger
    from replyloop.errors import ConfigError

    assert "day_of_week='fri'" in str(weekly_trigger("fri 17:30", "UTC"))
    assert "hour='9'" in str(weekly_trigger("0 9 * * 1", "Asia/Shanghai"))
    with pytest.raises(ConfigError, match="weekly_report_cron"):
        weekly_trigger("someday", "UTC")
    with pytest.raises(ConfigError):
        weekly_trigger("mon 09:00", "Mars/Olympus")


def test_no_run_while_a_canary_is_judged(workspace):
    from replyloop.errors import ConflictError
    from replyloop.pipeline import run_pipeline

    config, store = workspace
    config.file.scheduler.min_new_samples = 1
    approve_n(store, 2)
    assert check_due(config, store).due
    with store.transaction() as db:
        db.execute("INSERT INTO models (name, base_model, status, created_at) VALUES ('c1', 'base', 'canary', ?)",
                   (timeutil.now_iso(),))
    due = check_due(config, store)
    assert not due.due and "canary c1 is still being judged" in due.reason
    with pytest.raises(ConflictError, match="model c1 is the canary: promote it or roll it back first"):
        run_pipeline(config, store)
    assert store.scalar("SELECT count(*) FROM training_runs") == 0


def test_weekly_report_job_writes_and_posts(workspace, monkeypatch):
    from replyloop.bot import jobs
    from replyloop.bot.fake_slack import FakeSlack

    config, store = workspace
    approve_n(store, 3)
    with FakeSlack() as slack:
        text = config.source.read_text(encoding="utf-8")
        config.source.write_text(text.replace("api_base_url: https://slack.com/api/", f"api_base_url: {slack.base_url}")
                                 .replace("report_channel: cs-quality", "report_channel: C0QUALITY"), encoding="utf-8")
        monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-test")
        out = jobs.weekly_report_job(str(config.source))
        assert (Path(out) / "report.md").exists() and (Path(out) / "numbers.csv").exists()
        [summary] = slack.wait_for("chat.postMessage")
        assert summary.params["channel"] == "C0QUALITY" and "Weekly" in summary.params["text"]
        slack.wait_for("files.completeUploadExternal")
        assert len(slack.calls_to("upload")) >= 3


def test_threshold_job_not_due_and_due(workspace, monkeypatch):
    from replyloop.bot import jobs

    config, store = workspace
    assert jobs.threshold_job(str(config.source)).startswith("not due: 0 new approved sample(s)")
    text = config.source.read_text(encoding="utf-8")
    config.source.write_text(text.replace("min_new_samples: 50", "min_new_samples: 2"), encoding="utf-8")
    approve_n(store, 2)
    # due, but this workspace has no training config: a config error naming the file and the key,
    # no run recorded, champion untouched; posted once, then only logged while it stays the same
    result = jobs.threshold_job(str(config.source))
    assert result.startswith("config-error:") and "train.yaml: training config not found" in result
    assert "training.config at " in result and "replyloop init" in result
    assert store.scalar("SELECT count(*) FROM training_runs") == 0
    assert jobs.threshold_job(str(config.source)).startswith("config-error:")
    assert store.scalar("SELECT count(*) FROM audit_log WHERE action = 'run.config_error'") == 1
    assert store.one("SELECT * FROM locks") is None


def test_a_live_owner_on_this_host_is_never_stale_however_old_its_heartbeat(workspace):
    from replyloop.locking import process_identity

    config, store = workspace
    old = (timeutil.now() - dt.timedelta(hours=3)).isoformat()
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with store.transaction() as db:
            db.execute("INSERT INTO locks (name, owner_pid, owner_host, owner_started, acquired_at, heartbeat_at)"
                       " VALUES ('pipeline', ?, ?, ?, ?, ?)",
                       (owner.pid, os.uname().nodename, process_identity(owner.pid), old, old))
        lock = RunLock(store)
        assert not lock.is_stale(lock.holder())  # a long evaluation does not lose the lock
        assert not lock.is_stale(dict(lock.holder(), owner_started=None))  # a row from before start times
        other = dict(lock.holder(), owner_host="gpu-node-7")
        assert lock.is_stale(other)  # another host's owner must keep its heartbeat fresh
    finally:
        owner.kill()
        owner.wait()


def test_recover_keeps_a_registered_adapter_and_rejects_its_candidate(workspace):
    """The process died during evaluation, after the adapter was registered."""
    config, store = workspace
    adapter = config.adapters_dir / "rl-y-r1"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    with store.transaction() as db:
        model_id = db.execute("INSERT INTO models (name, adapter_path, base_model, status, created_at)"
                              " VALUES ('rl-y-r1', ?, 'base', 'candidate', ?)",
                              (str(adapter.resolve()), timeutil.now_iso())).lastrowid
    run_id, _ = running_run_of_a_dead_process(store, adapter, model_id)
    assert recover(store) == [run_id]
    assert (adapter / "adapter_config.json").exists()
    assert store.scalar("SELECT status FROM models WHERE id = ?", (model_id,)) == "rejected"
    assert store.scalar("SELECT status FROM training_runs WHERE id = ?", (run_id,)) == "failed"


def test_progress_reader_keeps_the_loss_when_an_eval_event_ends_the_chunk(workspace, tmp_path):
    """The final step and the evaluation after it often arrive in one read; the loss must survive."""
    import json
    from replyloop.pipeline import PROGRESS_PREFIX, _read_progress

    _, store = workspace
    with store.transaction() as db:
        run_id = db.execute("INSERT INTO training_runs (status, trigger, started_at) VALUES ('running', 'cli', ?)",
                            (timeutil.now_iso(),)).lastrowid
    log = tmp_path / "train.log"
    events = [{"step": 7, "total_steps": 8, "loss": 2.5}, {"step": 8, "total_steps": 8, "loss": 2.25},
              {"step": 8, "total_steps": 8, "eval_loss": 2.4}]
    log.write_text("warming up\n" + "".join(PROGRESS_PREFIX + json.dumps(e) + "\n" for e in events)
                   + PROGRESS_PREFIX + '{"step": 9', encoding="utf-8")  # a partial last line waits
    offset = _read_progress(store, run_id, log, 0)
    row = store.one("SELECT step, total_steps, loss FROM training_runs WHERE id = ?", (run_id,))
    assert (row["step"], row["total_steps"], row["loss"]) == (8, 8, 2.25)
    assert offset == log.read_bytes().rindex(b"\n") + 1


def test_evaluation_command_template(workspace):
    from replyloop.errors import ConfigError
    from replyloop.locking import RunLock
    from replyloop.pipeline import _dry_run, evaluation_argv

    config, store = workspace
    assert "Evaluation: in this process" in _dry_run(config, store, RunLock(store)).message
    config.file.evaluation.command = "srun --gres=gpu:1 replyloop eval {model} --config {config} --tag {model_name}-r{run_id}"
    argv = evaluation_argv(config, {"id": 7, "name": "rl-x"}, 3)
    assert argv == ["srun", "--gres=gpu:1", "replyloop", "eval", "7", "--config", str(config.source),
                    "--tag", "rl-x-r3"]
    assert "Evaluation: srun --gres=gpu:1 replyloop eval '<new>'" in _dry_run(config, store, RunLock(store)).message
    config.file.evaluation.command = "replyloop eval {adapter}"
    with pytest.raises(ConfigError, match=r"evaluation.command: unknown placeholder 'adapter'"):
        evaluation_argv(config, {"id": 7, "name": "rl-x"}, 3)


def run_row_with_pid(store, pid, pid_started=None) -> int:
    with store.transaction() as db:
        return db.execute("INSERT INTO training_runs (status, trigger, pid, pid_started, started_at)"
                          " VALUES ('running', 'scheduler', ?, ?, ?)", (pid, pid_started, timeutil.now_iso())).lastrowid


@pytest.mark.parametrize("recorded", ["nothing", "another start"])
def test_recover_never_kills_an_unrelated_process_that_got_the_runs_pid(workspace, recorded):
    """After a machine restart the run's pid may name someone else's process group."""
    from replyloop.locking import process_identity

    _, store = workspace
    stranger = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        identity = process_identity(stranger.pid)
        if recorded == "another start" and identity is None:
            pytest.skip("needs /proc (Linux)")
        started = None if recorded == "nothing" else identity.rsplit(":", 1)[0] + ":1"
        run_id = run_row_with_pid(store, stranger.pid, started)
        assert recover(store) == [run_id]
        assert store.one("SELECT status FROM training_runs WHERE id = ?", (run_id,))["status"] == "failed"
        time.sleep(0.2)
        assert stranger.poll() is None  # still running: not killed
    finally:
        stranger.kill()
        stranger.wait()


def test_recover_kills_the_runs_own_orphaned_child_group(workspace):
    from replyloop.locking import process_identity

    _, store = workspace
    orphan = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        if process_identity(orphan.pid) is None:
            pytest.skip("needs /proc (Linux)")
        run_id = run_row_with_pid(store, orphan.pid, process_identity(orphan.pid))  # as recorded at launch
        assert recover(store) == [run_id]
        assert orphan.wait(10) == -9
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()


FAKE_TRAINER = (
    "import json, sys; from pathlib import Path\n"
    "out = Path(sys.argv[1]); ckpt = out.with_name(out.name + '.checkpoints') / 'checkpoint-000002'\n"
    "ckpt.mkdir(parents=True); (ckpt / 'optimizer.pt').write_bytes(b'adamw moments')\n"
    "inner = out / 'checkpoint-2'; inner.mkdir(parents=True); (inner / 'optimizer.pt').write_bytes(b'moments')\n"
    "(out / '.tmp-checkpoint-x').mkdir()\n"
    "tmp = out.with_name('.' + out.name + '.tmp-1'); tmp.mkdir(); (tmp / 'x').write_text('half')\n"
    "if sys.argv[2] == 'fail': sys.exit(1)\n"
    "(out / 'adapter_config.json').write_text('{}')\n"
    "(out / 'manifest.json').write_text(json.dumps({'base_model': 'base'}))\n"
)


@pytest.mark.parametrize("outcome", ["training fails", "evaluation fails after registration"])
def test_a_failed_run_leaves_no_checkpoints_or_temp_dirs(workspace, outcome):
    import shlex

    from replyloop.pipeline import run_pipeline

    config, store = workspace
    approve_n(store, 6)
    config.train_config_path.parent.mkdir(parents=True, exist_ok=True)
    config.train_config_path.write_text("base_model: base\n", encoding="utf-8")
    (config.root / "base").mkdir()  # relative to the workspace: checked before the run's copy is written
    (config.root / "base" / "config.json").write_text("{}", encoding="utf-8")
    mode = "fail" if outcome == "training fails" else "ok"
    trainer = config.root / "fake_trainer.py"
    trainer.write_text(FAKE_TRAINER, encoding="utf-8")
    config.file.training.command = "{python} %s {output_dir} %s" % (shlex.quote(str(trainer)), mode)
    config.file.evaluation.command = "{python} -c 'import sys; sys.exit(3)'"
    neighbour = config.adapters_dir / "rl-other-r99.checkpoints"  # another run's: not ours to delete
    neighbour.mkdir(parents=True)
    result = run_pipeline(config, store, trigger="cli")
    assert result.status == "failed", result
    assert ("training exited with code 1" if mode == "fail" else "evaluation exited with code 3") in result.message
    left = sorted(p.name for p in config.adapters_dir.iterdir())
    name = store.one("SELECT output_dir FROM training_runs")["output_dir"].rsplit("/", 1)[1]
    assert left == (["rl-other-r99.checkpoints"] if mode == "fail" else [name, "rl-other-r99.checkpoints"])
    if mode == "ok":  # the registered candidate is rejected and kept for inspection
        assert store.scalar("SELECT status FROM models") == "rejected"
        # without the trainer's checkpoints (output_dir/checkpoint-<step>): removed before registering
        assert sorted(p.name for p in (config.adapters_dir / name).iterdir()) == [
            ".replyloop-registered", "adapter_config.json", "manifest.json"]


def test_remove_partial_output_takes_checkpoints_logs_and_temp_dirs_of_that_run_only(tmp_path):
    from replyloop.pipeline import remove_partial_output

    tmp_path = tmp_path / "adapters"
    out = tmp_path / "rl-x-r1"
    ours = [out, tmp_path / "rl-x-r1.checkpoints" / "checkpoint-000003", tmp_path / "rl-x-r1.logs",
            tmp_path / ".rl-x-r1.tmp-abc", tmp_path / ".rl-x-r1.old-42", tmp_path / "rl-x-r1.tmp9"]
    theirs = [tmp_path / "rl-x-r10", tmp_path / "rl-x-r10.checkpoints", tmp_path / ".rl-x-r10.tmp-abc"]
    for d in ours + theirs:
        d.mkdir(parents=True)
        (d / "f").write_text("x")
    remove_partial_output(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(d.name for d in theirs)


def test_threshold_job_posts_an_unfilled_training_config_once(workspace, monkeypatch):
    """`replyloop init`'s train.yaml still has the base_model placeholder: the scheduler's job
    posts the error (file, line, key) to the review channel once, records no run, and does not
    repeat the post every check; a different error is posted again."""
    from replyloop.bot import jobs
    from replyloop.bot.fake_slack import FakeSlack
    from replyloop.config import load_config, write_training_template

    config, store = workspace
    write_training_template(config)
    line = next(i for i, ln in enumerate(config.train_config_path.read_text().splitlines(), 1)
                if ln.startswith("base_model:"))
    with FakeSlack() as slack:
        text = config.source.read_text(encoding="utf-8")
        text = text.replace("min_new_samples: 50", "min_new_samples: 2")
        text = text.replace("api_base_url: https://slack.com/api/", f"api_base_url: {slack.base_url}")
        config.source.write_text(text, encoding="utf-8")
        monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-test")
        approve_n(store, 2)
        first = jobs.threshold_job(str(config.source))
        assert first.startswith(f"config-error: {config.train_config_path}:{line}: base_model is not set")
        assert jobs.threshold_job(str(config.source)) == first
        posts = slack.wait_for("chat.postMessage")
        time.sleep(0.3)
        assert len(slack.calls_to("chat.postMessage")) == 1
        assert posts[0].params["channel"] == load_config(config.source).file.slack.review_channel
        assert posts[0].params["text"].startswith(":warning: Retrain not started: the training config needs fixing.")
        assert f"{config.train_config_path}:{line}: base_model is not set" in posts[0].params["text"]
        config.train_config_path.unlink()
        assert "training config not found" in jobs.threshold_job(str(config.source))
        assert len(slack.wait_for("chat.postMessage", count=2)) == 2
    assert store.scalar("SELECT count(*) FROM training_runs") == 0


def test_init_writes_a_commented_train_yaml_and_keeps_an_existing_one(replyloop_home):
    from helpers import cli
    from replyloop.training.config import load_train_config

    first = cli("init")
    assert first.exit_code == 0, first.output
    train_yaml = replyloop_home / "train.yaml"
    assert f"Wrote {train_yaml}: set base_model there to a local model directory" in first.output
    text = train_yaml.read_text(encoding="utf-8")
    assert text.startswith("# Training config of this workspace") and "replyloop retrain --now" in text
    assert 'base_model: "CHANGE-ME: path to a local model directory"' in text
    # every key of the shipped template is one the trainer accepts
    cfg = load_train_config(train_yaml, base_model="/models/x")
    assert cfg.lora_rank == 8 and cfg.dataset == "store"
    dry = cli("retrain", "--dry-run")
    assert dry.exit_code == 2 and "Training config: " + str(train_yaml) + " (ERROR, see below)" in dry.output
    train_yaml.write_text(text.replace('"CHANGE-ME: path to a local model directory"', "/models/ours"),
                          encoding="utf-8")
    again = cli("init", "--force")
    assert again.exit_code == 0 and f"{train_yaml} already exists; keeping it." in again.output
    assert "base_model: /models/ours" in train_yaml.read_text(encoding="utf-8")  # the team's edit survives
