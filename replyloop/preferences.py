"""Preference data from supervisors' decisions, for TRL's KTO and DPO trainers.

Every decision says something about a draft, not only approvals and edits:

============================  ====================================================
decision                      preference rows
============================  ====================================================
approve (unchanged)           KTO: (question, draft, desirable)
edit                          DPO: (question, chosen = supervisor's text, rejected = draft);
                              KTO: (question, supervisor's text, desirable) and
                              (question, draft, undesirable)
edit identical to the draft   the same as approve
reject                        KTO: (question, draft, undesirable)
a rejected draft, then an     DPO: (question, chosen = the approved text, rejected = the rejected
approved one for the same     draft): an approve after a regenerated draft counts like an edit
question
============================  ====================================================

Replies approved by earned automation (``reviews.automated``) are left out: no person saw them,
so they say nothing about what supervisors prefer (audited ones were reviewed, and count).

A snapshot freezes these rows (``snapshot_preferences``) beside its samples, and their content is
part of the snapshot's hash when there are any (a store without reviews keeps the hashes it had).
A row's split follows its question: a question held out of the snapshot's samples is held out
of its preference rows too, so evaluation never sees a question the preference step trained on.

Exports are TRL's documented dataset formats (JSON lines, one object per row):
``kto``: ``{"prompt", "completion", "label"}`` (unpaired preference); ``dpo``:
``{"prompt", "chosen", "rejected"}`` (preference, standard format).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from replyloop.errors import DataFormatError, NotFoundError
from replyloop.textnorm import compact

KINDS = ("kto", "dpo")


@dataclass(frozen=True)
class Preference:
    kind: str                 # kto | dpo
    prompt: str
    chosen: str               # kto: the completion
    rejected: str             # dpo: the rejected completion; kto: ""
    label: int | None         # kto: 1 desirable / 0 undesirable; dpo: None
    review_id: int

    def key(self) -> str:
        return "\x1f".join([self.kind, self.prompt, self.chosen, self.rejected, str(self.label)])


def _same(a: str | None, b: str | None) -> bool:
    return compact(a or "") == compact(b or "")


def collect(conn, max_review_id: int | None = None) -> list[Preference]:
    """The preference rows of every decision (up to ``max_review_id``), deduplicated, in review order."""
    sql = ("SELECT r.id, r.decision, r.final_text, d.text, q.text, q.id FROM reviews r"
           " JOIN drafts d ON d.id = r.draft_id JOIN questions q ON q.id = d.question_id"
           " WHERE r.automated = 0"  # earned automation's approvals: no person saw them (README "Earned automation")
           + (" AND r.id <= ?" if max_review_id is not None else "") + " ORDER BY r.id")
    rows = conn.execute(sql, () if max_review_id is None else (max_review_id,)).fetchall()
    out: list[Preference] = []
    rejected_drafts: dict[int, list[str]] = {}   # question id -> its rejected drafts so far
    for review_id, decision, final, draft, prompt, question_id in rows:
        if decision == "edit" and final is not None and _same(final, draft):
            decision = "approve"                   # an edit that changed nothing
        if decision == "approve":
            good = final if final else draft
            out.append(Preference("kto", prompt, good, "", 1, review_id))
        elif decision == "edit":
            out.append(Preference("dpo", prompt, final, draft, None, review_id))
            out.append(Preference("kto", prompt, final, "", 1, review_id))
            out.append(Preference("kto", prompt, draft, "", 0, review_id))
        else:
            out.append(Preference("kto", prompt, draft, "", 0, review_id))
            rejected_drafts.setdefault(question_id, []).append(draft)
            continue
        good = final if decision == "edit" or final else draft
        for bad in rejected_drafts.pop(question_id, []):
            if not _same(bad, good):
                out.append(Preference("dpo", prompt, good, bad, None, review_id))
    seen: set[str] = set()
    unique = []
    for p in out:
        if p.key() not in seen:
            seen.add(p.key())
            unique.append(p)
    return unique


def digest_part(rows: Iterable[Preference]) -> bytes:
    """What the snapshot hash adds for its preference rows (content order, not review order)."""
    keys = sorted(p.key() for p in rows)
    return ("\npreferences:" + "\x1e".join(keys)).encode("utf-8") if keys else b""


def freeze(conn, snapshot_hash: str, rows: Iterable[Preference], heldout_keys: set[str]) -> int:
    """Store ``rows`` as the preference rows of ``snapshot_hash`` (inside the caller's transaction)."""
    values = [(snapshot_hash, p.kind, p.prompt, p.chosen, p.rejected, p.label, p.review_id,
               "heldout" if compact(p.prompt) in heldout_keys else "train") for p in rows]
    conn.executemany("INSERT INTO snapshot_preferences (snapshot_hash, kind, prompt, chosen, rejected, label,"
                     " review_id, split) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", values)
    return len(values)


def iter_rows(store, snapshot_hash: str, kind: str, split: str | None = None) -> Iterator[dict]:
    """The frozen rows of one kind of a snapshot (one split, or both), in review order."""
    if kind not in KINDS:
        raise DataFormatError(f"unknown preference kind {kind!r} (choose {', '.join(KINDS)})")
    if store.one("SELECT hash FROM snapshots WHERE hash = ?", (snapshot_hash,)) is None:
        raise NotFoundError(f"snapshot {snapshot_hash} not found")
    sql = ("SELECT prompt, chosen, rejected, label, split, review_id FROM snapshot_preferences"
           " WHERE snapshot_hash = ? AND kind = ?" + (" AND split = ?" if split else "") + " ORDER BY review_id, id")
    params = [snapshot_hash, kind] + ([split] if split else [])
    for prompt, chosen, rejected, label, row_split, review_id in store.db.execute(sql, params):
        yield {"prompt": prompt, "chosen": chosen, "rejected": rejected, "label": label, "split": row_split,
               "review_id": review_id}


def trl_record(kind: str, row: dict, clean=lambda s: s) -> dict:
    """One row in TRL's format: KTO unpaired preference or DPO preference (standard, not chat)."""
    if kind == "kto":
        return {"prompt": clean(row["prompt"]), "completion": clean(row["chosen"]), "label": bool(row["label"])}
    return {"prompt": clean(row["prompt"]), "chosen": clean(row["chosen"]), "rejected": clean(row["rejected"])}


def export(rows: Iterable[dict], kind: str, out: str | Path, scrubber=None) -> tuple[Path, int]:
    """Write ``rows`` as a TRL JSON-lines file at ``out`` (atomically); returns (path, rows written)."""
    out = Path(out)
    if out.is_dir():
        raise DataFormatError(f"{out}: is a directory; --format {kind} writes a file (give a file name)")
    clean = scrubber.scrub if scrubber else (lambda s: s)
    tmp = out.with_name(out.name + ".tmp")
    written = 0
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(trl_record(kind, row, clean), ensure_ascii=False) + "\n")
                written += 1
        tmp.replace(out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DataFormatError(f"{out}: cannot write ({exc.strerror or exc})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out, written
