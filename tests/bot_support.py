"""Shared set-up of the bot tests: the bot in HTTP mode on 127.0.0.1:0 against FakeSlack.

Import the fixtures into a test module with ``from bot_support import *``.
"""

from __future__ import annotations

import queue
import re
import time
from dataclasses import dataclass

import pytest

from replyloop.bot.app import Bot, create_bot
from replyloop.bot.fake_slack import FakeSlack
from replyloop.bot.server import BotServer
from replyloop.bot.simulate import Simulator
from replyloop.config import Config, Secrets
from replyloop.dataio import QuestionIn
from replyloop.intake import ingest
from replyloop.store import Store

BOT_TOKEN = "xoxb-0000-test-bot-token"
APP_TOKEN = "xapp-1-test-app-token"
SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
INTAKE_TOKEN = "intake-secret-token-1234"
REVIEW = "C0REVIEW"
INTAKE = "C0INTAKE"
SUPERVISORS = ["USUP1", "USUP2"]
GROUP = "S0SUPERVISORS"
GROUP_MEMBER = "UGROUP1"
OUTSIDER = "UOUTSIDER"


class PhraseRules:
    """A tiny real policy checker for tests while ``evaluation.policy`` is not in this branch:
    exact phrases with a severity (the engine's result shape: verdict + violations with spans)."""

    RULES = {"保证退款": ("no-refund-promise", "block", "Never promise a refund.", "按政策为您申请退款"),
             "100% guaranteed": ("no-guarantee", "block", "Never guarantee outcomes.", "we will do our best"),
             "马上": ("no-instant-promise", "warn", "Avoid promising instant results.", "尽快")}

    def __call__(self, text: str) -> dict:
        violations = []
        for phrase, (rule, severity, message, suggestion) in self.RULES.items():
            for m in re.finditer(re.escape(phrase), text):
                violations.append({"rule": rule, "severity": severity, "message": message, "start": m.start(),
                                   "end": m.end(), "match": m.group(0), "suggestion": suggestion})
        severities = {v["severity"] for v in violations}
        verdict = "block" if "block" in severities else "warn" if "warn" in severities else "pass"
        return {"verdict": verdict, "violations": violations}


class CannedDrafter:
    """Test double for the slow drafting model: returns a fixed reply and says which model."""

    def __init__(self, text: str = "您好，我们会尽快为您处理。"):
        self.text = text
        self.calls: list[tuple[str, str]] = []

    def draft(self, question: str, conversation_id: str):
        from types import SimpleNamespace

        self.calls.append((question, conversation_id))
        return SimpleNamespace(text=self.text, model_id=None, model_name="canned-test-model",
                               verdict="pass", violations=[])


class PipelineRecorder:
    """A real ``start_pipeline`` callable that records its calls and reports through notify."""

    def __init__(self):
        self.calls: list[dict] = []

    def __call__(self, trigger: str, requested_by: str, notify):
        self.calls.append({"trigger": trigger, "requested_by": requested_by})
        notify("Pipeline finished: training done, evaluation done, gate passed.")


@dataclass
class BotEnv:
    config: Config
    store: Store
    fake: FakeSlack
    bot: Bot
    server: BotServer
    sim: Simulator
    pipeline: PipelineRecorder

    def add_draft(self, question: str = "我的订单什么时候到？", draft: str = "您的订单预计三天内送达。",
                  category: str | None = "物流查询", conversation: str = "conv-1") -> int:
        [res] = ingest(self.config, self.store, [QuestionIn(conversation, question, category, draft)],
                       source="http", checker=self.bot.checker)
        return res.draft_id

    def post_card(self, **kwargs):
        """Store a draft, post its card through the bot; returns (draft_id, the recorded call)."""
        from replyloop.bot import review

        draft_id = self.add_draft(**kwargs)
        review.post_card(self.bot, draft_id)
        call = next(c for c in self.fake.calls_to("chat.postMessage")
                    if any(b.get("block_id") == f"review_{draft_id}" for b in c.params.get("blocks", [])))
        return draft_id, call

    def wait_review(self, draft_id: int, timeout: float = 10.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = self.store.one("SELECT * FROM reviews WHERE draft_id = ?", (draft_id,))
            if row:
                return row
            time.sleep(0.02)
        raise TimeoutError(f"no review of draft {draft_id}")


def make_env(workspace, drafter=None, checker=None, limits=None, **slack) -> BotEnv:
    config, store = workspace
    fake = FakeSlack(group_members={GROUP: [GROUP_MEMBER]}).start()
    s = config.file.slack
    s.api_base_url = fake.base_url
    s.review_channel = REVIEW
    s.intake_channel = INTAKE
    s.supervisors = list(SUPERVISORS)
    s.supervisor_group = GROUP
    for key, value in slack.items():
        setattr(s, key, value)
    secrets = Secrets(slack_bot_token=BOT_TOKEN, slack_app_token=APP_TOKEN, slack_signing_secret=SIGNING_SECRET,
                      intake_token=INTAKE_TOKEN)
    pipeline = PipelineRecorder()
    bot = create_bot(config, store, secrets, drafter=drafter, checker=checker or PhraseRules(),
                     start_pipeline=pipeline)
    server = BotServer(bot, limits=limits).start()
    return BotEnv(config, store, fake, bot, server, Simulator(server.url, SIGNING_SECRET, fake), pipeline)


def close_env(env: BotEnv) -> None:
    env.sim.close()
    env.server.stop()
    env.bot.close()
    env.fake.stop()


def wait_until(predicate, timeout: float = 10.0) -> None:
    """Poll ``predicate`` until it is true; TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.02)


@pytest.fixture
def env(workspace):
    e = make_env(workspace)
    yield e
    close_env(e)


@pytest.fixture
def env_drafting(workspace):
    e = make_env(workspace, drafter=CannedDrafter())
    yield e
    close_env(e)


__all__ = ["env", "env_drafting", "BotEnv", "PhraseRules", "CannedDrafter", "make_env", "close_env", "wait_until",
           "BOT_TOKEN", "APP_TOKEN", "SIGNING_SECRET", "INTAKE_TOKEN", "REVIEW", "INTAKE", "SUPERVISORS",
           "GROUP_MEMBER", "OUTSIDER"]


def wait_listening(lines: "queue.Queue[str | None]", output: list[str], timeout: float = 60) -> str:
    """The URL a `replyloop serve` subprocess prints in its "Listening on URL" line (``lines`` is
    fed by a thread reading its stdout, None at the end); AssertionError with ``output`` when it
    exits or does not listen within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            line = ""
        if line is None or time.monotonic() > deadline:
            raise AssertionError("serve did not start:\n" + "".join(output))
        if line.startswith("Listening on "):
            return line.split()[2]


def point_config_at_fake(config: Config, fake: FakeSlack, review_channel: str = "C0REVIEW") -> None:
    """Rewrite the workspace's replyloop.yaml: Slack at ``fake``, the review channel by id."""
    text = config.source.read_text(encoding="utf-8").replace(
        "api_base_url: https://slack.com/api/", f"api_base_url: {fake.base_url}").replace(
        "review_channel: cs-review", f"review_channel: {review_channel}")
    config.source.write_text(text, encoding="utf-8")


def seed_models(store, canary: bool = True, running_run: int = 1, finished_run: int = 2):
    """A champion (model 1, evaluated), optionally a 10% canary (model 2), a running training run
    and a finished one (which made the canary, else the champion) for /retrain status and history."""
    from replyloop import timeutil

    now = timeutil.now_iso()
    with store.transaction() as db:
        db.execute("INSERT INTO models (id, name, base_model, status, snapshot_hash, promoted_at, created_at)"
                   " VALUES (1, 'cs-lora-0001', 'tiny', 'champion', NULL, ?, ?)", (now, now))
        if canary:
            db.execute("INSERT INTO models (id, name, base_model, status, canary_percent, created_at)"
                       " VALUES (2, 'cs-lora-0002', 'tiny', 'canary', 10, ?)", (now,))
        db.execute("INSERT INTO evaluations (model_id, embedding_model, n, mean_similarity, share_above,"
                   " gate_passed, created_at) VALUES (1, 'minilm', 30, 0.812, 0.7, 1, ?)", (now,))
        db.execute("INSERT INTO training_runs (id, status, trigger, requested_by, step, total_steps, loss,"
                   " started_at) VALUES (?, 'running', 'scheduler', NULL, 12, 30, 1.2345, ?)", (running_run, now))
        db.execute("INSERT INTO training_runs (id, status, trigger, requested_by, loss, model_id, started_at,"
                   " finished_at) VALUES (?, 'succeeded', 'slack', 'USUP1', 0.5, ?, ?, ?)",
                   (finished_run, 2 if canary else 1, now, now))
