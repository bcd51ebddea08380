"""Delivery of decided replies: ``reply.decided`` events in an outbox table, drained by a sender.

Every decision on a draft (approved as is, edited then approved, rejected, or approved by earned
automation) writes one ``reply.decided`` event per delivery target into ``outbox`` **inside the
decision's own transaction** (``install`` puts ``decision_hook`` on the store): a decision that
is stored always has its events, a decision that is not has none.

Targets come from ``delivery.sources`` (the question's source -> ``webhook`` / ``slack_thread``;
a source not listed delivers nothing: post-hoc QA mode). A question that came with its own
``callback_url`` (``POST /intake``, checked by ``check_callback_url``) always gets a webhook
delivery to it.

``Sender`` drains the outbox (in ``replyloop serve``): due events go out on a small pool;
2xx marks one delivered; a failure is tried again after an exponential backoff with full jitter
(``delivery.backoff_base_s`` doubling up to ``backoff_max_s``), or after the receiver's
``Retry-After`` on 429 / 503; after ``delivery.max_attempts`` failures, or at once on an answer
no retry can change (other 4xx, a redirect, a callback address that now resolves into a refused
network), the event is dead-lettered (``replyloop outbox list|retry``). An event is marked
delivered only after the receiver's 2xx, so a crash in between sends it again after the restart:
at least once, and the event id (``Idempotency-Key``) lets the receiver drop the repeat.

Webhook requests are signed like Slack's: ``X-Replyloop-Request-Timestamp: <unix seconds>`` and
``X-Replyloop-Signature: v0=<hex HMAC-SHA256 of "v0:<timestamp>:<body>">`` with the secret from
the environment variable ``delivery.webhook.secret_env``. Redirects are never followed.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import fnmatch
import hashlib
import hmac
import http.client
import ipaddress
import json
import logging
import os
import random
import socket
import ssl
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from replyloop import timeutil
from replyloop.config import Config, DeliveryConfig
from replyloop.errors import ConfigError, ReplyloopError
from replyloop.store import Store

log = logging.getLogger(__name__)

EVENT_TYPE = "reply.decided"
TARGETS = ("webhook", "slack_thread")
STATES = ("pending", "delivered", "dead")
SOURCES = ("http", "slack", "import", "cli", "demo")  # questions.source
SIGNATURE_HEADER = "X-Replyloop-Signature"
TIMESTAMP_HEADER = "X-Replyloop-Request-Timestamp"
MAX_URL = 2000
AUTO_REVIEWER = "replyloop:auto"


class CallbackURLError(ReplyloopError):
    """The callback_url is not allowed"""

    exit_code = 2


class OutboxError(ReplyloopError):
    """Bad outbox request"""

    exit_code = 2


class DeliveryFailure(Exception):
    """One delivery attempt failed: ``permanent`` (dead-letter now) or to be retried, after
    ``retry_after`` seconds when the receiver said so."""

    def __init__(self, message: str, permanent: bool = False, retry_after: float | None = None):
        super().__init__(message)
        self.permanent = permanent
        self.retry_after = retry_after


# -- the callback_url allow-list (no SSRF) -------------------------------------------------------


def _networks(config: DeliveryConfig) -> list[ipaddress._BaseNetwork]:
    out = []
    for i, text in enumerate(config.callback_networks):
        try:
            out.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ConfigError(f"delivery.callback_networks[{i}]: {text!r} is not a network (e.g. 10.2.0.0/16)") from None
    return out


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def refused_address(ip: str, allowed: Iterable[ipaddress._BaseNetwork] = ()) -> str | None:
    """Why a callback may not connect to ``ip`` (private, loopback, link-local, ...), or None."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    if any(addr in net for net in allowed):
        return None
    for what, flag in (("unspecified", addr.is_unspecified), ("loopback", addr.is_loopback),
                       ("link-local", addr.is_link_local), ("private", addr.is_private), ("multicast", addr.is_multicast),
                       ("reserved", addr.is_reserved),
                       ("not globally routable", not addr.is_global)):
        if flag:
            return f"{addr} is {what}" if what == "not globally routable" else f"{addr} is {_a(what)} address"
    return None


def resolve_allowed(host: str, port: int, config: DeliveryConfig) -> list[str]:
    """Every address ``host`` resolves to, each checked: all must be allowed (an attacker's name
    that resolves to one public and one private address is refused). Raises CallbackURLError."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise CallbackURLError(f"callback_url: host {host!r} does not resolve ({exc})") from None
    ips = sorted({info[4][0] for info in infos})
    allowed = _networks(config)
    for ip in ips:
        why = refused_address(ip, allowed)
        if why:
            raise CallbackURLError(f"callback_url: {host} resolves to {why} (not allowed; "
                                   "see delivery.callback_networks)")
    return ips


def _split_url(url: str, config: DeliveryConfig, field: str) -> urllib.parse.SplitResult:
    if not isinstance(url, str) or not url or len(url) > MAX_URL:
        raise CallbackURLError(f"{field}: must be a URL of at most {MAX_URL} characters")
    parts = urllib.parse.urlsplit(url)
    schemes = ("https", "http") if config.webhook.allow_plain_http else ("https",)
    if parts.scheme not in schemes:
        raise CallbackURLError(f"{field}: {parts.scheme or 'no'} scheme; must be "
                               + (" or ".join(f"{s}://" for s in schemes)))
    if not parts.hostname or parts.username or parts.password:
        raise CallbackURLError(f"{field}: needs a host and no user:password@")
    try:
        parts.port
    except ValueError:
        raise CallbackURLError(f"{field}: bad port") from None
    return parts


def check_callback_url(url: str, config: DeliveryConfig) -> str:
    """A question's ``callback_url``, if the config allows it: the scheme, the host on
    ``delivery.callback_hosts`` (exact or ``*.example.com``), and every address it resolves to
    outside private / loopback / link-local / reserved ranges unless ``delivery.callback_networks``
    allows them. Returns the URL; raises CallbackURLError saying why not."""
    parts = _split_url(url, config, "callback_url")
    if not config.callback_hosts:
        raise CallbackURLError("callback_url: not accepted here (delivery.callback_hosts is empty)")
    host = parts.hostname.lower().rstrip(".")
    if not any(fnmatch.fnmatchcase(host, pattern.lower().rstrip(".")) for pattern in config.callback_hosts):
        raise CallbackURLError(f"callback_url: host {host} is not on delivery.callback_hosts")
    resolve_allowed(host, parts.port or (443 if parts.scheme == "https" else 80), config)
    return url


# -- events ---------------------------------------------------------------------------------------


def slack_thread_of(conversation_id: str) -> tuple[str, str] | None:
    """``(channel, thread ts)`` of a question from the Slack intake channel
    (conversation ``slack:<channel>:<thread ts>``), else None."""
    parts = conversation_id.split(":")
    if len(parts) == 3 and parts[0] == "slack" and parts[1] and parts[2]:
        return parts[1], parts[2]
    return None


def event_decision(review: dict) -> str:
    if review.get("automated"):
        return "auto_approve"
    return review["decision"]


def make_event(draft: dict, question: dict, review: dict) -> dict:
    return {
        "type": EVENT_TYPE,
        "id": f"evt_{uuid.uuid4().hex}",
        "conversation_id": question["conversation_id"],
        "question_id": question["id"],
        "draft_id": draft["id"],
        "decision": event_decision(review),
        "final_text": review.get("final_text"),
        "decided_by": review["reviewer"],
        "model": draft.get("model_name"),
        "decided_at": review["created_at"],
        "source": question["source"],
    }


def routes(config: DeliveryConfig, question: dict, decision: str) -> list[tuple[str, str | None]]:
    """``(target, url)`` rows for one decision on ``question``."""
    targets = list(config.sources.get(question["source"], []))
    out: list[tuple[str, str | None]] = []
    url = question.get("callback_url") or config.webhook.url
    if question.get("callback_url") or ("webhook" in targets and url):
        out.append(("webhook", url))
    if "slack_thread" in targets and decision != "reject" and slack_thread_of(question["conversation_id"]):
        out.append(("slack_thread", None))  # a rejected draft is not an answer for the customer
    return out


def decision_hook(config: Config) -> Callable[[Store, dict, dict], None]:
    """The store's decision hook: writes the events of one decision (inside its transaction)."""
    opts = config.file.delivery

    def hook(store: Store, draft: dict, review: dict) -> None:
        question = store.one("SELECT id, conversation_id, source, callback_url FROM questions WHERE id = ?",
                             (draft["question_id"],))
        targets = routes(opts, question, review["decision"])
        if not targets:
            return
        event = make_event(draft, question, review)
        payload = json.dumps(event, ensure_ascii=False, sort_keys=True)
        now, at = time.time(), timeutil.now_iso()
        store.db.conn.executemany(
            "INSERT INTO outbox (event_id, review_id, target, url, payload, next_at, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(event["id"], review["id"], target, url, payload, now, at) for target, url in targets])

    hook.replyloop_outbox = True  # type: ignore[attr-defined]
    return hook


def install(store: Store, config: Config) -> None:
    """Write ``reply.decided`` events with every decision this store records (once per store)."""
    if not any(getattr(h, "replyloop_outbox", False) for h in store.decision_hooks):
        store.decision_hooks.append(decision_hook(config))


def enabled(config: Config) -> bool:
    """Whether anything can be delivered (a source with targets, or callback URLs accepted)."""
    opts = config.file.delivery
    return any(opts.sources.values()) or bool(opts.callback_hosts)


def validate(config: Config, environ: dict | None = None) -> str | None:
    """The webhook secret, checked with the rest of the delivery config (ConfigError naming the key)."""
    opts = config.file.delivery
    environ = os.environ if environ is None else environ
    webhook = any("webhook" in t for t in opts.sources.values()) or bool(opts.callback_hosts)
    for source, targets in opts.sources.items():
        if source not in SOURCES:
            raise ConfigError(f"delivery.sources.{source}: unknown question source (one of {', '.join(SOURCES)})")
        if "webhook" in targets and not opts.webhook.url and not opts.callback_hosts:
            raise ConfigError(f"delivery.sources.{source}: webhook needs delivery.webhook.url "
                              "(or delivery.callback_hosts for per-question callback_url)")
    if opts.webhook.url:
        _split_url(opts.webhook.url, opts, "delivery.webhook.url")
    _networks(opts)
    secret = environ.get(opts.webhook.secret_env) if opts.webhook.secret_env else None
    if webhook and not secret:
        raise ConfigError(f"{opts.webhook.secret_env or 'delivery.webhook.secret_env'} is not set "
                          "(the webhook requests are signed with it; see delivery.webhook.secret_env)")
    return secret


# -- the webhook request ----------------------------------------------------------------------------


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """``v0=`` + hex HMAC-SHA256 of ``v0:<timestamp>:<body>`` (Slack's scheme)."""
    base = b"v0:" + timestamp.encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str, now: float | None = None,
           max_age_s: float = 300) -> bool:
    """What a receiver checks (the tests' receiver uses it): a fresh timestamp and the signature."""
    try:
        if abs((now or time.time()) - int(timestamp)) > max_age_s:
            return False
    except (TypeError, ValueError):
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature or "")


def _connect(host: str, port: int, ips: list[str] | None, timeout: float) -> socket.socket:
    """A TCP connection to one of ``ips`` (addresses already checked), in order; to ``host``
    when none are given (the operator's own webhook URL)."""
    if not ips:
        sock = socket.create_connection((host, port), timeout)
    else:
        error: OSError | None = None
        for ip in ips:
            try:
                sock = socket.create_connection((ip, port), timeout)
                break
            except OSError as exc:
                error = exc
        else:
            raise error or OSError(f"cannot connect to {host}")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class _PinnedHTTP(http.client.HTTPConnection):
    def __init__(self, host, port, ips, timeout):
        super().__init__(host, port, timeout=timeout)
        self._ips = ips

    def connect(self):
        self.sock = _connect(self.host, self.port, self._ips, self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, host, port, ips, timeout, context):
        super().__init__(host, port, timeout=timeout, context=context)
        self._ips = ips

    def connect(self):
        sock = _connect(self.host, self.port, self._ips, self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # the certificate names the host


def retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` as seconds (a number, or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def post_webhook(url: str, body: bytes, headers: dict[str, str], timeout: float, pin: list[str] | None = None,
                 context: ssl.SSLContext | None = None) -> int:
    """One POST, connecting to one of ``pin`` (addresses already checked) when given; no redirects.
    Returns the status (2xx); raises DeliveryFailure otherwise."""
    parts = urllib.parse.urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if parts.scheme == "https":
        conn: http.client.HTTPConnection = _PinnedHTTPS(parts.hostname, parts.port or 443, pin, timeout,
                                                        context or ssl.create_default_context())
    else:
        conn = _PinnedHTTP(parts.hostname, parts.port or 80, pin, timeout)
    try:
        conn.request("POST", path, body=body, headers={**headers, "Content-Length": str(len(body))})
        resp = conn.getresponse()
        resp.read(64 * 1024)
        status = resp.status
        if 200 <= status < 300:
            return status
        if status in (429, 503):
            raise DeliveryFailure(f"HTTP {status}", retry_after=retry_after_seconds(resp.getheader("Retry-After")))
        if 300 <= status < 400:
            raise DeliveryFailure(f"HTTP {status} redirect to {resp.getheader('Location')!r} (redirects are not "
                                  "followed)", permanent=True)
        if 400 <= status < 500 and status not in (408, 409, 425):
            raise DeliveryFailure(f"HTTP {status} (the receiver refused the event)", permanent=True)
        raise DeliveryFailure(f"HTTP {status}")
    except (OSError, http.client.HTTPException) as exc:
        raise DeliveryFailure(f"{type(exc).__name__}: {exc}") from None
    finally:
        conn.close()


# -- the sender ---------------------------------------------------------------------------------------


SlackPost = Callable[[str, str, str, dict], None]
# (channel, thread_ts, event id) -> whether the thread already has this event's reply (message metadata)
SlackPosted = Callable[[str, str, str], bool]
"""(channel, thread_ts, text, event) -> None; raises DeliveryFailure"""


def backoff(attempts: int, base: float, cap: float, rng: random.Random = random._inst) -> float:  # type: ignore[attr-defined]
    """Full jitter: uniform in [0, min(cap, base * 2**(attempts-1))]."""
    return rng.uniform(0, min(cap, base * 2 ** max(0, attempts - 1)))


@dataclass
class Stats:
    delivered: int = 0
    failed: int = 0
    dead: int = 0


class Sender:
    """Drains the outbox on ``workers`` threads until ``close``. One per workspace (``serve``)."""

    def __init__(self, store: Store, config: Config, secret: str | None, slack_post: SlackPost | None = None,
                 context: ssl.SSLContext | None = None, slack_posted: SlackPosted | None = None):
        self.store = store
        self.slack_posted = slack_posted
        self.opts = config.file.delivery
        self.secret = secret
        self.slack_post = slack_post
        self.context = context
        self.stats = Stats()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._inflight: set[int] = set()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=self.opts.workers, thread_name_prefix="replyloop-outbox")
        self._thread = threading.Thread(target=self._run, name="replyloop-outbox-poll", daemon=True)

    def start(self) -> "Sender":
        self._thread.start()
        return self

    def wake(self) -> None:
        self._wake.set()

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _run(self) -> None:
        pruned_at: float | None = None  # not 0.0: the monotonic clock starts near 0 at boot
        while not self._stop.is_set():
            try:
                self.dispatch()
            except Exception:
                log.exception("reading the outbox failed; trying again")
            if self.opts.keep_delivered_days and (pruned_at is None or time.monotonic() - pruned_at >= PRUNE_EVERY_S):
                pruned_at = time.monotonic()
                try:
                    prune_delivered(self.store, self.opts.keep_delivered_days)
                except Exception:
                    log.exception("pruning delivered outbox events failed; trying again in an hour")
            self._wake.wait(self.opts.poll_s)
            self._wake.clear()
        self.store.release_thread()

    def dispatch(self) -> int:
        """Hand the due events (as many as there are free workers) to the pool; returns how many."""
        with self._lock:
            free = self.opts.workers * 2 - len(self._inflight)
            busy = json.dumps(sorted(self._inflight))
        if free <= 0:
            return 0
        rows = self.store.query(
            "SELECT id FROM outbox WHERE state = 'pending' AND next_at <= ? AND id NOT IN"
            " (SELECT value FROM json_each(?)) ORDER BY next_at, id LIMIT ?", (time.time(), busy, free))
        for row in rows:
            with self._lock:
                self._inflight.add(row["id"])
            try:
                self._pool.submit(self._deliver_logged, row["id"])
            except RuntimeError:  # shutting down
                with self._lock:
                    self._inflight.discard(row["id"])
        return len(rows)

    def _deliver_logged(self, outbox_id: int) -> None:
        try:
            self.deliver(outbox_id)
        except Exception:
            log.exception("delivering outbox event %s failed", outbox_id)
        finally:
            with self._lock:
                self._inflight.discard(outbox_id)
            self._wake.set()

    def deliver(self, outbox_id: int) -> str:
        """One attempt at one event; records the outcome. Returns the new state."""
        row = self.store.one("SELECT * FROM outbox WHERE id = ?", (outbox_id,))
        if row is None or row["state"] != "pending":
            return row["state"] if row else "missing"
        attempt = row["attempts"] + 1
        try:
            if row["target"] == "webhook":
                self._webhook(row, attempt)
            else:
                self._slack(row)
        except DeliveryFailure as exc:
            return self._failed(row, attempt, exc)
        with self.store.transaction() as db:
            db.execute("UPDATE outbox SET state = 'delivered', attempts = ?, delivered_at = ?, last_error = NULL"
                       " WHERE id = ? AND state = 'pending'", (attempt, timeutil.now_iso(), outbox_id))
        self.stats.delivered += 1
        return "delivered"

    def _webhook(self, row: dict, attempt: int) -> None:
        if not self.secret:
            raise DeliveryFailure(f"{self.opts.webhook.secret_env} is not set: cannot sign the webhook request")
        url = row["url"]
        pin = None
        if url != self.opts.webhook.url:  # a question's callback_url: checked again, connected by address
            try:
                parts = _split_url(url, self.opts, "callback_url")
                pin = resolve_allowed(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80),
                                      self.opts)
            except CallbackURLError as exc:
                raise DeliveryFailure(str(exc), permanent=True) from None
        body = row["payload"].encode("utf-8")
        ts = str(int(time.time()))
        headers = {"Content-Type": "application/json; charset=utf-8", "User-Agent": "replyloop-outbox",
                   "Idempotency-Key": row["event_id"], "X-Replyloop-Event-Id": row["event_id"],
                   "X-Replyloop-Attempt": str(attempt), TIMESTAMP_HEADER: ts,
                   SIGNATURE_HEADER: sign(self.secret, ts, body)}
        post_webhook(url, body, headers, self.opts.webhook.timeout_s, pin=pin, context=self.context)

    def _slack(self, row: dict) -> None:
        if self.slack_post is None:
            raise DeliveryFailure("no Slack client in this process (only `replyloop serve` posts thread replies)")
        event = json.loads(row["payload"])
        thread = slack_thread_of(event["conversation_id"])
        if thread is None or not event.get("final_text"):
            raise DeliveryFailure("not a Slack thread question, or no reply text", permanent=True)
        # Slack has no idempotency key: a post that was started before (a crash between Slack's
        # answer and the 'delivered' mark) is looked up in the thread by the event id its message
        # metadata carries, so the customer sees the reply once
        if row["sending_at"] is not None and self.slack_posted is not None:
            try:
                if self.slack_posted(thread[0], thread[1], row["event_id"]):
                    return
            except DeliveryFailure:
                raise
            except Exception as exc:  # cannot tell: try again later rather than post twice
                raise DeliveryFailure(f"conversations.replies: {exc}") from None
        with self.store.transaction() as db:
            db.execute("UPDATE outbox SET sending_at = ? WHERE id = ?", (time.time(), row["id"]))
        self.slack_post(thread[0], thread[1], event["final_text"], event)

    def _failed(self, row: dict, attempt: int, exc: DeliveryFailure) -> str:
        dead = exc.permanent or attempt >= self.opts.max_attempts
        if exc.retry_after is not None:
            delay = min(exc.retry_after, self.opts.backoff_max_s)
        else:
            delay = backoff(attempt, self.opts.backoff_base_s, self.opts.backoff_max_s)
        state = "dead" if dead else "pending"
        with self.store.transaction() as db:
            db.execute("UPDATE outbox SET state = ?, attempts = ?, next_at = ?, last_error = ? WHERE id = ?"
                       " AND state = 'pending'", (state, attempt, time.time() + delay, str(exc)[:500], row["id"]))
        if dead:
            self.stats.dead += 1
            log.warning("outbox event %s (%s) dead-lettered after %d attempt(s): %s", row["event_id"], row["target"],
                        attempt, exc)
        else:
            self.stats.failed += 1
        return state


# -- operator views --------------------------------------------------------------------------------------


PRUNE_EVERY_S = 3600.0  # the sender deletes old delivered events at start and then hourly
PRUNE_BATCH = 5000       # rows per transaction: the write lock is never held for long


def prune_delivered(store: Store, keep_days: float, now: dt.datetime | None = None) -> int:
    """Delete delivered events whose ``delivered_at`` is older than ``keep_days``
    (``delivery.keep_delivered_days``); pending and dead events are never touched. The decisions
    themselves stay in ``reviews``. Returns how many rows were deleted."""
    if keep_days <= 0:
        return 0
    cutoff = ((now or timeutil.now()) - dt.timedelta(days=keep_days)).isoformat(timespec="microseconds")
    total = 0
    while True:
        with store.transaction() as db:
            cur = db.execute("DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE state = 'delivered'"
                             " AND delivered_at < ? LIMIT ?)", (cutoff, PRUNE_BATCH))
            deleted = cur.rowcount
        total += deleted
        if deleted < PRUNE_BATCH:
            break
    if total:
        log.info("deleted %d delivered outbox event(s) older than %g days", total, keep_days)
    return total


def counts(store: Store) -> dict[str, int]:
    out = {state: 0 for state in STATES}
    out.update({r["state"]: r["n"] for r in store.query("SELECT state, count(*) AS n FROM outbox GROUP BY state")})
    return out


def dead_count(store: Store) -> int:
    return store.scalar("SELECT count(*) FROM outbox WHERE state = 'dead'") or 0


def list_events(store: Store, state: str | None = "dead", limit: int = 100) -> list[dict]:
    if state not in (None, *STATES):
        raise OutboxError(f"--state must be one of {', '.join(STATES)} or all, not {state!r}")
    sql = ("SELECT id, event_id, review_id, target, url, state, attempts, last_error, created_at, delivered_at"
           " FROM outbox")
    params: list = []
    if state:
        sql += " WHERE state = ?"
        params.append(state)
    return store.query(sql + " ORDER BY id DESC LIMIT ?", (*params, int(limit)))


def retry(store: Store, ids: Iterable[int] = (), all_dead: bool = False, actor: str = "cli") -> int:
    """Dead events back to pending, due now, with their attempts reset. Returns how many."""
    ids = [int(i) for i in ids]
    if not ids and not all_dead:
        raise OutboxError("name the outbox ids to retry, or use --all-dead")
    with store.transaction() as db:
        if all_dead:
            ids = [r["id"] for r in store.query("SELECT id FROM outbox WHERE state = 'dead' ORDER BY id")]
        found = {r["id"]: r["state"] for r in store.query(
            "SELECT id, state FROM outbox WHERE id IN (SELECT value FROM json_each(?))", (json.dumps(ids),))}
        missing = [i for i in ids if i not in found]
        if missing:
            raise OutboxError(f"outbox id(s) not found: {', '.join(map(str, missing))}")
        not_dead = [i for i in ids if found[i] != "dead"]
        if not_dead:
            raise OutboxError(f"outbox id(s) not dead-lettered: {', '.join(map(str, not_dead))}")
        db.execute("UPDATE outbox SET state = 'pending', attempts = 0, next_at = ? WHERE id IN"
                   " (SELECT value FROM json_each(?))", (time.time(), json.dumps(ids)))
        if ids:
            store.audit(actor, "outbox.retry", "outbox", None, {"ids": ids})
    return len(ids)
