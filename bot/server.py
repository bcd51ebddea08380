"""Running the bot: uvicorn serving ``bot.web``'s ASGI app on ``host:port``:
``POST /slack/events`` (HTTP mode; bolt's ASGI adapter, which verifies signatures and rejects
stale timestamps with 401), ``POST /intake`` and ``GET /health``. In Socket Mode the same
server serves only intake and health while Slack events arrive over the socket
(``SLACK_APP_TOKEN``).

    serve(config, store, secrets, http=True, port=3000, scheduler=None)   # blocks

``scheduler`` is anything with ``start()`` and ``shutdown(wait=False)`` (an APScheduler
BackgroundScheduler); the pipeline attaches its jobs to it.

Hostile clients (``Limits``): uvicorn's h11 protocol bounds the request head
(``h11_max_incomplete_event_size``), closes idle kept-alive connections
(``timeout_keep_alive``) and answers 503 past ``limit_concurrency``. ``_GuardedH11`` adds what
uvicorn lacks: a deadline for the request head (a slowloris client gets 408 and is closed), a
cap on open connections that closes the oldest *unauthenticated* one to admit a new one (so
idle or stalled clients can never lock out Slack or ``/health``), and a JSON answer naming
what h11 refused. ``bot.web`` checks the token / signature headers and the declared length
before it reads a body, and reads it within a deadline.
"""

from __future__ import annotations

import json
import logging
import resource
import socket
import threading
from collections.abc import Callable

import h11
import uvicorn
from slack_sdk.errors import SlackApiError
from uvicorn.protocols.http.h11_impl import H11Protocol

from replyloop.bot import intake, review  # noqa: F401  (intake: ack15's sweep takes in held channel messages)
from replyloop.bot.app import Bot, create_bot
from replyloop.bot.logs import redacting_logger
from replyloop.bot.slackclient import SlackUnreachable, health_of, resolve_channels, slack_error, verify_token, web_client
from replyloop.bot.web import EVENTS_PATH, MAX_SLACK_BODY, Limits, Web
from replyloop.config import Config, Secrets
from replyloop.errors import ConfigError
from replyloop import outbox
from replyloop.intake import draft_pending
from replyloop.store import Store

log = logging.getLogger(__name__)

__all__ = ["BotServer", "Limits", "serve", "sweep", "default_drafter", "EVENTS_PATH", "MAX_BODY"]

MAX_BODY = MAX_SLACK_BODY
SWEEP_EVERY_S = 60.0
FD_RESERVE = 256  # open files kept apart: a batch of accepts, SQLite, the Slack client, the trainer's pipes
ACCEPT_BATCH = 64
LISTEN_BACKLOG = 2048  # the kernel's queue of connections not yet accepted


def _raw_response(status: int, reason: str, error: str) -> bytes:
    """A whole ``Connection: close`` answer, written outside h11 (no request was parsed)."""
    body = json.dumps({"ok": False, "error": error}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json; charset=utf-8\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body


# h11's reasons, in the words of the bot's other answers
_H11_REFUSALS = {"bad Content-Length": "invalid Content-Length (send one decimal byte count)",
                 "conflicting Content-Length headers": "invalid Content-Length (send one decimal byte count)"}


class _H11Connection(h11.Connection):
    """h11's connection, remembering why it refused a request (uvicorn answers a bare 400)."""

    refused: h11.RemoteProtocolError | None = None

    def next_event(self):
        try:
            return super().next_event()
        except h11.RemoteProtocolError as exc:
            self.refused = exc
            raise


class _Guard:
    """Bookkeeping of one server's connections; used on its event loop's thread only."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.open = 0
        self.untrusted: dict[_GuardedH11, None] = {}  # insertion order: the oldest first
        self.evicted = 0
        self.timed_out = 0


def _no_delay(transport) -> None:
    """``TCP_NODELAY`` on an accepted connection. asyncio sets it only on sockets whose ``proto`` is
    ``IPPROTO_TCP``, and the listening socket of ``socket.create_server`` (so every accepted one)
    has proto 0. Without it, the body of an answer (uvicorn writes the head and the body
    separately) waits for the client's delayed ACK of the head: every answer after the first on
    a kept-alive connection took 40-44 ms instead of 2 ms."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # the client is already gone
            pass


class _GuardedH11(H11Protocol):
    """uvicorn's h11 protocol with a header deadline and a connection cap (see the module doc)."""

    guard: _Guard  # set on the per-server subclass

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.conn = _H11Connection(h11.SERVER, self.config.h11_max_incomplete_event_size or 16 * 1024)
        self.access_log = False  # bot.web logs what it refuses; uvicorn would decide by the handlers it finds
        self._head_timer = None
        self._cycle_seen = None
        self._counted = False
        self._head_bytes = 0

    # -- connection cap ------------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        _no_delay(transport)
        guard = self.guard
        guard.open += 1
        self._counted = True
        guard.untrusted[self] = None
        self._arm()
        if guard.open > guard.limits.max_connections:
            victim = next((p for p in guard.untrusted if p is not self), None)
            if victim is None:  # every other connection is an authenticated request in progress
                self.transport.write(_raw_response(503, "Service Unavailable", "too many connections; retry shortly"))
                self._drop()
            else:  # idle, or still sending an unauthenticated request: it gives way
                victim._drop()
            guard.evicted += 1

    def _drop(self) -> None:
        if self._counted:
            self.guard.open -= 1
            self._counted = False
        self.guard.untrusted.pop(self, None)
        self._disarm()
        self.transport.close()

    def trust(self) -> None:
        """The current request is authenticated (called by ``bot.web`` through the scope)."""
        self.guard.untrusted.pop(self, None)

    def connection_lost(self, exc) -> None:
        if self._counted:
            self.guard.open -= 1
            self._counted = False
        self.guard.untrusted.pop(self, None)
        self._disarm()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        if self._counted:  # idle again: first in line to give way (moved to the end: the newest)
            self.guard.untrusted.pop(self, None)
            self.guard.untrusted[self] = None
        super().on_response_complete()

    # -- header deadline ----------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.cycle is None or self.cycle.response_complete:  # a new request head is arriving
            self._arm()
            # h11 bounds only a head still incomplete after a read: one read of 256 KB passes
            end = data.find(b"\r\n\r\n")
            self._head_bytes += len(data) if end < 0 else end + 4
            if self._head_bytes > self.guard.limits.max_header_bytes:
                self.transport.write(_raw_response(
                    431, "Request Header Fields Too Large",
                    f"request head larger than {self.guard.limits.max_header_bytes} bytes"))
                self._drop()
                return
        super().data_received(data)

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not None and self.cycle is not self._cycle_seen:
            # the head is complete; the app runs from the next loop turn and times the body itself
            self._cycle_seen = self.cycle
            self._head_bytes = 0
            self._disarm()
            self.cycle.scope.setdefault("extensions", {})["replyloop.trust"] = self.trust

    def _arm(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.guard.limits.header_timeout_s, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or (self.cycle is not None and not self.cycle.response_complete):
            return
        self.guard.timed_out += 1
        self.transport.write(_raw_response(
            408, "Request Timeout", f"the request head did not arrive within {self.guard.limits.header_timeout_s:g} s"))
        self._drop()

    # -- what h11 refused, as JSON ------------------------------------------------------------

    def send_400_response(self, msg: str) -> None:
        exc, self.conn.refused = self.conn.refused, None
        status = getattr(exc, "error_status_hint", 400) if exc is not None else 400
        if status not in (400, 413, 414, 431, 501):
            status = 400
        reason = str(exc) if exc is not None else msg
        if status == 431:
            reason = f"request head larger than {self.guard.limits.max_header_bytes} bytes"
        data = json.dumps({"ok": False, "error": _H11_REFUSALS.get(reason, reason)}).encode()
        try:
            for event in (h11.Response(status_code=status, headers=[(b"content-type", b"application/json; charset=utf-8"),
                                                                    (b"content-length", str(len(data)).encode()),
                                                                    (b"connection", b"close")]),
                          h11.Data(data=data), h11.EndOfMessage()):
                self.transport.write(self.conn.send(event))
        except h11.LocalProtocolError:  # a response had already begun: only closing is left
            pass
        self._drop()


def _protocol_class(guard: _Guard) -> type[_GuardedH11]:
    return type("GuardedH11Protocol", (_GuardedH11,), {"guard": guard})


def _file_limit(wanted: int) -> int:
    """Raise the soft limit of open files towards ``wanted`` (up to the hard limit); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError):
            pass
    return soft


class BotServer:
    """The HTTP side of the bot on ``host:port`` (port 0: any free port; see ``port`` and ``url``)."""

    def __init__(self, bot: Bot, host: str = "127.0.0.1", port: int = 0, slack_events: bool = True,
                 limits: Limits | None = None, ready: bool = True):
        self.bot = bot
        self.slack_events = slack_events
        limits = limits or Limits()
        files = _file_limit(limits.max_connections + FD_RESERVE)
        if files != resource.RLIM_INFINITY and files < limits.max_connections + FD_RESERVE:
            fitting = max(16, files - FD_RESERVE)
            log.warning("only %d open files allowed (ulimit -n): serving at most %d connections instead of %d",
                        files, fitting, limits.max_connections)
            limits = Limits(**{**limits.__dict__, "max_connections": fitting})
        self.limits = limits
        # name -> () -> (ok, what is wrong); ``serve`` adds the scheduler and the Socket Mode link
        self.probes: dict[str, Callable[[], tuple[bool, str]]] = {}
        self.ready = ready  # ``serve`` starts it False and sets it once everything is up
        self.link: SlackLink | None = None  # ``serve``'s token check, when it made one
        self._guard = _Guard(limits)
        self.web = Web(self, limits)
        self._socket = socket.create_server((host, port), backlog=LISTEN_BACKLOG)  # bound now: the real port is known
        self._address = self._socket.getsockname()
        config = uvicorn.Config(
            self.web, http=_protocol_class(self._guard), loop="asyncio", lifespan="off", ws="none",
            log_config=None, access_log=False, proxy_headers=False, server_header=False,
            timeout_keep_alive=limits.keep_alive_s,  # type: ignore[arg-type]  (a float is fine)
            # a second fence behind the connection cap: at most this many requests at once, else 503
            limit_concurrency=2 * limits.max_connections,
            h11_max_incomplete_event_size=limits.max_header_bytes,
            timeout_graceful_shutdown=limits.shutdown_s,  # type: ignore[arg-type]
            # asyncio accepts this many connections per loop turn; the ones the cap drops are
            # closed on the next turn, so open files stay under max_connections + ACCEPT_BATCH
            backlog=ACCEPT_BATCH,
        )
        self._uvicorn = uvicorn.Server(config)
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None

    def health(self) -> tuple[int, dict]:
        """``GET /health``: 200 ``"status": "ok"`` only once ``serve`` has started everything it
        checks (before: 503 ``"starting"``) and while the database answers, every probe holds
        and the latest Slack Web API calls succeeded; else 503 ``"degraded"`` (only Slack
        fails) or ``"error"``, naming what failed (for a load balancer, Kubernetes or the
        on-call engineer)."""
        checks, body = {}, {}
        try:
            # a review belongs to one draft: two whole-table counts, not a scan (as the metrics)
            body = {"queue": self.bot.store.scalar("SELECT (SELECT count(*) FROM drafts) - (SELECT count(*) FROM reviews)"),
                    "running_runs": self.bot.store.scalar("SELECT count(*) FROM training_runs WHERE status = 'running'")}
            if outbox.enabled(self.bot.config):  # deliver21: dead-lettered deliveries
                body["outbox_dead"] = outbox.dead_count(self.bot.store)
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = f"error: {exc}"
        for name, probe in self.probes.items():
            try:
                ok, problem = probe()
            except Exception as exc:
                ok, problem = False, str(exc)
            checks[name] = "ok" if ok else f"error: {problem}"
        slack = self.slack_state()
        if slack is not None:
            body["slack"] = slack
            checks["slack"] = "ok" if slack["state"] == "ok" else f"{slack['state']}: {slack.get('problem', '')}".rstrip()
        failing = [k for k, v in checks.items() if v != "ok"]
        if not self.ready:
            status = "starting"
        elif not failing:
            status = "ok"
        elif failing == ["slack"]:
            status = "degraded"
        else:
            status = "error"
        ok = status == "ok"
        return (200 if ok else 503), {"ok": ok, "status": status, "mode": "http" if self.slack_events else "socket",
                                      "checks": checks, **body}

    def slack_state(self) -> dict | None:
        """What the Slack client's calls have been answering (``bot.slackclient.SlackHealth``),
        and whether the token was verified (``auth.test``) when ``serve`` checks it."""
        health = health_of(self.bot.client)
        if health is None:
            return None
        state = health.snapshot()
        if self.link is not None and not self.link.verified:
            state["state"] = "error" if self.link.fatal else "degraded"
            state["problem"] = self.link.problem or "auth.test not answered yet"
            state["verified"] = False
        elif state["state"] != "ok":
            state["problem"] = (f"{state['consecutive_failures']} Web API call(s) failed since the last success; "
                                f"last error {state['last_error']}")
        return state

    @property
    def port(self) -> int:
        return self._address[1]

    @property
    def url(self) -> str:
        host = self._address[0]
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    @property
    def connections(self) -> int:
        """Open connections (as the connection cap counts them)."""
        return self._guard.open

    def _run(self) -> None:
        try:
            self._uvicorn.run(sockets=[self._socket])
        except BaseException as exc:  # uvicorn exits with SystemExit when it cannot start
            self._failure = exc
            log.error("the HTTP server stopped: %r", exc)

    def start(self, timeout: float = 30.0) -> "BotServer":
        """Serve on a background thread; returns once it accepts connections."""
        self._thread = threading.Thread(target=self._run, name="replyloop-http", daemon=True)
        self._thread.start()
        ready = threading.Event()
        while not self._uvicorn.started:
            if not self._thread.is_alive() or ready.wait(0.01) or timeout <= 0:
                break
            timeout -= 0.01
        if not self._uvicorn.started:
            self.stop()
            raise RuntimeError(f"the HTTP server did not start: {self._failure!r}")
        self._socket.listen(LISTEN_BACKLOG)  # asyncio set the kernel's queue to ACCEPT_BATCH
        return self

    def stop(self) -> None:
        """Graceful: stop accepting, let in-flight requests finish (``Limits.shutdown_s``), close."""
        self._uvicorn.should_exit = True
        if self._thread is not None:
            self._thread.join(self.limits.shutdown_s + 5)
        self.web.close()
        self._socket.close()

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
    if bot.automation is not None:  # deliver21: revocations whose message was not posted yet
        try:
            from replyloop.bot.delivery import post_automation_notices
            post_automation_notices(bot)
        except Exception:
            log.exception("posting automation notices failed")
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


class SlackLink:
    """``serve``'s check of the Slack side: ``auth.test`` (the token), the configured channels
    (names to ids), then, in Socket Mode, the WebSocket. ``check()`` tries once: a rejected
    token or a missing channel is a ConfigError (exit 2), an unreachable Slack is
    ``SlackUnreachable``; ``retry()`` keeps trying on a thread with a growing pause (``RETRY_S``)
    and, should Slack then reject the token, records it in ``fatal`` and sets ``stop``."""

    RETRY_S = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)

    def __init__(self, bot: Bot, stop: threading.Event, connect: Callable[[], None] | None = None,
                 client=None):
        self.bot, self.stop, self.connect = bot, stop, connect
        self.client = client or bot.client
        self.verified = False
        self.identity: dict = {}
        self.problem: str | None = None
        self.fatal: ConfigError | None = None
        self._thread: threading.Thread | None = None

    def check(self) -> None:
        from slack_sdk.errors import SlackApiError

        self.identity = verify_token(self.client)
        try:
            resolve_channels(self.bot.config, self.client)
        except SlackApiError as exc:
            error = slack_error(exc)
            if exc.response.status_code >= 500 or error in ("ratelimited", "fatal_error", "internal_error"):
                raise SlackUnreachable(f"looking up the channels answered {error!r}") from None
            raise ConfigError(f"could not look up the configured channels: Slack answered {error!r}") from None
        except ConfigError:
            raise
        except Exception as exc:
            raise SlackUnreachable(f"looking up the channels: {type(exc).__name__}: {exc}") from None
        if self.connect is not None:
            self.connect()
        self.verified, self.problem = True, None
        log.info("Slack: signed in as %s in %s", self.identity.get("user") or self.identity.get("user_id"),
                 self.identity.get("team") or self.identity.get("team_id"))

    def retry(self) -> None:
        self._thread = threading.Thread(target=self._retry, name="replyloop-slack-link", daemon=True)
        self._thread.start()

    def _retry(self) -> None:
        attempt = 0
        while not self.stop.wait(self.RETRY_S[min(attempt, len(self.RETRY_S) - 1)]):
            attempt += 1
            try:
                self.check()
                log.info("Slack answers again (after %d retries)", attempt)
                return
            except SlackUnreachable as exc:
                self.problem = f"Slack unreachable: {exc}"
                log.warning("Slack is still unreachable (%s); retrying", exc)
            except ConfigError as exc:
                self.problem, self.fatal = str(exc), exc
                log.error("%s", exc)
                self.stop.set()
                return


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
    client = web_client(config, secrets)
    # the start-up checks retry on their own schedule (SlackLink.RETRY_S), not the client's
    probe = web_client(config, secrets, max_retries=0, logger_name="bot.slack_probe")
    logging.getLogger("bot.slack_probe").setLevel(logging.CRITICAL)  # SlackLink logs one line per try
    unreachable = None
    try:  # a rejected token fails here, before a drafting model is loaded
        verify_token(probe)
    except SlackUnreachable as exc:
        unreachable = exc
    if drafter is None:
        drafter = default_drafter(config, store)
    bot = create_bot(config, store, secrets, client=client, drafter=drafter, start_pipeline=start_pipeline)
    server = BotServer(bot, host=host, port=config.file.slack.http_port if port is None else port,
                       slack_events=http, ready=False)
    stop = stop or threading.Event()
    handler = None
    sweeper = threading.Thread(target=_sweeper, args=(bot, stop, SWEEP_EVERY_S), name="replyloop-sweeper",
                               daemon=True)
    slack = config.file.slack
    if not slack.supervisors and not slack.supervisor_group:
        log.warning("slack.supervisors and slack.supervisor_group are both empty: nobody can approve, edit or "
                    "reject a draft or run /retrain now (set them in %s)", config.source or "replyloop.yaml")
    try:
        server.start()  # /health answers 503 "starting" until everything below is up
        connect = None
        if not http:
            from slack_bolt.adapter.socket_mode import SocketModeHandler
            from slack_sdk import WebClient

            socket_log = redacting_logger("bot.socket_mode", secrets)
            web = WebClient(token=secrets.slack_app_token, base_url=bot.client.base_url, logger=socket_log)
            handler = SocketModeHandler(bot.app, secrets.slack_app_token, web_client=web, logger=socket_log)

            def connect() -> None:
                try:
                    handler.connect()
                except SlackApiError as exc:  # a wrong token: say which, not a traceback
                    error = slack_error(exc)
                    if exc.response.status_code >= 500 or error in ("ratelimited", "fatal_error", "internal_error"):
                        raise SlackUnreachable(f"apps.connections.open answered {error!r}") from None
                    raise ConfigError(f"Socket Mode could not connect: apps.connections.open answered {error!r} "
                                      "(SLACK_APP_TOKEN must be the app-level xapp- token with the "
                                      "connections:write scope)") from None
                except (OSError, ConnectionError) as exc:
                    raise SlackUnreachable(f"the Socket Mode connection: {type(exc).__name__}: {exc}") from None

            server.probes["socket_mode"] = lambda: (handler.client.is_connected(), "not connected to Slack")
        link = SlackLink(bot, stop, connect, client=probe)
        server.link = link
        try:
            if unreachable is not None:
                raise unreachable
            link.check()
        except SlackUnreachable as exc:
            link.problem = f"Slack unreachable: {exc}"
            log.warning("Slack is unreachable at start-up (%s): starting anyway, retrying in the background; "
                        "/health says degraded until it answers", exc)
            link.retry()
        if scheduler is not None:
            scheduler.start()
            server.probes["scheduler"] = lambda: (bool(getattr(scheduler, "running", True)),
                                                  "the scheduler is not running")
        sweeper.start()
        server.ready = True
        if ready is not None:
            ready(server)
        while not stop.wait(0.5):
            pass
        if link.fatal is not None:  # Slack rejected the token after an outage at start-up
            raise link.fatal
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
