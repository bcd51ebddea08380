"""Customer questions entering the system (HTTP intake, the Slack intake channel, CSV import).

``ingest`` stores first and drafts afterwards: the questions, with the drafts they came with
(policy-checked), go in one transaction, all or nothing; only then are the questions without a
draft drafted, each in its own transaction. A drafting model that is down or slow never loses a
question: it stays stored without a draft and ``replyloop serve``'s sweep (``draft_pending``)
drafts it later. An optional dedup key per question (a Slack message's channel and ts) is
written in the same transaction, so a retry of the same message is spotted before any drafting.
Posting review cards is the bot's job (``bot.review.post_card``); ``replyloop serve`` also posts
cards for drafts that have none yet.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from replyloop import timeutil
from replyloop.config import Config
from replyloop.dataio import QuestionIn
from replyloop.errors import ReplyloopError
from replyloop.store import Store

log = logging.getLogger(__name__)

Checker = Callable[[str], dict]
"""text -> {"verdict": "pass" | "warn" | "block", "violations": [{rule, severity, message, start, end, match, suggestion}]}"""

EXTERNAL_MODEL = "external"


class Drafter(Protocol):
    def draft(self, question: str, conversation_id: str) -> Any: ...  # -> DraftResult


class DraftingError(ReplyloopError):
    """Drafting a reply failed"""


@dataclass(frozen=True)
class Ingested:
    question_id: int
    draft_id: int | None
    created: bool = True  # False: already stored (the same dedup key, or the same question and conversation)
    draft_error: str | None = None  # drafting failed: the question is stored, the sweep drafts it later


def policy_checker(config: Config, engine=None) -> Checker | None:
    """The policy engine (``engine``, else loaded from the config) as a checker, or None while
    ``evaluation.policy`` is not installed."""
    from replyloop.drafting import check_policies, load_policy_engine

    if engine is None:
        engine = load_policy_engine(config)
    if engine is None:
        return None

    def check(text: str) -> dict:
        verdict, violations = check_policies(engine, text)
        return {"verdict": verdict, "violations": violations}

    check.engine = engine  # type: ignore[attr-defined]  # lets intake trust a draft this engine checked
    return check


def check_text(checker: Checker | None, text: str) -> dict:
    if checker is None:
        return {"verdict": "pass", "violations": []}
    result = checker(text)
    verdict = result.get("verdict", "pass")
    if verdict not in ("pass", "warn", "block"):
        raise ReplyloopError(f"policy checker returned an unknown verdict {verdict!r}")
    return {"verdict": verdict, "violations": list(result.get("violations") or [])}


@dataclass(frozen=True)
class _Prepared:
    question: QuestionIn
    text: str | None
    model_id: int | None
    model_name: str | None
    verdict: str
    violations: list


def _prepare(q: QuestionIn, drafter: Drafter | None, checker: Checker | None) -> _Prepared:
    if q.draft:
        check = check_text(checker, q.draft)
        return _Prepared(q, q.draft, None, EXTERNAL_MODEL, check["verdict"], check["violations"])
    if drafter is None:
        return _Prepared(q, None, None, None, "pass", [])
    try:
        result = drafter.draft(q.question, q.conversation_id)
    except ReplyloopError:
        raise
    except Exception as exc:  # a model backend failing is reported, not a crash of the caller
        raise DraftingError(f"drafting failed for conversation {q.conversation_id}: {exc}") from exc
    checked_by_drafter = (getattr(checker, "engine", None) is not None
                          and getattr(checker, "engine") is getattr(drafter, "policy_engine", None))
    if checker is not None and not checked_by_drafter:
        check = check_text(checker, result.text)
    else:  # no checker, or the drafter already ran this very engine on the draft
        check = {"verdict": getattr(result, "verdict", "pass") or "pass",
                 "violations": list(getattr(result, "violations", []) or [])}
    return _Prepared(q, result.text, getattr(result, "model_id", None), getattr(result, "model_name", None),
                     check["verdict"], check["violations"])


def _check_given(q: QuestionIn, checker: Checker | None) -> _Prepared:
    """A question as it will be stored: with its given draft policy-checked, or without one."""
    if q.draft:
        check = check_text(checker, q.draft)
        return _Prepared(q, q.draft, None, EXTERNAL_MODEL, check["verdict"], check["violations"])
    return _Prepared(q, None, None, None, "pass", [])


def store_questions(store: Store, questions: Sequence[QuestionIn], source: str, checker: Checker | None = None,
                    skip_existing: bool = False, keys: Sequence[tuple[str, str] | None] | None = None
                    ) -> list[Ingested]:
    """Store questions with the drafts they carry (policy-checked first), all or nothing, in one
    transaction; nothing is drafted here. ``keys``: one ``(dedup key, channel)`` per question
    (or None), recorded
    in ``intake_events`` in the same transaction; a key already there is not stored again
    (``created=False``). With ``skip_existing``, a question whose conversation id, text and
    source are already stored is not stored again either."""
    prepared = [_check_given(q, checker) for q in questions]  # the checker runs outside the transaction
    keys = list(keys) if keys is not None else [None] * len(prepared)
    if len(keys) != len(prepared):
        raise ValueError("store_questions: one key per question")
    out: list[Ingested] = []
    with store.transaction() as db:
        for p, keyed in zip(prepared, keys):
            q = p.question
            key, channel = keyed if keyed is not None else (None, None)
            if key is not None:
                row = store.one(
                    "SELECT e.question_id, (SELECT max(d.id) FROM drafts d WHERE d.question_id = e.question_id)"
                    " AS draft_id FROM intake_events e WHERE e.key = ?", (key,))
                if row:
                    out.append(Ingested(row["question_id"], row["draft_id"], created=False))
                    continue
            if skip_existing:
                row = store.one(
                    "SELECT q.id, (SELECT max(d.id) FROM drafts d WHERE d.question_id = q.id) AS draft_id"
                    " FROM questions q WHERE q.conversation_id = ? AND q.text = ? AND q.source = ?",
                    (q.conversation_id, q.question.strip(), source))
                if row:
                    out.append(Ingested(row["id"], row["draft_id"], created=False))
                    continue
            qid = store.add_question(q.question, q.conversation_id, q.category, source=source,
                                     callback_url=q.callback_url)
            draft_id = None
            if p.text:
                draft_id = store.add_draft(qid, p.text, model_id=p.model_id, model_name=p.model_name,
                                           verdict=p.verdict, violations=p.violations)
            if key is not None:
                db.execute("INSERT INTO intake_events (key, channel, conversation_id, state, question_id,"
                           " received_at) VALUES (?, ?, ?, 'question', ?, ?)",
                           (key, channel, q.conversation_id, qid, timeutil.now_iso()))
            out.append(Ingested(qid, draft_id))
    return out


def draft_question(store: Store, question_id: int, drafter: Drafter, checker: Checker | None = None) -> int | None:
    """Draft one stored question and store the draft (its own short transaction, after the
    model call). Returns the draft id, or None when it already had a draft (drafted meanwhile
    by another worker). Raises DraftingError when the model fails; the question stays stored."""
    row = store.one("SELECT id, text, conversation_id FROM questions WHERE id = ?", (question_id,))
    if row is None:
        raise ReplyloopError(f"question {question_id} not found")
    if store.one("SELECT id FROM drafts WHERE question_id = ?", (question_id,)):
        return None
    p = _prepare(QuestionIn(row["conversation_id"], row["text"]), drafter, checker)
    with store.transaction():
        if store.one("SELECT id FROM drafts WHERE question_id = ?", (question_id,)):
            return None
        return store.add_draft(question_id, p.text, model_id=p.model_id, model_name=p.model_name,
                               verdict=p.verdict, violations=p.violations)


def ingest(config: Config, store: Store, questions: list[QuestionIn], source: str,
           drafter: Drafter | None = None, checker: Checker | None = None,
           skip_existing: bool = False, keys: Sequence[tuple[str, str] | None] | None = None
           ) -> list[Ingested]:
    """Store the questions (and the drafts they carry) first, all or nothing; then draft the
    new ones that came without a draft, when there is a drafter.

    A question whose drafting fails stays stored without a draft: its ``Ingested`` has
    ``draft_id=None`` and ``draft_error`` says why (``serve``'s sweep drafts it later). See
    ``store_questions`` for ``skip_existing`` and ``keys``.
    """
    stored = store_questions(store, questions, source, checker, skip_existing=skip_existing, keys=keys)
    if drafter is None:
        return stored
    out = []
    for r in stored:
        if r.created and r.draft_id is None:
            try:
                r = replace(r, draft_id=draft_question(store, r.question_id, drafter, checker))
            except Exception as exc:  # stored already: report, never lose the question
                log.warning("drafting question %s failed (it is stored; the sweep drafts it later): %s",
                            r.question_id, exc)
                r = replace(r, draft_error=str(exc))
        out.append(r)
    return out


def hold_question(store: Store, key: str, channel: str, conversation_id: str, text: str) -> bool:
    """Keep a message whose channel is not known yet (is it the intake channel?) under its dedup
    key, text included, until ``release_held`` decides. False when the key is already stored."""
    with store.transaction() as db:
        cur = db.execute("INSERT OR IGNORE INTO intake_events (key, channel, conversation_id, text, state,"
                         " received_at) VALUES (?, ?, ?, ?, 'unresolved', ?)",
                         (key, channel, conversation_id, text, timeutil.now_iso()))
        return bool(cur.rowcount)


def held_channels(store: Store) -> list[str]:
    return [r["channel"] for r in store.query(
        "SELECT DISTINCT channel FROM intake_events WHERE state = 'unresolved' ORDER BY channel")]


def release_held(store: Store, channel: str, take: bool, source: str) -> list[int]:
    """The channel is resolved: its held messages become questions (``take``) or are dropped
    (their text is cleared, the key stays so a retry is still spotted). One transaction;
    returns the new question ids."""
    ids = []
    with store.transaction() as db:
        for row in store.query("SELECT key, conversation_id, text FROM intake_events"
                               " WHERE channel = ? AND state = 'unresolved' ORDER BY received_at, key", (channel,)):
            if take:
                qid = store.add_question(row["text"], row["conversation_id"], None, source=source)
                db.execute("UPDATE intake_events SET state = 'question', question_id = ?, text = NULL"
                           " WHERE key = ?", (qid, row["key"]))
                ids.append(qid)
            else:
                db.execute("UPDATE intake_events SET state = 'ignored', text = NULL WHERE key = ?", (row["key"],))
    return ids


DRAFT_RETRY_S = 600.0  # a question whose drafting failed is tried again after this long


def draft_pending(config: Config, store: Store, drafter: Drafter, checker: Checker | None = None,
                  limit: int = 100, failed: dict[int, float] | None = None,
                  busy: Collection[int] = ()) -> list[int]:
    """Draft stored questions that have no draft yet (imported without one); returns draft ids.

    A question whose drafting (or policy check) fails is logged and skipped; the others are
    still drafted. With ``failed`` (question id -> ``time.monotonic()`` of the failure, kept by
    the caller across calls) a failed question is left alone for ``DRAFT_RETRY_S`` seconds, so
    it neither costs a model call every sweep nor keeps later questions out of ``limit``.
    ``busy``: question ids another worker is drafting right now (left alone)."""
    now = time.monotonic()
    if failed is not None:
        for qid in [q for q, at in failed.items() if now - at >= DRAFT_RETRY_S]:
            del failed[qid]
    skip = json.dumps(sorted({*(failed or {}), *busy}))
    rows = store.query("SELECT q.id, q.text, q.conversation_id FROM questions q WHERE NOT EXISTS"
                       " (SELECT 1 FROM drafts d WHERE d.question_id = q.id)"
                       " AND q.id NOT IN (SELECT value FROM json_each(?)) ORDER BY q.id LIMIT ?", (skip, limit))
    ids = []
    for row in rows:
        try:
            draft_id = draft_question(store, row["id"], drafter, checker)
            if draft_id is not None:
                ids.append(draft_id)
        except Exception as exc:
            if isinstance(exc, ReplyloopError):
                log.warning("drafting question %s failed: %s", row["id"], exc)
            else:
                log.exception("drafting question %s failed", row["id"])
            if failed is not None:
                failed[row["id"]] = time.monotonic()
    return ids


def ingest_questions(config: Config, store: Store, questions: list[QuestionIn], source: str,
                     drafter: Drafter | None = None, checker: Checker | None = None) -> list[int]:
    """Store questions (and any drafts they carry, policy-checked) all or nothing; returns the question ids."""
    if checker is None:
        checker = policy_checker(config)
    return [r.question_id for r in ingest(config, store, questions, source, drafter=drafter, checker=checker)]
