"""Reliability checks that span components, with the real things: `replyloop serve` processes,
SQLite files shared by several processes, the Slack client against FakeSlack answering 429 / 500
over HTTP, and training subprocesses that hit a full disk or an immutable adapters directory."""

from __future__ import annotations

import hashlib
import json
import os
import queue
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from replyloop.bot.fake_slack import FakeSlack
from pipeline_fixtures import approve, make_workspace, tiny_base_dir  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
BOT_TOKEN = "xoxb-test"
SIGNING_SECRET = "reliability-signing-secret"
INTAKE_TOKEN = "reliability-intake-token"


def integrity(db_path: Path) -> str:
    conn = sqlite3.connect(db_path, timeout=30)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


# -- 1. two `replyloop serve` on one database -------------------------------------------------------


def write_serve_config(home: Path, slack: FakeSlack) -> None:
    from replyloop.config import write_default_config

    path = write_default_config(home)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["slack"].update({"api_base_url": slack.base_url, "review_channel": "C0REVIEW"})
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")


def serve_env(home: Path) -> dict:
    return {**os.environ, "REPLYLOOP_HOME": str(home), "SLACK_BOT_TOKEN": BOT_TOKEN,
            "SLACK_SIGNING_SECRET": SIGNING_SECRET, "REPLYLOOP_INTAKE_TOKEN": INTAKE_TOKEN,
            "PYTHONUNBUFFERED": "1"}


class Serve:
    """A `replyloop serve --http --port 0` subprocess; ``url`` once it listens."""

    def __init__(self, home: Path, *extra: str, env: dict | None = None, argv: list[str] | None = None):
        self.proc = subprocess.Popen(
            (argv or [sys.executable, "-m", "replyloop"]) + ["serve", "--http", "--port", "0", *extra], cwd=home,
            env={**serve_env(home), **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.output.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def wait_listening(self, timeout: float = 60) -> str:
        from bot_support import wait_listening

        self.url = wait_listening(self.lines, self.output, timeout)
        return self.url

    def stop(self, sig=signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(30)


def post_intake(url: str, payload: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url + "/intake", data=json.dumps(payload, ensure_ascii=False).encode(),
                                 headers={"Content-Type": "application/json",
                                          "Authorization": f"Bearer {INTAKE_TOKEN}"}, method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.status, json.loads(resp.read())


@pytest.fixture
def slack():
    with FakeSlack() as fake:
        yield fake


@pytest.mark.slow
def test_second_serve_refuses_first_keeps_working_and_kill_9_lock_is_taken_over(replyloop_home, slack):
    from replyloop.store import Store

    write_serve_config(replyloop_home, slack)
    first = Serve(replyloop_home, "--no-scheduler")
    try:
        url = first.wait_listening()
        second = subprocess.run([sys.executable, "-m", "replyloop", "serve", "--http", "--port", "0",
                                 "--no-scheduler"], cwd=replyloop_home, env=serve_env(replyloop_home),
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 1, second.stdout + second.stderr
        assert "Listening on" not in second.stdout
        assert (f"Error: another `replyloop serve` is running on this workspace (pid {first.proc.pid} on "
                in second.stderr), second.stderr
        assert "Traceback" not in second.stderr

        # the first one keeps working: intake stores, its card reaches Slack (after a 429)
        slack.fail_next("chat.postMessage", status=429, retry_after=1)
        status, body = post_intake(url, {"conversation_id": "c-1", "question": "发票怎么开？",
                                         "draft": "您好，请在订单详情页申请电子发票。"})
        assert status == 201 and body["ok"], body
        [card] = slack.wait_for("chat.postMessage", timeout=20)
        assert len(slack.calls_to("chat.postMessage:failed")) == 1
        assert card.at - slack.calls_to("chat.postMessage:failed")[0].at >= 0.9  # Retry-After honoured
        with Store(replyloop_home / "replyloop.db") as store:
            deadline = time.monotonic() + 10
            while store.get_draft(body["draft_id"])["slack_ts"] is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert store.get_draft(body["draft_id"])["slack_ts"] == card.response["ts"]
            assert store.one("SELECT owner_pid FROM locks WHERE name = 'serve'")["owner_pid"] == first.proc.pid
    finally:
        code = first.stop(signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert integrity(replyloop_home / "replyloop.db") == "ok"

    # the dead owner's lock is stale: a new serve (this one with its scheduler) takes it over
    third = Serve(replyloop_home)
    try:
        url = third.wait_listening()
        with urllib.request.urlopen(url + "/health", timeout=10) as resp:
            health = json.loads(resp.read())
        assert health["checks"] == {"database": "ok", "scheduler": "ok", "slack": "ok"} and health["queue"] == 1, health
        with Store(replyloop_home / "replyloop.db") as store:
            assert store.one("SELECT owner_pid FROM locks WHERE name = 'serve'")["owner_pid"] == third.proc.pid
            recovered = store.query("SELECT detail FROM audit_log WHERE action = 'lock.recovered'")
            assert [json.loads(r["detail"])["pid"] for r in recovered] == [first.proc.pid]
            assert store.scalar("SELECT count(*) FROM questions") == 1
    finally:
        assert third.stop() == 0, "".join(third.output)
    with Store(replyloop_home / "replyloop.db") as store:
        assert store.one("SELECT * FROM locks WHERE name = 'serve'") is None  # released on SIGTERM
    assert integrity(replyloop_home / "replyloop.db") == "ok"


# a restarted container's `serve` is pid 1 again, on the same hostname: it finds its predecessor's
# lock with its own pid. This prelude writes such a row and then execs `replyloop serve` in the
# same process (same pid, same start time).
SERVE_AFTER_OWN_PID_LOCK = textwrap.dedent("""
    import os, socket, sys
    from replyloop.locking import process_identity
    from replyloop.store import Store

    started = {"none": None, "other-start": process_identity(os.getpid()).rsplit(":", 1)[0] + ":1",
               "other-boot": "another-boot:" + process_identity(os.getpid()).rsplit(":", 1)[1]}[sys.argv[1]]
    with Store("replyloop.db") as store, store.transaction() as db:
        db.execute("INSERT INTO locks (name, owner_pid, owner_host, owner_started, acquired_at, heartbeat_at)"
                   " VALUES ('serve', ?, ?, ?, '2026-01-01T00:00:00+00:00', '2026-01-01T00:00:00+00:00')",
                   (os.getpid(), socket.gethostname(), started))
    os.execv(sys.executable, [sys.executable, "-m", "replyloop", *sys.argv[2:]])
""")


@pytest.mark.slow
@pytest.mark.parametrize("recorded", ["none", "other-start", "other-boot"])
def test_serve_takes_over_a_lock_with_its_own_pid_from_before_a_restart(replyloop_home, slack, recorded):
    from replyloop.locking import process_identity
    from replyloop.store import Store

    if process_identity(os.getpid()) is None:
        pytest.skip("needs /proc (Linux)")
    write_serve_config(replyloop_home, slack)
    serve = Serve(replyloop_home, "--no-scheduler",
                  argv=[sys.executable, "-c", SERVE_AFTER_OWN_PID_LOCK, recorded])
    try:
        serve.wait_listening()
        with Store(replyloop_home / "replyloop.db") as store:
            row = store.one("SELECT * FROM locks WHERE name = 'serve'")
            assert row["owner_pid"] == serve.proc.pid
            assert row["owner_started"] == process_identity(serve.proc.pid)
            assert row["acquired_at"] > "2026-01-02"
            recovered = store.query("SELECT detail FROM audit_log WHERE action = 'lock.recovered'")
            assert [json.loads(r["detail"])["pid"] for r in recovered] == [serve.proc.pid]
    finally:
        assert serve.stop() == 0, "".join(serve.output)
    assert "another `replyloop serve` is running" not in "".join(serve.output)


@pytest.mark.slow
def test_serve_heartbeats_its_lock_while_it_runs(replyloop_home, slack):
    from replyloop.store import Store

    write_serve_config(replyloop_home, slack)
    serve = Serve(replyloop_home, "--no-scheduler", env={"REPLYLOOP_LOCK_HEARTBEAT_S": "0.2"})
    try:
        serve.wait_listening()
        with Store(replyloop_home / "replyloop.db") as store:
            first = store.one("SELECT * FROM locks WHERE name = 'serve'")["heartbeat_at"]
            beats = {first}
            deadline = time.monotonic() + 10
            while len(beats) < 3 and time.monotonic() < deadline:
                time.sleep(0.1)
                beats.add(store.one("SELECT * FROM locks WHERE name = 'serve'")["heartbeat_at"])
            assert len(beats) >= 3 and max(beats) > first, beats
    finally:
        assert serve.stop() == 0, "".join(serve.output)
    with Store(replyloop_home / "replyloop.db") as store:
        assert store.one("SELECT * FROM locks WHERE name = 'serve'") is None  # heartbeat stopped, lock released


# -- 2. SQLite busy under concurrent writers ---------------------------------------------------------

WORKER = textwrap.dedent("""
    import json, random, sys, time
    from replyloop.store import Store

    db, worker, shared, own, start = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    store = Store(db)
    while time.time() < start:
        time.sleep(0.005)
    reviewer = f"UW{worker}"
    out = []
    order = list(shared)
    random.Random(worker).shuffle(order)
    mine = []
    for i in range(own):   # new questions + drafts of this worker, interleaved with the contended ones
        qid = store.add_question(f"worker {worker} question {i}", f"w{worker}-{i}", "物流查询", source="http")
        mine.append(store.add_draft(qid, f"worker {worker} draft {i}", model_name="m"))
    for n, draft_id in enumerate(order + mine):
        decision = "edit" if (draft_id + worker) % 3 == 0 else "approve"
        final = f"edited by {reviewer} for draft {draft_id}" if decision == "edit" else None
        d = store.decide(draft_id, decision, reviewer, final_text=final)
        out.append({"draft": draft_id, "created": d.created, "review": d.review["id"],
                    "reviewer": d.review["reviewer"], "decision": d.review["decision"], "sample": d.sample_id})
    print(json.dumps(out))
""")


@pytest.mark.slow
def test_concurrent_writers_lose_no_approval(workspace, tmp_path):
    config, store = workspace
    shared = []
    for i in range(120):
        qid = store.add_question(f"共享问题 {i}", f"shared-{i}", "物流查询", source="http")
        shared.append(store.add_draft(qid, f"共享草稿 {i}", model_name="m"))
    store.close()
    script = tmp_path / "worker.py"
    script.write_text(WORKER, encoding="utf-8")
    workers, own = 4, 60
    start = time.time() + 2.0  # all start writing at once, after their imports
    procs = [subprocess.Popen([sys.executable, str(script), str(config.db_path), str(w), json.dumps(shared),
                               str(own), str(start)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for w in range(workers)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert "database is locked" not in err
        results.extend(json.loads(out))

    from replyloop.store import Store

    with Store(config.db_path) as check:
        created = [r for r in results if r["created"]]
        reviews = {r["draft_id"]: r for r in check.query("SELECT * FROM reviews")}
        # every draft has exactly one decision: the 120 contended ones and each worker's own
        assert len(reviews) == check.scalar("SELECT count(*) FROM drafts") == 120 + workers * own
        assert len(created) == len(reviews)
        assert sorted(r["draft"] for r in created) == sorted(reviews)
        for r in created:  # what the winner was told is what is stored, with its sample
            row = reviews[r["draft"]]
            assert (row["id"], row["reviewer"], row["decision"]) == (r["review"], r["reviewer"], r["decision"])
            sample = check.one("SELECT * FROM samples WHERE review_id = ?", (row["id"],))
            assert sample is not None and sample["id"] == r["sample"] and sample["approved_by"] == r["reviewer"]
            assert sample["response"] == (row["final_text"])
        for r in results:  # the losers were given the winner's decision back
            assert r["review"] == reviews[r["draft"]]["id"]
        assert check.scalar("SELECT count(*) FROM samples WHERE source = 'review'") == len(reviews)
        decided = check.scalar("SELECT count(*) FROM audit_log WHERE action LIKE 'review.%'")
        assert decided == len(reviews)
    assert integrity(config.db_path) == "ok"


@pytest.mark.slow
def test_processes_opening_a_fresh_database_at_once(replyloop_home, tmp_path):
    """Several processes create and migrate the same new database concurrently (two `serve` or
    CLI commands on a fresh workspace): all succeed, migrations are applied once."""
    db = tmp_path / "fresh.db"
    code = ("import sys, time\nfrom replyloop.store import Store\n"
            "start = float(sys.argv[2])\nwhile time.time() < start: time.sleep(0.002)\n"
            "s = Store(sys.argv[1]); s.add_question('q', 'c', None, source='http'); s.close()\n")
    start = time.time() + 1.5
    procs = [subprocess.Popen([sys.executable, "-c", code, str(db), str(start)], stderr=subprocess.PIPE,
                              text=True) for _ in range(4)]
    errors = [p.communicate(timeout=60)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, errors
    from replyloop import migrations
    from replyloop.store import Store

    with Store(db) as store:
        assert store.scalar("SELECT count(*) FROM questions") == 4
        names = [r["name"] for r in store.query("SELECT name FROM _replyloop_migrations")]
        assert sorted(names) == sorted(fn.__name__ for fn in migrations.MIGRATIONS)
    assert integrity(db) == "ok"


# -- 3. Slack answering 429 with Retry-After and 500 --------------------------------------------------


def test_both_client_factories_are_one_and_retry(workspace):
    from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler, ServerErrorRetryHandler

    from replyloop.bot.app import create_bot
    from replyloop.bot.slackclient import web_client
    from replyloop.config import Secrets

    config, store = workspace
    secrets = Secrets(slack_bot_token=BOT_TOKEN, slack_app_token=None, slack_signing_secret=SIGNING_SECRET,
                      intake_token=None)
    bot = create_bot(config, store, secrets, checker=lambda text: {"verdict": "pass", "violations": []})
    try:
        for client in (bot.client, web_client(config, secrets)):
            kinds = {type(h) for h in client.retry_handlers}
            assert {RateLimitErrorRetryHandler, ServerErrorRetryHandler} <= kinds
    finally:
        bot.close()
    import replyloop.bot.app
    from replyloop import bot
    assert not hasattr(bot.app, "build_client")


@pytest.mark.slow
def test_slack_429_and_500_lose_no_card_no_update_no_notification(workspace, monkeypatch):
    from bot_support import INTAKE_TOKEN as BOT_INTAKE_TOKEN, close_env, make_env

    from replyloop.bot import review
    from replyloop.bot.jobs import slack_notifier

    env = make_env(workspace)
    fake, store = env.fake, env.store
    try:
        # card posting: a 429 with Retry-After, then two 500s: one card, stored ts
        fake.fail_next("chat.postMessage", status=429, retry_after=1)
        fake.fail_next("chat.postMessage", status=500, count=2)
        resp = env.sim.intake({"conversation_id": "c-9", "question": "退货运费谁出？",
                               "draft": "您好，质量问题退货运费由我们承担。"}, BOT_INTAKE_TOKEN)
        assert resp.status == 201, resp.body
        draft_id = resp.json()["draft_id"]
        [card] = fake.wait_for("chat.postMessage", timeout=30)
        failed = fake.calls_to("chat.postMessage:failed")
        assert len(failed) == 3 and failed[1].at - failed[0].at >= 0.9  # waited Retry-After
        deadline = time.monotonic() + 10
        while store.get_draft(draft_id)["slack_ts"] is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert store.get_draft(draft_id)["slack_ts"] == card.response["ts"]

        # chat.update after Approve: 500 then 429; the decision is stored once, the card updated once
        fake.fail_next("chat.update", status=500)
        fake.fail_next("chat.update", status=429, retry_after=1)
        assert env.sim.click(card, "approve", "USUP1").status == 200
        review_row = env.wait_review(draft_id)
        assert review_row["decision"] == "approve" and review_row["reviewer"] == "USUP1"
        [update] = fake.wait_for("chat.update", timeout=30)
        assert update.params["ts"] == card.response["ts"]
        assert len(fake.calls_to("chat.update:failed")) == 2
        assert store.scalar("SELECT count(*) FROM samples WHERE review_id = ?", (review_row["id"],)) == 1

        # Slack down for longer than the retries: the card is not lost, the sweeper posts it later
        fake.clear()
        fake.fail_next("chat.postMessage", status=500, count=4)
        resp = env.sim.intake({"conversation_id": "c-10", "question": "能开专票吗？",
                               "draft": "您好，可以在订单详情页申请增值税专用发票。"}, BOT_INTAKE_TOKEN)
        second = resp.json()["draft_id"]
        deadline = time.monotonic() + 30
        while len(fake.calls_to("chat.postMessage:failed")) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        assert store.get_draft(second)["slack_ts"] is None and not fake.calls_to("chat.postMessage")
        assert review.post_pending_cards(env.bot) == 1
        assert store.get_draft(second)["slack_ts"] == fake.calls_to("chat.postMessage")[0].response["ts"]

        # the pipeline's notifier: 429 then 500, the message arrives once
        fake.clear()
        monkeypatch.setenv("SLACK_BOT_TOKEN", BOT_TOKEN)
        fake.fail_next("chat.postMessage", status=429, retry_after=1)
        fake.fail_next("chat.postMessage", status=500)
        slack_notifier(env.config)("Retrain run #7 finished")
        [note] = fake.calls_to("chat.postMessage")
        assert note.params["text"] == "Retrain run #7 finished" and note.params["channel"] == "C0REVIEW"
        assert len(fake.calls_to("chat.postMessage:failed")) == 2
    finally:
        close_env(env)


# -- 4. disk full / read-only adapters dir while saving an adapter ------------------------------------


def tree_digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def leftovers(adapters: Path, run_id: int) -> list[str]:
    return sorted(p.name for p in adapters.iterdir() if f"-r{run_id}" in p.name)


@pytest.fixture
def champion_workspace(replyloop_home, tiny_base_dir):
    from replyloop.pipeline import run_pipeline
    from replyloop.registry import Registry

    config, store = make_workspace(replyloop_home, tiny_base_dir)
    first = run_pipeline(config, store)
    assert first.action == "champion", first.message
    champion = Registry(store).champion()
    approve(store, 3)
    # no resume checkpoint in these runs: the failure is the adapter save itself
    train_yaml = replyloop_home / "train.yaml"
    train_yaml.write_text(train_yaml.read_text().replace("save_steps: 4", "save_steps: 1000"), encoding="utf-8")
    yield config, store, champion, tree_digest(Path(champion["adapter_path"]))
    store.close()


def assert_failed_cleanly(config, store, result, champion, digest) -> None:
    from replyloop.registry import Registry

    assert result.status == "failed"
    run = store.one("SELECT * FROM training_runs WHERE id = ?", (result.run_id,))
    assert run["status"] == "failed" and run["model_id"] is None
    assert leftovers(config.adapters_dir, result.run_id) == []  # no partial adapter dir, no temp dir
    assert Registry(store).champion() == champion
    assert tree_digest(Path(champion["adapter_path"])) == digest
    assert store.scalar("SELECT count(*) FROM models") == 1
    assert store.one("SELECT * FROM locks") is None


@pytest.mark.slow
def test_disk_full_while_saving_the_adapter(champion_workspace):
    from replyloop.pipeline import run_pipeline

    config, store, champion, digest = champion_workspace
    if shutil.which("prlimit") is None:
        pytest.skip("util-linux prlimit is not installed")
    # 40 kB: enough for the log, TensorBoard events and the adapter's README; the weights
    # (about 55 kB) fail with EFBIG, as on a full disk
    config.file.training.command = "prlimit --fsize=40000 {python} -m replyloop train --config {config}"
    messages = []
    result = run_pipeline(config, store, notify=messages.append)
    assert "training exited with code 1" in result.message, result.message
    assert f"Error: could not save the adapter to {config.adapters_dir}/rl-" in result.message
    assert f"-r{result.run_id}: File too large (os error 27)" in result.message, result.message
    assert "Traceback" not in result.message
    assert "The champion is unchanged" in messages[-1]
    assert_failed_cleanly(config, store, result, champion, digest)


@pytest.mark.slow
def test_read_only_adapters_dir_while_saving(champion_workspace):
    from replyloop.pipeline import run_pipeline

    config, store, champion, digest = champion_workspace
    adapters = config.adapters_dir
    probe = subprocess.run(["chattr", "+i", str(adapters)], capture_output=True, text=True) \
        if shutil.which("chattr") else None
    if probe is None or probe.returncode != 0:
        pytest.skip(f"cannot make {adapters} immutable (chattr +i: "
                    f"{probe.stderr.strip() if probe else 'not installed'}); root ignores chmod")
    try:
        result = run_pipeline(config, store)
    finally:
        subprocess.run(["chattr", "-i", str(adapters)], check=True)
    assert "training exited with code 1" in result.message, result.message
    assert f"Error: could not save the adapter to {adapters}/rl-" in result.message
    assert f"-r{result.run_id}: [Errno 1] Operation not permitted" in result.message, result.message
    assert_failed_cleanly(config, store, result, champion, digest)
