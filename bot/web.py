"""The bot's HTTP surface as an ASGI app (``bot.server`` serves it with uvicorn):

    POST /slack/events   HTTP mode only: bolt's ASGI adapter for the sync App
    POST /intake         ``Authorization: Bearer $REPLYLOOP_INTAKE_TOKEN``; ``bot.intake.handle_http``
    GET  /health         ``BotServer.health``
    GET  /metrics        Prometheus text format (``bot.metrics``)

Everything that needs no body is checked before the body is read: the framing (a chunked body
gets 411; h11 has already refused a malformed ``Content-Length`` with 400), the bearer token or
the shape and age of Slack's signature headers (401), the declared length against the route's
limit (413) and against the bytes all requests together may be receiving (503). The body must
then arrive within ``Limits.body_timeout_s`` (408). A signed Slack body bolt cannot make a
request of (not JSON, nested too deep, fields of the wrong type such as ``{"team": 5}``) is
400. Blocking work (bolt's dispatch, intake, the health queries) runs on small thread pools,
never on the event loop. Every refusal is one log line; only an unexpected error logs a
traceback (and is answered 500, without detail).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import parse_qsl

from slack_bolt.adapter.asgi.builtin import SlackRequestHandler
from slack_bolt.request import BoltRequest
from slack_bolt.request.internals import build_normalized_headers, extract_content_type
from slack_bolt.response import BoltResponse
from slack_sdk.signature import SignatureVerifier
from yarl import URL

from replyloop.bot import intake

log = logging.getLogger(__name__)

EVENTS_PATH = "/slack/events"
MAX_SLACK_BODY = 1024 * 1024
SLACK_TOLERANCE_S = 300  # Slack's own rule: a request timestamp more than 5 minutes off is refused
_SIGNATURE = re.compile(r"v0=[0-9a-f]{64}")


@dataclass(frozen=True)
class Limits:
    """What clients may hold of the server (``BotServer(limits=...)``; README "Socket Mode or HTTP mode")."""

    max_connections: int = 1000        # open at once; beyond, the oldest unauthenticated one is closed
    header_timeout_s: float = 10.0     # connect (or start of the next request) -> end of the headers, else 408
    body_timeout_s: float = 10.0       # end of the headers -> end of the body, else 408
    keep_alive_s: float = 5.0          # an idle kept-alive connection is closed after this
    max_header_bytes: int = 16 * 1024  # request line + headers (h11); beyond, 431
    max_body_bytes_in_flight: int = 32 * 1024 * 1024  # bodies being received by all requests together; beyond, 503
    slack_threads: int = 16            # bolt dispatch (the listeners run on bolt's own pool)
    intake_threads: int = 8            # POST /intake (it may draft)
    health_threads: int = 2            # GET /health, apart so busy intake never delays it
    shutdown_s: float = 10.0           # graceful shutdown: in-flight requests get this long


class Refused(Exception):
    """A request answered with an error status (one log line, no traceback)."""

    def __init__(self, status: int, error: str, headers: tuple[tuple[bytes, bytes], ...] = ()):
        super().__init__(error)
        self.status, self.error, self.headers = status, error, headers


class _Disconnected(Exception):
    """The client went away while its body was being read."""


def slack_headers_problem(headers: dict[str, str], now: float) -> str | None:
    """What is wrong with a Slack request's signature headers, judged before its body is read
    (the HMAC itself needs the body); None when they are well-formed and fresh."""
    ts = headers.get("x-slack-request-timestamp")
    if ts is None:
        return "missing X-Slack-Request-Timestamp"
    ts = ts.strip()
    if not (ts.isascii() and ts.isdigit() and len(ts) <= 12):
        return f"X-Slack-Request-Timestamp {ts[:20]!r} is not a Unix time"
    if abs(now - int(ts)) > SLACK_TOLERANCE_S:
        return "stale or future X-Slack-Request-Timestamp (more than 5 minutes off)"
    if not _SIGNATURE.fullmatch((headers.get("x-slack-signature") or "").strip()):
        return "missing or malformed X-Slack-Signature"
    return None


def _headers(scope) -> dict[str, str]:
    """Header names lower-cased (h11 did that), values as latin-1 (never fails); the first of repeated ones."""
    out: dict[str, str] = {}
    for name, value in scope["headers"]:
        out.setdefault(name.decode("latin-1"), value.decode("latin-1"))
    return out


async def send_json(send, status: int, payload: dict, close: bool = False,
                    headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    head = [(b"content-type", b"application/json; charset=utf-8"), (b"content-length", str(len(data)).encode()),
            *headers]
    if close:
        head.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": data, "more_body": False})


class _SlackEvents(SlackRequestHandler):
    """bolt's ASGI adapter for a sync ``App`` (``slack_bolt.adapter.asgi.builtin``), with the
    dispatch on a thread pool: the adapter calls ``App.dispatch`` on the event loop, and a sync
    listener blocking there would stall every connection."""

    def __init__(self, app, pool: ThreadPoolExecutor):
        super().__init__(app, path=EVENTS_PATH)
        self.pool = pool

    async def dispatch(self, request) -> BoltResponse:
        body = await request.get_raw_body()
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in request.raw_headers}
        return await asyncio.get_running_loop().run_in_executor(self.pool, self._dispatch, body,
                                                                request.query_string, headers)

    def _dispatch(self, body: str, query: str, headers: dict[str, str]) -> BoltResponse:
        """On the pool: parsing the body is work too, kept off the event loop that every other
        connection waits on (see ``bolt_request``)."""
        try:  # a malformed body is the client's error, not a 500 (which Slack would retry)
            req = bolt_request(body, query, headers)
        except (ValueError, RecursionError, TypeError, AttributeError, KeyError, IndexError) as exc:
            # not JSON, nested too deep, or JSON whose fields bolt cannot read ({"team": 5}); only
            # the request is built here, the listeners' own errors are not caught
            return BoltResponse(status=400, body=json.dumps({"ok": False, "error": f"malformed payload ({exc})"}),
                                headers={"content-type": "application/json; charset=utf-8"})
        return self.app.dispatch(req)


def _yarl_pairs(body: str):
    return URL.build(query_string=body, encoded=True).query.items()


def _qsl_pairs(body: str):
    return parse_qsl(body, keep_blank_values=True)


# invalid and truncated UTF-8 escapes, an encoded surrogate, '+', '%2B', a bare '%', '&&', ';'
_PROBE = "a=%C3&%ED%A0%80=%F0%9F%98&c=%2B+%zz&&d;e=%&f=%E4%B8%AD"


def _form_pairs_for(candidate):
    """``candidate`` if it decodes a form body as ``parse_qsl`` does, else ``parse_qsl``. yarl
    1.25.1 does; yarl 1.19 to 1.24 keep an invalid UTF-8 escape (``%C3``) as it was where
    parse_qsl and bolt give U+FFFD (pyproject asks for yarl>=1.25.1; this is in case another
    is installed anyway)."""
    try:
        return candidate if list(candidate(_PROBE)) == _qsl_pairs(_PROBE) else _qsl_pairs
    except Exception:
        return _qsl_pairs


_form_pairs = _form_pairs_for(_yarl_pairs)


def parse_slack_body(body: str, content_type: str | None):
    """bolt's ``parse_body`` (``slack_bolt.request.internals``), decoding the form encoding with
    yarl's C unquoter instead of ``urllib.parse.parse_qsl``. A click's body is a few KB of
    ``%XX`` escapes (its whole card, Chinese text three escapes a character), which
    ``parse_qsl`` decodes in Python: 0.19 ms of the 2.5 ms of CPU a click cost the bot, against
    0.014 ms. Same result for every input: ``tests/test_bot_fastparse.py`` compares the two
    (with a yarl that decodes otherwise, ``parse_qsl`` itself is used: ``_form_pairs_for``)."""
    if not body:
        return {}
    if content_type == "application/json" or body.startswith("{"):
        return json.loads(body)
    params = dict(_form_pairs(body))
    if "payload" in body:  # bolt's own test: the word anywhere in the body
        payload = params.get("payload")
        return json.loads(payload) if payload is not None else {}
    return params


def bolt_request(body: str, query: str | None, headers: dict[str, str]) -> BoltRequest:
    """What ``BoltRequest(body=body, query=query, headers=headers)`` builds (an HTTP-mode request
    whose ``raw_body`` the signature check reads), with the body parsed by
    ``parse_slack_body``. bolt takes a parsed body only in Socket Mode, so the request is built
    that way and then given its raw body and mode back; a body that is not a JSON object goes
    through bolt's own constructor, as before. The content type is read with bolt's own helpers
    (a ``Content-Type`` or ``CONTENT-TYPE`` key, a list value), as bolt reads it."""
    # bolt's own reading of the content type: header names in any case, list values
    content_type = extract_content_type(build_normalized_headers(headers))
    parsed = parse_slack_body(body, content_type)
    if not isinstance(parsed, dict) or not parsed:
        return BoltRequest(body=body, query=query, headers=headers)
    req = BoltRequest(body=parsed, query=query, headers=headers, mode="socket_mode")
    req.raw_body, req.mode = body, "http"
    return req


def _replay(body: bytes):
    """An ASGI ``receive`` that hands over a body already read."""
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        return messages.pop() if messages else {"type": "http.disconnect"}

    return receive


class Web:
    """The ASGI app. ``server`` is the ``BotServer`` (its ``bot``, ``slack_events``, ``health()``)."""

    def __init__(self, server, limits: Limits):
        self.server = server
        self.limits = limits
        self.bytes_in_flight = 0  # touched on the event loop only
        self.pools = {name: ThreadPoolExecutor(max_workers=n, thread_name_prefix=f"replyloop-http-{name}")
                      for name, n in (("slack", limits.slack_threads), ("intake", limits.intake_threads),
                                      ("health", limits.health_threads))}
        bot = server.bot
        self.slack = _SlackEvents(bot.app, self.pools["slack"]) if server.slack_events else None
        self.verifier = SignatureVerifier(bot.secrets.slack_signing_secret or "") if server.slack_events else None

    def close(self) -> None:
        for pool in self.pools.values():
            pool.shutdown(wait=False, cancel_futures=True)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":  # lifespan is off and websockets are not served
            return
        started = False

        async def tracked_send(message):
            nonlocal started
            started = True
            await send(message)

        request = _Request(scope)
        try:
            await self._route(request, receive, tracked_send)
        except Refused as exc:
            log.warning("%s %s from %s: %d %s", request.method, request.path, request.client, exc.status, exc.error)
            if not started:
                await send_json(send, exc.status, {"ok": False, "error": exc.error}, close=request.body_pending,
                                headers=exc.headers)
        except _Disconnected:
            log.info("%s %s from %s: the client left before its body was read", request.method, request.path,
                     request.client)
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            if not started:
                await send_json(send, 500, {"ok": False, "error": "internal error"}, close=True)

    async def _run(self, pool: str, fn: Callable, *args):
        return await asyncio.get_running_loop().run_in_executor(self.pools[pool], fn, *args)

    async def _route(self, request: "_Request", receive, send) -> None:
        path, method = request.path, request.method
        if path == "/health":
            if method not in ("GET", "HEAD"):
                raise Refused(405, "/health takes GET", ((b"allow", b"GET, HEAD"),))
            status, body = await self._run("health", self.server.health)
            await send_json(send, status, body, close=request.body_pending)  # a body is never read
            return
        if path == "/metrics":
            if method not in ("GET", "HEAD"):
                raise Refused(405, "/metrics takes GET", ((b"allow", b"GET, HEAD"),))
            from replyloop.bot.metrics import CONTENT_TYPE

            data = await self._run("health", self.server.bot.metrics.scrape)
            head = [(b"content-type", CONTENT_TYPE.encode()), (b"content-length", str(len(data)).encode())]
            if request.body_pending:
                head.append((b"connection", b"close"))
            await send({"type": "http.response.start", "status": 200, "headers": head})
            await send({"type": "http.response.body", "body": b"" if method == "HEAD" else data, "more_body": False})
            return
        if path == "/intake":
            route = "intake"
        elif path == EVENTS_PATH and self.slack is not None:
            route = "slack"
        else:
            raise Refused(404, "not found")
        if method != "POST":
            raise Refused(405, f"{path} takes POST", ((b"allow", b"POST"),))
        if "transfer-encoding" in request.headers:
            raise Refused(411, "chunked bodies are not supported: send Content-Length")
        if route == "intake":
            if not intake.authorized(self.server.bot.secrets.intake_token, request.headers.get("authorization")):
                raise Refused(401, "missing or wrong bearer token")
            request.trust()  # authenticated: no longer the first to be closed when connections run out
            limit = intake.MAX_BODY
        else:
            problem = slack_headers_problem(request.headers, time.time())
            if problem:
                raise Refused(401, problem)
            limit = MAX_SLACK_BODY
        if request.length > limit:
            raise Refused(413, f"body larger than {limit} bytes")
        body = await self._read(request, receive)
        if route == "intake":
            result = await self._run("intake", intake.handle_http, self.server.bot, request.headers, body)
            if result.status >= 400:
                log.warning("POST /intake from %s: %d %s", request.client, result.status, result.body.get("error"))
            await send_json(send, result.status, result.body)
            return
        try:
            text = body.decode("utf-8")
            request.scope["query_string"].decode("utf-8")
        except UnicodeDecodeError:
            raise Refused(400, "body or query string is not UTF-8") from None
        headers = request.headers
        if not self.verifier.is_valid(text, headers["x-slack-request-timestamp"].strip(),
                                      headers["x-slack-signature"].strip()):
            raise Refused(401, "invalid signature or stale timestamp")
        request.trust()
        await self.slack(request.scope, _replay(body), send)

    async def _read(self, request: "_Request", receive) -> bytes:
        """The declared body, within the body timeout and the server's budget of bytes in flight."""
        length = request.length
        if length == 0:
            request.body_pending = False
            return b""
        if self.bytes_in_flight + length > self.limits.max_body_bytes_in_flight:
            raise Refused(503, "busy: too many request bodies are being received; retry shortly",
                          ((b"retry-after", b"1"),))
        self.bytes_in_flight += length
        try:
            body = await asyncio.wait_for(_collect(receive, length), self.limits.body_timeout_s)
        except asyncio.TimeoutError:
            raise Refused(408, f"the body did not arrive within {self.limits.body_timeout_s:g} s") from None
        finally:
            self.bytes_in_flight -= length
        request.body_pending = False
        return body


async def _collect(receive, length: int) -> bytes:
    chunks = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected()
        chunks += message.get("body", b"")
        if len(chunks) > length:  # h11 frames by Content-Length; never more than declared
            raise Refused(400, "body longer than its Content-Length")
        if not message.get("more_body", False):
            return bytes(chunks)


class _Request:
    __slots__ = ("scope", "method", "path", "client", "headers", "length", "body_pending")

    def __init__(self, scope):
        self.scope = scope
        self.method = scope["method"]
        self.path = scope["path"]
        client = scope.get("client")
        self.client = f"{client[0]}:{client[1]}" if client else "?"
        self.headers = _headers(scope)
        raw = self.headers.get("content-length", "0").split(",")[0].strip() or "0"  # h11 allows "5, 5"
        self.length = int(raw) if raw.isdigit() else 0  # h11 has refused a malformed one already
        # an answer given before the body is read closes the connection: the rest is never parsed
        self.body_pending = self.length > 0 or "transfer-encoding" in self.headers

    def trust(self) -> None:
        """Tell the server (``bot.server``) this connection is authenticated."""
        trust = (self.scope.get("extensions") or {}).get("replyloop.trust")
        if trust is not None:
            trust()
