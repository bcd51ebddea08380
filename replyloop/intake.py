"""Customer questions entering the system (HTTP intake, the Slack intake channel, CSV import).

``ingest`` drafts the questions that came without a draft (with the drafting API, before
anything is stored), runs the policy checker on every draft, then stores the questions and
their drafts in one transaction: all or nothing. Posting review cards is the bot's job
(``bot.review.post_card``); ``replyloop serve`` also posts cards for drafts that have none yet.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

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
    created: bool = True  # False: the same question from the same conversation was already stored


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


def ingest(config: Config, store: Store, questions: list[QuestionIn], source: str,
           drafter: Drafter | None = None, checker: Checker | None = None,
           skip_existing: bool = False) -> list[Ingested]:
    """Draft (where needed), check and store questions with their drafts, all or nothing.

    Questions without a draft and no drafter are stored without one (``serve`` drafts them
    later). With ``skip_existing``, a question whose conversation id, text and source are
    already stored is not stored again (Slack retries of the same message).
    """
    prepared = [_prepare(q, drafter, checker) for q in questions]  # slow work outside the transaction
    out: list[Ingested] = []
    with store.transaction():
        for p in prepared:
            q = p.question
            if skip_existing:
                row = store.one(
                    "SELECT q.id, (SELECT max(d.id) FROM drafts d WHERE d.question_id = q.id) AS draft_id"
                    " FROM questions q WHERE q.conversation_id = ? AND q.text = ? AND q.source = ?",
                    (q.conversation_id, q.question.strip(), source))
                if row:
                    out.append(Ingested(row["id"], row["draft_id"], created=False))
                    continue
            qid = store.add_question(q.question, q.conversation_id, q.category, source=source)
            draft_id = None
            if p.text:
                draft_id = store.add_draft(qid, p.text, model_id=p.model_id, model_name=p.model_name,
                                           verdict=p.verdict, violations=p.violations)
            out.append(Ingested(qid, draft_id))
    return out


DRAFT_RETRY_S = 600.0  # a question whose drafting failed is tried again after this long


def draft_pending(config: Config, store: Store, drafter: Drafter, checker: Checker | None = None,
                  limit: int = 100, failed: dict[int, float] | None = None) -> list[int]:
    """Draft stored questions that have no draft yet (imported without one); returns draft ids.

    A question whose drafting (or policy check) fails is logged and skipped; the others are
    still drafted. With ``failed`` (question id -> ``time.monotonic()`` of the failure, kept by
    the caller across calls) a failed question is left alone for ``DRAFT_RETRY_S`` seconds, so
    it neither costs a model call every sweep nor keeps later questions out of ``limit``."""
    now = time.monotonic()
    if failed is not None:
        for qid in [q for q, at in failed.items() if now - at >= DRAFT_RETRY_S]:
            del failed[qid]
    skip = json.dumps(sorted(failed or {}))
    rows = store.query("SELECT q.id, q.text, q.conversation_id FROM questions q WHERE NOT EXISTS"
                       " (SELECT 1 FROM drafts d WHERE d.question_id = q.id)"
                       " AND q.id NOT IN (SELECT value FROM json_each(?)) ORDER BY q.id LIMIT ?", (skip, limit))
    ids = []
    for row in rows:
        try:
            p = _prepare(QuestionIn(row["conversation_id"], row["text"]), drafter, checker)
            with store.transaction():
                if store.one("SELECT id FROM drafts WHERE question_id = ?", (row["id"],)):
                    continue  # drafted meanwhile by another worker
                ids.append(store.add_draft(row["id"], p.text, model_id=p.model_id, model_name=p.model_name,
                                           verdict=p.verdict, violations=p.violations))
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
