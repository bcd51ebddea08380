"""Delivery of decided replies (replyloop.outbox): events written in the decision's transaction,
signed webhook deliveries with retries / Retry-After / dead letters against a real local receiver,
Slack thread replies through the fake Slack, the callback_url allow-list, and `kill -9` of a real
`replyloop serve` in the middle of delivery."""

from __future__ import annotations

import json
import signal
import time

import pytest
import yaml

from bot_support import INTAKE, INTAKE_TOKEN, SUPERVISORS, close_env, make_env, wait_until
from delivery_support import WEBHOOK_SECRET, Receiver
from helpers import cli
from replyloop import outbox
from replyloop.dataio import QuestionIn
from replyloop.intake import store_questions

PASS = lambda text: {"verdict": "pass", "violations": []}  # noqa: E731


def _drafts(config, store, n, source="http", prefix="conv"):
    results = store_questions(store, [QuestionIn(f"{prefix}-{i}", f"订单 {i} 什么时候到？", "物流查询",
                                                 f"您好，订单 {i} 预计三天内送达。") for i in range(n)],
                              source=source, checker=PASS)
    return [r.draft_id for r in results]


def _events(store):
    return [dict(r, payload=json.loads(r["payload"])) for r in store.query("SELECT * FROM outbox ORDER BY id")]


def test_every_decision_writes_its_event_in_the_decision_transaction(workspace):
    config, store = workspace
    config.file.delivery.sources = {"http": ["webhook"]}
    config.file.delivery.webhook.url = "https://helpdesk.example.com/replies"
    outbox.install(store, config)
    outbox.install(store, config)  # once per store
    a, b, c, d = _drafts(config, store, 4)
    store.decide(a, "approve", "USUP1")
    store.decide(b, "edit", "USUP2", final_text="改过的回复")
    store.decide(c, "reject", "USUP1", reason="答非所问")
    assert not store.decide(a, "approve", "USUP2").created  # a double click: no second event
    events = _events(store)
    assert [(e["payload"]["decision"], e["payload"]["final_text"], e["payload"]["decided_by"]) for e in events] == [
        ("approve", "您好，订单 0 预计三天内送达。", "USUP1"), ("edit", "改过的回复", "USUP2"), ("reject", None, "USUP1")]
    first = events[0]["payload"]
    assert first["type"] == "reply.decided" and first["conversation_id"] == "conv-0"
    assert first["question_id"] == store.get_draft(a)["question_id"] and first["model"] == "external"
    assert first["decided_at"] == store.get_draft(a)["decided_at"]
    assert {e["target"] for e in events} == {"webhook"} and {e["state"] for e in events} == {"pending"}
    assert len({e["event_id"] for e in events}) == 3

    # the decision's transaction rolls back: neither the decision nor its event exists
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.decide(d, "approve", "USUP1")
            raise RuntimeError("crash before the commit")
    assert store.get_draft(d)["review_id"] is None and len(_events(store)) == 3

    # post-hoc QA mode: a source without targets delivers nothing
    [e] = _drafts(config, store, 1, source="import", prefix="qa")
    store.decide(e, "approve", "USUP1")
    assert len(_events(store)) == 3


def test_webhook_is_signed_retried_with_backoff_and_honours_retry_after(workspace, monkeypatch):
    config, store = workspace
    with Receiver() as rx:
        opts = config.file.delivery
        opts.sources = {"http": ["webhook"]}
        opts.webhook.url = rx.url
        opts.webhook.allow_plain_http = True
        opts.backoff_base_s = 0.05
        outbox.install(store, config)
        rx.behaviour.script = [500, 429]
        rx.behaviour.retry_after = "1"
        [a] = _drafts(config, store, 1)
        store.decide(a, "approve", "USUP1")
        sender = outbox.Sender(store, config, WEBHOOK_SECRET).start()
        try:
            started = time.time()
            [event_id] = rx.wait_for(1, timeout=15)
            took = time.time() - started
        finally:
            sender.close()
        [row] = _events(store)
        assert row["event_id"] == event_id and row["state"] == "delivered" and row["attempts"] == 3
        assert took >= 1.0  # the 429's Retry-After: 1 was waited for
        assert rx.requests == 3 and rx.bad_signatures == 0
        [receipt] = rx.receipts
        assert receipt.headers["Idempotency-Key"] == event_id == receipt.body["id"]
        assert receipt.headers["X-Replyloop-Attempt"] == "3"
        assert outbox.verify(WEBHOOK_SECRET, receipt.headers[outbox.TIMESTAMP_HEADER],
                             json.dumps(receipt.body, ensure_ascii=False, sort_keys=True).encode(),
                             receipt.headers[outbox.SIGNATURE_HEADER])
        # a wrong secret is refused by the receiver (401): dead-lettered at once, not retried forever
        [b] = _drafts(config, store, 1, prefix="b")
        store.decide(b, "approve", "USUP1")
        bad = outbox.Sender(store, config, "not-the-secret")
        row = store.one("SELECT id FROM outbox WHERE state = 'pending'")
        assert bad.deliver(row["id"]) == "dead"
        assert "HTTP 401" in store.one("SELECT last_error FROM outbox WHERE id = ?", (row["id"],))["last_error"]


def test_dead_letters_show_in_health_app_home_and_the_cli_and_retry_delivers(workspace, monkeypatch):
    config, store = workspace
    monkeypatch.setenv("REPLYLOOP_WEBHOOK_SECRET", WEBHOOK_SECRET)
    with Receiver() as rx:
        opts = config.file.delivery
        opts.sources = {"http": ["webhook"]}
        opts.webhook.url = rx.url
        opts.webhook.allow_plain_http = True
        opts.backoff_base_s = 0.01
        opts.max_attempts = 3
        rx.behaviour.fail_rate = 1.0
        env = make_env((config, store))
        try:
            draft_id, card = env.post_card()
            assert env.sim.click(card, "approve", SUPERVISORS[0]).status == 200
            wait_until(lambda: outbox.dead_count(store) == 1, timeout=15)
            assert rx.requests == 3 and not rx.receipts
            health = env.sim.request("GET", "/health").json()
            assert health["outbox_dead"] == 1
            from replyloop.bot import cards, status
            home = cards.home_view(status.home(store))
            [line] = [b for b in home["blocks"] if b.get("block_id") == "delivery"]
            assert "1 dead-lettered" in line["text"]["text"]

            run = lambda *args: cli("outbox", *args)  # noqa: E731  (the real CLI, in-process)
            listed = run("list")
            assert listed.exit_code == 0, listed.output
            assert "0 delivered, 0 pending, 1 dead-lettered" in listed.output and "HTTP 500" in listed.output
            refused = run("retry")
            assert (refused.exit_code, refused.output) == (2, "Error: name the outbox ids to retry, or use --all-dead\n")
            assert run("retry", "999").output == "Error: outbox id(s) not found: 999\n"
            assert run("list", "--state", "lost").exit_code == 2
            rx.behaviour.fail_rate = 0.0
            retried = run("retry", "--all-dead")
            assert retried.output == "1 event(s) queued for delivery again\n"
            rx.wait_for(1, timeout=15)  # the running bot's sender picks it up
            wait_until(lambda: outbox.counts(store)["delivered"] == 1)
            assert store.one("SELECT action FROM audit_log WHERE action = 'outbox.retry'")
            assert env.sim.request("GET", "/health").json()["outbox_dead"] == 0
        finally:
            close_env(env)


def test_slack_question_gets_its_reply_in_the_thread_and_a_rejection_does_not(workspace):
    config, store = workspace
    config.file.delivery.sources = {"slack": ["slack_thread"]}
    env = make_env((config, store))
    try:
        thread = "1700000000.000100"
        [ok, no] = store_questions(store, [QuestionIn(f"slack:{INTAKE}:{thread}", "退货怎么办？", None, "七天内可以退货。"),
                                           QuestionIn(f"slack:{INTAKE}:1700000000.000200", "能便宜点吗？", None, "可以。")],
                                   "slack", checker=PASS)
        from replyloop.bot import review
        for r in (ok, no):
            review.post_card(env.bot, r.draft_id)
        store.decide(no.draft_id, "reject", SUPERVISORS[0], reason="不能承诺")
        assert env.sim.click(next(c for c in env.fake.calls_to("chat.postMessage")
                                  if any(b.get("block_id") == f"review_{ok.draft_id}" for b in c.params["blocks"])),
                             "approve", SUPERVISORS[0]).status == 200
        wait_until(lambda: any(c.params.get("thread_ts") for c in env.fake.calls_to("chat.postMessage")))
        wait_until(lambda: outbox.counts(store)["delivered"] == 1)
        [reply] = [c for c in env.fake.calls_to("chat.postMessage") if c.params.get("thread_ts")]
        assert (reply.params["channel"], reply.params["thread_ts"], reply.params["text"]) == (INTAKE, thread,
                                                                                               "七天内可以退货。")
        assert [e["target"] for e in _events(store)] == ["slack_thread"]  # the rejection: nothing for the customer
    finally:
        close_env(env)


def test_a_thread_reply_started_before_a_crash_is_not_posted_twice(workspace):
    """Slack has no idempotency key: a reply whose post was started (``sending_at``) is looked up in
    the thread by the event id in its metadata before it is posted again."""
    config, store = workspace
    config.file.delivery.sources = {"slack": ["slack_thread"]}
    env = make_env((config, store))
    try:
        threads = ["1700000000.000300", "1700000000.000400"]
        results = store_questions(store, [QuestionIn(f"slack:{INTAKE}:{t}", f"问题{i}？", None, f"回复{i}。")
                                          for i, t in enumerate(threads)], "slack", checker=PASS)
        for r in results:
            store.decide(r.draft_id, "approve", SUPERVISORS[0])
        wait_until(lambda: outbox.counts(store)["delivered"] == 2)
        posts = lambda: [c for c in env.fake.calls_to("chat.postMessage") if c.params.get("thread_ts")]  # noqa: E731
        assert len(posts()) == 2
        env.bot.outbox.close()  # the process dies ...
        # a crash after Slack's answer, before the 'delivered' mark: pending again, the post started
        first, second = store.query("SELECT id FROM outbox ORDER BY id")
        with store.transaction() as db:
            db.execute("UPDATE outbox SET state = 'pending', delivered_at = NULL, next_at = 0 WHERE id = ?",
                       (first["id"],))
            # ... and one whose post never reached Slack: started, but not in the thread
            db.execute("DELETE FROM outbox WHERE id = ?", (second["id"],))
        qid = store.add_question("问题2？", f"slack:{INTAKE}:1700000000.000500", source="slack")
        store.decide(store.add_draft(qid, "回复2。"), "approve", SUPERVISORS[0])
        third = store.one("SELECT id FROM outbox ORDER BY id DESC LIMIT 1")["id"]
        with store.transaction() as db:
            db.execute("UPDATE outbox SET sending_at = 1 WHERE id = ?", (third,))
        from replyloop.bot import delivery

        # ... and restarts
        sender = outbox.Sender(store, config, None, slack_post=delivery.slack_poster(env.bot),
                               slack_posted=delivery.slack_posted(env.bot)).start()
        try:
            wait_until(lambda: outbox.counts(store)["delivered"] == 2 and outbox.counts(store)["pending"] == 0)
        finally:
            sender.close()
        assert sorted(c.params["thread_ts"] for c in posts()) == [*threads, "1700000000.000500"]  # once each
        assert len(env.fake.calls_to("conversations.replies")) == 2
    finally:
        close_env(env)


def test_callback_url_allow_list_refuses_private_addresses_and_redirects(workspace, monkeypatch):
    config, store = workspace
    opts = config.file.delivery
    opts.webhook.allow_plain_http = True
    check = lambda url: outbox.check_callback_url(url, opts)  # noqa: E731
    with pytest.raises(outbox.CallbackURLError, match="delivery.callback_hosts is empty"):
        check("https://helpdesk.example.com/x")
    opts.callback_hosts = ["*.example.com", "localhost", "127.0.0.1", "169.254.169.254", "10.0.0.7", "::1",
                           "::ffff:127.0.0.1", "0.0.0.0"]
    for url, why in [("ftp://a.example.com/x", "scheme"), ("https://user:pw@a.example.com/", "user:password"),
                     ("https://evil.com/x", "not on delivery.callback_hosts"),
                     ("http://127.0.0.1:9/x", "loopback"), ("http://localhost/x", "loopback"),
                     ("http://169.254.169.254/latest/meta-data", "link-local"), ("http://10.0.0.7/", "private"),
                     ("http://[::1]/x", "loopback"), ("http://[::ffff:127.0.0.1]/x", "loopback"),
                     ("http://0.0.0.0/", "unspecified"), ("https://a.example.com:99999/", "bad port")]:
        with pytest.raises(outbox.CallbackURLError, match=why):
            check(url)
    opts.webhook.allow_plain_http = False
    with pytest.raises(outbox.CallbackURLError, match="must be https://"):
        check("http://a.example.com/")

    # over /intake: refused with 400 and nothing stored; allowed once the network is allowed
    monkeypatch.setenv("REPLYLOOP_WEBHOOK_SECRET", WEBHOOK_SECRET)
    opts.webhook.allow_plain_http = True
    with Receiver() as rx, Receiver(path="/elsewhere") as other:
        env = make_env((config, store))
        try:
            body = {"conversation_id": "c-1", "question": "在吗？", "draft": "在的。", "callback_url": rx.url}
            post = lambda b: env.sim.request("POST", "/intake", json.dumps(b, ensure_ascii=False),  # noqa: E731
                                             {"Authorization": f"Bearer {INTAKE_TOKEN}",
                                              "Content-Type": "application/json"})
            refused = post(body)
            assert refused.status == 400 and "127.0.0.1 is a loopback address" in refused.json()["error"]
            assert store.scalar("SELECT count(*) FROM questions") == 0
            assert post({**body, "callback_url": 5}).status == 400
            opts.callback_networks = ["127.0.0.0/8"]
            accepted = post(body)
            assert accepted.status == 201, accepted.json()
            store.decide(accepted.json()["draft_id"], "approve", SUPERVISORS[0])
            [got] = rx.wait_for(1)
            assert rx.receipts[0].body["conversation_id"] == "c-1"
            # the receiver answers a redirect: not followed, dead-lettered, nothing reaches the other one
            rx.behaviour.redirect_to = other.url
            second = post({**body, "conversation_id": "c-2"})
            store.decide(second.json()["draft_id"], "approve", SUPERVISORS[0])
            wait_until(lambda: outbox.dead_count(store) == 1)
            assert other.requests == 0
            assert "redirects are not followed" in store.one("SELECT last_error FROM outbox WHERE state = 'dead'")[
                "last_error"]
            # the allow-list is checked again at send time: the network allowed then is refused now
            rx.behaviour.redirect_to = None
            third = post({**body, "conversation_id": "c-3"})
            opts.callback_networks = []
            store.decide(third.json()["draft_id"], "approve", SUPERVISORS[0])
            wait_until(lambda: outbox.dead_count(store) == 2)
            assert len(rx.receipts) == 1
        finally:
            close_env(env)


def test_https_callback_connects_to_the_checked_address_and_verifies_the_certificate(workspace, tmp_path):
    import shutil
    import ssl

    from delivery_support import self_signed

    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test certificate")
    config, store = workspace
    cert, key = self_signed(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    trusting = ssl.create_default_context(cafile=str(cert))
    opts = config.file.delivery
    opts.callback_hosts, opts.callback_networks = ["localhost"], ["127.0.0.0/8", "::1/128"]
    with Receiver(tls=server_ctx, host="localhost") as rx:
        outbox.install(store, config)
        url = outbox.check_callback_url(rx.url, opts)
        [r] = store_questions(store, [QuestionIn("tls-1", "在吗？", None, "在的。", callback_url=url)], "http",
                              checker=PASS)
        store.decide(r.draft_id, "approve", "USUP1")
        [row] = _events(store)
        assert (row["target"], row["url"]) == ("webhook", rx.url)
        assert outbox.Sender(store, config, WEBHOOK_SECRET, context=trusting).deliver(row["id"]) == "delivered"
        assert rx.receipts[0].body["conversation_id"] == "tls-1"
        # a certificate the client does not trust: retried (not delivered), never sent in clear
        [r2] = store_questions(store, [QuestionIn("tls-2", "在吗？", None, "在的。", callback_url=url)], "http",
                               checker=PASS)
        store.decide(r2.draft_id, "approve", "USUP1")
        second = store.one("SELECT id FROM outbox WHERE state = 'pending'")["id"]
        assert outbox.Sender(store, config, WEBHOOK_SECRET).deliver(second) == "pending"
        assert "CERTIFICATE_VERIFY_FAILED" in store.one("SELECT last_error FROM outbox WHERE id = ?", (second,))[
            "last_error"]
        assert len(rx.receipts) == 1


def test_serve_refuses_a_webhook_without_its_secret(workspace):
    from replyloop.bot.app import create_bot
    from replyloop.config import Secrets
    from replyloop.errors import ConfigError

    config, store = workspace
    config.file.delivery.sources = {"htpp": ["webhook"]}
    with pytest.raises(ConfigError, match=r"delivery.sources.htpp: unknown question source \(one of http, slack"):
        create_bot(config, store, Secrets("xoxb-test", None, "s", None))
    config.file.delivery.sources = {"http": ["webhook"]}
    with pytest.raises(ConfigError, match="delivery.webhook.url"):
        create_bot(config, store, Secrets("xoxb-test", None, "s", None))
    config.file.delivery.webhook.url = "https://helpdesk.example.com/hook"
    with pytest.raises(ConfigError, match="REPLYLOOP_WEBHOOK_SECRET is not set"):
        create_bot(config, store, Secrets("xoxb-test", None, "s", None))


# -- kill -9 of a real `replyloop serve` while it delivers ----------------------------------------------


@pytest.mark.slow
def test_the_receiver_drops_a_body_cut_short_by_a_sender_that_went_away():
    # http.client sends the headers and the body in two writes: a sender killed between them
    # leaves a request with its headers only; that is no event and no bad signature
    import socket
    from urllib.parse import urlsplit

    with Receiver(seed=1) as rx:
        parts = urlsplit(rx.url)
        with socket.create_connection((parts.hostname, parts.port)) as sock:
            sock.sendall(f"POST {parts.path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n".encode() + b"{}")
        wait_until(lambda: rx.truncated == 1, 10)
        assert rx.bad_signatures == 0 and rx.receipts == []


def test_kill_9_during_delivery_loses_no_event(replyloop_home):
    from replyloop.bot.fake_slack import FakeSlack
    from replyloop.store import Store
    from test_reliability import Serve, integrity, write_serve_config

    n = 40
    with FakeSlack() as slack, Receiver(seed=3) as rx:
        write_serve_config(replyloop_home, slack)
        path = replyloop_home / "replyloop.yaml"
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        data["delivery"] = {"sources": {"http": ["webhook"]}, "backoff_base_s": 0.05, "backoff_max_s": 0.5,
                            "workers": 4, "max_attempts": 50,
                            "webhook": {"url": rx.url, "allow_plain_http": True, "timeout_s": 2}}
        path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
        from replyloop.config import load_config
        config = load_config(path)
        with Store(config.db_path) as store:  # decisions made elsewhere (another process) are delivered too
            outbox.install(store, config)
            for draft_id in _drafts(config, store, n):
                store.decide(draft_id, ("approve", "edit", "reject")[draft_id % 3], "USUP1",
                             final_text=f"改过 {draft_id}", reason="r")
            expected = {r["event_id"] for r in store.query("SELECT event_id FROM outbox")}
        assert len(expected) == n
        rx.behaviour.fail_rate, rx.behaviour.slow_rate, rx.behaviour.slow_s = 0.2, 0.3, 0.4  # flaky and slow
        env = {"REPLYLOOP_WEBHOOK_SECRET": WEBHOOK_SECRET}
        serve = Serve(replyloop_home, "--no-scheduler", env=env)
        try:
            serve.wait_listening()
            rx.wait_for(n // 4, timeout=60)
            assert serve.stop(signal.SIGKILL) == -signal.SIGKILL  # in the middle of deliveries
        finally:
            if serve.proc.poll() is None:
                serve.stop(signal.SIGKILL)
        got_before = rx.event_ids()
        assert len(got_before) < n, "killed too late: everything was delivered already"
        assert integrity(config.db_path) == "ok"
        rx.behaviour.fail_rate = 0.05
        again = Serve(replyloop_home, "--no-scheduler", env=env)
        try:
            again.wait_listening()
            assert rx.wait_for(n, timeout=60) == expected  # every event, at least once, none invented
        finally:
            assert again.stop() == 0, "".join(again.output)
        with Store(config.db_path) as store:
            assert outbox.counts(store) == {"pending": 0, "delivered": n, "dead": 0}
        by_id = {}
        for r in rx.receipts:
            by_id.setdefault(r.event_id, []).append(r.body)
        assert all(len({json.dumps(b, sort_keys=True) for b in bodies}) == 1 for bodies in by_id.values())
        assert rx.bad_signatures == 0


def test_delivered_events_older_than_keep_delivered_days_are_pruned_and_nothing_else(workspace):
    config, store = workspace
    config.file.delivery.sources = {"http": ["webhook"]}
    config.file.delivery.webhook.url = "https://helpdesk.example.com/replies"
    outbox.install(store, config)
    ids = _drafts(config, store, 4)
    for draft_id in ids:
        store.decide(draft_id, "approve", "USUP1")
    rows = [e["id"] for e in _events(store)]
    now = outbox.timeutil.now()
    with store.transaction() as db:  # two delivered long ago, one delivered yesterday, one dead long ago
        for row_id, state, days in zip(rows, ("delivered", "delivered", "delivered", "dead"), (40, 31, 1, 90)):
            db.execute("UPDATE outbox SET state = ?, delivered_at = ?, created_at = ? WHERE id = ?",
                       (state, (now - outbox.dt.timedelta(days=days)).isoformat(), (now - outbox.dt.timedelta(days=days)).isoformat(), row_id))
    assert outbox.prune_delivered(store, 0) == 0  # 0: kept forever
    assert outbox.prune_delivered(store, 30, now=now) == 2
    left = {e["id"]: e["state"] for e in _events(store)}
    assert left == {rows[2]: "delivered", rows[3]: "dead"}
    assert store.one("SELECT COUNT(*) AS n FROM reviews")["n"] == 4  # the decisions themselves stay
    # the sender prunes at start (then hourly)
    with store.transaction() as db:
        db.execute("UPDATE outbox SET delivered_at = ? WHERE id = ?",
                   ((now - outbox.dt.timedelta(days=45)).isoformat(), rows[2]))
    sender = outbox.Sender(store, config, secret=WEBHOOK_SECRET).start()
    try:
        wait_until(lambda: rows[2] not in {e["id"] for e in _events(store)}, timeout=10)
    finally:
        sender.close()
    assert {e["state"] for e in _events(store)} == {"dead"}
