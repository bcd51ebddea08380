"""Issue 16 part 1 (health that tells the truth, metrics, logs) and part 4 (the Slack app set-up):
real `replyloop serve` subprocesses and real HTTP on 127.0.0.1 against the local fake Slack, which
rejects what Slack rejects (a wrong token, a channel name where an id is needed); signed requests."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from replyloop.bot.fake_slack import FakeSlack
from bot_support import *  # noqa: F401,F403
from bot_support import BOT_TOKEN, SIGNING_SECRET, close_env, make_env, wait_until

ROOT = Path(__file__).resolve().parent.parent


# -- helpers -----------------------------------------------------------------------------------


def write_config(home: Path, base_url: str, **slack) -> Path:
    from replyloop.config import write_default_config

    path = write_default_config(home)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    logging_ = slack.pop("logging", None)
    data["slack"].update({"api_base_url": base_url, **slack})
    if logging_:
        data["logging"] = logging_
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def serve_env(home: Path, token: str = BOT_TOKEN) -> dict:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SLACK_")}
    return {**base, "REPLYLOOP_HOME": str(home), "SLACK_BOT_TOKEN": token, "SLACK_SIGNING_SECRET": SIGNING_SECRET,
            "PYTHONUNBUFFERED": "1"}


def run_serve(home: Path, token: str = BOT_TOKEN) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "replyloop", "serve", "--http", "--port", "0", "--no-scheduler"],
                          cwd=home, env=serve_env(home, token), capture_output=True, text=True, timeout=60)


class Serve:
    """A `replyloop serve --http --port 0` subprocess; stdout and stderr apart."""

    def __init__(self, home: Path, token: str = BOT_TOKEN):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "replyloop", "serve", "--http", "--port", "0", "--no-scheduler"], cwd=home,
            env=serve_env(home, token), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.err: list[str] = []
        threading.Thread(target=self._pump_out, daemon=True).start()
        threading.Thread(target=self._pump_err, daemon=True).start()

    def _pump_out(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _pump_err(self) -> None:
        for line in self.proc.stderr:
            self.err.append(line)

    def wait_listening(self, timeout: float = 60) -> str:
        from bot_support import wait_listening

        self.url = wait_listening(self.lines, self.err, timeout)
        return self.url

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def health(url: str) -> tuple[int, dict]:
    status, text = get(url + "/health")
    return status, json.loads(text)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metrics(url: str) -> dict[tuple[str, tuple], float]:
    status, text = get(url + "/metrics")
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


# -- 1. the token at start-up ------------------------------------------------------------------


def test_serve_with_a_wrong_token_is_an_error_and_exit_2(replyloop_home):
    with FakeSlack() as fake:
        write_config(replyloop_home, fake.base_url, review_channel="C0REVIEW")
        result = run_serve(replyloop_home, token="wrong")
        out = result.stdout + result.stderr
        assert result.returncode == 2, out
        assert ("Error: Slack rejected SLACK_BOT_TOKEN: auth.test answered 'invalid_auth' (copy the Bot User "
                "OAuth Token, xoxb-..., from OAuth & Permissions; reinstall the app if it was revoked)") in out
        assert "Traceback" not in out
        assert [c.method for c in fake.calls] == ["auth.test:unauthed"]  # nothing posted with it


def test_unreachable_slack_at_start_is_a_warning_retried_until_it_answers(replyloop_home):
    """Slack is down when serve starts: serve starts anyway, /health is 503 "degraded" naming the
    problem, and once Slack answers auth.test (and the channel lookup) /health is 200."""
    port = free_port()
    write_config(replyloop_home, f"http://127.0.0.1:{port}/api/", review_channel="cs-review",
                 supervisors=["USUP1"], logging={"format": "json"})
    serve = Serve(replyloop_home)
    fake = None
    try:
        url = serve.wait_listening()
        status, body = health(url)
        assert (status, body["status"], body["ok"]) == (503, "degraded", False)
        assert body["checks"]["slack"].startswith("degraded: Slack unreachable: ")
        assert body["slack"]["verified"] is False
        fake = FakeSlack(port=port).start()
        fake.wait_for("auth.test", timeout=30)
        fake.wait_for("conversations.list", timeout=10)
        wait_until(lambda: health(url)[0] == 200, timeout=20)
        status, body = health(url)
        assert body["status"] == "ok" and body["checks"] == {"database": "ok", "slack": "ok"}
    finally:
        code = serve.stop()
        if fake is not None:
            fake.stop()
    assert code == 0, "".join(serve.err)
    lines = [json.loads(line) for line in serve.err if line.strip()]  # every line is one JSON object
    warning = next(x for x in lines if "Slack is unreachable at start-up" in x["msg"])
    assert warning["level"] == "warning" and warning["logger"] == "replyloop.bot.server"
    assert not any("will be unused" in x["msg"] for x in lines)
    assert not any("supervisor_group are both empty" in x["msg"] for x in lines)  # supervisors are set
    assert BOT_TOKEN not in "".join(serve.err)


def test_health_says_starting_until_the_scheduler_is_up(workspace):
    """serve() serves /health at once, but only says ok once the scheduler has started."""
    from replyloop.bot.server import serve
    from replyloop.config import Secrets

    config, store = workspace

    class SlowScheduler:
        def __init__(self):
            self.release = threading.Event()
            self.running = False

        def start(self):
            self.release.wait(20)
            self.running = True

        def shutdown(self, wait=False):
            self.running = False

    with FakeSlack() as fake:
        config.file.slack.api_base_url = fake.base_url
        config.file.slack.review_channel = "cs-review"
        config.file.slack.supervisors = ["USUP1"]
        secrets = Secrets(slack_bot_token=BOT_TOKEN, slack_app_token=None, slack_signing_secret=SIGNING_SECRET,
                          intake_token=None)
        scheduler, stop, port = SlowScheduler(), threading.Event(), free_port()
        ready = threading.Event()
        thread = threading.Thread(target=serve, args=(config, store, secrets), daemon=True,
                                  kwargs={"http": True, "port": port, "scheduler": scheduler, "stop": stop,
                                          "drafter": None, "ready": lambda s: ready.set()})
        thread.start()
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until(lambda: _answers(url), timeout=20)
            status, body = health(url)
            assert (status, body["status"], body["ok"]) == (503, "starting", False)
            fake.wait_for("conversations.list")
            wait_until(lambda: config.file.slack.review_channel == "C0REVIEW")  # the name was looked up
            assert health(url)[1]["status"] == "starting"  # the scheduler is still starting
            scheduler.release.set()
            assert ready.wait(20)
            status, body = health(url)
            assert (status, body["status"]) == (200, "ok")
            assert body["checks"] == {"database": "ok", "scheduler": "ok", "slack": "ok"}
        finally:
            scheduler.release.set()
            stop.set()
            thread.join(30)


def test_a_token_slack_rejects_after_an_outage_at_start_stops_serve(workspace):
    """Slack was down at start; when it answers, it rejects the token: serve stops with the
    same error (`replyloop serve` prints it as `Error:` and exits 2)."""
    from replyloop.bot.server import serve
    from replyloop.config import Secrets
    from replyloop.errors import ConfigError

    config, store = workspace
    port = free_port()
    config.file.slack.api_base_url = f"http://127.0.0.1:{port}/api/"
    config.file.slack.supervisors = ["USUP1"]
    secrets = Secrets(slack_bot_token=BOT_TOKEN, slack_app_token=None, slack_signing_secret=SIGNING_SECRET,
                      intake_token=None)
    outcome: dict = {}
    started = threading.Event()

    def run():
        try:
            serve(config, store, secrets, http=True, port=0, drafter=None, ready=lambda s: started.set())
        except BaseException as exc:  # noqa: BLE001 (what serve raised is the outcome)
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(30)  # it started although Slack was unreachable
    with FakeSlack(port=port) as fake:
        fake.revoke_token(BOT_TOKEN)
        thread.join(30)
        assert not thread.is_alive()
        assert isinstance(outcome.get("error"), ConfigError)
        assert str(outcome["error"]).startswith("Slack rejected SLACK_BOT_TOKEN: auth.test answered 'invalid_auth'")
        assert fake.calls_to("chat.postMessage") == []


def _answers(url: str) -> bool:
    try:
        get(url + "/health")
        return True
    except OSError:
        return False


# -- 2. /health while Slack calls fail -----------------------------------------------------------


def test_health_is_degraded_while_posts_fail_and_recovers(workspace):
    env = make_env(workspace)
    try:
        assert env.sim.request("GET", "/health").status == 200
        env.fake.revoke_token(BOT_TOKEN)  # the token was revoked after start
        env.add_draft(conversation="c1")
        env.add_draft(conversation="c2")
        from replyloop.bot import review

        assert review.post_pending_cards(env.bot) == 0
        answer = env.sim.request("GET", "/health")
        body = answer.json()
        assert (answer.status, body["status"]) == (503, "degraded")
        assert body["slack"]["state"] == "degraded"
        assert body["slack"]["failures"] == 2 and body["slack"]["consecutive_failures"] == 2
        assert body["slack"]["last_error"] == "chat.postMessage: invalid_auth"
        assert body["checks"]["slack"] == ("degraded: 2 Web API call(s) failed since the last success; "
                                           "last error chat.postMessage: invalid_auth")
        assert body["queue"] == 2
        env.fake.restore_token(BOT_TOKEN)
        assert review.post_pending_cards(env.bot) == 2
        answer = env.sim.request("GET", "/health")
        assert (answer.status, answer.json()["status"], answer.json()["slack"]["failures"]) == (200, "ok", 2)
        # the fake's own errors count the same way
        env.fake.fail_next("chat.postMessage", error="channel_not_found")
        env.add_draft(conversation="c3")
        review.post_pending_cards(env.bot)
        assert env.sim.request("GET", "/health").json()["slack"]["last_error"] == "chat.postMessage: channel_not_found"
    finally:
        close_env(env)


# -- 3. /metrics ---------------------------------------------------------------------------------


def test_metrics_are_scrapeable_and_follow_real_actions(workspace, tmp_path):
    from replyloop.registry import Registry
    from replyloop import timeutil

    env = make_env(workspace)
    try:
        assert env.sim.request("POST", "/metrics", b"x").status == 405
        m = metrics(env.server.url)
        assert m[("replyloop_pending_reviews", ())] == 0
        assert m[("replyloop_oldest_pending_review_age_seconds", ())] == 0
        assert m[("replyloop_decisions_total", (("decision", "approve"),))] == 0
        assert m[("replyloop_training_runs", (("state", "running"),))] == 0
        assert m[("replyloop_database_up", ())] == 1
        assert m[("replyloop_registry_consistent", ())] == 1
        assert m[("replyloop_outbox_events", (("state", "dead"),))] == 0

        draft_id, card = env.post_card()
        env.add_draft(conversation="c2", draft="我们保证退款。")  # blocked by the policy
        with env.store.transaction() as db:  # the first draft has waited a minute
            db.execute("UPDATE drafts SET created_at = ? WHERE id = ?",
                       ((timeutil.now() - __import__("datetime").timedelta(seconds=60)).isoformat(), draft_id))
        m = metrics(env.server.url)
        assert m[("replyloop_pending_reviews", ())] == 2
        assert 59 <= m[("replyloop_oldest_pending_review_age_seconds", ())] < 120
        assert m[("replyloop_policy_blocks_total", ())] == 1
        assert m[("replyloop_drafts_total", (("verdict", "block"),))] == 1

        assert env.sim.click(card, "approve", user="USUP1").status == 200
        env.wait_review(draft_id)
        m = metrics(env.server.url)
        assert m[("replyloop_pending_reviews", ())] == 1
        assert m[("replyloop_decisions_total", (("decision", "approve"),))] == 1
        assert m[("replyloop_ack_latency_seconds_count", (("kind", "block_actions"),))] == 1
        assert m[("replyloop_ack_latency_seconds_bucket", (("kind", "block_actions"), ("le", "3.0")))] == 1
        assert m[("replyloop_slack_api_calls_total", (("method", "chat.postMessage"),))] >= 1
        # a dead-lettered delivery shows (deliver21's outbox)
        review_id = env.store.scalar("SELECT id FROM reviews")
        with env.store.transaction() as db:
            db.execute("INSERT INTO outbox (event_id, review_id, target, payload, state, next_at, created_at)"
                       " VALUES ('e1', ?, 'webhook', '{}', 'dead', 0, '2026-12-01T00:00:00+00:00')", (review_id,))
        assert metrics(env.server.url)[("replyloop_outbox_events", (("state", "dead"),))] == 1

        env.fake.fail_next("chat.postMessage", error="invalid_auth")
        from replyloop.bot import review

        review.post_pending_cards(env.bot)
        m = metrics(env.server.url)
        assert m[("replyloop_slack_api_errors_total", (("method", "chat.postMessage"),))] == 1
        assert m[("replyloop_slack_consecutive_failures", ())] == 1

        registry = Registry(env.store)
        ids = []
        for name in ("rl-a", "rl-b"):
            adapter = tmp_path / name
            adapter.mkdir()
            (adapter / "manifest.json").write_text(json.dumps({"base_model": "tiny"}), encoding="utf-8")
            ids.append(registry.register(adapter, name=name)["id"])
        with env.store.transaction() as db:
            db.execute("INSERT INTO evaluations (model_id, embedding_model, n, mean_similarity, gate_passed, created_at)"
                       " VALUES (?, 'minilm', 10, 0.81, 1, ?)", (ids[0], timeutil.now_iso()))
            db.execute("INSERT INTO training_runs (status, trigger, started_at) VALUES ('failed', 'cli', ?)",
                       (timeutil.now_iso(),))
        registry.promote(ids[0], actor="test", force=True)
        registry.start_canary(ids[1], 10, actor="test", force=True)
        m = metrics(env.server.url)
        assert m[("replyloop_model_info", (("model_id", str(ids[0])), ("name", "rl-a"), ("role", "champion")))] == 1
        assert m[("replyloop_model_info", (("model_id", str(ids[1])), ("name", "rl-b"), ("role", "canary")))] == 1
        assert m[("replyloop_model_consistency", (("model_id", str(ids[0])), ("role", "champion")))] == pytest.approx(0.81)
        assert m[("replyloop_training_runs", (("state", "failed"),))] == 1
        assert m[("replyloop_registry_consistent", ())] == 1
    finally:
        close_env(env)


# -- 4. logs --------------------------------------------------------------------------------------


def test_log_lines_carry_the_draft_id_in_every_format(workspace):
    import io
    import logging

    from replyloop.bot import review
    from replyloop.bot.logs import configure_logging, install_redaction
    from replyloop.config import Secrets

    env = make_env(workspace)
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        for fmt in ("text", "logfmt", "json"):
            stream = io.StringIO()
            configure_logging(fmt, stream=stream)
            install_redaction(Secrets(slack_bot_token=BOT_TOKEN, slack_app_token=None, slack_signing_secret=None,
                                      intake_token=None))
            env.fake.fail_next("chat.postMessage", error=f"invalid_auth {BOT_TOKEN}")
            draft_id = env.add_draft(conversation=f"log-{fmt}")
            review.post_pending_cards(env.bot)
            [line] = [ln for ln in stream.getvalue().splitlines() if "posting the card" in ln]
            assert BOT_TOKEN not in stream.getvalue()
            if fmt == "json":
                record = json.loads(line)
                assert record["draft_id"] == draft_id and record["level"] == "warning"
                assert record["msg"] == f"posting the card of draft {draft_id} failed: invalid_auth [redacted]"
            elif fmt == "logfmt":
                assert re.fullmatch(r'ts=\S+Z level=warning logger=replyloop\.bot\.review msg="posting the card of draft '
                                    rf'{draft_id} failed: invalid_auth \[redacted\]" draft_id={draft_id}', line), line
            else:
                assert line.endswith(f"WARNING replyloop.bot.review: posting the card of draft {draft_id} failed: "
                                     f"invalid_auth [redacted] draft_id={draft_id}")
            review.post_pending_cards(env.bot)  # posted now
        # a click: its slow part after the ack (on the work pool) fails; the line names the draft
        stream = io.StringIO()
        configure_logging("json", stream=stream)
        draft_id, card = env.post_card(conversation="log-click")
        env.fake.fail_next("chat.update", error="internal_error")
        assert env.sim.click(card, "approve", user="USUP1").status == 200
        env.fake.wait_for("chat.update:failed")
        wait_until(lambda: "finish failed" in stream.getvalue())
        [line] = [ln for ln in stream.getvalue().splitlines() if "finish failed" in ln]
        record = json.loads(line)  # the traceback is inside the one line
        assert record["draft_id"] == draft_id and record["level"] == "error"
        assert "internal_error" in record["exc"] and record["exc"].startswith("Traceback")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        close_env(env)


def test_unknown_logging_format_is_a_config_error(replyloop_home):
    from replyloop.config import load_config, write_default_config
    from replyloop.errors import ConfigError

    path = write_default_config(replyloop_home)
    path.write_text(path.read_text(encoding="utf-8").replace("format: text", "format: xml"), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "logging.format" in str(err.value)


# -- 5. channels, scopes, start-up noise ------------------------------------------------------------


def test_channel_names_become_ids_and_missing_ones_are_errors(workspace):
    from replyloop.bot.slackclient import resolve_channels, web_client
    from replyloop.config import Secrets
    from replyloop.errors import ConfigError

    config, _ = workspace
    with FakeSlack() as fake:
        fake.add_channel("C0NOTIN", "outside", is_member=False)
        fake.add_channel("G0SECRET", "private-intake", is_private=True)
        s = config.file.slack
        s.api_base_url = fake.base_url
        client = web_client(config, Secrets(BOT_TOKEN, None, None, None))
        s.review_channel, s.report_channel, s.intake_channel = "#cs-review", "C0QUALITY", "private-intake"
        resolve_channels(config, client)
        assert (s.review_channel, s.report_channel, s.intake_channel) == ("C0REVIEW", "C0QUALITY", "G0SECRET")
        s.review_channel, s.report_channel, s.intake_channel = "cs-reviews", "outside", ""
        with pytest.raises(ConfigError) as err:
            resolve_channels(config, client)
        assert str(err.value) == (
            "slack.review_channel: channel 'cs-reviews' not found (a private channel is listed only once the bot "
            "is in it: /invite @replyloop there); slack.report_channel: the bot is not in #outside (C0NOTIN): "
            "/invite @replyloop there")


def test_serve_with_a_channel_that_does_not_exist_stops_with_an_error(workspace, caplog):
    """serve() (as `replyloop serve` runs it; a ConfigError is `Error:` and exit 2 there, see
    the wrong-token test) refuses a misspelt channel before it posts anything, and warns when
    nobody could approve."""
    from replyloop.bot.server import serve
    from replyloop.config import Secrets
    from replyloop.errors import ConfigError

    config, store = workspace
    with FakeSlack() as fake:
        config.file.slack.api_base_url = fake.base_url
        config.file.slack.review_channel = "cs-revew"
        secrets = Secrets(slack_bot_token=BOT_TOKEN, slack_app_token=None, slack_signing_secret=SIGNING_SECRET,
                          intake_token=None)
        env_token = os.environ.get("SLACK_BOT_TOKEN")
        os.environ["SLACK_BOT_TOKEN"] = BOT_TOKEN  # bolt reads it and would warn that it is unused
        try:
            with caplog.at_level("WARNING"), pytest.raises(ConfigError) as err:
                serve(config, store, secrets, http=True, port=0, drafter=None)
        finally:
            os.environ.pop("SLACK_BOT_TOKEN") if env_token is None else os.environ.update(SLACK_BOT_TOKEN=env_token)
        assert str(err.value).startswith("slack.review_channel: channel 'cs-revew' not found")
        assert fake.calls_to("chat.postMessage") == []
    messages = [r.getMessage() for r in caplog.records]
    assert any("slack.supervisors and slack.supervisor_group are both empty: nobody can approve" in m
               for m in messages)
    assert not any("will be unused" in m for m in messages)


def test_fake_slack_refuses_a_channel_name_where_slack_needs_an_id(workspace):
    from slack_sdk import WebClient
    from slack_sdk.errors import SlackApiError

    with FakeSlack() as fake:
        client = WebClient(token=BOT_TOKEN, base_url=fake.base_url)
        posted = client.chat_postMessage(channel="cs-quality", text="hi")  # Slack takes a name here
        assert posted["channel"] == "C0QUALITY"  # and answers the id
        for call in (lambda: client.chat_update(channel="cs-quality", ts=posted["ts"], text="x"),
                     lambda: client.conversations_info(channel="cs-quality"),
                     lambda: client.files_completeUploadExternal(files=[{"id": "F1"}], channel_id="cs-quality"),
                     lambda: client.chat_postMessage(channel="no-such-channel", text="x")):
            with pytest.raises(SlackApiError) as err:
                call()
            assert err.value.response["error"] == "channel_not_found"
        fake.add_channel("C0NOTIN", "outside", is_member=False)
        with pytest.raises(SlackApiError) as err:
            client.chat_postMessage(channel="C0NOTIN", text="x")
        assert err.value.response["error"] == "not_in_channel"
        assert WebClient(token="wrong", base_url=fake.base_url).api_call("api.test")["ok"]
        with pytest.raises(SlackApiError) as err:
            WebClient(token="wrong", base_url=fake.base_url).auth_test()
        assert err.value.response["error"] == "invalid_auth"
        with pytest.raises(SlackApiError) as err:
            WebClient(base_url=fake.base_url).auth_test()
        assert err.value.response["error"] == "not_authed"


# Web API method -> the bot scopes it needs (docs.slack.dev/reference/methods); conversations.*
# need both channel scopes because the intake channel may be private
METHOD_SCOPES = {
    "auth.test": set(), "views.open": set(), "views.publish": set(), "views.update": set(),
    "chat.postMessage": {"chat:write"}, "chat.update": {"chat:write"}, "chat.postEphemeral": {"chat:write"},
    "conversations.info": {"channels:read", "groups:read"}, "conversations.list": {"channels:read", "groups:read"},
    "usergroups.users.list": {"usergroups:read"},
    "files.upload.v2": {"files:write"},
    "users.info": {"users:read"}, "conversations.open": {"im:write"},
    # delivery: is a thread reply already posted (its metadata)? public or private intake channel
    "conversations.replies": {"channels:history", "groups:history"},
}
# what the manifest needs beyond Web API methods: the slash command and the events it subscribes to
EVENT_SCOPES = {"message.channels": {"channels:history"}, "message.groups": {"groups:history"},
                "app_home_opened": set()}


def _methods_called() -> set[str]:
    """Every Web API method replyloop's code calls through slack_sdk (``client.chat_postMessage(``)."""
    found = set()
    pattern = re.compile(r"\.(auth_test|chat_[A-Za-z]+|views_[a-z]+|conversations_[a-z]+|users_[a-z]+|"
                         r"usergroups_[a-z_]+|files_[A-Za-z_0-9]+|reactions_[a-z]+|im_[a-z]+)\(")
    for folder in ("bot", "replyloop", "evaluation", "training"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.name == "fake_slack.py":
                continue
            for name in pattern.findall(path.read_text(encoding="utf-8")):
                if name == "files_upload_v2":
                    found.add("files.upload.v2")
                    continue
                group, _, rest = name.partition("_")
                found.add(f"{group}.{rest}".replace("usergroups.users_list", "usergroups.users.list"))
    return found


def test_manifest_scopes_are_exactly_what_the_code_uses():
    manifest = yaml.safe_load((ROOT / "bot" / "manifest.yaml").read_text(encoding="utf-8"))
    scopes = set(manifest["oauth_config"]["scopes"]["bot"])
    methods = _methods_called()
    unknown = methods - METHOD_SCOPES.keys()
    assert not unknown, f"add the scopes of {sorted(unknown)} to METHOD_SCOPES"
    assert {"chat.postMessage", "chat.update", "views.open", "views.publish", "usergroups.users.list",
            "conversations.info", "conversations.list", "auth.test", "files.upload.v2"} <= methods
    events = manifest["settings"]["event_subscriptions"]["bot_events"]
    needed = set().union(*(METHOD_SCOPES[m] for m in methods), *(EVENT_SCOPES[e] for e in events))
    if manifest["features"].get("slash_commands"):
        needed.add("commands")
    assert scopes == needed
    assert "im:write" not in scopes
    assert "users:read" in scopes  # users.info with include_locale: a supervisor's language (issue 22)
    assert {"message.channels", "message.groups"} <= set(events)  # a private intake channel works too


def test_a_private_intake_channel_given_by_name_takes_questions_in(workspace):
    """A private intake channel (groups:history, message.groups): its name is looked up at
    start-up and its message events (channel_type "group") become questions."""
    from replyloop.bot.slackclient import resolve_channels
    from bot_support import CannedDrafter

    env = make_env(workspace, drafter=CannedDrafter(), intake_channel="cs-private-intake")
    try:
        env.fake.add_channel("G0PRIVATE", "cs-private-intake", is_private=True)
        resolve_channels(env.config, env.bot.client)
        assert env.config.file.slack.intake_channel == "G0PRIVATE"
        resp = env.sim.event({"type": "message", "channel": "G0PRIVATE", "user": "UCUSTOMER", "text": "发票怎么开？",
                              "ts": "1700000000.000100", "event_ts": "1700000000.000100", "channel_type": "group"})
        assert resp.status == 200
        wait_until(lambda: env.store.scalar("SELECT count(*) FROM questions") == 1)
        assert env.store.scalar("SELECT conversation_id FROM questions") == "slack:G0PRIVATE:1700000000.000100"
        env.fake.wait_for("chat.postMessage")
    finally:
        close_env(env)
