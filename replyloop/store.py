"""The SQLite dataset store: questions, drafts, reviews, curated samples, snapshots.

One ``Store`` per process; each thread gets its own connection. Every multi-row
write runs inside ``Store.transaction()`` (``BEGIN IMMEDIATE``), so concurrent
writers queue on SQLite's lock instead of failing halfway.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import sqlite_utils

from replyloop import migrations, timeutil
from replyloop.errors import ConflictError, NotFoundError, ReplyloopError
from replyloop.textnorm import compact, dedupe_key, sha256

DECISIONS = ("approve", "edit", "reject")
BUSY_TIMEOUT_S = 30.0
# the one definition of "waiting for a supervisor" (drafts aliased ``d``)
UNDECIDED = "NOT EXISTS (SELECT 1 FROM reviews r WHERE r.draft_id = d.id)"


class StoreError(ReplyloopError):
    """The dataset store could not be opened"""


class BlockedDraftError(ConflictError):
    """This draft breaks a blocking policy rule: edit it before approving"""


@dataclass(frozen=True)
class SampleIn:
    prompt: str
    response: str
    category: str | None = None
    intent: str | None = None


@dataclass
class ImportResult:
    added: int = 0
    duplicates: int = 0
    sample_ids: list[int] = field(default_factory=list)


@dataclass
class Decision:
    review: dict
    created: bool
    sample_id: int | None = None


@dataclass
class Snapshot:
    hash: str
    created: bool
    train: int
    heldout: int
    # categories with two or more questions but none held out (every candidate was trained on
    # by an earlier snapshot): the evaluation does not cover them
    without_heldout: list[str] = field(default_factory=list)


def _enable_wal(conn: sqlite3.Connection) -> None:
    """``PRAGMA journal_mode=WAL``, waiting like the busy timeout: on a new database that several
    processes open at once, SQLite answers the switch with "database is locked" at once
    instead of calling the busy handler."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class Store:
    def __init__(self, path: str | Path, migrate: bool = True):
        self.path = Path(path)
        if not self.path.parent.exists():
            raise StoreError(f"{self.path}: directory {self.path.parent} does not exist")
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        # this process's writers queue here, in order, instead of in SQLite's busy handler (which
        # sleeps 1, 2, 5 ... 100 ms between tries: the tail of a burst of clicks)
        self._write_lock = threading.RLock()
        try:
            if migrate:
                migrations.migrate(self.db)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: not a usable SQLite database ({exc})") from None

    # -- connections and transactions -------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        _enable_wal(conn)
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA synchronous=NORMAL")
        with self._lock:
            self._connections.append(conn)
        return conn

    @property
    def db(self) -> sqlite_utils.Database:
        """This thread's sqlite-utils Database."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite_utils.Database(self._connect())
            self._local.db = db
        return db

    def release_thread(self) -> None:
        """Close and forget the calling thread's connection (call it when a short-lived thread,
        such as an HTTP request's, is done with the store; the next use opens a new one)."""
        db = getattr(self._local, "db", None)
        if db is None:
            return
        self._local.db = None
        with self._lock:
            with contextlib.suppress(ValueError):
                self._connections.remove(db.conn)
        with contextlib.suppress(sqlite3.Error):
            db.conn.close()

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._connections.clear()
        self._local = threading.local()

    def backup(self, dest: str | Path, overwrite: bool = False) -> dict:
        """A consistent copy of the database while others keep writing (SQLite's online backup),
        checked with ``PRAGMA integrity_check`` and only then moved to ``dest``."""
        as_dir = str(dest).endswith(("/", os.sep))  # `backups/` names a directory, even a new one
        dest = Path(dest)
        if dest.is_dir() or as_dir:
            dest = dest / f"{self.path.stem}-{timeutil.now():%Y%m%d-%H%M%S}.db"
        if dest.exists() and not overwrite:
            raise ConflictError(f"{dest}: already exists (use --force to overwrite)")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.partial")
        tmp.unlink(missing_ok=True)
        target = sqlite3.connect(str(tmp))
        try:
            self.db.conn.backup(target, pages=1024)  # in steps: writers are blocked only per step
            status = target.execute("PRAGMA integrity_check").fetchone()[0]
            if status != "ok":
                raise ReplyloopError(f"{tmp}: the copy failed its integrity check: {status}")
            counts = {t: target.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                      for t in ("samples", "questions", "reviews", "models")}
            target.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
        except BaseException:
            target.close()
            tmp.unlink(missing_ok=True)
            raise
        target.close()
        tmp.replace(dest)
        return {"path": str(dest), "bytes": dest.stat().st_size, **counts}

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite_utils.Database]:
        """A write transaction (``BEGIN IMMEDIATE``); nested calls join the outer one."""
        db = self.db
        conn = db.conn
        if conn.in_transaction:
            yield db
            return
        if not self._write_lock.acquire(timeout=BUSY_TIMEOUT_S):  # as long as SQLite's busy timeout
            raise sqlite3.OperationalError("database is locked (by another writer of this process)")
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            else:
                conn.execute("COMMIT")
        finally:
            self._write_lock.release()

    def query(self, sql: str, params: Iterable | dict = ()) -> list[dict]:
        return list(self.db.query(sql, params))

    def one(self, sql: str, params: Iterable | dict = ()) -> dict | None:
        rows = self.query(sql, params)
        return rows[0] if rows else None

    def scalar(self, sql: str, params: Iterable | dict = ()):
        row = self.db.execute(sql, params).fetchone()
        return row[0] if row else None

    # -- audit log ---------------------------------------------------------------------

    def audit(self, actor: str, action: str, entity: str | None = None,
              entity_id: object = None, detail: dict | None = None) -> None:
        """Append to the audit log (inside the caller's transaction when there is one)."""
        self.db.execute(
            "INSERT INTO audit_log (at, actor, action, entity, entity_id, detail) VALUES (?, ?, ?, ?, ?, ?)",
            (timeutil.now_iso(), actor, action, entity,
             None if entity_id is None else str(entity_id),
             json.dumps(detail, ensure_ascii=False) if detail is not None else None),
        )

    # -- questions and drafts --------------------------------------------------------------

    def add_question(self, text: str, conversation_id: str, category: str | None = None,
                     source: str = "cli") -> int:
        if not text or not text.strip():
            raise ReplyloopError("question text is empty")
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO questions (conversation_id, text, category, source, created_at) VALUES (?, ?, ?, ?, ?)",
                (conversation_id, text.strip(), category or None, source, timeutil.now_iso()),
            )
            return cur.lastrowid

    def add_draft(self, question_id: int, text: str, model_id: int | None = None,
                  model_name: str | None = None, verdict: str = "pass",
                  violations: list | tuple = ()) -> int:
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO drafts (question_id, model_id, model_name, text, verdict, violations, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (question_id, model_id, model_name, text, verdict,
                 json.dumps(list(violations), ensure_ascii=False), timeutil.now_iso()),
            )
            return cur.lastrowid

    def set_draft_card(self, draft_id: int, channel: str, ts: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE drafts SET slack_channel = ?, slack_ts = ? WHERE id = ?", (channel, ts, draft_id))

    def pending_count(self) -> int:
        """Drafts no supervisor has decided yet (the review queue)."""
        return self.scalar(f"SELECT count(*) FROM drafts d WHERE {UNDECIDED}")

    def pending_without_card(self, limit: int | None = None) -> list[int]:
        """Undecided drafts whose review card was never posted (imports, restarts, Slack outages)."""
        sql = f"SELECT d.id FROM drafts d WHERE d.slack_ts IS NULL AND {UNDECIDED} ORDER BY d.id"
        return [r["id"] for r in self.query(sql + (" LIMIT ?" if limit else ""), (int(limit),) if limit else ())]

    def get_draft(self, draft_id: int) -> dict:
        """A draft with its question and (if decided) its review."""
        row = self.one(
            """SELECT d.*, q.text AS question, q.conversation_id, q.category, q.source AS question_source,
                      r.id AS review_id, r.decision, r.reviewer, r.final_text, r.reason,
                      r.created_at AS decided_at
               FROM drafts d JOIN questions q ON q.id = d.question_id
               LEFT JOIN reviews r ON r.draft_id = d.id
               WHERE d.id = ?""",
            (draft_id,),
        )
        if row is None:
            raise NotFoundError(f"draft {draft_id} not found")
        row["violations"] = json.loads(row["violations"] or "[]")
        return row

    # -- reviews ---------------------------------------------------------------------------

    def decide(self, draft_id: int, decision: str, reviewer: str, final_text: str | None = None,
               reason: str | None = None) -> Decision:
        """Record the one decision on a draft; approve / edit also create the sample.

        Idempotent and race-free: the first decision wins, later calls (double clicks,
        retries, a second supervisor) get ``created=False`` and the first decision back.
        """
        if decision not in DECISIONS:
            raise ReplyloopError(f"decision must be one of {', '.join(DECISIONS)}, not {decision!r}")
        if decision == "edit" and not (final_text and final_text.strip()):
            raise ReplyloopError("an edit needs the edited reply text")
        with self.transaction() as db:
            existing = self.one("SELECT * FROM reviews WHERE draft_id = ?", (draft_id,))
            if existing is not None:
                sample = self.one("SELECT id FROM samples WHERE review_id = ?", (existing["id"],))
                return Decision(review=existing, created=False, sample_id=sample and sample["id"])
            draft = self.get_draft(draft_id)
            if decision == "approve" and draft["verdict"] == "block":
                raise BlockedDraftError()
            text = final_text.strip() if decision == "edit" else draft["text"]
            at = timeutil.now_iso()
            cur = db.execute(
                "INSERT INTO reviews (draft_id, decision, reviewer, final_text, reason, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (draft_id, decision, reviewer, text if decision != "reject" else None, reason, at),
            )
            review_id = cur.lastrowid
            sample_id = None
            if decision in ("approve", "edit"):
                sample_id = self._insert_sample(
                    SampleIn(draft["question"], text, draft["category"]), source="review",
                    approved_by=reviewer, approved_at=at, review_id=review_id,
                )
            self.audit(reviewer, f"review.{decision}", "draft", draft_id,
                       {"review_id": review_id, "sample_id": sample_id, "reason": reason})
            review = self.one("SELECT * FROM reviews WHERE id = ?", (review_id,))
            return Decision(review=review, created=True, sample_id=sample_id)

    def mark_card_updated(self, review_id: int) -> None:
        """The decided card is in Slack (its buttons are gone)."""
        with self.transaction() as db:
            db.execute("UPDATE reviews SET card_updated_at = ? WHERE id = ?", (timeutil.now_iso(), review_id))

    def decided_without_card_update(self, before: str, limit: int = 200) -> list[int]:
        """Drafts decided before ``before`` (ISO time) whose posted card still shows its buttons:
        the card update was lost (a crash after the decision's commit, Slack down)."""
        return [r["draft_id"] for r in self.query(
            "SELECT r.draft_id FROM reviews r JOIN drafts d ON d.id = r.draft_id"
            " WHERE r.card_updated_at IS NULL AND d.slack_ts IS NOT NULL AND r.created_at < ?"
            " ORDER BY r.id LIMIT ?", (before, int(limit)))]

    # -- samples -----------------------------------------------------------------------------

    def _insert_sample(self, sample: SampleIn, source: str, approved_by: str | None,
                       approved_at: str, review_id: int | None = None) -> int | None:
        cur = self.db.execute(
            "INSERT OR IGNORE INTO samples (prompt, response, category, intent, source, approved_by,"
            " approved_at, review_id, dedupe_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (sample.prompt.strip(), sample.response.strip(), sample.category or None, sample.intent or None,
             source, approved_by, approved_at, review_id, dedupe_key(sample.prompt, sample.response)),
        )
        return cur.lastrowid if cur.rowcount else None

    def add_samples(self, samples: Iterable[SampleIn], source: str = "import",
                    approved_by: str | None = None) -> ImportResult:
        """Insert samples in one transaction; duplicates (after normalisation) are counted, not added."""
        result = ImportResult()
        at = timeutil.now_iso()
        with self.transaction():
            for sample in samples:
                sample_id = self._insert_sample(sample, source, approved_by, at)
                if sample_id is None:
                    result.duplicates += 1
                else:
                    result.added += 1
                    result.sample_ids.append(sample_id)
            if result.added:
                self.audit(approved_by or "cli", "samples.add", "samples", None,
                           {"source": source, "added": result.added, "duplicates": result.duplicates})
        return result

    def samples(self, ids: Iterable[int] | None = None) -> list[dict]:
        if ids is None:
            return self.query("SELECT * FROM samples ORDER BY id")
        ids = list(ids)
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        return self.query(f"SELECT * FROM samples WHERE id IN ({marks}) ORDER BY id", ids)

    def sample_count(self) -> int:
        return self.scalar("SELECT count(*) FROM samples")

    # -- snapshots ---------------------------------------------------------------------------

    @staticmethod
    def heldout_bucket(prompt: str, seed: str) -> float:
        """A stable number in [0, 1) from the question alone: same question, same split, always."""
        return Store._key_bucket(compact(prompt), seed)

    @staticmethod
    def _key_bucket(key: str, seed: str) -> float:
        return int(sha256(seed + "\x1f" + key)[:15], 16) / 16**15

    def create_snapshot(self, heldout_share: float = 0.15, seed: str = "replyloop",
                        actor: str = "cli") -> Snapshot:
        """Freeze the current samples under a content hash with a train / held-out split.

        The split is by question (``compact(prompt)``) across the whole table, so a question is
        never on both sides of one snapshot: a question is held out when its bucket is below
        ``heldout_share``; a category with two or more questions and none held out gets one
        more held-out question, but only one that no earlier snapshot trained on (one held out
        before first, then a new one). A category where no such question exists stays without
        (``Snapshot.without_heldout``) rather than evaluating on trained questions. The same
        content gives the same hash; when the store's history changed the split, the hash
        includes the held-out questions, so a hash always names one split.
        """
        with self.transaction() as db:
            rows = self.query("SELECT id, prompt, category, dedupe_key FROM samples ORDER BY id")
            if not rows:
                raise ReplyloopError("the dataset has no samples yet: import or approve some first")
            content = "\n".join(sorted(f"{r['dedupe_key']}\x1f{r['category'] or ''}" for r in rows))
            digest_text = f"{content}\n{heldout_share:.6f}\n{seed}"
            key_of = {r["id"]: compact(r["prompt"]) for r in rows}
            bucket = {key: self._key_bucket(key, seed) for key in set(key_of.values())}
            history = self._split_history(key_of)
            splits = self._split(rows, key_of, bucket, heldout_share, history)
            if history and splits != self._split(rows, key_of, bucket, heldout_share, {}):
                held = sorted({key_of[r["id"]] for r in rows if splits[r["id"]] == "heldout"})
                digest_text += "\nheldout:" + "\x1f".join(held)
            digest = sha256(digest_text)[:16]
            existing = self.one("SELECT hash FROM snapshots WHERE hash = ?", (digest,))
            if existing is None:
                db.execute(
                    "INSERT INTO snapshots (hash, created_at, sample_count, heldout_share, max_sample_id)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (digest, timeutil.now_iso(), len(rows), heldout_share, max(r["id"] for r in rows)),
                )
                db.conn.executemany(
                    "INSERT INTO snapshot_samples (snapshot_hash, sample_id, split) VALUES (?, ?, ?)",
                    [(digest, sid, split) for sid, split in splits.items()],
                )
                self.audit(actor, "snapshot.create", "snapshot", digest, {"samples": len(rows)})
            counts = dict(db.execute(
                "SELECT split, count(*) FROM snapshot_samples WHERE snapshot_hash = ? GROUP BY split",
                (digest,)).fetchall())
            return Snapshot(digest, existing is None, counts.get("train", 0), counts.get("heldout", 0),
                            self._without_heldout(digest) if heldout_share > 0 else [])

    def _split_history(self, key_of: dict[int, str]) -> dict[str, set[str]]:
        """Question key -> the splits it had in earlier snapshots (samples are never deleted)."""
        history: dict[str, set[str]] = {}
        for sample_id, split in self.db.execute("SELECT DISTINCT sample_id, split FROM snapshot_samples").fetchall():
            if sample_id in key_of:
                history.setdefault(key_of[sample_id], set()).add(split)
        return history

    @staticmethod
    def _split(rows: list[dict], key_of: dict[int, str], bucket: dict[str, float], share: float,
               history: dict[str, set[str]]) -> dict[int, str]:
        """Sample id -> ``train`` / ``heldout``, decided per question key (``key_of``, with its
        hash ``bucket``) for the whole table."""
        # a question an earlier snapshot trained on stays train, even after heldout_share or the
        # split seed changed: the champion may know it, so it can never measure a challenger
        held = {k for k, b in bucket.items() if b < share and "train" not in history.get(k, ())}
        if share > 0:
            by_category: dict[str, set[str]] = {}
            for r in rows:
                by_category.setdefault(r["category"] or "", set()).add(key_of[r["id"]])
            for category in sorted(by_category):  # content order, not insertion order
                keys = by_category[category]
                if len(keys) < 2 or keys & held:
                    continue
                # never a question an earlier snapshot trained on (the champion may know it);
                # one held out before keeps its side, else the new one with the lowest bucket
                safe = [k for k in keys if "train" not in history.get(k, ())]
                if safe:
                    held.add(min(safe, key=lambda k: ("heldout" not in history.get(k, ()), bucket[k], k)))
        return {sid: ("heldout" if key in held else "train") for sid, key in key_of.items()}

    def _without_heldout(self, snapshot_hash: str) -> list[str]:
        """Categories of a snapshot with two or more questions and no held-out one."""
        questions: dict[str, set[str]] = {}
        covered: set[str] = set()
        for r in self.query("SELECT s.prompt, s.category, ss.split FROM snapshot_samples ss"
                            " JOIN samples s ON s.id = ss.sample_id WHERE ss.snapshot_hash = ?", (snapshot_hash,)):
            category = r["category"] or "(none)"
            questions.setdefault(category, set()).add(compact(r["prompt"]))
            if r["split"] == "heldout":
                covered.add(category)
        return sorted(c for c, keys in questions.items() if len(keys) >= 2 and c not in covered)

    def snapshot_samples(self, snapshot_hash: str, split: str | None = None) -> list[dict]:
        if self.one("SELECT hash FROM snapshots WHERE hash = ?", (snapshot_hash,)) is None:
            raise NotFoundError(f"snapshot {snapshot_hash} not found")
        sql = ("SELECT s.*, ss.split FROM snapshot_samples ss JOIN samples s ON s.id = ss.sample_id"
               " WHERE ss.snapshot_hash = ?")
        params: list = [snapshot_hash]
        if split:
            sql += " AND ss.split = ?"
            params.append(split)
        return self.query(sql + " ORDER BY s.id", params)

    def latest_snapshot(self) -> dict | None:
        return self.one("SELECT * FROM snapshots ORDER BY created_at DESC, rowid DESC LIMIT 1")

    def samples_since(self, snapshot_hash: str | None, source: str | None = "review") -> int:
        """Samples not in the given snapshot (all samples when it is None)."""
        sql = "SELECT count(*) FROM samples s WHERE 1=1"
        params: list = []
        if source:
            sql += " AND s.source = ?"
            params.append(source)
        if snapshot_hash:
            sql += (" AND NOT EXISTS (SELECT 1 FROM snapshot_samples ss"
                    " WHERE ss.snapshot_hash = ? AND ss.sample_id = s.id)")
            params.append(snapshot_hash)
        return self.scalar(sql, params)

    # -- stats -------------------------------------------------------------------------------

    def baseline_snapshot(self) -> str | None:
        """What new approved samples are counted from, by the threshold job, ``/retrain status``
        and ``data stats`` alike: the snapshot the champion was trained on; None without a
        champion (then every approved sample is new)."""
        row = self.one("SELECT snapshot_hash FROM models WHERE status = 'champion' AND snapshot_hash IS NOT NULL"
                       " ORDER BY promoted_at DESC, id DESC LIMIT 1")
        return row["snapshot_hash"] if row else None

    def stats(self) -> dict:
        snapshot = self.baseline_snapshot()
        return {
            "samples": self.sample_count(),
            "by_category": {r["category"] or "(none)": r["n"] for r in self.query(
                "SELECT category, count(*) AS n FROM samples GROUP BY category ORDER BY n DESC, category")},
            "by_source": {r["source"]: r["n"] for r in self.query(
                "SELECT source, count(*) AS n FROM samples GROUP BY source ORDER BY n DESC, source")},
            "questions": self.scalar("SELECT count(*) FROM questions"),
            "pending_reviews": self.pending_count(),
            "champion_snapshot": snapshot,
            "approved_since_snapshot": self.samples_since(snapshot),
        }


def open_store(path: str | Path) -> Store:
    return Store(path)
