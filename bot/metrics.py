"""Prometheus metrics of the bot (``GET /metrics``, text format 0.0.4).

Each ``Bot`` has its own ``CollectorRegistry`` (never prometheus-client's global one, so two bots
in one process, as in the tests, never clash). What the process sees as it happens is kept in
prometheus-client metrics (the ack latency histogram); what the database knows (the queue,
decisions, runs, models, policy blocks) and the Slack client's error counts are read at scrape
time by ``StoreCollector``, with a handful of cheap queries, so they survive restarts and are
never out of step with the store. README "Health, metrics and logs" lists every metric.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

if TYPE_CHECKING:
    from replyloop.bot.app import Bot

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ACK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0)  # Slack's deadline is 3 s
RUN_STATES = ("queued", "running", "succeeded", "failed")
DECISIONS = ("approve", "edit", "reject")
VERDICTS = ("pass", "warn", "block")


def _age_s(iso: str | None, now: float) -> float:
    if not iso:
        return 0.0
    try:
        t = datetime.fromisoformat(iso)
    except ValueError:
        return 0.0
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return max(0.0, now - t.timestamp())


class _Tally:
    """Counts of an append-only table by one column, read incrementally: each scrape counts only
    the rows added since the last (``id > last``). A table that shrank (a restored backup)
    is counted again from the start."""

    def __init__(self, column: str):
        self.column = column
        self.last_id = 0
        self.total = 0
        self.counts: dict[str, int] = {}

    def read(self, store, table: str) -> dict[str, int]:
        if store.scalar(f"SELECT count(*) FROM {table}") < self.total:
            self.last_id, self.total, self.counts = 0, 0, {}
        rows = store.query(f"SELECT {self.column} AS k, count(*) AS n, max(id) AS last FROM {table} "
                           f"WHERE id > ? GROUP BY {self.column}", (self.last_id,))
        for r in rows:
            self.counts[r["k"]] = self.counts.get(r["k"], 0) + r["n"]
            self.total += r["n"]
            self.last_id = max(self.last_id, r["last"])
        return dict(self.counts)


class StoreCollector:
    """Values read from the database and the Slack client when Prometheus scrapes."""

    def __init__(self, bot: "Bot"):
        self.bot = bot
        self._lock = threading.Lock()
        self._oldest_from = 0  # no draft below this id is undecided (decisions are never undone)
        self._tallies = {"reviews": _Tally("decision"), "drafts": _Tally("verdict")}

    def describe(self):
        return []  # values are read at scrape time only (no query when the collector is registered)

    def collect(self):
        now = time.time()
        up = GaugeMetricFamily("replyloop_database_up", "1 when the database answered this scrape's queries")
        try:
            with self._lock:
                families = list(self._from_store(now))
        except Exception as exc:
            log.warning("metrics: reading the database failed: %s", exc)
            up.add_metric([], 0)
            yield up
        else:
            up.add_metric([], 1)
            yield up
            yield from families
        yield from self._slack()

    def _from_store(self, now: float):
        store = self.bot.store
        # counts of whole tables are cheap (the smallest index); a review belongs to one draft
        n = store.scalar("SELECT (SELECT count(*) FROM drafts) - (SELECT count(*) FROM reviews)")
        pending = GaugeMetricFamily("replyloop_pending_reviews", "Drafts no supervisor has decided yet")
        pending.add_metric([], n)
        yield pending
        oldest_at = None
        if n:
            row = store.one("SELECT d.id, d.created_at FROM drafts d WHERE d.id >= ? AND NOT EXISTS "
                            "(SELECT 1 FROM reviews r WHERE r.draft_id = d.id) ORDER BY d.id LIMIT 1",
                            (self._oldest_from,))
            if row is not None:  # the scan starts where the last one found the oldest
                self._oldest_from, oldest_at = row["id"], row["created_at"]
        oldest = GaugeMetricFamily("replyloop_oldest_pending_review_age_seconds",
                                   "Age of the oldest undecided draft (0 when the queue is empty)")
        oldest.add_metric([], _age_s(oldest_at, now))
        yield oldest

        counts = self._tallies["reviews"].read(store, "reviews")
        decisions = CounterMetricFamily("replyloop_decisions", "Supervisor decisions stored, by kind",
                                        labels=["decision"])
        for kind in DECISIONS:
            decisions.add_metric([kind], counts.get(kind, 0))
        yield decisions

        states = {r["status"]: r["n"] for r in
                  store.query("SELECT status, count(*) AS n FROM training_runs GROUP BY status")}
        runs = GaugeMetricFamily("replyloop_training_runs", "Training runs by state", labels=["state"])
        for state in RUN_STATES:
            runs.add_metric([state], states.get(state, 0))
        yield runs

        verdicts = self._tallies["drafts"].read(store, "drafts")
        drafts = CounterMetricFamily("replyloop_drafts", "Drafts stored, by policy verdict", labels=["verdict"])
        for verdict in VERDICTS:
            drafts.add_metric([verdict], verdicts.get(verdict, 0))
        yield drafts
        blocks = CounterMetricFamily("replyloop_policy_blocks", "Drafts the policy engine blocked (verdict block)")
        blocks.add_metric([], verdicts.get("block", 0))
        yield blocks

        from replyloop import outbox  # deliver21: delivery of decided replies

        events = GaugeMetricFamily("replyloop_outbox_events", "reply.decided deliveries by state (dead: dead-lettered)",
                                   labels=["state"])
        for state, count in outbox.counts(store).items():
            events.add_metric([state], count)
        yield events

        yield from self._models(store)

    def _models(self, store):
        by_status = {r["status"]: r["n"] for r in store.query(
            "SELECT status, count(*) AS n FROM models WHERE status IN ('champion', 'canary') GROUP BY status")}
        rows = store.query(
            """SELECT m.id, m.name, m.status,
                      (SELECT e.mean_similarity FROM evaluations e WHERE e.model_id = m.id
                       ORDER BY e.created_at DESC, e.id DESC LIMIT 1) AS consistency
               FROM models m WHERE m.status IN ('champion', 'canary') ORDER BY m.id DESC""")
        info = InfoMetricFamily("replyloop_model", "The champion and the canary (role, id, name)",
                                labels=["role"])
        consistency = GaugeMetricFamily("replyloop_model_consistency",
                                        "Mean consistency (embedding similarity) of the latest evaluation",
                                        labels=["role", "model_id"])
        seen = set()
        for r in rows:
            if r["status"] in seen:  # the newest one of each role (the registry keeps one)
                continue
            seen.add(r["status"])
            info.add_metric([r["status"]], {"model_id": str(r["id"]), "name": str(r["name"])})
            if r["consistency"] is not None:
                consistency.add_metric([r["status"], str(r["id"])], float(r["consistency"]))
        yield info
        yield consistency
        ok = GaugeMetricFamily("replyloop_registry_consistent",
                               "1 when the registry has one champion (or none yet) and at most one canary")
        ok.add_metric([], 1 if by_status.get("champion", 0) <= 1 and by_status.get("canary", 0) <= 1 else 0)
        yield ok

    def _slack(self):
        health = getattr(self.bot.client, "health", None)
        errors = CounterMetricFamily("replyloop_slack_api_errors", "Slack Web API calls that failed, by method",
                                     labels=["method"])
        calls = CounterMetricFamily("replyloop_slack_api_calls", "Slack Web API calls made, by method",
                                    labels=["method"])
        failing = GaugeMetricFamily("replyloop_slack_consecutive_failures",
                                    "Slack Web API calls that failed since the last one that succeeded")
        if health is not None:
            for method, n in sorted(health.errors_by_method().items()):
                errors.add_metric([method], n)
            with health._lock:
                made = dict(health.calls)
                streak = health.consecutive_failures
            for method, n in sorted(made.items()):
                calls.add_metric([method], n)
            failing.add_metric([], streak)
        else:
            failing.add_metric([], 0)
        yield errors
        yield calls
        yield failing


class Metrics:
    """The registry of one bot, its in-process metrics, and its scrape."""

    def __init__(self, bot: "Bot"):
        self.registry = CollectorRegistry(auto_describe=False)
        self.ack_latency = Histogram(
            "replyloop_ack_latency_seconds",
            "Time from bolt handing a Slack request to replyloop's middleware until the listener acknowledged it",
            labelnames=["kind"], buckets=ACK_BUCKETS, registry=self.registry)
        self.registry.register(StoreCollector(bot))

    def scrape(self) -> bytes:
        return generate_latest(self.registry)
