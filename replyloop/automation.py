"""Earned automation per intent: drafts of an intent the champion has earned are approved without a
person, except complex questions and an audit sample.

**Intent.** The question's category (questions carry no finer intent); a question without one is
never automated.

**Earned.** Over the intent's last ``automation.window`` human reviews (automatic approvals do not
count), the share approved without an edit has a Wilson lower bound (``evaluation.stats``, at
``automation.confidence``) of at least ``automation.level``, with at least
``automation.min_reviews`` reviews.

**Per draft** (``route``): a draft of an earned intent is approved automatically only when

- its policy verdict is ``pass`` with no violation at all (no warning);
- the question is not complex: at most ``max_question_chars`` characters, at most one question mark,
  none of ``complex_words`` (complaint / legal words), and a chrF of at least
  ``min_question_similarity`` to some approved question of the intent;
- the draft is close to an approved reply of the same intent: embedding cosine
  >= ``min_embedding`` and chrF >= ``min_chrf`` to the same reference.

Of the drafts that pass, ``audit_share`` (by a hash of the draft: deterministic, not a dice roll)
still go to a person (``drafts.automation = 'audit'``). Their reviews are evidence like any other;
when the intent's audited approval-without-edit rate falls below ``level`` (at least
``audit_min`` audits, or even the Wilson upper bound below it), automation is **revoked** until a
supervisor allows it again, and the bot posts why.

**No self-training.** An automatic approval is a review with ``automated = 1`` and no sample:
the model never trains on its own output that no person saw. An audited draft was seen and
judged by a person, so it becomes a sample like any review.

A supervisor may pin an intent to manual, or allow it again after a revocation
(``replyloop automation pin|unpin``, App Home); each change is audit-logged.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from replyloop import timeutil
from replyloop.config import AutomationConfig, Config
from replyloop.errors import ReplyloopError
from replyloop.i18n import _
from replyloop.store import Store
from replyloop.textnorm import sha256

AUTO_REVIEWER = "replyloop:auto"
REFERENCES = 500  # the newest approved replies / questions of an intent compared with


class AutomationError(ReplyloopError):
    """Bad automation request"""

    exit_code = 2


@dataclass
class IntentStatus:
    intent: str
    reviews: int
    approved: int
    lower: float | None          # Wilson lower bound of approval without edit
    earned: bool
    state: str                   # manual | automatic | revoked
    pinned: str | None           # manual | allowed | None
    audits: int                  # audited reviews since the state last changed
    audits_approved: int
    reason: str | None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Route:
    decision: str                # auto | audit | review
    reason: str


def _z(opts: AutomationConfig) -> float:
    from replyloop.evaluation.stats import z_for

    return z_for(opts.confidence)


def audit_bucket(draft_id: int, question: str) -> float:
    """A stable number in [0, 1) for a draft: below ``audit_share`` it is audited."""
    return int(sha256(f"audit\x1f{draft_id}\x1f{question}")[:15], 16) / 16**15


_QUESTION_MARKS = re.compile(r"[?？]")


def complexity(opts: AutomationConfig, question: str, approved_questions: list[str]) -> str | None:
    """Why the question must go to a person, or None."""
    from replyloop.evaluation.chrf import chrf

    text = question.strip()
    if len(text) > opts.max_question_chars:
        return f"the question is longer than {opts.max_question_chars} characters"
    if len(_QUESTION_MARKS.findall(text)) >= 2:
        return "several questions in one message"
    lowered = text.casefold()
    words = [w for w in opts.complex_words if w and w.casefold() in lowered]
    if words:
        return f"mentions {', '.join(words)}"
    best = max((chrf(text, q) for q in approved_questions), default=0.0)
    if best < opts.min_question_similarity:
        return f"unlike any approved question of the intent (chrF {best:.2f} < {opts.min_question_similarity})"
    return None


class Automation:
    """Earned automation over one store (``encoder``: an ``evaluation.embeddings.Encoder``; built
    from the config when first needed)."""

    def __init__(self, config: Config, store: Store, encoder=None):
        self.config = config
        self.opts = config.file.automation
        self.store = store
        self._encoder = encoder

    @property
    def encoder(self):
        if self._encoder is None:
            from replyloop.evaluation.embeddings import Encoder

            self._encoder = Encoder.from_config(self.config, self.store)
        return self._encoder

    # -- evidence ---------------------------------------------------------------------------------

    def _row(self, intent: str) -> dict | None:
        return self.store.one("SELECT * FROM automation_intents WHERE intent = ?", (intent,))

    def status(self, intent: str) -> IntentStatus:
        from replyloop.evaluation.stats import wilson_interval

        opts = self.opts
        reviews = self.store.query(
            "SELECT r.decision FROM reviews r JOIN drafts d ON d.id = r.draft_id JOIN questions q ON q.id = d.question_id"
            " WHERE q.category = ? AND r.automated = 0 ORDER BY r.id DESC LIMIT ?", (intent, opts.window))
        n = len(reviews)
        k = sum(r["decision"] == "approve" for r in reviews)
        interval = wilson_interval(k, n, _z(opts)) if n else None
        lower = interval[0] if interval else None
        earned = n >= opts.min_reviews and lower is not None and lower >= opts.level
        row = self._row(intent)
        since = row["changed_at"] if row else ""
        audit = self.store.one(
            "SELECT count(*) AS n, coalesce(sum(r.decision = 'approve'), 0) AS k FROM reviews r"
            " JOIN drafts d ON d.id = r.draft_id JOIN questions q ON q.id = d.question_id"
            " WHERE q.category = ? AND d.automation = 'audit' AND r.created_at >= ?", (intent, since))
        pinned = row["pinned"] if row else None
        stored = row["state"] if row else "manual"
        if pinned == "manual":
            state = "manual"
        elif stored == "revoked" and pinned != "allowed":
            state = "revoked"
        else:
            state = "automatic" if earned else "manual"
        return IntentStatus(intent, n, k, lower, earned, state, pinned, audit["n"], audit["k"],
                            row["reason"] if row else None)

    def intents(self) -> list[IntentStatus]:
        names = [r["c"] for r in self.store.query(
            "SELECT DISTINCT q.category AS c FROM questions q WHERE q.category IS NOT NULL"
            " UNION SELECT intent FROM automation_intents ORDER BY 1")]
        return [self.status(name) for name in names]

    def _set(self, intent: str, actor: str, action: str, **values) -> None:
        row = self._row(intent)
        values = {"changed_at": timeutil.now_iso(), **values}
        with self.store.transaction() as db:
            if row is None:
                values.setdefault("state", "manual")
                cols = ", ".join(["intent", *values])
                db.execute(f"INSERT INTO automation_intents ({cols}) VALUES ({', '.join('?' * (len(values) + 1))})",
                           (intent, *values.values()))
            else:
                db.execute(f"UPDATE automation_intents SET {', '.join(f'{k} = ?' for k in values)} WHERE intent = ?",
                           (*values.values(), intent))
            self.store.audit(actor, action, "intent", intent, {k: v for k, v in values.items() if k != "changed_at"})

    # -- supervisors ---------------------------------------------------------------------------------

    def _known(self, intent: str) -> str:
        intent = (intent or "").strip()
        if not intent:
            raise AutomationError("name an intent (a category; see `replyloop automation list`)")
        if self._row(intent) is None and not self.store.one("SELECT 1 FROM questions WHERE category = ?", (intent,)):
            raise AutomationError(f"intent {intent!r} not found: no question has that category "
                                  "(see `replyloop automation list`)")
        return intent

    def pin(self, intent: str, actor: str, allow: bool = False, reason: str = "") -> IntentStatus:
        """Pin to manual (every draft goes to a person), or ``allow``: automatic whenever the
        evidence earns it, a revocation lifted."""
        intent = self._known(intent)
        values = {"pinned": "allowed" if allow else "manual", "reason": reason or None}
        if allow:
            values["state"] = "manual"  # the revocation is lifted; the evidence decides from now on
        self._set(intent, actor, "automation.allow" if allow else "automation.pin", **values)
        return self.status(intent)

    def unpin(self, intent: str, actor: str) -> IntentStatus:
        """Remove the pin: the evidence decides (a revocation stays until someone allows it)."""
        intent = self._known(intent)
        self._set(intent, actor, "automation.unpin", pinned=None)
        return self.status(intent)

    # -- drafts ------------------------------------------------------------------------------------------

    def _assess(self, draft: dict) -> Route:
        from replyloop.evaluation.chrf import chrf

        opts = self.opts
        intent = draft.get("category")
        if not opts.enabled:
            return Route("review", "automation is off")
        if not intent:
            return Route("review", "the question has no intent (category)")
        status = self.status(intent)
        if status.state != "automatic":
            return Route("review", f"intent {intent} is {status.state}")
        if draft["verdict"] != "pass" or draft["violations"]:
            return Route("review", "the policy check found something")
        refs = self.store.query("SELECT prompt, response FROM samples WHERE category = ? ORDER BY id DESC LIMIT ?",
                                (intent, REFERENCES))
        why = complexity(opts, draft["question"], [r["prompt"] for r in refs])
        if why:
            return Route("review", f"complex question: {why}")
        replies = list(dict.fromkeys(r["response"] for r in refs))
        vectors = self.encoder.encode([draft["text"], *replies])
        cosines = vectors[1:] @ vectors[0]
        best = None
        for i in sorted(range(len(replies)), key=lambda j: -float(cosines[j])):
            if cosines[i] < opts.min_embedding:
                break
            if chrf(draft["text"], replies[i]) >= opts.min_chrf:
                best = i
                break
        if best is None:
            top = float(cosines.max()) if len(replies) else 0.0
            return Route("review", f"not close to an approved reply of {intent} (best cosine {top:.2f})")
        if audit_bucket(draft["id"], draft["question"]) < opts.audit_share:
            return Route("audit", f"audit sample ({opts.audit_share:.0%} of automatic drafts)")
        return Route("auto", f"intent {intent} earned it: {status.approved}/{status.reviews} approved without edit"
                             f" (lower bound {status.lower:.2f} >= {opts.level})")

    def route(self, draft_id: int) -> Route:
        """Decide once per draft and record it: ``auto`` approves the draft (``replyloop:auto``,
        no sample; its ``reply.decided`` event in the same transaction); ``audit`` and ``review``
        leave it to a person. A draft routed before keeps its route."""
        draft = self.store.get_draft(draft_id)
        if draft.get("automation"):
            return Route(draft["automation"], draft.get("automation_reason") or "")
        if draft["review_id"]:
            return Route("review", "already decided")
        route = self._assess(draft)
        if not self.opts.enabled:
            return route  # nothing recorded while automation is off
        with self.store.transaction() as db:
            current = self.store.get_draft(draft_id)
            if current.get("automation") or current["review_id"]:
                return Route(current.get("automation") or "review", current.get("automation_reason") or "")
            db.execute("UPDATE drafts SET automation = ?, automation_reason = ? WHERE id = ?",
                       (route.decision, route.reason, draft_id))
            if route.decision == "auto":
                self.store.decide(draft_id, "approve", AUTO_REVIEWER, reason=route.reason, automated=True)
        return route

    # -- revocation ----------------------------------------------------------------------------------------

    def check_revocation(self, intent: str) -> IntentStatus | None:
        """Revoke an automatic intent whose audits fall below the level; returns the new status
        when it was revoked now."""
        from replyloop.evaluation.stats import wilson_interval

        status = self.status(intent)
        if status.state != "automatic" or not status.audits:
            return None
        rate = status.audits_approved / status.audits
        upper = wilson_interval(status.audits_approved, status.audits, _z(self.opts))[1]
        if not ((status.audits >= self.opts.audit_min and rate < self.opts.level) or upper < self.opts.level):
            return None
        reason = (f"audited approval without edit {status.audits_approved}/{status.audits} ({rate:.0%}) is below "
                  f"{self.opts.level:.0%}" + (f" (even its upper bound {upper:.2f})" if upper < self.opts.level else ""))
        self._set(intent, "replyloop:audit", "automation.revoke", state="revoked", reason=reason,
                  pinned=None, notified_at=None)
        return self.status(intent)

    def decision_hook(self, store: Store, draft: dict, review: dict) -> None:
        """After a person's review of an audited draft (inside its transaction): revoke when the
        audits say so. The bot posts the message (``pending_notices``) after the commit."""
        if review.get("automated") or not draft.get("category"):
            return
        row = store.one("SELECT automation FROM drafts WHERE id = ?", (draft["id"],))
        if row and row["automation"] == "audit":
            self.check_revocation(draft["category"])

    def pending_notices(self) -> list[dict]:
        """Revocations not posted to Slack yet; ``mark_notified`` after posting."""
        return self.store.query("SELECT intent, reason FROM automation_intents WHERE state = 'revoked'"
                                " AND notified_at IS NULL ORDER BY intent")

    def mark_notified(self, intent: str) -> None:
        with self.store.transaction() as db:
            db.execute("UPDATE automation_intents SET notified_at = ? WHERE intent = ?", (timeutil.now_iso(), intent))


def install(store: Store, config: Config, encoder=None) -> Automation | None:
    """An ``Automation`` whose revocation check runs inside every decision (None when off)."""
    if not config.file.automation.enabled:
        return None
    automation = Automation(config, store, encoder)
    store.decision_hooks.append(automation.decision_hook)
    return automation


def home_line(store: Store) -> str | None:
    rows = store.query("SELECT state, pinned, intent FROM automation_intents ORDER BY intent")
    automatic = store.scalar("SELECT count(*) FROM reviews WHERE automated = 1")
    if not rows and not automatic:
        return None
    revoked = [r["intent"] for r in rows if r["state"] == "revoked"]
    pinned = [r["intent"] for r in rows if r["pinned"] == "manual"]
    parts = []
    if revoked:
        parts.append(_("revoked: {intents}").format(intents=", ".join(revoked)))
    if pinned:
        parts.append(_("pinned manual: {intents}").format(intents=", ".join(pinned)))
    return _("*Automation:* {count} draft(s) approved automatically; {state} (`replyloop automation list`)").format(
        count=automatic, state="; ".join(parts) if parts else _("no revocations or pins"))



def weekly_split(store: Store, lo: str, hi: str) -> list[dict]:
    """Per category, the decisions of ``[lo, hi)`` (ISO times) split into human-approved (a person
    approved without edit, audits excluded), auto-approved, audited (with their approvals) and
    whether automation was revoked then; the automatic share and the audited approval rate with
    95% Wilson intervals. Empty when automation never acted in the period."""
    from replyloop.evaluation.stats import wilson_interval

    rows = store.query(
        "SELECT coalesce(q.category, '(none)') AS category, count(*) AS decided,"
        " coalesce(sum(r.automated = 0 AND r.decision = 'approve' AND coalesce(d.automation, '') != 'audit'), 0)"
        "   AS human_approved,"
        " coalesce(sum(r.automated = 1), 0) AS auto_approved,"
        " coalesce(sum(d.automation = 'audit'), 0) AS audited,"
        " coalesce(sum(d.automation = 'audit' AND r.decision = 'approve'), 0) AS audit_approved"
        " FROM reviews r JOIN drafts d ON d.id = r.draft_id JOIN questions q ON q.id = d.question_id"
        " WHERE r.created_at >= ? AND r.created_at < ? GROUP BY 1 ORDER BY 1", (lo, hi))
    revoked = {r["entity_id"] for r in store.query(
        "SELECT entity_id FROM audit_log WHERE action = 'automation.revoke' AND at >= ? AND at < ?", (lo, hi))}
    if not any(r["auto_approved"] or r["audited"] for r in rows) and not revoked:
        return []
    out = []
    for r in rows:
        share = wilson_interval(r["auto_approved"], r["decided"])
        audit = wilson_interval(r["audit_approved"], r["audited"])
        out.append({**r, "revoked": r["category"] in revoked,
                    "auto_share": r["auto_approved"] / r["decided"] if r["decided"] else None,
                    "auto_share_ci": share, "audit_rate": r["audit_approved"] / r["audited"] if r["audited"] else None,
                    "audit_rate_ci": audit})
    return out
