"""A local fake of the Slack Web API, for tests and ``replyloop demo``.

A real HTTP server on 127.0.0.1 (port 0 by default) that answers the Web API methods
replyloop uses the way Slack does, and records every call so tests can assert on them::

    with FakeSlack() as slack:
        client = WebClient(token="xoxb-test", base_url=slack.base_url)
        client.chat_postMessage(channel="C1", text="hi")
        slack.wait_for("chat.postMessage")

Failures can be injected (``fail_next("chat.postMessage", status=429, retry_after=1)``)
to test retries. It also accepts ``response_url`` posts (``slack.response_url()``) and file
uploads (files upload v2).
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse


@dataclass
class Call:
    method: str            # "chat.postMessage", "response_url", "upload"
    params: dict[str, Any]
    headers: dict[str, str]
    at: float = field(default_factory=time.time)
    body: bytes = b""
    response: dict[str, Any] | None = None   # what the fake answered (ts of a posted message, a view id)


@dataclass
class _Failure:
    status: int
    retry_after: int | None
    remaining: int
    error: str | None = None


def _decode_params(content_type: str, body: bytes, query: str) -> dict[str, Any]:
    params: dict[str, Any] = {k: v[0] for k, v in parse_qs(query).items()}
    if not body:
        return params
    if "application/json" in content_type:
        try:
            params.update(json.loads(body.decode("utf-8")))
        except (ValueError, UnicodeDecodeError):
            pass
    elif "application/x-www-form-urlencoded" in content_type:
        for key, values in parse_qs(body.decode("utf-8")).items():
            value = values[0]
            if key in ("blocks", "view", "files", "attachments") and value[:1] in "[{":
                try:
                    value = json.loads(value)
                except ValueError:
                    pass
            params[key] = value
    return params


class FakeSlack:
    """Records Web API calls; answers like Slack. Use as a context manager or start()/stop()."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, team_id: str = "T0FAKE",
                 bot_user_id: str = "UBOT", group_members: dict[str, list[str]] | None = None):
        self.calls: list[Call] = []
        self.team_id = team_id
        self.bot_user_id = bot_user_id
        self.group_members = group_members or {}
        self._failures: dict[str, list[_Failure]] = {}
        self._delays: dict[str, float] = {}
        self._cond = threading.Condition()
        self._ts = itertools.count(1)
        self._ids = itertools.count(1)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                self._handle()

            def do_POST(self):
                self._handle()

            def _handle(self):
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, payload, extra = fake._dispatch(url.path, url.query, headers, body)
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8"
                                 if not isinstance(payload, bytes) else "text/plain")
                for key, value in extra.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def base_url(self) -> str:
        """What to give ``WebClient(base_url=...)`` and ``slack.api_base_url``."""
        return self.url + "/api/"

    def response_url(self, name: str = "r") -> str:
        return f"{self.url}/response/{name}"

    def start(self) -> "FakeSlack":
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-slack", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "FakeSlack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- test helpers ------------------------------------------------------------------------

    def fail_next(self, method: str, status: int = 500, retry_after: int | None = None,
                  count: int = 1, error: str | None = None) -> None:
        """Answer the next ``count`` calls of ``method`` with an HTTP error (429 with Retry-After,
        500, ...) or, with ``error``, a 200 ``{"ok": false, "error": error}``."""
        with self._cond:
            self._failures.setdefault(method, []).append(_Failure(status, retry_after, count, error))

    def delay(self, method: str, seconds: float) -> None:
        """Answer every later call of ``method`` only after ``seconds`` (0 removes the delay):
        a slow Slack, to show that listeners acknowledge before their Web API calls finish."""
        with self._cond:
            if seconds:
                self._delays[method] = seconds
            else:
                self._delays.pop(method, None)

    def calls_to(self, method: str) -> list[Call]:
        with self._cond:
            return [c for c in self.calls if c.method == method]

    def wait_for(self, method: str, count: int = 1, timeout: float = 10.0) -> list[Call]:
        """Block until ``method`` has been called ``count`` times; returns those calls."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [c for c in self.calls if c.method == method]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = sorted({c.method for c in self.calls})
                    raise TimeoutError(f"{method} called {len(found)} time(s), expected {count}; seen: {seen}")
                self._cond.wait(left)

    def clear(self) -> None:
        with self._cond:
            self.calls.clear()

    # -- the fake API ------------------------------------------------------------------------

    def _record(self, call: Call) -> None:
        with self._cond:
            self.calls.append(call)
            self._cond.notify_all()

    def _take_failure(self, method: str) -> _Failure | None:
        with self._cond:
            queue = self._failures.get(method)
            if not queue:
                return None
            failure = queue[0]
            failure.remaining -= 1
            if failure.remaining <= 0:
                queue.pop(0)
            return failure

    def _dispatch(self, path: str, query: str, headers: dict, body: bytes):
        if path.startswith("/response/"):
            params = _decode_params(headers.get("content-type", "application/json"), body, query)
            self._record(Call("response_url", params, headers, body=body))
            return 200, b"ok", {}
        if path.startswith("/upload/"):
            self._record(Call("upload", {"file_id": path.rsplit("/", 1)[-1], "size": len(body)}, headers, body=body))
            return 200, b"OK", {}
        if not path.startswith("/api/"):
            return 404, {"ok": False, "error": "unknown_path"}, {}
        method = path[len("/api/"):]
        params = _decode_params(headers.get("content-type", ""), body, query)
        failure = self._take_failure(method)
        if failure is not None:
            self._record(Call(method + ":failed", params, headers, body=body))
            if failure.error:
                return 200, {"ok": False, "error": failure.error}, {}
            extra = {"Retry-After": str(failure.retry_after)} if failure.retry_after is not None else {}
            return failure.status, {"ok": False, "error": "ratelimited" if failure.status == 429 else "fatal_error"}, extra
        auth = headers.get("authorization", "")
        if method != "api.test" and not auth.startswith("Bearer xox"):
            self._record(Call(method + ":unauthed", params, headers, body=body))
            return 200, {"ok": False, "error": "not_authed"}, {}
        with self._cond:
            pause = self._delays.get(method, 0.0)
        if pause:
            time.sleep(pause)
        answer = self._answer(method, params)
        self._record(Call(method, params, headers, body=body, response=answer))
        return 200, answer, {}

    def _answer(self, method: str, params: dict) -> dict:
        ts = f"{int(time.time())}.{next(self._ts):06d}"
        channel = params.get("channel") or params.get("channel_id") or "C0FAKE"
        if method == "auth.test":
            return {"ok": True, "url": "https://fake.slack.com/", "team": "fake", "user": "replyloop",
                    "team_id": self.team_id, "user_id": self.bot_user_id, "bot_id": "BFAKE"}
        if method == "chat.postMessage":
            return {"ok": True, "channel": channel, "ts": ts,
                    "message": {"text": params.get("text"), "ts": ts, "blocks": params.get("blocks")}}
        if method == "chat.update":
            return {"ok": True, "channel": channel, "ts": params.get("ts") or ts, "text": params.get("text")}
        if method == "chat.postEphemeral":
            return {"ok": True, "message_ts": ts}
        if method in ("views.open", "views.update", "views.push", "views.publish"):
            view = params.get("view") if isinstance(params.get("view"), dict) else {}
            return {"ok": True, "view": {**view, "id": f"V{next(self._ids):06d}", "hash": ts}}
        if method == "usergroups.users.list":
            return {"ok": True, "users": self.group_members.get(params.get("usergroup", ""), [])}
        if method == "conversations.info":
            return {"ok": True, "channel": {"id": channel, "name": channel}}
        if method == "files.getUploadURLExternal":
            file_id = f"F{next(self._ids):06d}"
            return {"ok": True, "upload_url": f"{self.url}/upload/{file_id}", "file_id": file_id}
        if method == "files.completeUploadExternal":
            files = params.get("files")
            if isinstance(files, str):
                files = json.loads(files)
            return {"ok": True, "files": [{"id": f.get("id"), "title": f.get("title")} for f in files or []]}
        return {"ok": True}
