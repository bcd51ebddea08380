"""Rule proposals mined from supervisors' edits: recurring replacements become terminology
entries, recurring deletions banned phrases; an accepted proposal is written into the workspace's
``policies.dir`` as a YAML file, validated by the policy loader first.

    opened = propose(config, store)                       # mine the reviews since the last run
    accept(config, store, proposal_id, actor="U123")      # validate, then write policies.dir/proposal-7.yaml
    dismiss(store, proposal_id, actor="U123")

How edits are mined: each edit's draft and final text are aligned character by character
(``difflib`` opcodes, the weekly report's ``replacements``: nearby changes merged, punctuation-only
changes dropped). A span the supervisor replaced (``快递单号`` → ``运单号``) is a terminology
candidate, a span deleted outright (``保证当天到账``) a banned-phrase candidate; spans longer than
``proposals.max_phrase_chars`` are rewrites, not terms. Counts accumulate over runs (each run reads
only the reviews after the previous one); a candidate is proposed once it has
``proposals.min_occurrences`` edits by ``proposals.min_supervisors`` different supervisors and the
current policies do not flag it already. A dismissed proposal is proposed again only when its
count has doubled since it was dismissed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from replyloop import paths, timeutil
from replyloop.config import Config
from replyloop.errors import NotFoundError, PolicyError, ReplyloopError
from replyloop.i18n import _, pgettext
from replyloop.store import Store

MAX_EXAMPLES = 3
MIN_PHRASE_CHARS = 2  # a one-character change (的 -> 地) is grammar, not a term
STATUSES = ("candidate", "open", "accepted", "dismissed")


class ProposalError(ReplyloopError):
    """The proposal cannot be accepted"""

    exit_code = 2


@dataclass
class Candidate:
    kind: str                 # terminology | banned
    avoid: str
    preferred: str | None
    count: int = 0
    supervisors: set[str] = field(default_factory=set)
    examples: list[dict] = field(default_factory=list)

    @property
    def key(self) -> str:
        return proposal_key(self.kind, self.avoid, self.preferred)


def proposal_key(kind: str, avoid: str, preferred: str | None) -> str:
    from replyloop.evaluation.textmap import compact

    return f"{kind}:{compact(avoid)}" + (f"->{compact(preferred)}" if preferred else "")


def changes(draft: str, final: str, max_chars: int) -> list[tuple[str, str]]:
    """What one edit replaced (``(old, new)``) or deleted (``(old, "")``), term-sized only."""
    from replyloop.evaluation.report import replacements
    from replyloop.evaluation.textmap import compact

    out = []
    for old, new in replacements(draft, final):
        old, new = _trim(old), _trim(new)
        if len(compact(old)) < MIN_PHRASE_CHARS or len(old) > max_chars or len(new) > max_chars:
            continue  # an insertion, or a rewrite rather than a term
        out.append((old, new))
    return out


def _trim(text: str) -> str:
    """Without the punctuation and spaces at its ends (``保证当天到账，`` -> ``保证当天到账``)."""
    import unicodedata

    start, end = 0, len(text)
    while start < end and unicodedata.category(text[start])[0] in "PZC":
        start += 1
    while end > start and unicodedata.category(text[end - 1])[0] in "PZC":
        end -= 1
    return text[start:end]


def mine(reviews: list[dict], max_chars: int) -> dict[str, Candidate]:
    """Candidates from edit reviews (``{id, reviewer, draft, final}``), by key; each edit counts
    a change once."""
    found: dict[str, Candidate] = {}
    for r in reviews:
        seen = set()
        for old, new in changes(r["draft"], r["final"], max_chars):
            kind = "terminology" if new else "banned"
            c = Candidate(kind, old, new or None)
            if c.key in seen:
                continue
            seen.add(c.key)
            c = found.setdefault(c.key, c)
            c.count += 1
            c.supervisors.add(r["reviewer"])
            if len(c.examples) < MAX_EXAMPLES:
                c.examples.append({"review_id": r["id"], "draft": r["draft"], "final": r["final"]})
    return found


def covered(engine, kind: str, avoid: str) -> bool:
    """Whether the current policies already flag the phrase (any rule or terminology entry)."""
    if engine is None:
        return False
    return bool(engine.check(avoid).violations)


def _row(row: dict) -> dict:
    row = dict(row)
    row["supervisors"] = json.loads(row["supervisors"] or "[]")
    row["examples"] = json.loads(row["examples"] or "[]")
    row["entry"] = json.loads(row["entry"]) if row.get("entry") else None
    return row


def get(store: Store, proposal_id: int) -> dict:
    row = store.one("SELECT * FROM rule_proposals WHERE id = ?", (proposal_id,))
    if row is None:
        raise NotFoundError(f"rule proposal {proposal_id} not found")
    return _row(row)


def list_proposals(store: Store, statuses: tuple[str, ...] = ("open", "accepted", "dismissed")) -> list[dict]:
    marks = ",".join("?" * len(statuses))
    return [_row(r) for r in store.query(
        f"SELECT * FROM rule_proposals WHERE status IN ({marks}) ORDER BY id", list(statuses))]


def counts(store: Store) -> dict[str, int]:
    """Proposals by status (open, accepted, dismissed), for the weekly report."""
    got = {r["status"]: r["n"] for r in store.query(
        "SELECT status, count(*) AS n FROM rule_proposals GROUP BY status")}
    return {s: got.get(s, 0) for s in ("open", "accepted", "dismissed")}


def _engine(config: Config):
    from replyloop.evaluation.policy import load_policies

    return load_policies(config.policies_dir)


@dataclass
class ProposalRun:
    reviews: int
    opened: list[dict]
    max_review_id: int


def propose(config: Config, store: Store, actor: str = "cli", engine=None) -> ProposalRun:
    """Mine the edits since the last run, add them to the candidates' counts, and open every
    candidate that now meets the thresholds. The edits are aligned without the write lock; the
    counts are stored in one transaction, only if no other run counted the same reviews meanwhile
    (else they are read again). A run that fails stores nothing: the next one reads its reviews."""
    settings = config.file.proposals
    engine = engine if engine is not None else _engine(config)
    last_run = "SELECT coalesce(max(max_review_id), 0) FROM rule_proposal_runs"
    while True:
        # the slow part (aligning every new edit) without the write lock: the bot keeps deciding
        last = store.scalar(last_run)
        max_id = store.scalar("SELECT coalesce(max(id), 0) FROM reviews")
        reviews = store.query(
            "SELECT r.id, r.reviewer, d.text AS draft, r.final_text AS final FROM reviews r"
            " JOIN drafts d ON d.id = r.draft_id WHERE r.id > ? AND r.id <= ? AND r.decision = 'edit'"
            " AND r.final_text IS NOT NULL ORDER BY r.id", (last, max_id))
        candidates = mine(reviews, settings.max_phrase_chars)
        with store.transaction():
            if store.scalar(last_run) != last:
                continue  # another run counted these reviews meanwhile: read again
            return _record_run(config, store, engine, candidates, len(reviews), max_id, actor)


def _record_run(config: Config, store: Store, engine, candidates: dict[str, Candidate], n_reviews: int,
                max_id: int, actor: str) -> ProposalRun:
    """Inside the write transaction: add the counts, open what meets the thresholds, record the run."""
    settings = config.file.proposals
    now = timeutil.now_iso()
    db = store.db
    for c in candidates.values():
        row = store.one("SELECT * FROM rule_proposals WHERE key = ?", (c.key,))
        if row is None:
            db.execute(
                "INSERT INTO rule_proposals (key, kind, avoid, preferred, count, supervisors, examples,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (c.key, c.kind, c.avoid, c.preferred, c.count, json.dumps(sorted(c.supervisors)),
                 json.dumps(c.examples, ensure_ascii=False), now, now))
            continue
        old = _row(row)
        examples = (old["examples"] + c.examples)[:MAX_EXAMPLES]
        db.execute("UPDATE rule_proposals SET count = count + ?, supervisors = ?, examples = ?, updated_at = ?"
                   " WHERE id = ?",
                   (c.count, json.dumps(sorted(set(old["supervisors"]) | c.supervisors)),
                    json.dumps(examples, ensure_ascii=False), now, old["id"]))
    opened = []
    for row in store.query("SELECT * FROM rule_proposals WHERE status IN ('candidate', 'dismissed')"
                           " AND count >= ? ORDER BY count DESC, id", (settings.min_occurrences,)):
        p = _row(row)
        if len(p["supervisors"]) < settings.min_supervisors:
            continue
        if p["status"] == "dismissed" and p["count"] < 2 * (p["dismissed_count"] or 0):
            continue
        if covered(engine, p["kind"], p["avoid"]):
            continue
        db.execute("UPDATE rule_proposals SET status = 'open', opened_at = ?, slack_channel = NULL,"
                   " slack_ts = NULL, decided_by = NULL, decided_at = NULL WHERE id = ?", (now, p["id"]))
        opened.append(get(store, p["id"]))
    db.execute("INSERT INTO rule_proposal_runs (at, actor, max_review_id, reviews, opened) VALUES (?, ?, ?, ?, ?)",
               (now, actor, max_id, n_reviews, len(opened)))
    if opened:
        store.audit(actor, "rules.propose", "rule_proposals", None,
                    {"opened": [p["id"] for p in opened], "reviews": n_reviews})
    return ProposalRun(n_reviews, opened, max_id)


# -- the policy entry an accepted proposal writes -------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """What Accept writes: a terminology entry or a banned-phrase rule (after the Edit modal)."""

    kind: str
    preferred: str | None = None
    avoid: tuple[str, ...] = ()
    rule_id: str | None = None
    severity: str | None = None
    message: str | None = None

    def to_dict(self) -> dict:
        if self.kind == "terminology":
            return {"preferred": self.preferred, "avoid": list(self.avoid)}
        return {"id": self.rule_id, "severity": self.severity, "message": self.message, "phrases": list(self.avoid)}

    def yaml_document(self) -> dict:
        return {"terminology": [self.to_dict()]} if self.kind == "terminology" else {"rules": [self.to_dict()]}


def default_entry(config: Config, p: dict) -> Entry:
    if p["kind"] == "terminology":
        return Entry("terminology", preferred=p["preferred"], avoid=(p["avoid"],))
    return Entry("banned", avoid=(p["avoid"],), rule_id=f"proposal-{p['id']}",
                 severity=config.file.proposals.banned_severity,
                 message=f"主管多次删除“{p['avoid']}”（replyloop rule proposal #{p['id']}）")


def split_phrases(text: str) -> tuple[str, ...]:
    """``a, b，c`` / one per line -> ("a", "b", "c")."""
    import re

    return tuple(dict.fromkeys(s.strip() for s in re.split(r"[,，、\n]", text or "") if s.strip()))


def policy_file_name(proposal_id: int) -> str:
    return f"proposal-{proposal_id}.yaml"


def file_text(entry: Entry, p: dict, actor: str, at: str) -> str:
    import yaml

    head = (f"# Accepted rule proposal #{p['id']} by {actor} at {at} (replyloop rules list).\n"
            f"# Evidence: {p['count']} edits by {len(p['supervisors'])} supervisors"
            f" ({', '.join(p['supervisors'])}).\n")
    return head + yaml.safe_dump(entry.yaml_document(), allow_unicode=True, sort_keys=False)


def workspace_policies_dir(config: Config) -> Path:
    """The workspace's ``policies.dir``; the shipped defaults are never written to."""
    if not config.file.policies.dir:
        raise ProposalError(
            "policies.dir is not set in replyloop.yaml: accepted rules are written only into a workspace"
            " policy folder, never into the shipped defaults. Copy the shipped policies into the workspace"
            f" (cp -r {paths.default_policies_dir()} policies) and set `policies: {{dir: policies}}`.")
    directory = config.policies_dir
    if directory.resolve() == paths.default_policies_dir().resolve():
        raise ProposalError(f"policies.dir {directory} is the shipped policy folder: point it at a workspace copy")
    if not directory.is_dir():
        raise ProposalError(f"policies.dir {directory}: folder not found")
    return directory


def validate(directory: Path, name: str, text: str, entry: Entry):
    """The policy set with ``name`` added, read by the policy loader from a scratch copy of the
    folder (nothing in ``directory`` changes); raises ProposalError naming every problem."""
    from replyloop.evaluation.policy_files import read_policies
    from replyloop.evaluation.textmap import compact

    scratch = Path(tempfile.mkdtemp(prefix=".proposal-check-", dir=directory))
    try:
        for path in directory.iterdir():
            if path.suffix in (".yaml", ".yml") and path.is_file() and path.name != name:
                shutil.copy2(path, scratch / path.name)
        (scratch / name).write_text(text, encoding="utf-8")
        try:
            policies = read_policies(scratch)
        except PolicyError as exc:
            raise ProposalError(str(exc).replace(str(scratch), str(directory))) from None
        problems = []
        new_phrases = [compact(a) for a in entry.avoid]
        for term in policies.terms:
            preferred = compact(term.preferred)
            for phrase, written in zip(new_phrases, entry.avoid):
                if phrase and phrase in preferred:
                    where = str(term.file).replace(str(scratch), str(directory))
                    problems.append(f"{directory / name}: phrase '{written}' is part of the allowed term"
                                    f" '{term.preferred}' ({where}:{term.line}): every reply using"
                                    f" '{term.preferred}' would be flagged")
        if problems:
            raise ProposalError("\n".join(problems))
        return policies
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def write_atomic(target: Path, text: str) -> None:
    """Write ``target`` completely or not at all (a temporary file, fsync, rename). Called under
    the store's write lock with the proposal still open, so the only file it can replace is
    this proposal's own, left by an Accept that crashed before its commit."""
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@dataclass
class Accepted:
    proposal: dict
    created: bool           # False: it was decided before (a double click, another supervisor)
    path: Path | None = None


def accept(config: Config, store: Store, proposal_id: int, actor: str, entry: Entry | None = None) -> Accepted:
    """Validate the proposal's entry against the whole policy set, write it into policies.dir
    (``proposal-<id>.yaml``, atomically), mark the proposal accepted and audit it, all under the
    store's write lock: of concurrent Accepts exactly one writes. ProposalError says why not.
    A crash after the file was written but before the commit leaves the proposal open and its
    file in place; the next Accept validates without that file and replaces it."""
    with store.transaction():
        p = get(store, proposal_id)
        if p["status"] != "open":
            return Accepted(p, False, Path(p["file"]) if p["file"] else None)
        entry = entry or default_entry(config, p)
        directory = workspace_policies_dir(config)
        at = timeutil.now_iso()
        name = policy_file_name(proposal_id)
        text = file_text(entry, p, actor, at)
        validate(directory, name, text, entry)
        target = directory / name
        write_atomic(target, text)
        store.db.execute("UPDATE rule_proposals SET status = 'accepted', decided_by = ?, decided_at = ?, file = ?,"
                         " entry = ?, updated_at = ? WHERE id = ?",
                         (actor, at, str(target), json.dumps(entry.to_dict(), ensure_ascii=False), at, proposal_id))
        store.audit(actor, "rules.accept", "rule_proposal", proposal_id, {"file": str(target), **entry.to_dict()})
    return Accepted(get(store, proposal_id), True, target)


def dismiss(store: Store, proposal_id: int, actor: str) -> Accepted:
    with store.transaction() as db:
        p = get(store, proposal_id)
        if p["status"] != "open":
            return Accepted(p, False)
        at = timeutil.now_iso()
        db.execute("UPDATE rule_proposals SET status = 'dismissed', dismissed_count = count, decided_by = ?,"
                   " decided_at = ?, updated_at = ? WHERE id = ?", (actor, at, at, proposal_id))
        store.audit(actor, "rules.dismiss", "rule_proposal", proposal_id, {"count": p["count"]})
    return Accepted(get(store, proposal_id), True)


def set_card(store: Store, proposal_id: int, channel: str, ts: str) -> None:
    with store.transaction() as db:
        db.execute("UPDATE rule_proposals SET slack_channel = ?, slack_ts = ? WHERE id = ?", (channel, ts, proposal_id))


def describe(p: dict) -> str:
    """One line in the current language: ``#3 terminology 快递单号 → 运单号 (4 edits, 2 supervisors)``."""
    what = (_("{avoid} → {preferred}").format(avoid=p["avoid"], preferred=p["preferred"])
            if p["kind"] == "terminology" else _("delete “{avoid}”").format(avoid=p["avoid"]))
    kind = {"terminology": pgettext("proposal kind", "terminology"),
            "banned": pgettext("proposal kind", "banned")}.get(p["kind"], p["kind"])
    status = {"open": _("open"), "accepted": _("accepted"), "dismissed": _("dismissed")}.get(p["status"], p["status"])
    return _("#{id} {kind} {what} ({edits} edits, {supervisors} supervisors) [{status}]").format(
        id=p["id"], kind=kind, what=what, edits=p["count"], supervisors=len(p["supervisors"]), status=status)


__all__ = ["Accepted", "Candidate", "Entry", "ProposalError", "ProposalRun", "accept", "changes", "counts",
           "default_entry", "dismiss", "get", "list_proposals", "mine", "propose", "split_phrases"]
