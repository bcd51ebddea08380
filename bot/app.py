"""The slack-bolt App. What an ack promises is stored before the ack: a decision (Approve, an
Edit or Reject submission) is committed before the listener calls ``ack()`` (by the bot's
decision writer, ``review.DecisionWriter``, which commits the decisions arriving together in one
short transaction), and an intake-channel message is stored with its dedup key by a listener middleware before
bolt's automatic ack of the event. The slow rest runs after the ack, off the listener threads:
card updates and notices on the small work pool, drafting on its own bounded queue
(``DraftQueue``), so a slow model never holds a thread that acknowledges clicks.

    app = build_app(config, store, Secrets.from_env())          # a slack_bolt.App
    bot = create_bot(config, store, secrets, drafter=..., start_pipeline=...)   # App + what serve needs
"""

from __future__ import annotations

import contextvars
import copy
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from slack_bolt import App
from slack_bolt.context.ack import Ack
from slack_bolt.listener.thread_runner import ThreadListenerRunner
from slack_sdk import WebClient

from replyloop.bot import cards, delivery, golden, intake, proposals, reply, retrain, review, status
from replyloop.bot.logs import redacting_logger
from replyloop.bot.slackclient import web_client
from replyloop.bot.supervisors import Supervisors
from replyloop import timeutil
from replyloop.config import Config, Secrets
from replyloop.intake import Checker, Drafter, policy_checker
from replyloop.store import Store

log = logging.getLogger(__name__)

LISTENER_THREADS = 32  # bolt's default is 5: acks of 50 clicking supervisors would queue
WORK_THREADS = 4       # card updates and notices after the ack
DRAFT_THREADS = 2      # drafting model calls (a local model uses the CPU cores anyway)
DRAFT_QUEUE = 500      # drafts waiting beyond this are left to the sweep (their questions are stored)


class DraftQueue:
    """A bounded pool for drafting (and other slow intake work): at most ``capacity`` jobs queued
    or running; one job per key at a time. A job that does not fit is not queued, which loses
    nothing: its question is already stored and ``replyloop serve``'s sweep drafts it."""

    def __init__(self, workers: int = DRAFT_THREADS, capacity: int = DRAFT_QUEUE):
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="replyloop-draft")
        self._slots = threading.BoundedSemaphore(capacity)
        self._busy: set = set()
        self._lock = threading.Lock()

    def submit(self, key, fn: Callable[..., object], *args) -> bool:
        with self._lock:
            if key in self._busy or not self._slots.acquire(blocking=False):
                return False
            self._busy.add(key)

        def run():
            try:
                fn(*args)
            except Exception:
                log.exception("%s failed", getattr(fn, "__name__", fn))
            finally:
                with self._lock:
                    self._busy.discard(key)
                self._slots.release()

        try:
            self._pool.submit(run)
        except RuntimeError:  # shut down
            with self._lock:
                self._busy.discard(key)
            self._slots.release()
            return False
        return True

    def busy(self) -> set:
        """Keys queued or running now."""
        with self._lock:
            return set(self._busy)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)  # the running drafts finish


@dataclass
class Bot:
    """Everything the listeners need, built once."""

    config: Config
    store: Store
    secrets: Secrets
    client: WebClient
    supervisors: Supervisors
    checker: Checker | None = None
    drafter: Drafter | None = None
    start_pipeline: Callable[..., object] | None = None
    app: App | None = None
    background: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=4, thread_name_prefix="replyloop-bg"))
    work: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=WORK_THREADS, thread_name_prefix="replyloop-work"))
    drafting: DraftQueue = field(default_factory=DraftQueue)
    decisions: review.DecisionWriter | None = None
    started_at: str = field(default_factory=timeutil.now_iso)
    posting: set[int] = field(default_factory=set)
    posting_lock: threading.Lock = field(default_factory=threading.Lock)
    channel_names: dict[str, str] = field(default_factory=dict)
    outbox: object | None = None  # deliver21: replyloop.outbox.Sender, when delivery is configured
    automation: object | None = None  # deliver21: replyloop.automation.Automation, when enabled
    metrics: object = None  # bot.metrics.Metrics (GET /metrics), set by create_bot
    languages: object = None  # i18n22: bot.language.UserLanguages (a user's Slack locale), set by create_bot
    stop_checkpoints: Callable[[], None] | None = None  # Store.checkpoint_in_background's stop

    def publish_home(self, user: str) -> None:
        """App Home of ``user``, in their language (their Slack locale, else ``ui.language``)."""
        from replyloop import i18n

        home = status.home(self.store, self.config)
        with i18n.language(self.languages.lazy(user) if self.languages is not None else None):
            home["automation_blocks"] = delivery.automation_blocks(self)  # deliver21: [] unless automation is on
            view = cards.home_view(home)
        self.client.views_publish(user_id=user, view=view)

    def after_ack(self, fn: Callable[..., object], *args) -> None:
        """Run a decision's slow part (chat.update, notices) on the small work pool: the
        listener thread is free at once, and few runnable threads keep other acks fast."""
        def run():
            try:
                fn(self, *args)
            except Exception:
                log.exception("%s failed", getattr(fn, "__name__", fn))
        self.work.submit(contextvars.copy_context().run, run)  # the log fields (draft_id) go along

    def close(self) -> None:
        self.drafting.shutdown()
        self.work.shutdown(wait=True)
        if self.decisions is not None:
            self.decisions.close()
        if self.stop_checkpoints is not None:
            self.stop_checkpoints()
        if self.outbox is not None:  # deliver21: what is not sent yet stays in the outbox
            self.outbox.close()
        self.background.shutdown(wait=False, cancel_futures=True)


def create_bot(config: Config, store: Store, secrets: Secrets, client: WebClient | None = None,
               drafter: Drafter | None = None, checker: Checker | None = None,
               start_pipeline: Callable[..., object] | None = None,
               supervisors: Supervisors | None = None, listener_threads: int = LISTENER_THREADS) -> Bot:
    """Build the bot. ``checker`` defaults to the policy engine (``evaluation.policy``) when it is
    installed; ``start_pipeline(trigger=, requested_by=, notify=)`` backs ``/retrain now``."""
    client = client or web_client(config, secrets)
    if checker is None:
        # share the drafter's engine: the rules are loaded (and their automaton built) once
        checker = policy_checker(config, getattr(drafter, "policy_engine", None))
        if checker is None:
            log.warning("evaluation.policy is not available: drafts are not policy-checked")
    slack = config.file.slack
    bot = Bot(config=config, store=store, secrets=secrets, client=client,
              supervisors=supervisors or Supervisors(client, slack.supervisors, slack.supervisor_group),
              checker=checker, drafter=drafter, start_pipeline=start_pipeline,
              decisions=review.DecisionWriter(store),
              # the WAL checkpoints off the decisions' commits (a 20-160 ms stall every ~110th)
              stop_checkpoints=store.checkpoint_in_background())
    from replyloop.bot.logs import drop_message
    from replyloop.bot.metrics import Metrics

    bot.metrics = Metrics(bot)
    from replyloop.bot.language import ContextExecutor, UserLanguages

    bot.languages = UserLanguages(client, enabled=config.file.ui.per_user_locale)  # i18n22
    bolt_logger = redacting_logger("bot.bolt", secrets)
    # bolt reads SLACK_BOT_TOKEN itself and warns that it is unused when a client is given: it is
    # the same token (the client is built from it), so the warning says nothing
    drop_message(bolt_logger, "As you gave `client` as well, `token` will be unused.")
    app = _App(
        client=client,
        signing_secret=secrets.slack_signing_secret or "",
        # Socket Mode needs no signing secret (bolt skips verification there; HTTP mode requires one)
        request_verification_enabled=bool(secrets.slack_signing_secret),
        token_verification_enabled=False,
        process_before_response=False,
        # the request's language (set by _App.dispatch) reaches the listener threads: i18n22
        listener_executor=ContextExecutor(max_workers=listener_threads, thread_name_prefix="replyloop-listener"),
        logger=bolt_logger,
    )
    app.languages = bot.languages  # i18n22: every request in the acting user's language
    app.use(_ack_timer(bot))
    app._listener_runner = _ListenerRunner(app.listener_runner)  # no public setter in bolt 1.30
    _register(app, bot)
    bot.app = app
    bot.outbox = delivery.start(bot)  # deliver21: reply.decided events and their sender
    bot.automation = delivery.start_automation(bot)  # deliver21: earned automation per intent
    return bot


def build_app(config: Config, store: Store, secrets: Secrets, client: WebClient | None = None,
              drafter: Drafter | None = None, **kwargs) -> App:
    """The slack_bolt.App (see ``create_bot`` for the keyword arguments)."""
    return create_bot(config, store, secrets, client=client, drafter=drafter, **kwargs).app


class _App(App):
    """bolt's App that translates for the acting user (issue 22): the whole dispatch of a request,
    its listeners included, runs in that user's language (``bot.language``; resolved lazily, so
    after the ack of a click). bolt runs the listeners after its global middleware has returned,
    so a middleware's ``with`` block would end before them; the listener and work pools copy the
    context of the dispatching thread, which carries the language from here."""

    languages = None  # bot.language.UserLanguages, set by create_bot

    def dispatch(self, req):
        if self.languages is None:
            return super().dispatch(req)
        from replyloop import i18n
        from replyloop.bot.language import user_of

        body = req.body if isinstance(req.body, dict) else {}
        with i18n.language(self.languages.lazy(user_of(body))):
            return super().dispatch(req)
def _on_request_thread(fn):
    """Marks a listener that ``_ListenerRunner`` runs on the request's own thread."""
    fn.replyloop_on_request_thread = True
    return fn


class _ListenerRunner(ThreadListenerRunner):
    """bolt's listener runner, except for the listeners marked ``_on_request_thread`` (Approve,
    the Edit and Reject submissions): those run on the thread that dispatches the request and
    the answer goes out as soon as they return (bolt's ``process_before_response``, for them
    only). They store the decision, ``ack()`` and hand the slow rest to ``Bot.after_ack``, so
    nothing slow runs before the answer either way. bolt's default instead runs the listener on
    its listener pool while the request's thread polls for the ack every 10 ms: up to 10 ms
    added to each ack, a hundred wake-ups a second per click in flight competing for the GIL,
    and an Approve that waits when slow listeners (App Home, /retrain) hold the whole pool."""

    def __init__(self, base: ThreadListenerRunner):
        super().__init__(logger=base.logger, process_before_response=base.process_before_response,
                         listener_error_handler=base.listener_error_handler,
                         listener_start_handler=base.listener_start_handler,
                         listener_completion_handler=base.listener_completion_handler,
                         listener_executor=base.listener_executor, lazy_listener_runner=base.lazy_listener_runner)

    def run(self, request, response, listener_name, listener, starting_time=None):
        if getattr(listener.ack_function, "replyloop_on_request_thread", False) and not self.process_before_response:
            inline = copy.copy(self)  # the current handlers (``app.error`` replaces them), run inline
            inline.process_before_response = True
            return ThreadListenerRunner.run(inline, request, response, listener_name, listener, starting_time)
        return super().run(request, response, listener_name, listener, starting_time)


class _TimedAck(Ack):
    """bolt's ``ack`` that records, on its first call, how long the request waited for it."""

    def __init__(self, histogram, kind: str):
        super().__init__()
        self._histogram, self._kind, self._started, self._timed = histogram, kind, time.perf_counter(), False

    def __call__(self, *args, **kwargs):
        if not self._timed:
            self._timed = True
            self._histogram.labels(kind=self._kind).observe(time.perf_counter() - self._started)
        return super().__call__(*args, **kwargs)


def _ack_timer(bot: Bot):
    """A global middleware: times the ack (``replyloop_ack_latency_seconds``)."""
    def ack_timer(req, resp, next):  # noqa: A002 (bolt's argument name)
        body = req.body or {}
        kind = body.get("type") or ("slash_command" if "command" in body else "other")
        if "ack" not in req.context or type(req.context["ack"]) is Ack:
            req.context["ack"] = _TimedAck(bot.metrics.ack_latency, str(kind))
        return next()

    return ack_timer


def _draft_of(body: dict) -> int | None:
    """The draft a card click or a review modal is about (``value`` / ``private_metadata``)."""
    try:
        if body.get("type") == "block_actions":
            value = (body.get("actions") or [{}])[0].get("value")
        elif body.get("type") in ("view_submission", "view_closed"):
            value = (body.get("view") or {}).get("private_metadata")
        else:
            return None
        text = str(value or "")
        if text.isdigit():
            return int(text)
        import json

        data = json.loads(text)
        return int(data.get("draft_id")) if isinstance(data, dict) and str(data.get("draft_id", "")).isdigit() else None
    except (ValueError, TypeError, AttributeError, IndexError):
        return None


def _register(app: App, bot: Bot) -> None:
    from replyloop.bot.logs import log_fields

    @app.action(cards.APPROVE)
    @_on_request_thread
    def on_approve(ack, body, action):
        with log_fields(draft_id=_draft_of(body)):  # every log line of this click names the draft
            outcome = review.decide_click(bot, body, action)  # durable before Slack hears 200
            ack()
            bot.after_ack(review.finish, outcome)

    def modal_opener(kind: str):
        def on_open(ack, body, action):
            with log_fields(draft_id=_draft_of(body)):
                ack()
                review.open_modal(bot, body, action, kind)
        return on_open

    def modal_submit(validate: Callable[[dict], list | dict | None], decide: Callable[..., object]):
        """Edit and Reject submissions: errors ride on the ack (the policy engine is fast), else
        the decision is durable before Slack hears 200 and the card update follows the ack."""
        @_on_request_thread
        def on_submit(ack, body, view):
            with log_fields(draft_id=_draft_of(body)):
                errors = validate(view)
                if errors:
                    ack(response_action="errors", errors=errors)
                    return
                outcome = decide(bot, body, view)
                ack()
                bot.after_ack(review.finish, outcome)
        return on_submit

    app.action(cards.EDIT)(modal_opener("edit"))
    app.action(cards.REJECT)(modal_opener("reject"))
    app.view(cards.EDIT_VIEW)(modal_submit(lambda view: review.validate_edit(bot, view), review.decide_edit))
    app.view(cards.REJECT_VIEW)(modal_submit(review.validate_reject, review.decide_reject))

    @app.action(delivery.AUTOMATION_PIN)  # deliver21: App Home's pin / allow button of an intent
    def on_automation_pin(ack, body, action):
        ack()
        delivery.pin_from_home(bot, body, action)

    @app.command("/retrain")
    def on_retrain(ack, command, respond):
        ack()
        retrain.handle(bot, command, respond)

    @app.event("app_home_opened")
    def on_home(event):
        if event.get("tab", "home") == "home":
            bot.publish_home(event["user"])

    def store_first(context, event, next):  # noqa: A002 (bolt's argument name)
        """Runs before bolt acknowledges the event: the message is stored (or held) by then."""
        context["replyloop_intake"] = intake.store_message(bot, event)
        next()

    @app.event("message", middleware=[store_first])
    def on_message(context):
        intake.after_store(bot, context.get("replyloop_intake"))

    golden.register(app, bot)  # golden23: "Add to golden suite" on the decided card
    proposals.register(app, bot)  # rules19: rule proposal cards (Accept / Edit / Dismiss)
    reply.register(app, bot)  # rules19: /reply
