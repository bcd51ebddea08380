"""Socket Mode over loopback: ``bot.server.serve(http=False)`` with slack_bolt's SocketModeHandler
(slack_sdk's built-in WebSocket client) against FakeSlack, which hands out a ``ws://127.0.0.1``
URL from ``apps.connections.open`` and speaks RFC 6455 on it. Envelopes of the real shapes go
down the socket; the acks come back up; decisions land in the real SQLite store."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import pytest
import yaml

from replyloop.bot.fake_slack import FakeSlack
from replyloop.bot.simulate import Simulator
from bot_support import (APP_TOKEN, BOT_TOKEN, GROUP, GROUP_MEMBER, INTAKE, OUTSIDER, REVIEW, SUPERVISORS,
                         CannedDrafter, PipelineRecorder)
from replyloop.config import Config, Secrets
from replyloop.dataio import QuestionIn
from replyloop.intake import ingest, policy_checker
from replyloop.store import Store


@dataclass
class SocketEnv:
    config: Config
    store: Store
    fake: FakeSlack
    sim: Simulator            # builds the payloads; nothing goes over HTTP
    pipeline: PipelineRecorder
    stop: threading.Event
    thread: threading.Thread
    errors: list[BaseException]
    servers: list = field(default_factory=list)  # the BotServer, once serve is ready

    def add_draft(self, question="我的订单什么时候到？", draft="您的订单预计三天内送达。", conversation="conv-1") -> int:
        [res] = ingest(self.config, self.store, [QuestionIn(conversation, question, "物流查询", draft)],
                       source="http", checker=policy_checker(self.config))
        return res.draft_id

    def card(self, draft_id: int):
        """The review card of ``draft_id`` that the bot posted (its sweeper posts pending cards)."""
        for n in range(1, 50):
            calls = self.fake.wait_for("chat.postMessage", n)
            for call in calls:
                if any(b.get("block_id") == f"review_{draft_id}" for b in call.params.get("blocks") or []):
                    return call
        raise AssertionError(f"no card for draft {draft_id}")

    def review_count(self) -> int:
        return self.store.scalar("SELECT count(*) FROM reviews")


def start(workspace, secrets: Secrets, drafts: int = 1) -> SocketEnv:
    config, store = workspace
    # keepalive pings wake the client's blocking recv: it closes and reconnects at once, not after 3 s
    fake = FakeSlack(group_members={GROUP: [GROUP_MEMBER]}, ping_interval=0.05).start()
    s = config.file.slack
    s.api_base_url = fake.base_url
    s.review_channel, s.intake_channel = REVIEW, INTAKE
    s.supervisors, s.supervisor_group = list(SUPERVISORS), GROUP
    env = SocketEnv(config, store, fake, Simulator(fake.url, "unused", fake), PipelineRecorder(),
                    threading.Event(), None, [])  # type: ignore[arg-type]
    for i in range(drafts):  # stored before the bot starts: its sweeper posts their cards
        env.add_draft(question=f"问题 {i}", conversation=f"conv-{i}")

    from replyloop.bot.server import serve

    def run():
        try:
            serve(config, store, secrets, http=False, port=0, drafter=CannedDrafter(),
                  start_pipeline=env.pipeline, stop=env.stop, ready=env.servers.append)
        except BaseException as exc:  # shown by the test instead of a silent dead thread
            env.errors.append(exc)
            env.stop.set()

    env.thread = threading.Thread(target=run, name="serve-under-test", daemon=True)
    env.thread.start()
    return env


def finish(env: SocketEnv) -> None:
    env.stop.set()
    env.thread.join(15)
    alive = env.thread.is_alive()
    env.fake.stop()
    assert not alive, "serve did not stop within 15 s"


def wait_connected(env: SocketEnv, timeout: float = 15.0) -> None:
    """Until the bot's socket is open; fails at once if serve died."""
    deadline = time.monotonic() + timeout
    while not env.errors:
        try:
            env.fake.wait_for_socket(timeout=0.2)
            return
        except TimeoutError:
            if time.monotonic() > deadline:
                break
    finish(env)
    raise AssertionError(f"the bot never connected; serve raised {env.errors!r}")


SECRETS = Secrets(slack_bot_token=BOT_TOKEN, slack_app_token=APP_TOKEN, slack_signing_secret=None,
                  intake_token=None)


@pytest.fixture
def env(workspace):
    e = start(workspace, SECRETS)
    wait_connected(e)
    yield e
    finish(e)
    assert e.errors == []


def test_connects_with_the_app_token_and_answers_pings(env):
    [opened] = env.fake.calls_to("apps.connections.open")
    assert opened.headers["authorization"] == f"Bearer {APP_TOKEN}"
    assert opened.response["url"].startswith(f"ws://127.0.0.1:{env.fake.url.rsplit(':', 1)[1]}/link/?ticket=")
    # the Web API calls themselves still use the bot token
    card = env.card(1)
    assert card.headers["authorization"] == f"Bearer {BOT_TOKEN}"
    assert env.fake.socket_ping(b"are-you-there") == b"are-you-there"
    assert env.fake.pings_received >= 1  # the client pings right after the handshake


def test_approve_click_is_acked_decided_once_and_updates_the_card(env):
    card = env.card(1)
    eid = env.fake.socket_send("interactive", env.sim.block_action(card, "approve", user="USUP1"))
    assert env.fake.wait_for_ack(eid) == {"envelope_id": eid}
    [update] = env.fake.wait_for("chat.update")
    assert (update.params["channel"], update.params["ts"]) == (card.response["channel"], card.response["ts"])
    assert "<@USUP1>" in update.params["text"]
    review = env.store.one("SELECT * FROM reviews WHERE draft_id = 1")
    assert (review["decision"], review["reviewer"]) == ("approve", "USUP1")
    assert env.store.scalar("SELECT count(*) FROM samples") == 1
    assert env.review_count() == 1


def test_redelivered_envelope_makes_one_decision(env):
    card = env.card(1)
    payload = env.sim.block_action(card, "approve", user="USUP1")
    eid = env.fake.socket_send("interactive", payload)
    env.fake.wait_for_ack(eid)
    env.fake.wait_for("chat.update")
    # Slack redelivers an envelope it thinks was not acknowledged: same envelope_id, a retry count
    env.fake.socket_send("interactive", payload, envelope_id=eid, retry_attempt=1, retry_reason="timeout")
    env.fake.wait_for_ack(eid, count=2)
    [note] = env.fake.wait_for("chat.postEphemeral")
    review = env.store.one("SELECT * FROM reviews WHERE draft_id = 1")
    from replyloop.bot.cards import when

    assert note.params["text"] == f"Draft #1 was already approved by <@USUP1> at {when(review['created_at'], 'Asia/Shanghai')}."
    assert env.review_count() == 1
    assert env.store.scalar("SELECT count(*) FROM samples") == 1
    assert len(env.fake.calls_to("chat.update")) == 1


def test_outsider_click_changes_nothing(env):
    card = env.card(1)
    eid = env.fake.socket_send("interactive", env.sim.block_action(card, "approve", user=OUTSIDER))
    env.fake.wait_for_ack(eid)
    [note] = env.fake.wait_for("chat.postEphemeral")
    assert note.params["user"] == OUTSIDER
    assert env.review_count() == 0
    assert env.fake.calls_to("chat.update") == []


def test_retrain_status_slash_command(env):
    env.card(1)
    eid = env.fake.socket_send("slash_commands", env.sim.command_payload("/retrain", "status", user="USUP1"))
    assert env.fake.wait_for_ack(eid) == {"envelope_id": eid}
    [answer] = env.fake.wait_for("response_url")
    threshold = env.config.file.scheduler.min_new_samples
    assert f"*Approved samples since the last training:* 0 (threshold {threshold})" in answer.params["text"]


def test_edit_with_a_banned_promise_is_refused_in_the_ack(env):
    card = env.card(1)
    eid = env.fake.socket_send("interactive", env.sim.block_action(card, "edit", user="USUP2"))
    env.fake.wait_for_ack(eid)
    [opened] = env.fake.wait_for("views.open")
    from replyloop.bot import cards

    bad = env.sim.view_submission(opened, user="USUP2", values={cards.REPLY_BLOCK: "我们保证全额赔付。"})
    eid = env.fake.socket_send("interactive", bad)
    ack = env.fake.wait_for_ack(eid)
    assert ack["payload"]["response_action"] == "errors"  # the modal error rides on the socket ack
    assert "不得承诺全额赔付" in ack["payload"]["errors"][cards.REPLY_BLOCK]
    good = env.sim.view_submission(opened, user="USUP2", values={cards.REPLY_BLOCK: "我们会按政策为您处理赔付。"})
    eid = env.fake.socket_send("interactive", good)
    assert env.fake.wait_for_ack(eid) == {"envelope_id": eid}
    env.fake.wait_for("chat.update")
    review = env.store.one("SELECT * FROM reviews WHERE draft_id = 1")
    assert (review["decision"], review["reviewer"]) == ("edit", "USUP2")
    assert env.store.scalar("SELECT response FROM samples") == "我们会按政策为您处理赔付。"


def test_events_api_app_home(env):
    event = {"type": "app_home_opened", "user": "USUP1", "channel": "DUSUP1", "tab": "home", "event_ts": "1.0"}
    eid = env.fake.socket_send("events_api", env.sim.event_payload(event))
    assert env.fake.wait_for_ack(eid) == {"envelope_id": eid}
    [published] = env.fake.wait_for("views.publish")
    assert published.params["user_id"] == "USUP1"


def test_health_reports_the_socket_mode_link(env):
    import json
    import urllib.request

    env.fake.wait_for_socket()
    deadline = time.monotonic() + 10
    while not env.servers and time.monotonic() < deadline:
        time.sleep(0.05)
    [server] = env.servers
    with urllib.request.urlopen(server.url + "/health", timeout=5) as resp:
        assert resp.status == 200
        body = json.loads(resp.read())
    assert body["mode"] == "socket" and body["status"] == "ok"
    assert body["checks"] == {"database": "ok", "socket_mode": "ok", "slack": "ok"}


def test_reconnects_when_slack_asks_and_keeps_working(env):
    first = env.fake.wait_for_socket()
    env.fake.socket_disconnect("refresh_requested")
    second = env.fake.wait_for_socket(count=2)
    assert second.id != first.id
    assert len(env.fake.calls_to("apps.connections.open")) == 2
    card = env.card(1)
    eid = env.fake.socket_send("interactive", env.sim.block_action(card, "approve", user="USUP1"))
    env.fake.wait_for_ack(eid)
    env.fake.wait_for("chat.update")
    assert env.review_count() == 1


# -- start-up errors -------------------------------------------------------------------------


def write_config(home, fake: FakeSlack) -> None:
    from replyloop.config import write_default_config

    path = write_default_config(home)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["slack"].update({"api_base_url": fake.base_url, "review_channel": REVIEW, "socket_mode": True})
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")


def run_serve(home, **env):
    base = {k: v for k, v in os.environ.items() if not k.startswith("SLACK_")}
    return subprocess.run([sys.executable, "-m", "replyloop", "serve", "--socket", "--no-scheduler", "--port", "0"],
                          cwd=home, env={**base, "REPLYLOOP_HOME": str(home), **env}, capture_output=True,
                          text=True, timeout=60)


def test_serve_without_app_token_says_so(replyloop_home):
    with FakeSlack() as fake:
        write_config(replyloop_home, fake)
        result = run_serve(replyloop_home, SLACK_BOT_TOKEN=BOT_TOKEN)
        assert result.returncode != 0
        assert ("SLACK_APP_TOKEN is not set (Socket Mode needs the app-level xapp- token; "
                "or run `replyloop serve --http`)") in result.stdout + result.stderr
        assert fake.calls_to("apps.connections.open") == []


def test_serve_with_a_bot_token_as_app_token_says_so(replyloop_home):
    with FakeSlack() as fake:
        write_config(replyloop_home, fake)
        result = run_serve(replyloop_home, SLACK_BOT_TOKEN=BOT_TOKEN, SLACK_APP_TOKEN=BOT_TOKEN)
        assert result.returncode != 0
        assert ("Error: Socket Mode could not connect: apps.connections.open answered 'not_allowed_token_type' "
                "(SLACK_APP_TOKEN must be the app-level xapp- token with the connections:write scope)"
                ) in result.stdout + result.stderr
        assert BOT_TOKEN not in result.stdout + result.stderr


def test_replyloop_serve_socket_subprocess_without_signing_secret(replyloop_home):
    """The real CLI: `replyloop serve --socket` with only SLACK_BOT_TOKEN and SLACK_APP_TOKEN
    connects, takes a click over the socket, and stops cleanly on SIGTERM."""
    from replyloop.config import load_config

    with FakeSlack(ping_interval=0.05) as fake:
        write_config(replyloop_home, fake)
        config = load_config(replyloop_home / "replyloop.yaml")
        with Store(config.db_path) as store:
            ingest(config, store, [QuestionIn("conv-1", "我的订单什么时候到？", "物流查询", "预计三天内送达。")],
                   source="http", checker=policy_checker(config))
        data = yaml.safe_load((replyloop_home / "replyloop.yaml").read_text(encoding="utf-8"))
        data["slack"]["supervisors"] = ["USUP1"]
        (replyloop_home / "replyloop.yaml").write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
        base = {k: v for k, v in os.environ.items() if not k.startswith("SLACK_")}
        proc = subprocess.Popen(
            [sys.executable, "-m", "replyloop", "serve", "--socket", "--no-scheduler", "--port", "0"],
            cwd=replyloop_home, env={**base, "REPLYLOOP_HOME": str(replyloop_home), "SLACK_BOT_TOKEN": BOT_TOKEN,
                                     "SLACK_APP_TOKEN": APP_TOKEN, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            fake.wait_for_socket(timeout=60)
            [card] = fake.wait_for("chat.postMessage", timeout=30)
            sim = Simulator(fake.url, "unused", fake)
            eid = fake.socket_send("interactive", sim.block_action(card, "approve", user="USUP1"))
            assert fake.wait_for_ack(eid) == {"envelope_id": eid}
            fake.wait_for("chat.update")
        finally:
            proc.terminate()
            output, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, output
        assert "Socket Mode; intake at /intake" in output
        for secret in (BOT_TOKEN, APP_TOKEN):
            assert secret not in output
        with Store(config.db_path) as store:
            assert store.scalar("SELECT count(*) FROM reviews WHERE decision = 'approve'") == 1
