"""What Slack was told "200" for is stored, across a `kill -9` of a real `replyloop serve --http`:
Approve clicks, Edit and Reject submissions, intake-channel messages (and every `/intake` 201);
decided cards whose update was lost are updated after the restart."""

from __future__ import annotations

import signal
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from replyloop.bot import cards
from replyloop.bot.fake_slack import Call, FakeSlack
from replyloop.bot.simulate import Simulator
from test_reliability import SIGNING_SECRET, Serve, integrity, post_intake

SUPERVISORS = [f"USUP{i:02d}" for i in range(16)]
REVIEW = "C0REVIEW"


def write_config(home: Path, slack: FakeSlack) -> Path:
    from replyloop.config import write_default_config

    path = write_default_config(home)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["slack"].update({"api_base_url": slack.base_url, "review_channel": REVIEW, "supervisors": SUPERVISORS,
                          "intake_channel": "C0INTAKE"})
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def seed_drafts(home: Path, n: int) -> list[int]:
    from replyloop.config import load_config
    from replyloop.dataio import QuestionIn
    from replyloop.intake import ingest
    from replyloop.store import Store

    config = load_config(home / "replyloop.yaml")
    with Store(config.db_path) as store:
        results = ingest(config, store, [QuestionIn(f"kill-{i}", f"问题 {i}：订单 {i} 到哪了？", "物流查询",
                                                    f"您好，订单 {i} 预计三天内送达。") for i in range(n)],
                         source="http", checker=lambda t: {"verdict": "pass", "violations": []})
    return [r.draft_id for r in results]


def modal_call(draft: dict, kind: str) -> Call:
    """The views.open call the fake would have recorded for this draft's Edit / Reject modal."""
    view = (cards.edit_modal if kind == "edit" else cards.reject_modal)(draft, draft["slack_channel"], draft["slack_ts"])
    return Call("views.open", {"view": view}, {}, response={"view": {"id": f"V{draft['id']}", "hash": "h"}})


def kill_mid_burst(serve, worker, threads_n: int, acked: dict, kill_after: int, wait_s: float) -> None:
    """Run ``worker(k)`` in ``threads_n`` threads and ``kill -9`` the server once ``kill_after``
    requests were acknowledged (``acked`` is filled by the workers); wait for the workers."""
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(threads_n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + wait_s
    while len(acked) < kill_after and time.monotonic() < deadline:
        time.sleep(0.005)
    assert serve.stop(signal.SIGKILL) == -signal.SIGKILL
    for t in threads:
        t.join(wait_s / 2)


@pytest.mark.slow
def test_kill_9_mid_burst_loses_no_acknowledged_decision_and_fixes_cards_after_restart(replyloop_home):
    from replyloop.store import Store

    n = 300
    with FakeSlack() as slack:
        write_config(replyloop_home, slack)
        draft_ids = seed_drafts(replyloop_home, n)
        slack.delay("chat.update", 0.2)  # a slow Slack: many decisions are stored before their card update
        serve = Serve(replyloop_home, "--no-scheduler")
        acked: dict[int, tuple[str, str]] = {}   # draft id -> (decision, user) that got HTTP 200
        failed: Counter = Counter()
        lock = threading.Lock()
        try:
            url = serve.wait_listening()
            posted = slack.wait_for("chat.postMessage", n, timeout=120)
            card_of = {}
            for call in posted:
                [actions] = [b for b in call.params["blocks"] if b["type"] == "actions"]
                card_of[int(actions["elements"][0]["value"])] = call
            assert sorted(card_of) == sorted(draft_ids)
            db = replyloop_home / "replyloop.db"
            with Store(db) as store:
                deadline = time.monotonic() + 30
                while store.scalar("SELECT count(*) FROM drafts WHERE slack_ts IS NULL") and time.monotonic() < deadline:
                    time.sleep(0.05)
                drafts = {d: store.get_draft(d) for d in draft_ids}
            assert all(d["slack_ts"] for d in drafts.values())

            sim = Simulator(url, SIGNING_SECRET, slack)
            jobs = list(draft_ids)
            kill_after = 90  # acknowledged decisions before the kill: the burst is cut a third of the way in

            def worker(k: int) -> None:
                user = SUPERVISORS[k]
                for draft_id in jobs[k::len(SUPERVISORS)]:
                    kind = ("approve", "edit", "reject")[draft_id % 3]
                    try:
                        if kind == "approve":
                            resp = sim.click(card_of[draft_id], "approve", user)
                        elif kind == "edit":
                            resp = sim.submit(modal_call(drafts[draft_id], "edit"), user,
                                              {cards.REPLY_BLOCK: f"编辑后的回复 {draft_id}"})
                        else:
                            resp = sim.submit(modal_call(drafts[draft_id], "reject"), user,
                                              {cards.REASON_BLOCK: f"理由 {draft_id}"})
                    except OSError:
                        with lock:
                            failed["connection"] += 1
                        continue
                    with lock:
                        if resp.status == 200:
                            acked[draft_id] = (kind, user)
                        else:
                            failed[resp.status] += 1
                sim.close()

            kill_mid_burst(serve, worker, len(SUPERVISORS), acked, kill_after, wait_s=120)
        finally:
            if serve.proc.poll() is None:
                serve.stop(signal.SIGKILL)

        assert kill_after <= len(acked) < n, (len(acked), failed)  # killed mid-burst
        assert set(failed) <= {"connection"}, failed
        assert integrity(db) == "ok"
        with Store(db) as store:
            reviews = {r["draft_id"]: r for r in store.query("SELECT * FROM reviews")}
            for draft_id, (kind, user) in acked.items():  # every acknowledged decision is stored, as sent
                review = reviews.get(draft_id)
                assert review is not None, f"acknowledged {kind} of draft {draft_id} was lost"
                assert (review["decision"], review["reviewer"]) == (kind, user)
                if kind == "edit":
                    assert review["final_text"] == f"编辑后的回复 {draft_id}"
                if kind == "reject":
                    assert review["reason"] == f"理由 {draft_id}"
            # exactly once: one sample per approve / edit, one audit row per decision
            assert store.scalar("SELECT count(*) FROM samples WHERE source = 'review'") == sum(
                r["decision"] != "reject" for r in reviews.values())
            assert store.query("SELECT entity_id FROM audit_log WHERE action LIKE 'review.%'"
                               " GROUP BY entity_id HAVING count(*) > 1") == []
            assert store.scalar("SELECT count(*) FROM audit_log WHERE action LIKE 'review.%'") == len(reviews)
            lost_updates = store.scalar("SELECT count(*) FROM reviews WHERE card_updated_at IS NULL")
        assert lost_updates > 0  # the kill did cut card updates short (chat.update takes 0.2 s)

        # restart: the startup sweep replaces the buttons of every decided card whose update was lost
        slack.delay("chat.update", 0)
        before = len(slack.calls_to("chat.update"))
        again = Serve(replyloop_home, "--no-scheduler")
        try:
            again.wait_listening()
            with Store(db) as store:
                deadline = time.monotonic() + 60
                while store.scalar("SELECT count(*) FROM reviews WHERE card_updated_at IS NULL") and \
                        time.monotonic() < deadline:
                    time.sleep(0.1)
                assert store.scalar("SELECT count(*) FROM reviews WHERE card_updated_at IS NULL") == 0
                decided = {r["draft_id"] for r in store.query("SELECT draft_id FROM reviews")}
        finally:
            assert again.stop() == 0, "".join(again.output)
        updates = slack.calls_to("chat.update")
        assert len(updates) - before >= lost_updates
        updated_ts = {c.params["ts"] for c in updates}
        assert {drafts[d]["slack_ts"] for d in decided} <= updated_ts  # every decided card lost its buttons
        assert not slack.calls_to("chat.update:invalid")
        assert len(slack.calls_to("chat.postMessage")) == n  # no card posted twice
        assert integrity(db) == "ok"


@pytest.mark.slow
def test_kill_9_after_intake_message_200_keeps_the_question(replyloop_home):
    """A channel message is stored before Slack hears 200; the drafting (here: no model) and the
    card come later, after a restart if need be. Its retry is not stored twice."""
    from replyloop.store import Store

    with FakeSlack() as slack:
        write_config(replyloop_home, slack)
        serve = Serve(replyloop_home, "--no-scheduler")
        try:
            url = serve.wait_listening()
            sim = Simulator(url, SIGNING_SECRET, slack)
            ok = [sim.message("C0INTAKE", f"第 {i} 个问题", user="UCUSTOMER", ts=f"1700000000.{i:06d}").status
                  for i in range(30)]
            serve.stop(signal.SIGKILL)
        finally:
            if serve.proc.poll() is None:
                serve.stop(signal.SIGKILL)
        assert ok == [200] * 30
        db = replyloop_home / "replyloop.db"
        assert integrity(db) == "ok"
        with Store(db) as store:
            assert store.scalar("SELECT count(*) FROM questions WHERE source = 'slack'") == 30
        again = Serve(replyloop_home, "--no-scheduler")
        try:
            sim = Simulator(again.wait_listening(), SIGNING_SECRET, slack)
            assert sim.message("C0INTAKE", "第 3 个问题", user="UCUSTOMER", ts="1700000000.000003",
                               retry_num=1).status == 200
        finally:
            assert again.stop() == 0
        with Store(db) as store:
            assert store.scalar("SELECT count(*) FROM questions") == 30
            assert store.scalar("SELECT count(*) FROM intake_events WHERE state = 'question'") == 30
        conn = sqlite3.connect(db)
        try:
            assert conn.execute("SELECT count(DISTINCT conversation_id) FROM questions").fetchone()[0] == 30
        finally:
            conn.close()


@pytest.mark.slow
def test_kill_9_mid_intake_burst_keeps_every_201(replyloop_home):
    """`POST /intake` from several threads, `kill -9` of `serve` mid-burst: every question that got
    a 201 is stored exactly once, with its draft, under the ids the 201 named."""
    import urllib.error

    from replyloop.store import Store

    threads_n, per_thread, kill_after = 8, 60, 80
    with FakeSlack() as slack:
        write_config(replyloop_home, slack)
        slack.delay("chat.postMessage", 0.2)  # a slow Slack: the card posting after each 201 queues up
        serve = Serve(replyloop_home, "--no-scheduler")
        acked: dict[str, dict] = {}  # conversation id -> the 201's body
        failed: Counter = Counter()
        lock = threading.Lock()
        try:
            url = serve.wait_listening()

            def worker(k: int) -> None:
                for i in range(per_thread):
                    conv = f"web-{k}-{i}"
                    payload = {"conversation_id": conv, "question": f"问题 {k}-{i}：能开发票吗？", "category": "发票",
                               "draft": f"您好，可以开发票（{k}-{i}）。"}
                    try:
                        status, body = post_intake(url, payload)
                    except urllib.error.HTTPError as exc:
                        status, body = exc.code, None
                    except OSError:  # the server is gone
                        with lock:
                            failed["connection"] += 1
                        return
                    with lock:
                        if status == 201:
                            acked[conv] = body
                        else:
                            failed[status] += 1

            kill_mid_burst(serve, worker, threads_n, acked, kill_after, wait_s=60)
        finally:
            if serve.proc.poll() is None:
                serve.stop(signal.SIGKILL)
        posted = len(slack.calls_to("chat.postMessage"))

    assert kill_after <= len(acked) < threads_n * per_thread, (len(acked), failed)  # killed mid-burst
    assert set(failed) <= {"connection"}, failed
    db = replyloop_home / "replyloop.db"
    assert integrity(db) == "ok"
    with Store(db) as store:
        questions = {q["conversation_id"]: q for q in store.query("SELECT * FROM questions WHERE source = 'http'")}
        assert store.query("SELECT conversation_id FROM questions GROUP BY conversation_id HAVING count(*) > 1") == []
        lost = sorted(set(acked) - set(questions))
        assert lost == [], f"{len(lost)} of {len(acked)} questions that got a 201 were lost"
        for conv, body in acked.items():
            q = questions[conv]
            k, i = conv.removeprefix("web-").split("-")
            assert (q["id"], q["text"], q["category"]) == (body["question_id"], f"问题 {k}-{i}：能开发票吗？",
                                                           "发票")
            draft = store.get_draft(body["draft_id"])
            assert (draft["question_id"], draft["text"]) == (q["id"], f"您好，可以开发票（{k}-{i}）。")
        assert store.scalar("SELECT count(*) FROM drafts") == len(questions)
    assert posted < len(acked)  # the kill did cut card posting short: the 201 never waited for Slack


# -- in process: the bot on 127.0.0.1 against FakeSlack, bolt real, requests signed ------------------

from bot_support import CannedDrafter, INTAKE, INTAKE_TOKEN, close_env, env_drafting, make_env, wait_until  # noqa: E402,F401


class DownDrafter(CannedDrafter):
    """The drafting model is down (until ``up`` is set)."""

    def __init__(self):
        super().__init__()
        self.up = False

    def draft(self, question, conversation_id):
        if not self.up:
            self.calls.append((question, conversation_id))
            raise ConnectionRefusedError("drafting backend at 127.0.0.1:9 refused the connection")
        return super().draft(question, conversation_id)


class SlowDrafter(CannedDrafter):
    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds

    def draft(self, question, conversation_id):
        time.sleep(self.seconds)
        return super().draft(question, conversation_id)


def test_channel_message_is_stored_before_the_ack_even_with_the_model_down(workspace):
    from replyloop.bot.server import sweep

    env = make_env(workspace, drafter=DownDrafter())
    try:
        resp = env.sim.message(INTAKE, "快递丢了怎么办", user="UCUSTOMER", ts="1700000000.000100")
        assert resp.status == 200
        # stored by the time Slack has its 200 (no waiting here)
        [q] = env.store.query("SELECT * FROM questions")
        assert (q["text"], q["source"], q["conversation_id"]) == ("快递丢了怎么办", "slack", f"slack:{INTAKE}:1700000000.000100")
        wait_until(lambda: len(env.bot.drafter.calls) == 1)  # drafting was tried after the ack, and failed
        time.sleep(0.2)
        assert env.store.scalar("SELECT count(*) FROM drafts") == 0
        # Slack's retries are spotted by the dedup key before any drafting
        for retry in (1, 2):
            assert env.sim.message(INTAKE, "快递丢了怎么办", user="UCUSTOMER", ts="1700000000.000100",
                                   retry_num=retry).status == 200
        time.sleep(0.3)
        assert len(env.bot.drafter.calls) == 1 and env.store.scalar("SELECT count(*) FROM questions") == 1
        # the model is back: the sweep drafts the stored question and posts its card
        env.bot.drafter.up = True
        assert sweep(env.bot) == 1
        [card] = env.fake.wait_for("chat.postMessage")
        assert "快递丢了怎么办" in str(card.params["blocks"])
    finally:
        close_env(env)


def test_two_equal_messages_in_one_thread_are_two_questions(env_drafting):
    env = env_drafting
    for ts in ("1700000000.000200", "1700000000.000300"):
        env.sim.event({"type": "message", "channel": INTAKE, "user": "UCUSTOMER", "text": "还在吗？", "ts": ts,
                       "thread_ts": "1700000000.000100"})
    wait_until(lambda: env.store.scalar("SELECT count(*) FROM drafts") == 2)
    assert {r["conversation_id"] for r in env.store.query("SELECT * FROM questions")} == {
        f"slack:{INTAKE}:1700000000.000100"}


def test_http_intake_201_means_stored_even_when_drafting_fails(workspace):
    from replyloop.bot.server import sweep

    env = make_env(workspace, drafter=DownDrafter())
    try:
        resp = env.sim.intake({"conversation_id": "web-1", "question": "能开发票吗"}, INTAKE_TOKEN)
        assert resp.status == 201, resp.body
        body = resp.json()
        assert body["ok"] and body["draft_id"] is None and body["question_id"]
        assert env.store.scalar("SELECT text FROM questions WHERE id = ?", (body["question_id"],)) == "能开发票吗"
        env.bot.drafter.up = True
        assert sweep(env.bot) == 1
        assert env.store.scalar("SELECT count(*) FROM drafts WHERE question_id = ?", (body["question_id"],)) == 1
    finally:
        close_env(env)


def test_clicks_are_acknowledged_within_3_s_during_a_burst_of_slow_drafts(workspace):
    """40 intake messages with a model that takes 5 s a draft: more than bolt's 32 listener
    threads would be held if drafting ran on them. Approve clicks meanwhile answer at once."""
    env = make_env(workspace, drafter=SlowDrafter(5.0))
    try:
        posted = [env.post_card(question=f"问题 {i}", conversation=f"c-{i}") for i in range(8)]
        started = time.monotonic()
        for i in range(40):
            assert env.sim.message(INTAKE, f"慢问题 {i}", user="UCUSTOMER", ts=f"1700000001.{i:06d}").status == 200
        assert env.store.scalar("SELECT count(*) FROM questions WHERE source = 'slack'") == 40  # all stored
        time.sleep(0.5)  # the drafting queue is busy now
        elapsed = []
        for draft_id, card in posted:
            resp = env.sim.click(card, "approve", user="USUP1")
            assert resp.status == 200
            elapsed.append(resp.elapsed_s)
        assert time.monotonic() - started < 5.0  # still inside the first slow drafts
        assert max(elapsed) < 3.0, elapsed
        for draft_id, _ in posted:  # and decided, before the ack
            assert env.store.one("SELECT * FROM reviews WHERE draft_id = ?", (draft_id,))["reviewer"] == "USUP1"
        assert env.store.scalar("SELECT count(*) FROM drafts d JOIN questions q ON q.id = d.question_id"
                                " WHERE q.source = 'slack'") <= 2  # two drafting threads, 5 s each
    finally:
        close_env(env)


def test_file_share_and_thread_broadcast_are_questions_other_subtypes_are_not(env_drafting):
    env = env_drafting
    env.sim.event({"type": "message", "subtype": "file_share", "channel": INTAKE, "user": "UCUSTOMER",
                   "text": "这个发票对吗？", "ts": "1700000000.000100",
                   "files": [{"id": "F1", "name": "invoice.pdf", "filetype": "pdf"},
                             {"id": "F2", "title": "收据照片", "filetype": "jpg"}]})
    env.sim.event({"type": "message", "subtype": "file_share", "channel": INTAKE, "user": "UCUSTOMER",
                   "text": "", "ts": "1700000000.000150", "files": [{"id": "F3", "name": "photo.png"}]})
    env.sim.event({"type": "message", "subtype": "thread_broadcast", "channel": INTAKE, "user": "UCUSTOMER",
                   "text": "补充：订单号 123", "ts": "1700000000.000300", "thread_ts": "1700000000.000100"})
    for subtype, extra in (("message_changed", {"message": {"text": "改过的"}}), ("message_deleted", {}),
                           ("channel_join", {"text": "<@UCUSTOMER> has joined the channel"}),
                           ("bot_message", {"bot_id": "B1", "text": "bot says"}),
                           ("me_message", {"text": "waves"})):
        env.sim.event({"type": "message", "subtype": subtype, "channel": INTAKE, "user": "UCUSTOMER",
                       "ts": "1700000000.000400", **extra})
    wait_until(lambda: env.store.scalar("SELECT count(*) FROM drafts") == 3)
    time.sleep(0.3)
    rows = env.store.query("SELECT text, conversation_id FROM questions ORDER BY id")
    assert rows == [
        {"text": "这个发票对吗？\n[attachment: invoice.pdf, 收据照片]", "conversation_id": f"slack:{INTAKE}:1700000000.000100"},
        {"text": "[attachment: photo.png]", "conversation_id": f"slack:{INTAKE}:1700000000.000150"},
        {"text": "补充：订单号 123", "conversation_id": f"slack:{INTAKE}:1700000000.000100"},
    ]


def test_hostile_clicks_submissions_and_events_are_answered_and_change_nothing(env_drafting):
    env = env_drafting
    draft_id, card = env.post_card()
    huge = env.sim.block_action(card, "approve", "USUP1")
    huge["actions"][0]["value"] = "9" * 30  # past SQLite's integers
    assert env.sim.post_payload(huge).status == 200
    note = env.fake.wait_for("chat.postEphemeral")[0]
    assert note.params["text"] == f"button value {'9' * 30!r} is not a draft id"
    view = modal_call({**env.store.get_draft(draft_id), "slack_channel": REVIEW}, "reject")
    for metadata in ('{"draft_id": ' + "9" * 30 + "}", '{"draft_id": true}', "[]", "not json"):
        view.params["view"]["private_metadata"] = metadata
        assert env.sim.submit(view, "USUP1", {cards.REASON_BLOCK: "x"}).status == 200
    for event in ({"type": "message", "channel": INTAKE, "user": "U1", "ts": "1700000000.1", "text": 5},
                  {"type": "message", "channel": INTAKE, "user": "U1", "ts": "1700000000.2", "text": "a",
                   "subtype": "file_share", "files": 7},
                  {"type": "message", "channel": INTAKE, "user": "U1", "ts": 17, "text": "b"},
                  {"type": "message", "channel": ["x"], "user": "U1", "ts": "1700000000.3", "text": "c"},
                  {"type": "message", "channel": INTAKE, "user": "U1", "ts": "1700000000.4", "text": "d",
                   "thread_ts": {"x": 1}}):
        assert env.sim.event(event).status == 200, event
    wait_until(lambda: env.store.scalar("SELECT count(*) FROM questions") == 3)  # the one seeded, "a", "d"
    assert env.store.scalar("SELECT count(*) FROM reviews") == 0
    texts = [r["text"] for r in env.store.query("SELECT text FROM questions ORDER BY id")]
    assert texts[1:] == ["a", "d"]


def test_decision_writer_commits_batches_with_refusals_and_races_inside(workspace):
    from replyloop.bot.review import DecisionWriter
    from replyloop.dataio import QuestionIn
    from replyloop.errors import NotFoundError
    from replyloop.intake import ingest
    from replyloop.store import BlockedDraftError

    config, store = workspace
    rules = {"保证退款": "block"}
    check = lambda t: ({"verdict": "block", "violations": [{"rule": "r", "severity": "block"}]}
                       if any(p in t for p in rules) else {"verdict": "pass", "violations": []})
    results = ingest(config, store, [QuestionIn(f"w-{i}", f"问 {i}", None, "我们保证退款" if i % 5 == 0 else f"答 {i}")
                                     for i in range(40)], source="http", checker=check)
    writer = DecisionWriter(store)
    outcomes: dict = {}
    lock = threading.Lock()

    def click(k: int) -> None:
        for r in results:  # every thread decides every draft: one wins each
            try:
                d = writer.decide(r.draft_id, "approve", f"U{k}")
                value = ("created" if d.created else "lost", d.review["reviewer"])
            except BlockedDraftError:
                value = ("blocked", None)
            with lock:
                outcomes.setdefault(r.draft_id, []).append(value)

    threads = [threading.Thread(target=click, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with pytest.raises(NotFoundError):
        writer.decide(10**6, "approve", "U1")
    writer.close()
    for i, r in enumerate(results):
        kinds = [o[0] for o in outcomes[r.draft_id]]
        if i % 5 == 0:
            assert kinds == ["blocked"] * 8
        else:
            assert kinds.count("created") == 1 and kinds.count("lost") == 7
            winner = next(o[1] for o in outcomes[r.draft_id] if o[0] == "created")
            assert {o[1] for o in outcomes[r.draft_id]} == {winner}  # the losers were told the winner
    assert store.scalar("SELECT count(*) FROM reviews") == 32
    assert store.scalar("SELECT count(*) FROM samples WHERE source = 'review'") == 32
    assert store.scalar("SELECT count(*) FROM audit_log WHERE action = 'review.approve'") == 32
