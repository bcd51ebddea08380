"""The bot's Web API client keeps its connections alive (bot/keepalive.py) and still answers
every failure the way slack_sdk's urlopen path did: stale connections, a server that closes
without answering, refused connections, 429/5xx retries, timeouts, a Slack that stops."""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.error import URLError

import pytest
from slack_sdk.errors import SlackApiError

from bot_support import *  # noqa: F401,F403
from replyloop.bot.fake_slack import FakeSlack
from replyloop.bot.slackclient import web_client
from replyloop.config import Secrets

REVIEW_CHANNEL = "C0REVIEW"


def _client(config, fake_url: str, **kwargs):
    config.file.slack.api_base_url = fake_url
    return web_client(config, Secrets(slack_bot_token=BOT_TOKEN, slack_app_token=None, slack_signing_secret=SIGNING_SECRET, intake_token=None), **kwargs)


@pytest.fixture
def config(workspace):
    return workspace[0]


def test_calls_share_one_connection_per_thread(config):
    with FakeSlack() as fake:
        client = _client(config, fake.base_url)
        ts = client.chat_postMessage(channel=REVIEW_CHANNEL, text="卡片")["ts"]
        for i in range(20):
            assert client.chat_update(channel=REVIEW_CHANNEL, ts=ts, text=f"第 {i} 次")["ok"]
        assert fake.connections_opened == 1
        assert len(fake.calls_to("chat.update")) == 20

        def work():
            for i in range(10):
                client.chat_update(channel=REVIEW_CHANNEL, ts=ts, text=f"线程 {i}")
        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert fake.connections_opened == 5 and len(fake.calls_to("chat.update")) == 60
        assert client.connections.open_connections() == 1  # the ended threads' were closed with them
        client.close()
        assert client.connections.open_connections() == 0
        assert client.chat_update(channel=REVIEW_CHANNEL, ts=ts, text="again")["ok"]  # a new one after close()
        assert fake.connections_opened == 6


def test_slack_errors_and_retries_are_unchanged(config):
    """429 with Retry-After is waited out and retried, a 500 retried, an ok:false answer raised
    as SlackApiError with Slack's error code, all over the kept connection."""
    with FakeSlack() as fake:
        client = _client(config, fake.base_url)
        client.auth_test()
        fake.fail_next("chat.postMessage", status=429, retry_after=1)
        started = time.monotonic()
        assert client.chat_postMessage(channel=REVIEW_CHANNEL, text="x")["ok"]
        assert time.monotonic() - started >= 0.9
        fake.fail_next("chat.postMessage", status=500)
        assert client.chat_postMessage(channel=REVIEW_CHANNEL, text="y")["ok"]
        with pytest.raises(SlackApiError) as err:
            client.chat_update(channel="#cs-review", ts="1.0", text="z")  # a name: Slack wants an id
        assert err.value.response["error"] == "channel_not_found"
        assert fake.connections_opened == 1
        no_retries = _client(config, fake.base_url, max_retries=0)
        fake.fail_next("chat.postMessage", status=429, retry_after=30)
        with pytest.raises(SlackApiError) as err:
            no_retries.chat_postMessage(channel=REVIEW_CHANNEL, text="x")
        assert err.value.response.status_code == 429 and err.value.response.headers["Retry-After"] == "30"


class _Flaky(BaseHTTPRequestHandler):
    """Answers like Slack, but: ``close_after`` answers it closes the connection without saying
    so (an idle kept-alive connection the server drops); with ``swallow`` it reads a request and
    closes without answering (the server dropping it just as the request arrives)."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: "FlakyServer"

    def log_message(self, *args):
        pass

    def do_POST(self):
        close = self.server.close_after_each  # decided before answering: the client acts on the answer
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.requests += 1
        if self.server.swallow:
            self.server.swallow -= 1
            self.close_connection = True
            return
        body = b'{"ok": true, "ts": "1.000001", "channel": "C0REVIEW"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = close


class FlakyServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Flaky)
        self.requests = 0
        self.swallow = 0
        self.close_after_each = False
        self.accepted = 0
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def get_request(self):
        self.accepted += 1
        return super().get_request()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/api/"


def test_a_connection_the_server_closed_while_idle_is_replaced(config):
    server = FlakyServer()
    try:
        client = _client(config, server.base_url, max_retries=0)
        assert client.chat_postMessage(channel=REVIEW_CHANNEL, text="1")["ok"]
        assert server.accepted == 1
        server.close_after_each = True  # from now on every connection is dropped after its answer
        assert client.chat_postMessage(channel=REVIEW_CHANNEL, text="2")["ok"]  # still the kept one
        time.sleep(0.2)  # the server has closed it by now, without telling the client
        for i in range(3):
            assert client.chat_postMessage(channel=REVIEW_CHANNEL, text=str(i))["ok"]
            time.sleep(0.2)
        assert server.accepted == 4 and server.requests == 5  # each request sent exactly once
    finally:
        server.shutdown()
        server.server_close()


def test_a_request_the_server_drops_unanswered(config):
    """On a kept connection it is sent once more on a new one; on a new connection it is an
    error (here without retries: RemoteDisconnected, as urlopen raised), never a silent loss."""
    import http.client

    server = FlakyServer()
    try:
        client = _client(config, server.base_url, max_retries=0)
        assert client.chat_postMessage(channel=REVIEW_CHANNEL, text="1")["ok"]
        server.swallow = 1
        assert client.chat_postMessage(channel=REVIEW_CHANNEL, text="2")["ok"]
        assert (server.accepted, server.requests) == (2, 3)
        server.swallow = 1
        client.close()  # the next request goes out on a new connection
        with pytest.raises(http.client.RemoteDisconnected):
            client.chat_postMessage(channel=REVIEW_CHANNEL, text="3")
        assert client.health.errors_by_method() == {"chat.postMessage": 1}
        retrying = _client(config, server.base_url)  # slack_sdk's connection retry handler
        server.swallow = 1
        assert retrying.chat_postMessage(channel=REVIEW_CHANNEL, text="4")["ok"]
    finally:
        server.shutdown()
        server.server_close()


def test_unreachable_slack_is_a_urlerror_and_a_stopped_slack_is_noticed(config):
    fake = FakeSlack().start()
    client = _client(config, fake.base_url, max_retries=0)
    ts = client.chat_postMessage(channel=REVIEW_CHANNEL, text="x")["ts"]
    fake.stop()  # closes the kept connection too
    with pytest.raises(URLError):
        client.chat_update(channel=REVIEW_CHANNEL, ts=ts, text="y")
    assert "unreachable (URLError" in client.health.snapshot()["last_error"]
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    refused = _client(config, f"http://127.0.0.1:{port}/api/", max_retries=0)
    with pytest.raises(URLError):
        refused.auth_test()


def test_a_server_that_never_answers_times_out(config):
    listener = socket.create_server(("127.0.0.1", 0))
    held = []
    threading.Thread(target=lambda: held.append(listener.accept()), daemon=True).start()
    try:
        client = _client(config, f"http://127.0.0.1:{listener.getsockname()[1]}/api/", max_retries=0)
        client.timeout = 0.5
        client.connections.timeout = 0.5
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            client.auth_test()
        assert time.monotonic() - started < 5
    finally:
        listener.close()


def test_the_bots_card_updates_reuse_connections(env):
    """End to end: 12 approvals through the bot, each updating its card: a handful of
    connections to Slack, not one a call."""
    drafts = [env.post_card() for _ in range(12)]
    opened_before = env.fake.connections_opened
    for _, card in drafts:
        assert env.sim.click(card, "approve", user="USUP1").status == 200
    for draft_id, _ in drafts:
        env.wait_review(draft_id)
    wait_until(lambda: len(env.fake.calls_to("chat.update")) >= 12)
    assert env.fake.connections_opened - opened_before <= 5
