"""The SQLite dataset store: questions, drafts, reviews, curated samples, snapshots.

One ``Store`` per process; each thread gets its own connection. Every multi-row
write runs inside ``Store.transaction()`` (``BEGIN IMMEDIATE``), so concurrent
writers queue on SQLite's lock instead of failing halfway.
"""

from __future__ import annotations

import contextlib
import logging
import hashlib
import json
import os
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

def _import_sqlite_utils():
    """sqlite-utils imports pandas whenever it is installed (here: 3 s and 125 MB of RSS on every
    command, the bot and each import worker) only to map ``pandas.Timestamp`` to TEXT; the store
    never passes pandas objects, so pandas is hidden while sqlite-utils loads."""
    import sys

    if "pandas" in sys.modules or "sqlite_utils" in sys.modules:
        import sqlite_utils
        return sqlite_utils
    sys.modules["pandas"] = None  # type: ignore[assignment]  # "import pandas" raises ImportError
    try:
        import sqlite_utils
    finally:
        del sys.modules["pandas"]
    return sqlite_utils


sqlite_utils = _import_sqlite_utils()
from sqlite_utils.utils import dedupe_keys as _dedupe_keys  # noqa: E402  # "id", "id_2" as sqlite-utils names them

from replyloop import migrations, timeutil  # noqa: E402
from replyloop.errors import (AmbiguousError, ConflictError, NotFoundError, PathError,  # noqa: E402
                              ReplyloopError, SnapshotNotFound)
from replyloop.textnorm import compact, compact_many, dedupe_key, prompt_key, sha256  # noqa: E402

_log = logging.getLogger(__name__)

DECISIONS = ("approve", "edit", "reject")
# how long a writer waits for the write lock: longer than the longest hold, the final insert of a
# large import (1M rows: 65 s on a busy shared 2-core machine, now about 7 s of CPU), so a bot write
# during an import waits instead of failing (scale15)
BUSY_TIMEOUT_S = 120.0
BACKGROUND_AUTOCHECKPOINT = 20_000  # pages (about 80 MB of log): the fallback of checkpoint_in_background
RESTART_LOG_AFTER = 10_000  # frames (about 40 MB): past this the background checkpoint lets the log start afresh
CHECKPOINT_BUSY_MS = 100  # the background checkpoint's busy timeout (it holds the write lock meanwhile)
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


@dataclass(frozen=True)
class Conflict:
    """A prompt (``line`` of the file being imported) that has another answer: on ``other_line``
    of the same file, or in the stored sample ``sample_id``."""
    line: int
    prompt: str
    other_line: int | None = None
    sample_id: int | None = None


@dataclass
class ImportResult:
    added: int = 0
    duplicates: int = 0
    sample_ids: Sequence[int] = field(default_factory=list)
    conflicts: int = 0  # rows whose prompt has a different answer (in the file or the store)
    conflict_examples: list[Conflict] = field(default_factory=list)  # the first few


def staging_row(line: int, sample: SampleIn) -> tuple:
    """A sample as ``Store.import_rows`` takes it: ``(line, prompt, response, category, intent,
    dedupe_key, prompt_key)``, trimmed and keyed (the CPU-heavy part, done by import workers)."""
    prompt, response = sample.prompt.strip(), sample.response.strip()
    key = compact(prompt)
    return (line, prompt, response, sample.category or None, sample.intent or None,
            sha256(key + "\x1f" + compact(response)), prompt_key(key))


IMPORT_BATCH = 5000       # rows per executemany into a staging file
IMPORT_CACHE_KIB = -98304  # page cache while the final INSERT ... SELECT runs (allocated only as used;
# with it the importer stays within twice the file's size at 1M rows)
REBUILD_CACHE_KIB = -32768  # the same while the indexes are rebuilt (it also bounds each sort's memory)
REBUILD_MIN_ROWS = 50_000  # an import this large, and at least as large as the table, rebuilds its indexes
CONFLICT_EXAMPLES = 10
SNAPSHOT_BATCH = 10_000  # rows read and keyed at once while a snapshot is planned
STAGING_COLUMNS = "line, prompt, response, category, intent, dedupe_key, prompt_key"
STAGING_ROWS_PER_INSERT = 500  # 3,500 parameters a statement (SQLite allows 32,766)


class StagingWriter:
    """Writes ``staging_row`` tuples to one staging file (a plain SQLite file, no journal, no
    fsync: it is thrown away after the import, and a crash only loses the import)."""

    def __init__(self, path: Path):
        self.path = path
        self.conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=OFF")
        self.conn.execute("PRAGMA synchronous=OFF")
        self.conn.execute("CREATE TABLE IF NOT EXISTS import_staging (line INTEGER PRIMARY KEY, prompt TEXT,"
                          " response TEXT, category TEXT, intent TEXT, dedupe_key TEXT, prompt_key TEXT)")
        self._sql: dict[int, str] = {}

    def write(self, rows: list[tuple]) -> tuple[bytes, bytes, bytes]:
        """Store ``rows`` (in line order, after the rows written before); returns their lines,
        prompt keys and dedupe keys as 64-bit integers (``Staging.add_keys``), for the
        conflict and duplicate checks."""
        return self.write_columns(*map(list, zip(*rows))) if rows else (b"", b"", b"")

    def write_columns(self, *columns: list) -> tuple[bytes, bytes, bytes]:
        """``write`` of the rows given as their columns (``STAGING_COLUMNS``, lists of equal
        length): no tuple a row is built."""
        import itertools
        from array import array

        lines, dedupe, prompt_keys = columns[0], columns[5], columns[6]
        self.conn.execute("BEGIN")
        for start in range(0, len(lines), STAGING_ROWS_PER_INSERT):  # a multi-row VALUES: 40% less CPU
            end = start + STAGING_ROWS_PER_INSERT
            count = len(lines[start:end])
            sql = self._sql.get(count)
            if sql is None:
                sql = self._sql[count] = (f"INSERT INTO import_staging ({STAGING_COLUMNS}) VALUES "
                                          + ",".join(["(?, ?, ?, ?, ?, ?, ?)"] * count))
            self.conn.execute(sql, list(itertools.chain.from_iterable(zip(*[c[start:end] for c in columns]))))
        self.conn.execute("COMMIT")
        return (array("q", lines).tobytes(),
                bytes.fromhex("".join(prompt_keys)),  # 16 hex digits each: big-endian 64-bit keys
                bytes.fromhex("".join([d[:16] for d in dedupe])))

    def close(self) -> None:
        self.conn.close()


def _remove_stale_staging(directory: Path) -> None:
    """Staging directories of imports whose process is gone (``kill -9`` skips the clean-up)."""
    import shutil

    for stale in directory.glob("replyloop-import-*-*"):
        try:
            pid = int(stale.name.split("-")[2])
            os.kill(pid, 0)  # raises when no such process
        except ProcessLookupError:
            shutil.rmtree(stale, ignore_errors=True)
        except (ValueError, IndexError, PermissionError, OSError):
            continue


class Staging:
    """The validated rows of one import, before they go into the store: staging files (one per
    validating process) in a temporary directory, and every row's keys in memory (24 bytes a
    row). Removed on exit."""

    def __init__(self, directory: str | Path | None = None):
        import tempfile

        _remove_stale_staging(Path(directory or tempfile.gettempdir()))
        self._tmp = tempfile.TemporaryDirectory(prefix=f"replyloop-import-{os.getpid()}-", dir=directory)
        self.directory = Path(self._tmp.name)
        self._keys = (bytearray(), bytearray(), bytearray())
        # ``[file name, first line, last line]`` in file order: the rows of the file, staging file
        # by staging file (a worker's file holds the chunks it validated), merged without a sort
        self.segments: list[list] = []

    def writer(self, name: str = "main") -> StagingWriter:
        return StagingWriter(self.directory / f"stage-{name}.db")

    def add_keys(self, lines: bytes, prompt_keys: bytes, dedupe_keys: bytes, file: str = "stage-main.db") -> None:
        """The keys of rows just written, in file order, to the staging file named ``file``."""
        if not lines:
            return
        for acc, data in zip(self._keys, (lines, prompt_keys, dedupe_keys)):
            acc.extend(data)
        first, last = struct.unpack_from("q", lines)[0], struct.unpack_from("q", lines, len(lines) - 8)[0]
        if self.segments and self.segments[-1][0] == file:
            self.segments[-1][2] = last  # the same file's rows carry on
        else:
            self.segments.append([file, first, last])

    def __len__(self) -> int:
        return len(self._keys[0]) // 8

    def keys(self):
        """``(lines, prompt keys, dedupe keys)`` as numpy arrays (the keys: the first 64 bits of
        each hash)."""
        import numpy as np

        return (np.frombuffer(self._keys[0], dtype=np.int64),
                np.frombuffer(self._keys[1], dtype=">u8").astype(np.uint64),
                np.frombuffer(self._keys[2], dtype=">u8").astype(np.uint64))

    def files(self) -> list[Path]:
        return sorted(self.directory.glob("stage-*.db"))

    def __enter__(self) -> "Staging":
        return self

    def __exit__(self, *exc) -> None:
        self._tmp.cleanup()


@dataclass
class Decision:
    review: dict
    created: bool
    sample_id: int | None = None


@dataclass(frozen=True)
class _SnapshotPlan:
    state: tuple
    digest: str
    splits: dict[int, str]
    without_heldout: list[str]
    preferences: list = field(default_factory=list)   # replyloop.preferences.Preference rows
    heldout_keys: set = field(default_factory=set)


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
        # deliver21: called inside a new decision's transaction as hook(store, draft, review)
        self.decision_hooks: list = []
        self._autocheckpoint: int | None = None  # botload15: set by checkpoint_in_background
        self._stop_checkpoints: list[Callable[[], None]] = []  # botload15: stopped by close()
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
        if self._autocheckpoint is not None:
            conn.execute(f"PRAGMA wal_autocheckpoint={self._autocheckpoint}")
        with self._lock:
            self._connections.append(conn)
        return conn

    def checkpoint_in_background(self, every_s: float = 0.5,
                                 restart_after: int = RESTART_LOG_AFTER) -> Callable[[], None]:
        """Move this process's WAL checkpoints off its commits; returns the function that stops it.

        By default the commit that grows the write-ahead log past 1,000 pages copies it into the
        database and fsyncs it, inside the transaction, while every other writer of the process
        waits: measured, every ~110th decision took 20-160 ms instead of 0.25 ms, the tail of a
        burst of clicks. Here a thread runs a PASSIVE checkpoint every ``every_s`` seconds on its
        own connection, outside the write lock (SQLite lets commits go on meanwhile); once the
        log is past ``restart_after`` frames, a RESTART checkpoint under the write lock copies
        the frames written meanwhile (measured 7-40 ms, about every 1,000 decisions) so that the
        next commit starts the log from its beginning and it stays under about 40 MB. The
        connections opened from now on checkpoint by themselves only past ``BACKGROUND_AUTOCHECKPOINT``
        pages, should the thread fall behind. Durability is unchanged: a commit is in the log
        either way."""
        self._autocheckpoint = BACKGROUND_AUTOCHECKPOINT
        self.db.conn.execute(f"PRAGMA wal_autocheckpoint={BACKGROUND_AUTOCHECKPOINT}")  # this thread's too
        stop = threading.Event()

        def run() -> None:
            conn = self.db.conn
            # never hold this process's writers back waiting on another process (an import)
            conn.execute(f"PRAGMA busy_timeout={CHECKPOINT_BUSY_MS}")
            while not stop.wait(every_s):
                try:
                    [(_, frames, _copied)] = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    if frames >= restart_after and self._write_lock.acquire(timeout=every_s):
                        # SQLite starts the log afresh only after a RESTART checkpoint: the bulk is
                        # copied already, so the writers of this process wait a few ms for the
                        # frames written meanwhile (busy: another process writes; next time)
                        try:
                            conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()
                        finally:
                            self._write_lock.release()
                except sqlite3.Error as exc:  # retried next time; no commit waits on it
                    _log.warning("background checkpoint of %s failed: %s", self.path, exc)
            self.release_thread()

        thread = threading.Thread(target=run, name="replyloop-checkpoint", daemon=True)
        thread.start()

        def close() -> None:
            stop.set()
            if thread is not threading.current_thread():
                thread.join(10)

        self._stop_checkpoints.append(close)
        return close

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
        for stop in self._stop_checkpoints:  # their connections are closed next
            stop()
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
        if dest.is_dir():
            raise PathError(f"{dest}: is a directory, expected the backup file's name")
        tmp = dest.with_name(f".{dest.name}.partial")
        try:  # cli16: a parent that is a file, /proc, no permission: an Error naming the path
            _make_parent(dest)
            tmp.unlink(missing_ok=True)
            target = sqlite3.connect(str(tmp))
            target.execute("PRAGMA user_version").fetchone()  # sqlite opens lazily: fail here, not mid-copy
        except (OSError, sqlite3.OperationalError) as exc:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            reason = getattr(exc, "strerror", None) or str(exc)
            raise PathError(f"{dest}: cannot write the backup there ({reason})") from None
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
        """Rows as dicts. A plain cursor: sqlite-utils' ``query`` wraps each statement in a
        savepoint (three statements instead of one: the decision path runs several per click)."""
        cursor = self.db.conn.execute(sql, params)
        if cursor.description is None:
            raise ValueError("query() can only be used with SQL that returns rows - use execute()")
        keys = _dedupe_keys(d[0] for d in cursor.description)
        return [dict(zip(keys, row)) for row in cursor]

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
                     source: str = "cli", callback_url: str | None = None) -> int:
        if not text or not text.strip():
            raise ReplyloopError("question text is empty")
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO questions (conversation_id, text, category, source, created_at, callback_url)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (conversation_id, text.strip(), category or None, source, timeutil.now_iso(), callback_url or None),
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
                      r.created_at AS decided_at, s.id AS sample_id
               FROM drafts d JOIN questions q ON q.id = d.question_id
               LEFT JOIN reviews r ON r.draft_id = d.id
               LEFT JOIN samples s ON s.review_id = r.id
               WHERE d.id = ?""",
            (draft_id,),
        )
        if row is None:
            raise NotFoundError(f"draft {draft_id} not found")
        row["violations"] = json.loads(row["violations"] or "[]")
        return row

    # -- reviews ---------------------------------------------------------------------------

    def decide(self, draft_id: int, decision: str, reviewer: str, final_text: str | None = None,
               reason: str | None = None, automated: bool = False) -> Decision:
        """Record the one decision on a draft; approve / edit also create the sample.

        Idempotent and race-free: the first decision wins, later calls (double clicks,
        retries, a second supervisor) get ``created=False`` and the first decision back.
        ``automated``: an approval by earned automation that no person saw; it makes no sample
        (the model never trains on its own unreviewed output).
        An edit whose text equals the draft (after stripping) is stored as an approval, so the
        approval-without-edit rate counts it; a blocked draft's stays an edit (approving a
        blocked draft is refused). ``sample_id`` is None when the reply was already a sample.
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
            if (decision == "edit" and final_text.strip() == draft["text"].strip()
                    and draft["verdict"] != "block"):
                decision = "approve"  # cli16: an "edit" that changed nothing is an approval without edit
            if decision == "approve" and draft["verdict"] == "block":
                raise BlockedDraftError()
            text = final_text.strip() if decision == "edit" else draft["text"]
            at = timeutil.now_iso()
            if automated and decision != "approve":
                raise ReplyloopError("only an approval can be automated")
            cur = db.execute(
                "INSERT INTO reviews (draft_id, decision, reviewer, final_text, reason, created_at, automated)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (draft_id, decision, reviewer, text if decision != "reject" else None, reason, at, int(automated)),
            )
            review_id = cur.lastrowid
            sample_id = None
            if decision in ("approve", "edit") and not automated:
                sample_id = self._insert_sample(
                    SampleIn(draft["question"], text, draft["category"]), source="review",
                    approved_by=reviewer, approved_at=at, review_id=review_id,
                )
            self.audit(reviewer, f"review.{decision}", "draft", draft_id,
                       {"review_id": review_id, "sample_id": sample_id, "reason": reason})
            review = self.one("SELECT * FROM reviews WHERE id = ?", (review_id,))
            # -- deliver21: the reply.decided event joins this transaction (replyloop.outbox) --
            for hook in self.decision_hooks:
                hook(self, draft, review)
            # -- end deliver21 --
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
        prompt = compact(sample.prompt)
        cur = self.db.execute(
            "INSERT OR IGNORE INTO samples (prompt, response, category, intent, source, approved_by,"
            " approved_at, review_id, dedupe_key, prompt_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (sample.prompt.strip(), sample.response.strip(), sample.category or None, sample.intent or None,
             source, approved_by, approved_at, review_id,
             sha256(prompt + "\x1f" + compact(sample.response)), prompt_key(prompt)),
        )
        return cur.lastrowid if cur.rowcount else None

    def add_samples(self, samples: Iterable[SampleIn] | Iterable[tuple[int, SampleIn]], source: str = "import",
                    approved_by: str | None = None) -> ImportResult:
        """Insert samples all or nothing; duplicates (after normalisation) are counted, not added.

        ``samples`` may be a stream of ``(line, sample)`` (``dataio.iter_samples``); see
        ``import_rows``. Inside the caller's transaction the rows join it instead."""
        if self.db.conn.in_transaction:  # inside the caller's transaction: row by row, within it
            return self._add_in_transaction(samples, source, approved_by, timeutil.now_iso())

        def staged():
            for n, item in enumerate(samples, start=1):
                yield staging_row(*item) if isinstance(item, tuple) else staging_row(n, item)

        return self.import_rows(staged(), source, approved_by)

    def import_rows(self, rows: Iterable[tuple], source: str = "import", approved_by: str | None = None) -> ImportResult:
        """Import ``staging_row`` tuples (in file order) all or nothing.

        The stream is read once, into a staging file (``Staging``) without holding the
        database's write lock: a bad row found late (the reader raises) stores nothing, and the
        bot keeps writing meanwhile. Then ``import_staged`` moves the rows in one short
        transaction."""
        with Staging() as staging:
            writer = staging.writer()
            batch: list[tuple] = []
            for row in rows:
                batch.append(row)
                if len(batch) >= IMPORT_BATCH:
                    staging.add_keys(*writer.write(batch), file=writer.path.name)
                    batch.clear()
            if batch:
                staging.add_keys(*writer.write(batch), file=writer.path.name)
            writer.close()
            return self.import_staged(staging, source, approved_by)

    def import_staged(self, staging: "Staging", source: str = "import", approved_by: str | None = None) -> ImportResult:
        """Move the validated rows of ``staging`` into ``samples`` in one write transaction: one
        ``INSERT … SELECT`` in file order (duplicates, in the file or already stored, are counted,
        not added). An import at least as large as the table (``_insert_rebuilding``) drops the
        table's indexes, leaves the duplicates out itself and builds the indexes again inside the
        same transaction: one sort each instead of a million random inserts. The result also
        counts rows whose prompt has a different answer in the file or in the store."""
        at = timeutil.now_iso()
        conn = self.db.conn
        files = staging.files()
        names = [f"import_stage{i}" for i in range(len(files))]
        alias = {path.name: name for name, path in zip(names, files)}
        for name, path in zip(names, files):
            conn.execute("ATTACH DATABASE ? AS " + name, (str(path),))
        try:
            result = self._conflicts(conn, staging, names)
            total = len(staging)
            if not names:
                return result
            conn.execute(f"PRAGMA main.cache_size = {IMPORT_CACHE_KIB}")  # the index pages the insert touches
            conn.execute(f"PRAGMA threads = {min(os.cpu_count() or 1, 4)}")  # the index sorts use the idle cores
            # the commit does not copy the WAL into the database (the automatic checkpoint would, after
            # the commit but before it returns); that happens below, while other writers go on
            conn.execute("PRAGMA wal_autocheckpoint = 0")
            # the rows in file order, segment by segment: each a range of one staging file's primary
            # key (read in order, no sort; a UNION ALL ... ORDER BY merge cost 2 CPU s a million)
            insert = ("INSERT {or_ignore}INTO main.samples (prompt, response, category, intent, source, approved_by,"
                      " approved_at, dedupe_key, prompt_key) SELECT prompt, response, category, intent, ?, ?, ?,"
                      " dedupe_key, prompt_key FROM {file}.import_staging WHERE line BETWEEN ? AND ?{where}"
                      " ORDER BY line")
            segments = [(alias[file], first, last) for file, first, last in staging.segments]
            params = (source, approved_by, at)
            with self.transaction():
                before = self.scalar("SELECT coalesce(max(id), 0) FROM samples")  # never deleted: about count(*)
                added = None
                if total >= max(before, REBUILD_MIN_ROWS):
                    added = self._insert_rebuilding(conn, staging, names, insert, segments, params, before)
                if added is None:  # into the indexes as they are; the unique index skips duplicates
                    sql = insert.format(or_ignore="OR IGNORE ", file="{file}", where="")
                    added = sum(max(conn.execute(sql.format(file=file), (*params, first, last)).rowcount, 0)
                                for file, first, last in segments)
                result.added = added
                result.duplicates = total - result.added
                result.sample_ids = range(before + 1, before + 1 + result.added)
                if result.added:
                    self.audit(approved_by or "cli", "samples.add", "samples", None,
                               {"source": source, "added": result.added, "duplicates": result.duplicates})
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")  # never blocks a writer
            return result
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            conn.execute("PRAGMA wal_autocheckpoint = 1000")  # SQLite's default again
            conn.execute("PRAGMA threads = 0")
            conn.execute("DROP TABLE IF EXISTS temp.import_skip")
            for name in names:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("DETACH DATABASE " + name)
            conn.execute("PRAGMA main.cache_size = -2000")  # SQLite's default again

    def _insert_rebuilding(self, conn: sqlite3.Connection, staging: "Staging", names: list[str], insert: str,
                           segments: list[tuple], params: tuple, before: int) -> int | None:
        """The large import, inside ``import_staged``'s transaction: the indexes of ``samples``
        that the new rows would enter (all but partial ones, which imported rows never match)
        are dropped, the rows go in without the duplicates, which are found here from the 64-bit
        keys (a later row of the file with an earlier one's key, or a row whose key is stored),
        and the indexes are built again. Returns the rows added, or None, with everything
        undone, when a check fails: a unique index that cannot be built, or a left-out row whose
        full key is not stored after all (two keys that share their first 64 bits); then the
        caller inserts the ordinary way."""
        import numpy as np

        lines, _, dks = staging.keys()
        order = np.lexsort((lines, dks))  # equal keys in file order: the first one is kept
        later = np.zeros(len(dks), dtype=bool)
        later[order[1:]] = dks[order[1:]] == dks[order[:-1]]
        if before:
            stored = "".join([k[:16] for (k,) in conn.execute("SELECT dedupe_key FROM main.samples")])
            try:
                later |= np.isin(dks, np.frombuffer(bytes.fromhex(stored), dtype=">u8").astype(np.uint64))
            except ValueError:  # a stored key that is not a SHA-256 (hand-made rows): the ordinary way
                return None
            del stored
        skip = lines[later]
        indexes = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'samples' AND sql IS NOT NULL"
            " AND sql NOT LIKE '% WHERE %'").fetchall()
        conn.execute("DROP TABLE IF EXISTS temp.import_skip")
        conn.execute("CREATE TEMP TABLE import_skip (line INTEGER PRIMARY KEY)")
        conn.executemany("INSERT INTO temp.import_skip VALUES (?)", ((int(x),) for x in skip))
        sql = insert.format(or_ignore="", file="{file}", where=" AND line NOT IN temp.import_skip" if len(skip) else "")
        conn.execute("SAVEPOINT import_rebuild")
        try:
            for name, _ in indexes:
                conn.execute(f'DROP INDEX "{name}"')
            # appended in rowid order, the pages the insert touches are few: a small cache will do
            conn.execute(f"PRAGMA main.cache_size = {REBUILD_CACHE_KIB}")
            added = sum(conn.execute(sql.format(file=file), (*params, first, last)).rowcount
                        for file, first, last in segments)
            for _, index in indexes:
                conn.execute(index)  # a unique one fails here if a duplicate got in
            missing = 0
            if len(skip):  # each left-out row's full key is stored (the 64-bit keys could collide)
                missing = sum(conn.execute(
                    f"SELECT count(*) FROM temp.import_skip k CROSS JOIN {n}.import_staging s ON s.line = k.line"
                    " WHERE NOT EXISTS (SELECT 1 FROM main.samples m WHERE m.dedupe_key = s.dedupe_key)").fetchone()[0]
                    for n in names)
            if missing:
                raise sqlite3.IntegrityError(f"{missing} rows left out as duplicates are not stored")
        except sqlite3.IntegrityError:
            conn.execute("ROLLBACK TO import_rebuild")
            conn.execute("RELEASE import_rebuild")
            conn.execute(f"PRAGMA main.cache_size = {IMPORT_CACHE_KIB}")
            return None
        conn.execute("RELEASE import_rebuild")
        return added

    def _conflicts(self, conn: sqlite3.Connection, staging: "Staging", names: list[str]) -> ImportResult:
        """Prompts of the staged file with another answer, in the file (from the staged 64-bit
        keys, with numpy) or already stored."""
        import numpy as np

        result = ImportResult()
        lines, pks, dks = staging.keys()
        if not len(lines):
            return result

        def prompt_at(line: int) -> str:
            for name in names:
                row = conn.execute(f"SELECT prompt FROM {name}.import_staging WHERE line = ?", (int(line),)).fetchone()
                if row:
                    return row[0]
            return ""

        # in the file: rows whose answer differs from the first row with the same prompt
        order = np.lexsort((lines, pks))
        pk_s, dk_s, line_s = pks[order], dks[order], lines[order]
        starts = np.ones(len(pk_s), dtype=bool)
        starts[1:] = pk_s[1:] != pk_s[:-1]
        first = np.maximum.accumulate(np.where(starts, np.arange(len(pk_s)), 0))
        differs = dk_s != dk_s[first]
        result.conflicts = int(differs.sum())
        if result.conflicts:
            at = np.argsort(line_s[differs], kind="stable")[:CONFLICT_EXAMPLES]
            for line, other in zip(line_s[differs][at], line_s[first][differs][at]):
                result.conflict_examples.append(Conflict(int(line), prompt_at(line), int(other), None))
        # in the store: staged rows whose prompt is stored with another answer
        stored = self.scalar("SELECT coalesce(max(id), 0) FROM samples")
        if stored:
            if stored <= len(lines):  # a small table: its keys next to the file's
                main = conn.execute("SELECT prompt_key, dedupe_key FROM main.samples WHERE prompt_key IS NOT NULL")
                mk = np.array([(int(p, 16), int(d[:16], 16)) for p, d in main], dtype=np.uint64).reshape(-1, 2)
                mk = mk[np.lexsort((mk[:, 1], mk[:, 0]))]
                keys, begin = np.unique(mk[:, 0], return_index=True)
                end = np.append(begin[1:], len(mk)) - 1
                low, high = mk[begin, 1], mk[end, 1]
                hit_lines = np.empty(0, dtype=np.int64)
                if len(keys):
                    pos = np.clip(np.searchsorted(keys, pks), 0, len(keys) - 1)
                    hit = (keys[pos] == pks) & ~((low[pos] == dks) & (high[pos] == dks))
                    hit_lines = np.sort(lines[hit])
            else:  # a large table: look each staged prompt up in its index
                hit_lines = []
                for name in names:
                    hit_lines += [r[0] for r in conn.execute(
                        f"SELECT s.line FROM {name}.import_staging s WHERE EXISTS (SELECT 1 FROM main.samples m"
                        " WHERE m.prompt_key = s.prompt_key AND m.dedupe_key != s.dedupe_key)")]
                hit_lines.sort()
            result.conflicts += len(hit_lines)
            for line in hit_lines[:max(CONFLICT_EXAMPLES - len(result.conflict_examples), 0)]:
                for name in names:
                    row = conn.execute(
                        f"SELECT s.prompt, (SELECT min(m.id) FROM main.samples m WHERE m.prompt_key = s.prompt_key"
                        f" AND m.dedupe_key != s.dedupe_key) FROM {name}.import_staging s WHERE s.line = ?",
                        (int(line),)).fetchone()
                    if row:
                        result.conflict_examples.append(Conflict(int(line), row[0], None, row[1]))
                        break
        result.conflict_examples.sort(key=lambda c: c.line)
        return result

    def _add_in_transaction(self, samples, source: str, approved_by: str | None, at: str) -> ImportResult:
        result = ImportResult()
        ids = []
        for item in samples:
            sample = item[1] if isinstance(item, tuple) else item
            sample_id = self._insert_sample(sample, source, approved_by, at)
            if sample_id is None:
                result.duplicates += 1
            else:
                result.added += 1
                ids.append(sample_id)
        result.sample_ids = ids
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

    def resolve_snapshot(self, ref: str) -> str:
        """The full hash of the snapshot ``ref`` names: the hash or, like git, a unique prefix of
        at least 4 characters. SnapshotNotFound when none matches, AmbiguousError (listing the
        candidates) when several do."""
        ref = ref.strip().lower()
        if self.one("SELECT hash FROM snapshots WHERE hash = ?", (ref,)) is not None:
            return ref
        hint = "(see `replyloop data snapshot` and `replyloop models list` for snapshot hashes)"
        if len(ref) < 4 or any(c not in "0123456789abcdef" for c in ref):
            raise SnapshotNotFound(f"snapshot {ref!r} not found: give its hash or at least its first 4 hex "
                                   f"characters {hint}")
        rows = self.query("SELECT hash, created_at, sample_count FROM snapshots WHERE substr(hash, 1, ?) = ?"
                          " ORDER BY created_at, rowid", (len(ref), ref))
        if not rows:
            raise SnapshotNotFound(f"snapshot {ref} not found {hint}")
        if len(rows) > 1:
            listed = "; ".join(f"{r['hash']} ({r['sample_count']} samples, {r['created_at']})" for r in rows)
            raise AmbiguousError(f"snapshot {ref} is ambiguous, it matches {len(rows)}: {listed}."
                                 " Give more characters")
        return rows[0]["hash"]

    def iter_samples(self, snapshot_hash: str | None = None, split: str | None = None) -> Iterator[dict]:
        """Samples (of a snapshot, of one split) in id order, read as a stream: ``data export``
        of a million rows never holds them all in memory. ``snapshot_hash`` may be a unique
        prefix (``resolve_snapshot``)."""
        if snapshot_hash is None:
            sql, params = "SELECT * FROM samples ORDER BY id", []
        else:
            snapshot_hash = self.resolve_snapshot(snapshot_hash)
            sql = ("SELECT s.*, ss.split FROM snapshot_samples ss JOIN samples s ON s.id = ss.sample_id"
                   " WHERE ss.snapshot_hash = ?" + (" AND ss.split = ?" if split else "") + " ORDER BY s.id")
            params = [snapshot_hash, split] if split else [snapshot_hash]
        return self._stream(sql, params)

    def _stream(self, sql: str, params: list) -> Iterator[dict]:
        cursor = self.db.conn.execute(sql, params)
        names = [d[0] for d in cursor.description]
        for row in cursor:
            yield dict(zip(names, row))

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
        plan = self._plan_snapshot(heldout_share, seed)  # the slow part, without the write lock
        conn = self.db.conn
        staged = self._stage_splits(conn, plan)  # the split rows too: only a copy is left for the lock
        try:
            with self.transaction() as db:
                if plan.state != self._snapshot_state():  # samples or snapshots changed meanwhile
                    plan, staged = self._plan_snapshot(heldout_share, seed), False
                digest = plan.digest
                existing = self.one("SELECT hash FROM snapshots WHERE hash = ?", (digest,))
                if existing is None:
                    db.execute(
                        "INSERT INTO snapshots (hash, created_at, sample_count, heldout_share, max_sample_id)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (digest, timeutil.now_iso(), len(plan.splits), heldout_share, max(plan.splits)),
                    )
                    if staged:
                        conn.execute("INSERT INTO main.snapshot_samples (snapshot_hash, sample_id, split)"
                                     " SELECT ?, sample_id, split FROM temp.snapshot_staging ORDER BY sample_id",
                                     (digest,))
                    else:
                        conn.executemany(
                            "INSERT INTO snapshot_samples (snapshot_hash, sample_id, split) VALUES (?, ?, ?)",
                            ((digest, sid, split) for sid, split in plan.splits.items()),
                        )
                    if plan.preferences:
                        from replyloop import preferences

                        preferences.freeze(conn, digest, plan.preferences, plan.heldout_keys)
                    self.audit(actor, "snapshot.create", "snapshot", digest, {"samples": len(plan.splits)})
        finally:
            conn.execute("DROP TABLE IF EXISTS temp.snapshot_staging")
        held = sum(1 for split in plan.splits.values() if split == "heldout")
        return Snapshot(digest, existing is None, len(plan.splits) - held, held,
                        plan.without_heldout if heldout_share > 0 else [])

    @staticmethod
    def _stage_splits(conn: sqlite3.Connection, plan: "_SnapshotPlan") -> bool:
        """The plan's (sample, split) rows into a temporary table (the temp database only: no
        lock on the store); False inside a caller's transaction (then they are inserted there)."""
        if conn.in_transaction:
            return False
        conn.execute("DROP TABLE IF EXISTS temp.snapshot_staging")
        conn.execute("CREATE TEMP TABLE snapshot_staging (sample_id INTEGER PRIMARY KEY, split TEXT NOT NULL)")
        conn.execute("BEGIN")
        try:
            conn.executemany("INSERT INTO temp.snapshot_staging VALUES (?, ?)", plan.splits.items())
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return True

    def _snapshot_state(self) -> tuple:
        """What a snapshot plan depends on (samples are only ever added, snapshots too)."""
        return tuple(self.db.execute(
            "SELECT (SELECT count(*) FROM samples), (SELECT max(id) FROM samples),"
            " (SELECT count(*) FROM snapshots), (SELECT max(rowid) FROM snapshot_samples),"
            " (SELECT max(id) FROM reviews)").fetchone())

    def _plan_snapshot(self, heldout_share: float, seed: str) -> "_SnapshotPlan":
        """Hash and split of the current samples, read in one consistent read transaction."""
        conn = self.db.conn
        own = not conn.in_transaction
        if own:
            conn.execute("BEGIN")  # deferred: a consistent read that blocks no writer (WAL)
        try:
            state = self._snapshot_state()
            # streamed in batches, keyed in bulk (``compact_many``); equal keys and categories share one string
            key_of: dict[int, str] = {}
            categories: list[tuple[int, str | None]] = []
            keys: dict[str, str] = {}
            names: dict[str | None, str | None] = {}
            cursor = conn.execute("SELECT id, prompt, category FROM samples ORDER BY id")
            while batch := cursor.fetchmany(SNAPSHOT_BATCH):
                ids, prompts, cats = zip(*batch)
                key_of.update(zip(ids, [keys.setdefault(k, k) for k in compact_many(list(prompts))]))
                categories.extend(zip(ids, [names.setdefault(c, c) for c in cats]))
            if not key_of:
                raise ReplyloopError("the dataset has no samples yet: import or approve some first")
            digest = hashlib.sha256()
            first = True
            # the content in code point order (SQLite compares UTF-8 bytes: the same order), streamed
            for (item,) in conn.execute("SELECT dedupe_key || char(31) || coalesce(category, '') FROM samples"
                                        " ORDER BY 1"):
                digest.update((item if first else "\n" + item).encode("utf-8"))
                first = False
            digest.update(f"\n{heldout_share:.6f}\n{seed}".encode("utf-8"))
            bucket = {key: self._key_bucket(key, seed) for key in keys}
            del keys
            history = self._split_history(key_of)
            from replyloop import preferences

            prefs = preferences.collect(conn)
        finally:
            if own and conn.in_transaction:
                conn.execute("COMMIT")
        splits = self._split(categories, key_of, bucket, heldout_share, history)
        if history and splits != self._split(categories, key_of, bucket, heldout_share, {}):
            held = sorted({key_of[sid] for sid, split in splits.items() if split == "heldout"})
            digest.update(("\nheldout:" + "\x1f".join(held)).encode("utf-8"))
        digest.update(preferences.digest_part(prefs))  # nothing when there are no reviews
        heldout_keys = {key_of[sid] for sid, split in splits.items() if split == "heldout"}
        return _SnapshotPlan(state, digest.hexdigest()[:16], splits,
                             self._without_heldout(categories, key_of, splits), prefs, heldout_keys)

    def _split_history(self, key_of: dict[int, str]) -> dict[str, set[str]]:
        """Question key -> the splits it had in earlier snapshots (samples are never deleted)."""
        history: dict[str, set[str]] = {}
        for sample_id, split in self.db.execute("SELECT DISTINCT sample_id, split FROM snapshot_samples").fetchall():
            if sample_id in key_of:
                history.setdefault(key_of[sample_id], set()).add(split)
        return history

    @staticmethod
    def _split(rows: list[tuple[int, str | None]], key_of: dict[int, str], bucket: dict[str, float], share: float,
               history: dict[str, set[str]]) -> dict[int, str]:
        """Sample id -> ``train`` / ``heldout``, decided per question key (``key_of``, with its
        hash ``bucket``) for the whole table."""
        # a question an earlier snapshot trained on stays train, even after heldout_share or the
        # split seed changed: the champion may know it, so it can never measure a challenger
        held = {k for k, b in bucket.items() if b < share and "train" not in history.get(k, ())}
        if share > 0:
            by_category: dict[str, set[str]] = {}
            for sid, category in rows:
                by_category.setdefault(category or "", set()).add(key_of[sid])
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

    @staticmethod
    def _without_heldout(rows: list[tuple[int, str | None]], key_of: dict[int, str],
                         splits: dict[int, str]) -> list[str]:
        """Categories with two or more questions and no held-out one."""
        questions: dict[str, set[str]] = {}
        covered: set[str] = set()
        for sid, category in rows:
            category = category or "(none)"
            questions.setdefault(category, set()).add(key_of[sid])
            if splits[sid] == "heldout":
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
            # prompts stored with two or more different answers (七天内可退 / 不可以退)
            "conflicting_prompts": self.scalar(
                "SELECT count(*) FROM (SELECT 1 FROM samples GROUP BY prompt_key"
                " HAVING min(dedupe_key) != max(dedupe_key))"),
            "pending_reviews": self.pending_count(),
            "champion_snapshot": snapshot,
            "approved_since_snapshot": self.samples_since(snapshot),
        }


def open_store(path: str | Path) -> Store:
    return Store(path)


def _make_parent(path: Path) -> None:
    """Create ``path``'s parent directories; a component that is a file is named in the error."""
    for parent in reversed(path.parents):
        if parent.exists() and not parent.is_dir():
            raise NotADirectoryError(20, f"{parent} is a file, not a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
