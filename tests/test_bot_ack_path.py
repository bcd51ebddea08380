"""The path of a click to its ack (issue 15, benchmarks/bot_load.py): Approve and the Edit /
Reject submissions run on the request's own thread, not behind bolt's listener pool; accepted
connections send without Nagle's delay; the group commit keeps a refused decision out of the
batch; a decision that could not be stored is never acknowledged."""

from __future__ import annotations

import socket
import threading
import time

from bot_support import *  # noqa: F401,F403
from bot_support import close_env, make_env, wait_until

from replyloop.bot import cards
from replyloop.bot.app import LISTENER_THREADS
from replyloop.bot.fake_slack import Call
from replyloop.errors import ReplyloopError


def _reject_modal(env, draft_id: int) -> Call:
    """The views.open call the fake records when Reject is clicked on this draft's card."""
    draft = env.store.get_draft(draft_id)
    view = cards.reject_modal(draft, draft["slack_channel"], draft["slack_ts"])
    return Call("views.open", {"view": view}, {}, response={"view": {"id": f"V{draft_id}", "hash": "h"}})


def test_approve_and_reject_are_acknowledged_while_slow_listeners_hold_bolts_whole_pool(workspace):
    """More App Home openings than bolt has listener threads, each waiting 5 s on a slow
    views.publish: a click queued behind them would miss Slack's 3 s. Approve and a Reject
    submission are answered at once, decided before the answer."""
    env = make_env(workspace)
    try:
        (approve_id, card), (reject_id, _) = env.post_card(conversation="c-1"), env.post_card(conversation="c-2")
        env.fake.delay("views.publish", 5.0)
        for i in range(LISTENER_THREADS):
            assert env.sim.home_opened(f"UHOME{i:03d}").status == 200  # events: bolt acks them itself
        time.sleep(0.3)  # every listener thread is in a slow views.publish now
        assert env.fake.calls_to("views.publish") == []
        approved = env.sim.click(card, "approve", user="USUP1")
        rejected = env.sim.submit(_reject_modal(env, reject_id), "USUP2", {cards.REASON_BLOCK: "wrong order"})
        assert (approved.status, approved.body) == (200, "")
        assert (rejected.status, rejected.body) == (200, "")
        assert max(approved.elapsed_s, rejected.elapsed_s) < 3.0, (approved.elapsed_s, rejected.elapsed_s)
        assert env.store.one("SELECT reviewer, decision FROM reviews WHERE draft_id = ?", (approve_id,)) == \
            {"reviewer": "USUP1", "decision": "approve"}
        assert env.store.one("SELECT reviewer, decision, reason FROM reviews WHERE draft_id = ?", (reject_id,)) == \
            {"reviewer": "USUP2", "decision": "reject", "reason": "wrong order"}
        wait_until(lambda: len(env.fake.calls_to("views.publish")) == LISTENER_THREADS)
    finally:
        close_env(env)


def test_a_click_whose_decision_cannot_be_stored_is_not_acknowledged_and_slacks_retry_is(env):
    """The database refuses the review (a trigger standing in for a failing disk): the answer is
    500, so Slack shows the supervisor an error and retries; nothing is stored. The retry, once
    the database accepts writes again, stores the decision once."""
    draft_id, card = env.post_card()
    with env.store.transaction() as db:
        db.execute("CREATE TRIGGER refuse_reviews BEFORE INSERT ON reviews BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    refused = env.sim.click(card, "approve", user="USUP1")
    assert refused.status == 500
    assert env.store.scalar("SELECT count(*) FROM reviews") == 0
    assert env.store.scalar("SELECT count(*) FROM samples WHERE source = 'review'") == 0
    with env.store.transaction() as db:
        db.execute("DROP TRIGGER refuse_reviews")
    retried = env.sim.click(card, "approve", user="USUP1", retry_num=1)
    assert (retried.status, retried.body) == (200, "")
    assert env.store.scalar("SELECT count(*) FROM reviews WHERE draft_id = ?", (draft_id,)) == 1
    assert env.store.scalar("SELECT count(*) FROM samples WHERE source = 'review'") == 1


def test_accepted_connections_send_without_nagles_delay(env):
    """asyncio sets TCP_NODELAY only on sockets created with proto IPPROTO_TCP, and
    socket.create_server's are not: without it every answer after the first on a kept-alive
    connection waited for the client's delayed ACK (40 ms)."""
    for _ in range(3):  # kept alive: one connection
        assert env.sim.request("GET", "/health").status == 200
    guard = env.server._guard
    protocols = list(guard.untrusted)  # idle connections, the newest last
    assert protocols, "the server holds no idle connection"
    for protocol in protocols:
        sock = protocol.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_group_commit_keeps_a_refused_decision_out_and_commits_the_rest(workspace):
    """A decision refused after it wrote (here by a decision hook, as the outbox's could) is rolled
    back to its savepoint: no review, sample or audit row of it, while the decisions committed
    in the same batch are all there, each once."""
    from replyloop.bot.review import DecisionWriter
    from replyloop.dataio import QuestionIn
    from replyloop.intake import ingest

    config, store = workspace
    results = ingest(config, store, [QuestionIn(f"g-{i}", f"问 {i}", None, f"答 {i}") for i in range(24)],
                     source="http", checker=lambda t: {"verdict": "pass", "violations": []})
    refused = {r.draft_id for r in results[::4]}

    def hook(store_, draft, review):
        if draft["id"] in refused:
            raise ReplyloopError(f"draft {draft['id']}: the delivery target is gone")

    store.decision_hooks.append(hook)
    writer = DecisionWriter(store)
    outcomes: dict[int, str] = {}
    barrier = threading.Barrier(8)

    def decide(chunk) -> None:
        barrier.wait()  # together: the decisions form batches
        for r in chunk:
            try:
                writer.decide(r.draft_id, "approve", "USUP1")
                outcomes[r.draft_id] = "stored"
            except ReplyloopError:
                outcomes[r.draft_id] = "refused"

    threads = [threading.Thread(target=decide, args=(results[k::8],)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    writer.close()
    assert {d for d, o in outcomes.items() if o == "refused"} == refused
    stored = {r["draft_id"] for r in store.query("SELECT draft_id FROM reviews")}
    assert stored == {r.draft_id for r in results} - refused
    assert store.scalar("SELECT count(*) FROM samples WHERE source = 'review'") == len(stored)
    assert store.scalar("SELECT count(*) FROM audit_log WHERE action = 'review.approve'") == len(stored)
    try:
        writer.decide(results[1].draft_id, "approve", "USUP1")
    except RuntimeError as exc:
        assert "closed" in str(exc)
    else:
        raise AssertionError("a closed writer took a decision")


def test_background_checkpoints_keep_the_log_bounded_and_out_of_the_commits(workspace):
    """The bot's store checkpoints on its own thread: the connections' own checkpoints (a 20-160
    ms stall inside every ~110th decision's commit) only past a far limit, and the log still
    starts afresh, so it stays bounded; every decision is there and the database is sound."""
    from replyloop.dataio import QuestionIn
    from replyloop.intake import ingest
    from replyloop.store import BACKGROUND_AUTOCHECKPOINT

    config, store = workspace
    results = ingest(config, store, [QuestionIn(f"k-{i}", f"问 {i}", None, f"答 {i}") for i in range(300)],
                     source="http", checker=lambda t: {"verdict": "pass", "violations": []})
    stop = store.checkpoint_in_background(every_s=0.02, restart_after=300)
    frames = []
    try:
        seen: dict = {}
        other = threading.Thread(target=lambda: seen.update(
            auto=store.db.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]))
        other.start()
        other.join()
        assert seen["auto"] == BACKGROUND_AUTOCHECKPOINT  # a connection opened afterwards, on another thread
        for r in results:
            with store.transaction():
                store.decide(r.draft_id, "approve", "USUP1")
            if r.draft_id % 10 == 0:
                time.sleep(0.01)  # let the checkpoint thread run
                frames.append(store.db.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1])
    finally:
        stop()
    # 300 decisions write about 2,600 pages (review, sample, audit row, indexes): the log started
    # afresh past 300 frames (SQLite's own checkpoints would let it reach 1,000)
    assert 0 < max(frames) < 600, frames
    assert store.scalar("SELECT count(*) FROM reviews") == 300
    assert store.scalar("PRAGMA integrity_check") == "ok"
