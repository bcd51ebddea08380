"""A small Slack stand-in on the other side: sends correctly signed requests of the real shapes
(block_actions, view_submission, slash commands, event callbacks) to the bot's HTTP endpoint,
built from the cards and modals the fake Slack recorded. Used by tests, the benchmark and the demo.

    sim = Simulator(server.url, signing_secret, fake)
    card = fake.wait_for("chat.postMessage")[0]
    sim.click(card, "approve", user="U1")
    modal = fake.wait_for("views.open")[0]
    sim.submit(modal, user="U1", values={"reply": "the edited reply"})
"""

from __future__ import annotations

import http.client
import itertools
import json
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlencode, urlparse

from slack_sdk.signature import SignatureVerifier

from replyloop.bot import cards
from replyloop.bot.fake_slack import Call, FakeSlack

ACTIONS = {"approve": cards.APPROVE, "edit": cards.EDIT, "reject": cards.REJECT}
INPUTS = {cards.REPLY_BLOCK: cards.REPLY_INPUT, cards.REASON_BLOCK: cards.REASON_INPUT}


@dataclass
class Response:
    status: int
    body: str
    elapsed_s: float

    def json(self):
        return json.loads(self.body) if self.body else None


class Simulator:
    def __init__(self, url: str, signing_secret: str, fake: FakeSlack | None = None,
                 team_id: str = "T0FAKE", app_id: str = "A0FAKE", path: str = "/slack/events"):
        self.url = url.rstrip("/")
        parsed = urlparse(self.url)
        self.host, self.port = parsed.hostname, parsed.port
        self.path = path
        self.signing_secret = signing_secret
        self.fake = fake
        self.team_id = team_id
        self.app_id = app_id
        self._ids = itertools.count(1)
        self._local = threading.local()

    # -- transport ----------------------------------------------------------------------------

    def signed_headers(self, body: str, timestamp: int | None = None, secret: str | None = None) -> dict:
        ts = str(int(time.time()) if timestamp is None else timestamp)
        sig = SignatureVerifier(secret or self.signing_secret).generate_signature(timestamp=ts, body=body)
        return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": sig}

    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
            self._local.conn = conn
        return conn

    def request(self, method: str, path: str, body: bytes | str = b"", headers: dict | None = None) -> Response:
        """One HTTP request over this thread's keep-alive connection (reconnects once)."""
        data = body.encode("utf-8") if isinstance(body, str) else body
        for attempt in (1, 2):
            conn = self._conn()
            started = time.perf_counter()
            try:
                conn.request(method, path, body=data, headers={**(headers or {}), "Content-Length": str(len(data))})
                resp = conn.getresponse()
                text = resp.read().decode("utf-8", "replace")
                elapsed = time.perf_counter() - started
                if resp.getheader("Connection", "").lower() == "close":
                    conn.close()
                    self._local.conn = None
                return Response(resp.status, text, elapsed)
            except (ConnectionError, http.client.HTTPException, OSError):
                conn.close()
                self._local.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def post_slack(self, body: str, content_type: str, retry_num: int | None = None,
                   timestamp: int | None = None, secret: str | None = None,
                   signature: str | None = None) -> Response:
        headers = {"Content-Type": content_type, **self.signed_headers(body, timestamp, secret)}
        if signature is not None:
            headers["X-Slack-Signature"] = signature
        if retry_num is not None:
            headers["X-Slack-Retry-Num"] = str(retry_num)
            headers["X-Slack-Retry-Reason"] = "http_timeout"
        return self.request("POST", self.path, body, headers)

    def post_payload(self, payload: dict, **kwargs) -> Response:
        body = urlencode({"payload": json.dumps(payload, ensure_ascii=False)})
        return self.post_slack(body, "application/x-www-form-urlencoded", **kwargs)

    # -- payload shapes -----------------------------------------------------------------------

    def _user(self, user: str) -> dict:
        return {"id": user, "username": user.lower(), "name": user.lower(), "team_id": self.team_id}

    def _trigger(self) -> str:
        return f"{next(self._ids)}.{int(time.time())}.faketrigger"

    def _response_url(self, name: str) -> str:
        return self.fake.response_url(name) if self.fake else f"{self.url}/response/{name}"

    def block_action(self, card: Call | dict, action: str, user: str, value: str | None = None) -> dict:
        """The ``block_actions`` payload of clicking ``action`` (approve|edit|reject or an action_id)
        on a card recorded by the fake (a chat.postMessage ``Call``) or given as
        ``{"channel", "ts", "blocks"}``. A button not on the card (Approve on a blocked draft)
        is clicked anyway when ``value`` is given, as a forged request would be."""
        if isinstance(card, Call):
            channel, ts = card.response["channel"], card.response["ts"]
            blocks, text = card.params.get("blocks") or [], card.params.get("text")
        else:
            channel, ts, blocks, text = card["channel"], card["ts"], card["blocks"], card.get("text")
        if isinstance(blocks, str):
            blocks = json.loads(blocks)
        action_id = ACTIONS.get(action, action)
        element, block_id = None, None
        for block in blocks:
            for el in block.get("elements", []) if block.get("type") == "actions" else []:
                if el.get("action_id") == action_id:
                    element, block_id = el, block.get("block_id")
        if element is None:
            if value is None:
                raise LookupError(f"no {action_id} button on this card")
            element = {"type": "button", "action_id": action_id, "value": value,
                       "text": {"type": "plain_text", "text": action}}
            block_id = f"review_{value}"
        return {
            "type": "block_actions",
            "user": self._user(user),
            "api_app_id": self.app_id,
            "token": "legacy-verification-token",
            "container": {"type": "message", "message_ts": ts, "channel_id": channel, "is_ephemeral": False},
            "trigger_id": self._trigger(),
            "team": {"id": self.team_id, "domain": "fake"},
            "enterprise": None,
            "is_enterprise_install": False,
            "channel": {"id": channel, "name": channel},
            "message": {"type": "message", "user": "UBOT", "ts": ts, "text": text, "blocks": blocks},
            "state": {"values": {}},
            "response_url": self._response_url(f"action-{ts}"),
            "actions": [{**element, "block_id": block_id, "action_ts": f"{time.time():.6f}"}],
        }

    def click(self, card: Call | dict, action: str, user: str, value: str | None = None, **kwargs) -> Response:
        return self.post_payload(self.block_action(card, action, user, value), **kwargs)

    def view_submission(self, opened: Call, user: str, values: dict[str, str]) -> dict:
        """The ``view_submission`` of a modal the fake recorded (views.open), with plain-text
        input ``values`` by block id."""
        view = opened.params["view"]
        if isinstance(view, str):
            view = json.loads(view)
        state = {block: {INPUTS.get(block, "text"): {"type": "plain_text_input", "value": value}}
                 for block, value in values.items()}
        return {
            "type": "view_submission",
            "team": {"id": self.team_id, "domain": "fake"},
            "user": self._user(user),
            "api_app_id": self.app_id,
            "token": "legacy-verification-token",
            "trigger_id": self._trigger(),
            "view": {**view, "id": opened.response["view"]["id"], "team_id": self.team_id,
                     "state": {"values": state}, "hash": opened.response["view"].get("hash"),
                     "app_id": self.app_id, "bot_id": "BFAKE"},
            "response_urls": [],
            "is_enterprise_install": False,
        }

    def submit(self, opened: Call, user: str, values: dict[str, str], **kwargs) -> Response:
        return self.post_payload(self.view_submission(opened, user, values), **kwargs)

    def command_payload(self, command: str, text: str, user: str, channel: str = "C0REVIEW") -> dict:
        """A slash command's fields (form-encoded over HTTP; the same dict of strings is the
        ``payload`` of a Socket Mode ``slash_commands`` envelope)."""
        return {
            "token": "legacy-verification-token", "team_id": self.team_id, "team_domain": "fake",
            "channel_id": channel, "channel_name": channel, "user_id": user, "user_name": user.lower(),
            "command": command, "text": text, "api_app_id": self.app_id, "is_enterprise_install": "false",
            "response_url": self._response_url(f"command-{next(self._ids)}"), "trigger_id": self._trigger(),
        }

    def command(self, command: str, text: str, user: str, channel: str = "C0REVIEW", **kwargs) -> Response:
        body = urlencode(self.command_payload(command, text, user, channel))
        return self.post_slack(body, "application/x-www-form-urlencoded", **kwargs)

    def event_payload(self, event: dict) -> dict:
        """An ``event_callback`` (the JSON body over HTTP; the ``payload`` of an ``events_api`` envelope)."""
        return {
            "token": "legacy-verification-token", "team_id": self.team_id, "api_app_id": self.app_id,
            "event": event, "type": "event_callback", "event_id": f"Ev{next(self._ids):08d}",
            "event_time": int(time.time()),
            "authorizations": [{"team_id": self.team_id, "user_id": "UBOT", "is_bot": True}],
        }

    def event(self, event: dict, **kwargs) -> Response:
        body = json.dumps(self.event_payload(event), ensure_ascii=False)
        return self.post_slack(body, "application/json", **kwargs)

    def home_opened(self, user: str, **kwargs) -> Response:
        return self.event({"type": "app_home_opened", "user": user, "channel": f"D{user}", "tab": "home",
                           "event_ts": f"{time.time():.6f}"}, **kwargs)

    def message(self, channel: str, text: str, user: str, ts: str | None = None, **kwargs) -> Response:
        ts = ts or f"{time.time():.6f}"
        return self.event({"type": "message", "channel": channel, "user": user, "text": text, "ts": ts,
                           "event_ts": ts, "channel_type": "channel"}, **kwargs)

    def intake(self, payload: dict | str | bytes, token: str | None) -> Response:
        body = payload if isinstance(payload, (str, bytes)) else json.dumps(payload, ensure_ascii=False)
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return self.request("POST", "/intake", body, headers)

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
