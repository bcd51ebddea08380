"""The retrain pipeline end to end: real training subprocesses, real evaluation, real registry."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from helpers import cli_subprocess
from pipeline_fixtures import approve, make_workspace, tiny_base_dir  # noqa: F401
from replyloop.errors import LockedError
from replyloop.pipeline import recover, run_pipeline
from replyloop.registry import Registry

pytestmark = pytest.mark.slow


def champion_name(store):
    row = store.one("SELECT name FROM models WHERE status = 'champion'")
    return row and row["name"]


def test_first_run_promotes_then_incremental_run_becomes_canary(replyloop_home, tiny_base_dir):
    config, store = make_workspace(replyloop_home, tiny_base_dir)
    messages = []
    first = run_pipeline(config, store, trigger="cli", notify=messages.append)
    assert first.status == "succeeded", first.message
    assert first.action == "champion" and first.gate_passed
    run = store.one("SELECT * FROM training_runs WHERE id = ?", (first.run_id,))
    assert run["status"] == "succeeded" and run["model_id"] == first.model_id
    assert run["step"] == run["total_steps"] == 8 and run["loss"] is not None
    assert (replyloop_home / "runs" / f"run-{first.run_id}" / "train.log").exists()
    assert champion_name(store) == first.model_name
    assert store.scalar("SELECT count(*) FROM evaluations WHERE model_id = ?", (first.model_id,)) == 1
    assert "started" in messages[0] and "is now the champion" in messages[-1] and "Gate: PASS" in messages[-1]

    approve(store, 3)
    second = run_pipeline(config, store, trigger="scheduler", notify=messages.append)
    assert second.status == "succeeded", second.message
    assert second.action == "canary"
    assert "incremental from " + first.model_name in messages[-2]
    canary = Registry(store).canary()
    assert canary["name"] == second.model_name and canary["canary_percent"] == 20
    assert champion_name(store) == first.model_name
    manifest_init = store.one("SELECT config FROM training_runs WHERE id = ?", (second.run_id,))["config"]
    assert "train.yaml" in manifest_init
    actions = [r["action"] for r in store.query("SELECT action FROM audit_log ORDER BY id")]
    assert actions.count("run.start") == 2 and actions.count("run.finished") == 2
    assert "model.canary" in actions and "model.promote" in actions


def test_gate_failure_keeps_the_champion(replyloop_home, tiny_base_dir):
    config, store = make_workspace(replyloop_home, tiny_base_dir)
    first = run_pipeline(config, store)
    assert first.action == "champion"
    approve(store, 3)
    config.file.evaluation.floor = 0.999  # nothing this small reaches it
    config.file.evaluation.chrf_floor = 0.999  # (MiniLM cannot read the Chinese references: chrF decides)
    second = run_pipeline(config, store)
    assert second.status == "succeeded" and second.action == "rejected" and second.gate_passed is False
    assert "[FAIL] mean chrF >= floor" in second.message
    assert champion_name(store) == first.model_name
    assert store.one("SELECT status FROM models WHERE id = ?", (second.model_id,))["status"] == "rejected"

    # training.from_champion false: from the base model; canary_percent 0: the passing model is
    # promoted directly, beside an existing champion
    approve(store, 3, start=10)
    config.file.evaluation.floor = config.file.evaluation.chrf_floor = 0.0
    config.file.training.from_champion = False
    config.file.scheduler.canary_percent = 0
    messages = []
    third = run_pipeline(config, store, notify=messages.append)
    assert third.status == "succeeded" and third.action == "champion", third.message
    assert "from the base model" in messages[0] and "incremental" not in messages[0]
    run_yaml = (replyloop_home / "runs" / f"run-{third.run_id}" / "train.yaml").read_text(encoding="utf-8")
    assert "init_adapter" not in run_yaml
    assert champion_name(store) == third.model_name and Registry(store).canary() is None
    assert store.one("SELECT status FROM models WHERE id = ?", (first.model_id,))["status"] == "retired"


def test_training_config_error_records_no_run_and_keeps_everything(replyloop_home, tiny_base_dir):
    config, store = make_workspace(replyloop_home, tiny_base_dir)
    train_yaml = replyloop_home / "train.yaml"
    train_yaml.write_text(train_yaml.read_text() + "lora_rnak: 3\n", encoding="utf-8")
    line = len(train_yaml.read_text().splitlines())
    samples = store.sample_count()
    messages = []
    result = run_pipeline(config, store, notify=messages.append)
    assert result.status == "config-error" and result.run_id is None
    assert f"{train_yaml}:{line}: key 'lora_rnak': unknown key" in result.message
    assert store.scalar("SELECT count(*) FROM training_runs") == 0  # not recorded as a failed training
    assert not config.adapters_dir.exists() or list(config.adapters_dir.glob("*")) == []
    assert store.sample_count() == samples and champion_name(store) is None
    assert "Retrain not started" in messages[-1] and "lora_rnak" in messages[-1]
    assert store.one("SELECT * FROM locks") is None


def test_a_config_error_only_the_trainer_finds_names_the_teams_file_and_line(replyloop_home, tiny_base_dir):
    """target_modules the model does not have: found once the model is loaded, in the trainer. The
    run says config error, and the message points at the team's train.yaml, not the run's copy."""
    config, store = make_workspace(replyloop_home, tiny_base_dir)
    train_yaml = replyloop_home / "train.yaml"
    text = train_yaml.read_text().replace("target_modules: [q_proj, v_proj, gate_proj, up_proj, down_proj]",
                                          "target_modules: [q_proj, x_proj]")
    train_yaml.write_text(text, encoding="utf-8")
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if ln.startswith("target_modules:"))
    messages = []
    result = run_pipeline(config, store, notify=messages.append)
    assert result.status == "failed" and result.run_id is not None  # it started: a failed run that says why
    assert result.message.startswith(f"config error: training exited with code 2: Error: {train_yaml}:{line}: "
                                     "target_modules: x_proj not in the model"), result.message
    assert "runs/run-" not in result.message.splitlines()[0]
    run = store.one("SELECT status, error FROM training_runs WHERE id = ?", (result.run_id,))
    assert run["status"] == "failed" and run["error"].startswith("config error: ")
    assert f"{train_yaml}:{line}" in messages[-1]


def test_training_failure_marks_run_failed_shows_the_error_and_keeps_everything(replyloop_home, tiny_base_dir):
    """A real trainer that fails at run time (more samples per batch than the dataset has):
    the run is failed, and its message carries the trainer's own error line, not just the exit code."""
    config, store = make_workspace(replyloop_home, tiny_base_dir)
    train_yaml = replyloop_home / "train.yaml"
    train_yaml.write_text(train_yaml.read_text().replace("batch_size: 8", "batch_size: 5000"), encoding="utf-8")
    samples = store.sample_count()
    messages = []
    result = run_pipeline(config, store, notify=messages.append)
    assert result.status == "failed"
    first = result.message.splitlines()[0]
    assert first.startswith("training exited with code 1: Error: dataset is smaller than one batch: ")
    assert "batch_size is 5000" in first
    assert f"(full log: {replyloop_home / 'runs' / f'run-{result.run_id}' / 'train.log'})" in result.message
    run = store.one("SELECT * FROM training_runs WHERE id = ?", (result.run_id,))
    assert run["status"] == "failed" and "dataset is smaller than one batch" in run["error"]
    assert list(config.adapters_dir.glob("*")) == []
    assert store.sample_count() == samples and champion_name(store) is None
    assert "dataset is smaller than one batch" in messages[-1] and "The champion is unchanged" in messages[-1]
    assert store.one("SELECT * FROM locks") is None


def test_kill_9_of_training_then_restart(replyloop_home, tiny_base_dir):
    config, store = make_workspace(replyloop_home, tiny_base_dir, steps=8)
    first = run_pipeline(config, store)
    assert first.action == "champion"
    champion_before = Registry(store).champion()
    approve(store, 3)

    # a slow second run, its training process killed with SIGKILL mid-run
    (replyloop_home / "train.yaml").write_text(
        (replyloop_home / "train.yaml").read_text().replace("max_steps: 8", "max_steps: 400"), encoding="utf-8")
    results = []
    worker = threading.Thread(target=lambda: results.append(run_pipeline(config, store)))
    worker.start()
    deadline = time.monotonic() + 120
    run = None
    while time.monotonic() < deadline:
        run = store.one("SELECT * FROM training_runs WHERE status = 'running'")
        if run and run["pid"] and (run["step"] or 0) >= 2:
            break
        time.sleep(0.2)
    assert run and run["pid"], "training never reported progress"
    with pytest.raises(LockedError, match=r"run #\d+ is already running \(step \d+/400"):
        run_pipeline(config, store)
    os.kill(run["pid"], signal.SIGKILL)
    worker.join(60)
    [killed] = results
    assert killed.status == "failed" and "code -9" in killed.message
    assert store.one("SELECT status FROM training_runs WHERE id = ?", (killed.run_id,))["status"] == "failed"
    assert Registry(store).champion()["id"] == champion_before["id"]
    assert not any(p.name.startswith("rl-") and p.name.endswith(f"-r{killed.run_id}")
                   for p in config.adapters_dir.iterdir())
    assert store.sample_count() >= 183

    # the next run succeeds
    (replyloop_home / "train.yaml").write_text(
        (replyloop_home / "train.yaml").read_text().replace("max_steps: 400", "max_steps: 8"), encoding="utf-8")
    approve(store, 3, start=10)
    again = run_pipeline(config, store)
    assert again.status == "succeeded", again.message


def test_kill_9_of_the_pipeline_process_then_serve_recovers(replyloop_home, tiny_base_dir):
    config, store = make_workspace(replyloop_home, tiny_base_dir, steps=400)
    proc = subprocess.Popen([sys.executable, "-m", "replyloop", "retrain", "--now"], cwd=replyloop_home,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        run = None
        while time.monotonic() < deadline:
            run = store.one("SELECT * FROM training_runs WHERE status = 'running'")
            if run and (run["step"] or 0) >= 1:
                break
            time.sleep(0.2)
        assert run and run["step"] >= 1
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # the orphaned trainer may still run; the next start of `replyloop serve` kills it and cleans up
    from replyloop.bot.fake_slack import FakeSlack
    from replyloop.locking import pid_alive

    env = {"SLACK_BOT_TOKEN": "xoxb-test", "SLACK_SIGNING_SECRET": "s3cret", "REPLYLOOP_INTAKE_TOKEN": "t"}
    with FakeSlack() as slack:
        text = (replyloop_home / "replyloop.yaml").read_text(encoding="utf-8")
        (replyloop_home / "replyloop.yaml").write_text(
            text.replace("api_base_url: https://slack.com/api/", f"api_base_url: {slack.base_url}"), encoding="utf-8")
        serve = subprocess.Popen([sys.executable, "-m", "replyloop", "serve", "--http", "--port", "0",
                                  "--no-scheduler"], cwd=replyloop_home, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, env={**os.environ, **env})
        try:
            lines = []
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                line = serve.stdout.readline()
                lines.append(line)
                if line.startswith("Listening on"):
                    break
            output = "".join(lines)
            assert f"Recovered after a crash: run(s) {run['id']} marked failed" in output, output
            assert "the champion is unchanged" in output
        finally:
            serve.terminate()
            serve.wait(30)
    failed = store.one("SELECT * FROM training_runs WHERE id = ?", (run["id"],))
    assert failed["status"] == "failed" and "died" in failed["error"]
    assert not os.path.exists(failed["output_dir"])
    assert store.one("SELECT * FROM locks") is None
    deadline = time.monotonic() + 10
    while pid_alive(run["pid"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(run["pid"])  # the orphaned trainer was killed (a zombie at most)
    assert recover(store) == []


def test_retrain_cli_dry_run_and_not_due(replyloop_home, tiny_base_dir):
    make_workspace(replyloop_home, tiny_base_dir)
    result = cli_subprocess("retrain", cwd=replyloop_home)
    assert result.returncode == 0
    assert result.stdout.startswith("Not due: 0 new approved sample(s) since the champion's snapshot; 3 needed")
    dry = cli_subprocess("retrain", "--dry-run", cwd=replyloop_home)
    assert dry.returncode == 0, dry.stderr
    assert "Due: no" in dry.stdout and "Champion: (none)" in dry.stdout and "Lock: free" in dry.stdout
    assert "-m replyloop train --config" in dry.stdout


def review_drafts(store, model_id, approve_n, edit_n, prefix):
    for i in range(approve_n + edit_n):
        qid = store.add_question(f"{prefix}问题{i}", f"{prefix}-{i}", "物流查询", source="http")
        draft = store.add_draft(qid, "您好，请在订单详情页查看电子面单。", model_id=model_id, model_name="x")
        if i < approve_n:
            store.decide(draft, "approve", "USUP1")
        else:
            store.decide(draft, "edit", "USUP1", final_text=f"改过的回复{prefix}{i}")


def test_canary_auto_promotion_and_auto_rollback(replyloop_home, tiny_base_dir):
    from replyloop.canary import judge_canary

    # measured rates (canary_confidence 0): the interval rule is tested in test_canary.py
    config, store = make_workspace(replyloop_home, tiny_base_dir, scheduler={"canary_min_reviews": 10,
                                                                             "canary_confidence": 0})
    first = run_pipeline(config, store)
    approve(store, 3)
    second = run_pipeline(config, store)
    assert second.action == "canary"
    messages = []
    # not enough canary reviews yet: wait
    review_drafts(store, second.model_id, 5, 0, "a")
    assert judge_canary(config, store, notify=messages.append)["decision"] == "wait"
    # the canary's drafts are approved unedited more often than the champion's: promoted
    review_drafts(store, first.model_id, 6, 4, "b")
    review_drafts(store, second.model_id, 4, 1, "c")
    outcome = judge_canary(config, store, notify=messages.append)
    assert outcome["decision"] == "promote", outcome
    assert champion_name(store) == second.model_name
    assert "promoted to champion" in messages[-1] and "approval without edit 90% vs champion 60%" in messages[-1]
    assert store.one("SELECT status FROM models WHERE id = ?", (first.model_id,))["status"] == "retired"

    # the next canary does worse than its champion: rolled back automatically
    approve(store, 3, start=20)
    third = run_pipeline(config, store)
    assert third.action == "canary"
    review_drafts(store, third.model_id, 2, 8, "d")
    outcome = judge_canary(config, store, notify=messages.append)
    assert outcome["decision"] == "rollback"
    assert champion_name(store) == second.model_name
    assert store.one("SELECT status FROM models WHERE id = ?", (third.model_id,))["status"] == "rejected"
    assert "rolled back" in messages[-1] and "approval without edit 20% vs champion 90%" in messages[-1]
    actions = [r["action"] for r in store.query("SELECT action FROM audit_log WHERE actor = 'scheduler'")]
    assert actions == ["model.promote", "model.rollback"]
    assert judge_canary(config, store) is None


def test_evaluation_failure_rejects_the_registered_candidate(replyloop_home, tiny_base_dir):
    config, store = make_workspace(replyloop_home, tiny_base_dir,
                                   evaluation={"embedding_model": str(replyloop_home / "no-such-model")})
    result = run_pipeline(config, store)
    assert result.status == "failed"
    run = store.one("SELECT * FROM training_runs WHERE id = ?", (result.run_id,))
    assert run["status"] == "failed" and run["model_id"] is not None
    model = store.one("SELECT * FROM models WHERE id = ?", (run["model_id"],))
    assert model["status"] == "rejected"  # it never serves
    reason = store.one("SELECT detail FROM audit_log WHERE action = 'model.reject'")["detail"]
    assert "run failed" in reason
    assert champion_name(store) is None and store.one("SELECT * FROM locks") is None


def test_evaluation_as_a_separate_process(replyloop_home, tiny_base_dir):
    """evaluation.command: `replyloop eval` runs as its own process, the pipeline reads its verdict."""
    config, store = make_workspace(replyloop_home, tiny_base_dir, evaluation={
        "command": "{python} -m replyloop eval {model} --against champion --config {config}"})
    messages = []
    first = run_pipeline(config, store, notify=messages.append)
    assert first.status == "succeeded", first.message
    assert first.action == "champion" and first.gate_passed
    log = (replyloop_home / "runs" / f"run-{first.run_id}" / "eval.log").read_text(encoding="utf-8")
    assert "Gate: PASS" in log  # the child printed the verdict the pipeline acted on
    evaluation = store.one("SELECT * FROM evaluations WHERE model_id = ?", (first.model_id,))
    assert evaluation["gate_passed"] == 1 and first.details["evaluation"]["id"] == evaluation["id"]
    assert "Gate: PASS" in messages[-1] and "mean consistency >= floor" in messages[-1]

    # a gate failure in the child (exit 1 with a stored evaluation) rejects the candidate
    approve(store, 3)
    config.file.evaluation.floor = config.file.evaluation.chrf_floor = 0.999
    # (replaces both floor and chrf_floor)
    config.source.write_text(config.source.read_text(encoding="utf-8").replace("floor: 0.0", "floor: 0.999"),
                             encoding="utf-8")
    second = run_pipeline(config, store)
    assert second.status == "succeeded" and second.action == "rejected" and second.gate_passed is False
    assert "[FAIL] mean chrF >= floor" in second.message
    assert champion_name(store) == first.model_name

    # a child that dies or stores nothing fails the run; the candidate never serves
    approve(store, 3, start=10)
    config.file.evaluation.command = "{python} -c \"print('evaluating {model_name}'); raise SystemExit(0)\""
    third = run_pipeline(config, store)
    assert third.status == "failed" and "stored no evaluation" in third.message
    assert "evaluating rl-" in third.message  # the log tail names what ran
    assert store.one("SELECT status FROM models WHERE id = (SELECT model_id FROM training_runs WHERE id = ?)",
                     (third.run_id,))["status"] == "rejected"
    assert champion_name(store) == first.model_name and store.one("SELECT * FROM locks") is None
