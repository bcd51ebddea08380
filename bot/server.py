"""Running the bot: one ``ThreadingHTTPServer`` serving ``POST /slack/events`` (HTTP mode,
dispatched to bolt, which verifies signatures and rejects stale timestamps with 401),
``POST /intake`` and ``GET /health``; in Socket Mode the same server serves only intake and
health while Slack events arrive over the socket (``SLACK_APP_TOKEN``).

    serve(config, store, secrets, http=True, port=3000, scheduler=None)   # blocks

``scheduler`` is anything with ``start()`` and ``shutdown(wait=False)`` (an APScheduler
BackgroundScheduler); the pipeline attaches its jobs to it.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

from slack_bolt.request import BoltRequest
from slack_sdk.errors import SlackApiError
from slack_sdk.signature import SignatureVerifier

from bot import intake, review
from bot.app import Bot, create_bot
from bot.logs import redacting_logger
from bot.slackclient import slack_error
from replyloop.config import Config, Secrets
from replyloop.errors import ConfigError
from replyloop.intake import draft_pending
from replyloop.store import Store

log = logging.getLogger(__name__)

EVENTS_PATH = "/slack/events"
MAX_BODY = 1024 * 1024
SWEEP_EVERY_S = 60.0


class BotServer:
    """The HTTP side of the bot on ``host:port`` (port 0: any free port; see ``url``)."""

    def __init__(self, bot: Bot, host: str = "127.0.0.1", port: int = 0, slack_events: bool = True):
        self.bot = bot
        self.slack_events = slack_events
        # only HTTP mode receives signed Slack requests; Socket Mode runs without a signing secret
        self.verifier = SignatureVerifier(bot.secrets.slack_signing_secret or "") if slack_events else None
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt, *args):  # request lines only, never headers
                log.debug("%s %s", self.address_string(), fmt % args)

            def do_GET(self):
                self._guarded(self._get)

            def do_POST(self):
                self._guarded(self._post)

            def _guarded(self, handle: Callable[[], None]) -> None:
                """Every request gets an answer: an unexpected error is logged with its traceback
                and answered 500 (no detail to the client)."""
                self._responded = False
                try:
                    handle()
                except Exception:
                    log.exception("%s %s failed", self.command, urlparse(self.path).path)
                    self.close_connection = True
                    if not self._responded:
                        try:
                            self._send(500, {"ok": False, "error": "internal error"})
                        except OSError:
                            pass
                finally:  # a thread per connection: its SQLite connection must not outlive it
                    server.bot.store.release_thread()

            def _get(self):
                if urlparse(self.path).path == "/health":
                    self._send(*server.health())
                else:
                    self._send(404, {"ok": False, "error": "not found"})

            def _post(self):
                url = urlparse(self.path)
                if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                    self.close_connection = True  # the body's framing is not read: drop the connection
                    self._send(411, {"ok": False, "error": "chunked bodies are not supported: send Content-Length"})
                    return
                raw = (self.headers.get("Content-Length") or "0").strip()
                if not raw.isascii() or not raw.isdigit():
                    self.close_connection = True
                    self._send(400, {"ok": False, "error": f"invalid Content-Length {raw[:40]!r}"})
                    return
                length = int(raw)
                if length > MAX_BODY:
                    self._send(413, {"ok": False, "error": "body too large"})
                    self.close_connection = True
                    return
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                if url.path == EVENTS_PATH and server.slack_events:
                    self._slack(url.query, headers, body)
                elif url.path == "/intake":
                    result = intake.handle_http(server.bot, headers, body)
                    self._send(result.status, result.body)
                else:
                    self._send(404, {"ok": False, "error": "not found"})

            def _slack(self, query: str, headers: dict, body: bytes):
                try:
                    text = body.decode("utf-8")
                except UnicodeDecodeError:
                    self._send(400, {"ok": False, "error": "body is not UTF-8"})
                    return
                if not server.verifier.is_valid_request(text, headers):
                    self._send(401, {"ok": False, "error": "invalid signature or stale timestamp"})
                    return
                try:  # bolt parses before it verifies: a malformed body must not kill the handler
                    req = BoltRequest(body=text, query=query, headers=headers)
                except ValueError as exc:
                    self._send(400, {"ok": False, "error": f"malformed payload ({exc})"})
                    return
                resp = server.bot.app.dispatch(req)
                data = (resp.body or "").encode("utf-8")
                self.send_response(resp.status)
                for name, values in resp.headers.items():
                    if name.lower() == "content-length":
                        continue
                    for value in values:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self._responded = True
                self.end_headers()
                self.wfile.write(data)

            def _send(self, status: int, payload: dict):
                data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                if self.close_connection:
                    self.send_header("Connection", "close")
                self.send_header("Content-Length", str(len(data)))
                self._responded = True
                self.end_headers()
                self.wfile.write(data)

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 128

        self._httpd = Server((host, port), Handler)
        self._thread: threading.Thread | None = None
        # name -> () -> (ok, what is wrong); ``serve`` adds the scheduler and the Socket Mode link
        self.probes: dict[str, Callable[[], tuple[bool, str]]] = {}

    def health(self) -> tuple[int, dict]:
        """``GET /health``: 200 when the database answers and every probe holds, else 503 with
        what failed (for a load balancer, Kubernetes or the on-call engineer)."""
        checks, body = {}, {}
        try:
            body = {"queue": self.bot.store.pending_count(),
                    "running_runs": self.bot.store.scalar("SELECT count(*) FROM training_runs WHERE status = 'running'")}
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = f"error: {exc}"
        for name, probe in self.probes.items():
            try:
                ok, problem = probe()
            except Exception as exc:
                ok, problem = False, str(exc)
            checks[name] = "ok" if ok else f"error: {problem}"
        ok = all(v == "ok" for v in checks.values())
        return (200 if ok else 503), {"ok": ok, "mode": "http" if self.slack_events else "socket",
                                      "checks": checks, **body}

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        host = self._httpd.server_address[0]
        return f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{self.port}"

    def start(self) -> "BotServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="replyloop-http", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._httpd.serve_forever()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> "BotServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def sweep(bot: Bot, failed: dict[int, float] | None = None) -> int:
    """Take in held intake messages whose channel can now be looked up, draft questions that have
    no draft (with a drafter; not those on the drafting queue), post cards that were never
    posted, and update decided cards whose update was lost (a crash, Slack down). A question
    that fails to draft is skipped (``failed`` remembers it for a while); the cards are posted
    whatever drafting did. Returns how many cards were posted."""
    try:
        intake.resolve_all_held(bot)
    except Exception:
        log.exception("taking in held intake messages failed")
    if bot.drafter is not None:
        try:
            draft_pending(bot.config, bot.store, bot.drafter, bot.checker, failed=failed,
                          busy={k for k in bot.drafting.busy() if isinstance(k, int)})
        except Exception:
            log.exception("drafting pending questions failed; posting the pending cards anyway")
    posted = review.post_pending_cards(bot)
    try:
        fixed = review.fix_lost_card_updates(bot)
        if fixed:
            log.info("updated %d decided card(s) whose update was lost", fixed)
    except Exception:
        log.exception("updating decided cards failed")
    return posted


def _sweeper(bot: Bot, stop: threading.Event, every_s: float) -> None:
    failed: dict[int, float] = {}
    while True:
        try:
            posted = sweep(bot, failed)
            if posted:
                log.info("posted %d pending review card(s)", posted)
        except Exception:
            log.exception("posting pending review cards failed; retrying in %.0f s", every_s)
        if stop.wait(every_s):
            bot.store.release_thread()
            return


def default_drafter(config: Config, store: Store):
    """``replyloop.drafting.Drafter`` when it is installed and usable, else None (then intake
    needs a draft in every request)."""
    try:
        from replyloop.drafting import Drafter
    except ImportError:
        return None
    try:
        return Drafter(config, store)
    except Exception as exc:
        log.warning("drafting is not available: %s", exc)
        return None


def serve(config: Config, store: Store, secrets: Secrets, http: bool = False, port: int | None = None,
          host: str = "127.0.0.1", scheduler=None, drafter=None,
          start_pipeline: Callable[..., object] | None = None,
          ready: Callable[[BotServer], None] | None = None, stop: threading.Event | None = None) -> None:
    """Run the bot until interrupted (or until ``stop`` is set). ``ready(server)`` is called once
    the HTTP server listens (the CLI prints its URL)."""
    if http and not secrets.slack_signing_secret:
        raise ConfigError("SLACK_SIGNING_SECRET is not set (HTTP mode verifies every Slack request with it)")
    if not http and not secrets.slack_app_token:
        raise ConfigError("SLACK_APP_TOKEN is not set (Socket Mode needs the app-level xapp- token; "
                          "or run `replyloop serve --http`)")
    redacting_logger("bot", secrets)
    redacting_logger("slack_bolt", secrets)
    redacting_logger("slack_sdk", secrets)
    if drafter is None:
        drafter = default_drafter(config, store)
    bot = create_bot(config, store, secrets, drafter=drafter, start_pipeline=start_pipeline)
    server = BotServer(bot, host=host, port=config.file.slack.http_port if port is None else port,
                       slack_events=http)
    stop = stop or threading.Event()
    handler = None
    sweeper = threading.Thread(target=_sweeper, args=(bot, stop, SWEEP_EVERY_S), name="replyloop-sweeper",
                               daemon=True)
    try:
        server.start()
        if not http:
            from slack_bolt.adapter.socket_mode import SocketModeHandler
            from slack_sdk import WebClient

            socket_log = redacting_logger("bot.socket_mode", secrets)
            web = WebClient(token=secrets.slack_app_token, base_url=bot.client.base_url, logger=socket_log)
            handler = SocketModeHandler(bot.app, secrets.slack_app_token, web_client=web, logger=socket_log)
            try:
                handler.connect()
            except SlackApiError as exc:  # a wrong token: say which, not a traceback
                raise ConfigError(f"Socket Mode could not connect: apps.connections.open answered {slack_error(exc)!r} "
                                  "(SLACK_APP_TOKEN must be the app-level xapp- token with the "
                                  "connections:write scope)") from None
        if handler is not None:
            server.probes["socket_mode"] = lambda: (handler.client.is_connected(), "not connected to Slack")
        if scheduler is not None:
            scheduler.start()
            server.probes["scheduler"] = lambda: (bool(getattr(scheduler, "running", True)),
                                                  "the scheduler is not running")
        sweeper.start()
        if ready is not None:
            ready(server)
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        if scheduler is not None:
            try:
                scheduler.shutdown(wait=False)
            except Exception:
                log.exception("stopping the scheduler failed")
        if handler is not None:
            handler.close()
        server.stop()
        bot.close()
