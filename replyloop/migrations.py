"""Numbered, forward-only schema migrations, recorded in ``_replyloop_migrations``.

Add a new ``mNNN_name(db)`` function at the end to change the schema; never edit
one that has shipped. Numbers reserved by area: m001-m009 core, m010-m019
evaluation/registry, m020-m029 bot, m030-m039 pipeline, m040-m049 report.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Callable

import sqlite_utils

MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = []


def migration(fn):
    MIGRATIONS.append(fn)
    return fn


@migration
def m001_initial(db: sqlite_utils.Database) -> None:
    run_script(db,
        """
        CREATE TABLE questions (
            id INTEGER PRIMARY KEY,
            conversation_id TEXT NOT NULL,
            text TEXT NOT NULL,
            category TEXT,
            source TEXT NOT NULL,            -- slack | http | import | demo | cli
            created_at TEXT NOT NULL
        );
        CREATE INDEX idx_questions_conversation ON questions(conversation_id);

        CREATE TABLE models (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            adapter_path TEXT,
            base_model TEXT NOT NULL,
            snapshot_hash TEXT,
            run_id INTEGER,
            metrics TEXT,                    -- JSON
            status TEXT NOT NULL DEFAULT 'candidate'
                CHECK (status IN ('candidate', 'canary', 'champion', 'retired', 'rejected')),
            canary_percent INTEGER,
            promoted_by TEXT,
            promoted_at TEXT,
            created_at TEXT NOT NULL
        );

        CREATE TABLE drafts (
            id INTEGER PRIMARY KEY,
            question_id INTEGER NOT NULL REFERENCES questions(id),
            model_id INTEGER REFERENCES models(id),
            model_name TEXT,                 -- what produced it, also for external drafts
            text TEXT NOT NULL,
            verdict TEXT NOT NULL DEFAULT 'pass' CHECK (verdict IN ('pass', 'warn', 'block')),
            violations TEXT NOT NULL DEFAULT '[]',   -- JSON
            slack_channel TEXT,
            slack_ts TEXT,
            created_at TEXT NOT NULL
        );
        CREATE INDEX idx_drafts_question ON drafts(question_id);

        CREATE TABLE reviews (
            id INTEGER PRIMARY KEY,
            draft_id INTEGER NOT NULL UNIQUE REFERENCES drafts(id),   -- one decision per draft
            decision TEXT NOT NULL CHECK (decision IN ('approve', 'edit', 'reject')),
            reviewer TEXT NOT NULL,
            final_text TEXT,
            reason TEXT,
            created_at TEXT NOT NULL
        );

        CREATE TABLE samples (
            id INTEGER PRIMARY KEY,
            prompt TEXT NOT NULL,
            response TEXT NOT NULL,
            category TEXT,
            source TEXT NOT NULL,            -- import | review | demo
            approved_by TEXT,
            approved_at TEXT NOT NULL,
            review_id INTEGER UNIQUE REFERENCES reviews(id),
            dedupe_key TEXT NOT NULL UNIQUE
        );

        CREATE TABLE snapshots (
            hash TEXT PRIMARY KEY,
            created_at TEXT NOT NULL,
            sample_count INTEGER NOT NULL,
            heldout_share REAL NOT NULL,
            max_sample_id INTEGER
        );
        CREATE TABLE snapshot_samples (
            snapshot_hash TEXT NOT NULL REFERENCES snapshots(hash),
            sample_id INTEGER NOT NULL REFERENCES samples(id),
            split TEXT NOT NULL CHECK (split IN ('train', 'heldout')),
            PRIMARY KEY (snapshot_hash, sample_id)
        );

        CREATE TABLE training_runs (
            id INTEGER PRIMARY KEY,
            status TEXT NOT NULL DEFAULT 'queued'
                CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),
            trigger TEXT NOT NULL,           -- scheduler | slack | cli | demo
            requested_by TEXT,
            snapshot_hash TEXT,
            config TEXT,                     -- JSON
            output_dir TEXT,
            log_path TEXT,
            pid INTEGER,
            step INTEGER DEFAULT 0,
            total_steps INTEGER,
            loss REAL,
            model_id INTEGER REFERENCES models(id),
            error TEXT,
            started_at TEXT NOT NULL,
            finished_at TEXT
        );

        CREATE TABLE locks (
            name TEXT PRIMARY KEY,
            owner_pid INTEGER NOT NULL,
            owner_host TEXT NOT NULL,
            run_id INTEGER,
            acquired_at TEXT NOT NULL,
            heartbeat_at TEXT NOT NULL
        );

        CREATE TABLE audit_log (
            id INTEGER PRIMARY KEY,
            at TEXT NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            entity TEXT,
            entity_id TEXT,
            detail TEXT                      -- JSON
        );
        CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
            BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
        CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
            BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
        """
    )


@migration
def m002_sample_intent(db: sqlite_utils.Database) -> None:
    """Paraphrase groups: an explicit intent per sample (optional in imports)."""
    db.execute("ALTER TABLE samples ADD COLUMN intent TEXT")
    db.execute("CREATE INDEX idx_samples_category ON samples(category)")


@migration
def m003_evaluations(db: sqlite_utils.Database) -> None:
    """Evaluation results kept with the model row (the weekly report charts them) and the
    embedding cache keyed by (embedding model, text hash)."""
    run_script(db, """
        CREATE TABLE evaluations (
            id INTEGER PRIMARY KEY,
            model_id INTEGER REFERENCES models(id),
            snapshot_hash TEXT,
            against_model_id INTEGER REFERENCES models(id),
            embedding_model TEXT NOT NULL,
            n INTEGER NOT NULL,
            mean_similarity REAL,
            share_above REAL,
            by_category TEXT,                -- JSON {category: {"mean": .., "share_above": .., "n": ..}}
            self_consistency TEXT,           -- JSON {intent: mean pairwise similarity}
            violations TEXT,                 -- JSON {rule_id: {"severity": .., "count": .., "examples": [..]}}
            gate_passed INTEGER,
            gate TEXT,                       -- JSON [{criterion, value, limit, passed}]
            report TEXT,                     -- the full JSON report
            summary_md TEXT,
            created_at TEXT NOT NULL
        );
        CREATE INDEX idx_evaluations_model ON evaluations(model_id, created_at);
        CREATE TABLE embedding_cache (
            model TEXT NOT NULL,
            text_hash TEXT NOT NULL,
            dim INTEGER NOT NULL,
            vector BLOB NOT NULL,            -- float32 little-endian
            PRIMARY KEY (model, text_hash)
        );
    """)


@migration
def m010_model_lifecycle(db: sqlite_utils.Database) -> None:
    """Registry lifecycle: when a model was retired or rolled back, when retention deleted its
    adapter directory, and its latest evaluation (the promotion gate reads it)."""
    run_script(db, """
        ALTER TABLE models ADD COLUMN retired_at TEXT;
        ALTER TABLE models ADD COLUMN rolled_back_at TEXT;
        ALTER TABLE models ADD COLUMN adapter_deleted_at TEXT;
        ALTER TABLE models ADD COLUMN last_evaluation_id INTEGER REFERENCES evaluations(id);
        ALTER TABLE models ADD COLUMN canary_started_at TEXT;
        CREATE INDEX idx_models_status ON models(status);
        CREATE INDEX idx_drafts_model ON drafts(model_id);
    """)


def run_script(db: sqlite_utils.Database, sql: str) -> None:
    """Run several statements inside the current transaction (``executescript`` would commit)."""
    buffer = ""
    for line in sql.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            db.conn.execute(buffer)
            buffer = ""
    if buffer.strip():
        raise ValueError(f"incomplete SQL statement: {buffer.strip()[:60]}")


def applied(db: sqlite_utils.Database) -> list[str]:
    if "_replyloop_migrations" not in db.table_names():
        return []
    return [row["name"] for row in db.query("SELECT name FROM _replyloop_migrations ORDER BY id")]


def migrate(db: sqlite_utils.Database, upto: str | None = None) -> list[str]:
    """Apply pending migrations in order, each in its own transaction. Returns their names."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS _replyloop_migrations "
        "(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, applied_at TEXT NOT NULL)"
    )
    done = set(applied(db))
    ran = []
    for fn in MIGRATIONS:
        if fn.__name__ in done:
            continue
        conn = db.conn
        # a migration that rebuilds a table (SQLite's 12-step ALTER) runs with foreign keys off:
        # the pragma is a no-op inside a transaction, so it is switched here (import15)
        keys_on = getattr(fn, "foreign_keys_off", False) and conn.execute("PRAGMA foreign_keys").fetchone()[0]
        if keys_on:
            conn.execute("PRAGMA foreign_keys=OFF")
        conn.execute("BEGIN IMMEDIATE")
        try:
            if fn.__name__ in applied(db):  # another process applied it while we waited for the lock
                conn.execute("COMMIT")
                continue
            fn(db)
            conn.execute(
                "INSERT INTO _replyloop_migrations (name, applied_at) VALUES (?, ?)",
                (fn.__name__, dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")),
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            if keys_on:
                conn.execute("PRAGMA foreign_keys=ON")
        ran.append(fn.__name__)
        if upto and fn.__name__ == upto:
            break
    return ran


def schema_version(db: sqlite_utils.Database) -> int:
    return len(applied(db))


@migration
def m030_process_identity(db: sqlite_utils.Database) -> None:
    """Who really owns a lock or a run's child process: its start time and the machine's boot id
    (``locking.process_identity``), so a reused pid (a restarted container's pid 1, a machine
    restart) is not mistaken for the owner."""
    run_script(db, """
        ALTER TABLE locks ADD COLUMN owner_started TEXT;
        ALTER TABLE training_runs ADD COLUMN pid_started TEXT;
    """)


@migration
def m031_sample_prompt_key(db: sqlite_utils.Database) -> None:
    """``samples.prompt_key``: a short hash of the prompt as ``textnorm.compact`` sees it (what
    dedupe compares), indexed, so the same prompt stored with different answers is found with SQL
    (import warnings, ``data stats``)."""
    from replyloop.textnorm import compact, prompt_key

    db.execute("ALTER TABLE samples ADD COLUMN prompt_key TEXT")
    rows = db.execute("SELECT id, prompt FROM samples").fetchall()
    db.conn.executemany("UPDATE samples SET prompt_key = ? WHERE id = ?", [(prompt_key(compact(p)), i) for i, p in rows])
    db.execute("CREATE INDEX idx_samples_prompt_key ON samples(prompt_key)")


@migration
def m032_durable_bot(db: sqlite_utils.Database) -> None:
    """What the bot must not lose between Slack's 200 and its slow work:

    - ``reviews.card_updated_at``: when the decided card replaced the buttons in Slack; a decision
      whose card update was lost (a crash after the commit, Slack down) is updated again later.
      Decisions made before this migration count as updated.
    - ``intake_events``: one row per Slack message taken in (the dedup key of a message and its
      retries, written in the same transaction as its question), and messages whose channel
      could not be resolved yet (``state = 'unresolved'``, the text kept until it is)."""
    run_script(db, """
        ALTER TABLE reviews ADD COLUMN card_updated_at TEXT;
        UPDATE reviews SET card_updated_at = created_at;
        CREATE TABLE intake_events (
            key TEXT PRIMARY KEY,            -- slack:<channel>:<ts>
            channel TEXT NOT NULL,
            conversation_id TEXT NOT NULL,
            text TEXT,                       -- only while unresolved
            state TEXT NOT NULL CHECK (state IN ('question', 'unresolved', 'ignored')),
            question_id INTEGER REFERENCES questions(id),
            received_at TEXT NOT NULL
        );
        CREATE INDEX idx_intake_events_unresolved ON intake_events(state) WHERE state = 'unresolved';
    """)


@migration
def m033_evaluation_chrf(db: sqlite_utils.Database) -> None:
    """chrF beside the embedding cosine (mean of the drafts against the references; per category in
    ``by_category``), and the share of reference characters the embedding model could not read."""
    run_script(db, """
        ALTER TABLE evaluations ADD COLUMN mean_chrf REAL;
        ALTER TABLE evaluations ADD COLUMN unknown_share REAL;
    """)


@migration
def m034_delivery_outbox(db: sqlite_utils.Database) -> None:
    """Delivery of decided replies (``replyloop.outbox``) and earned automation:

    - ``outbox``: one row per ``reply.decided`` event and target, written in the decision's own
      transaction; the sender marks it delivered, or dead after ``delivery.max_attempts``.
    - ``questions.callback_url``: a webhook given with the question (``POST /intake``).
    - ``reviews.automated``: 1 for a draft approved by earned automation (no person saw it; the
      reviewer is ``replyloop:auto`` and no sample is made); ``drafts.automation``: what earned
      automation decided for the draft (NULL: not considered; ``auto``; ``audit``: would have been
      automatic, sent to a person by the audit sample; ``review``: a person must review it, the
      reason in ``drafts.automation_reason``).
    - ``automation_intents``: per intent, its state (``manual`` | ``automatic`` | ``revoked``) and
      a supervisor's pin."""
    run_script(db, """
        CREATE TABLE outbox (
            id INTEGER PRIMARY KEY,
            event_id TEXT NOT NULL,          -- the idempotency key the receiver dedupes on
            review_id INTEGER NOT NULL REFERENCES reviews(id),
            target TEXT NOT NULL CHECK (target IN ('webhook', 'slack_thread')),
            url TEXT,                        -- webhook: where to (the question's callback_url or the config's)
            payload TEXT NOT NULL,           -- JSON: the event
            state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'dead')),
            attempts INTEGER NOT NULL DEFAULT 0,
            next_at REAL NOT NULL,           -- unix time of the next try
            last_error TEXT,
            sending_at REAL,                 -- slack_thread: a post was started (a crash may have posted it)
            created_at TEXT NOT NULL,
            delivered_at TEXT,
            UNIQUE (event_id, target)
        );
        CREATE INDEX idx_outbox_due ON outbox(next_at) WHERE state = 'pending';
        CREATE INDEX idx_outbox_state ON outbox(state);
        ALTER TABLE questions ADD COLUMN callback_url TEXT;
        ALTER TABLE reviews ADD COLUMN automated INTEGER NOT NULL DEFAULT 0;
        CREATE INDEX IF NOT EXISTS idx_questions_category ON questions(category);  -- an intent's evidence
        ALTER TABLE drafts ADD COLUMN automation TEXT;
        ALTER TABLE drafts ADD COLUMN automation_reason TEXT;
        CREATE TABLE automation_intents (
            intent TEXT PRIMARY KEY,
            state TEXT NOT NULL DEFAULT 'manual' CHECK (state IN ('manual', 'automatic', 'revoked')),
            pinned TEXT CHECK (pinned IN ('manual', 'allowed')),
            reason TEXT,
            changed_at TEXT NOT NULL,
            notified_at TEXT                 -- a revocation posted to Slack
        );
    """)


@migration
def m035_snapshot_preferences(db: sqlite_utils.Database) -> None:
    """Preference rows (KTO / DPO) frozen with each snapshot, from reviews (replyloop/preferences.py)."""
    run_script(db, """
        CREATE TABLE snapshot_preferences (
            id INTEGER PRIMARY KEY,
            snapshot_hash TEXT NOT NULL REFERENCES snapshots(hash),
            kind TEXT NOT NULL CHECK (kind IN ('kto', 'dpo')),
            prompt TEXT NOT NULL,
            chosen TEXT NOT NULL,            -- kto: the completion
            rejected TEXT NOT NULL DEFAULT '',
            label INTEGER,                   -- kto: 1 desirable, 0 undesirable
            review_id INTEGER NOT NULL,
            split TEXT NOT NULL CHECK (split IN ('train', 'heldout'))
        );
        CREATE INDEX idx_snapshot_preferences ON snapshot_preferences(snapshot_hash, kind, split);
    """)


@migration
def m036_golden_suites(db: sqlite_utils.Database) -> None:
    """Golden suites (``evaluation.golden``): drafts cached by (model, generation settings, question), so a
    suite re-run after an assertion edit drafts nothing new; every run with its per-case results
    (linked to the evaluation whose gate it was part of), for the per-case history."""
    run_script(db, """
        CREATE TABLE golden_drafts (
            model_id INTEGER NOT NULL REFERENCES models(id),
            settings TEXT NOT NULL,          -- generation settings: max_new_tokens/min_new_tokens
            question_hash TEXT NOT NULL,     -- sha256 of the question
            question TEXT NOT NULL,
            draft TEXT NOT NULL,
            created_at TEXT NOT NULL,
            PRIMARY KEY (model_id, settings, question_hash)
        );
        CREATE TABLE golden_runs (
            id INTEGER PRIMARY KEY,
            model_id INTEGER NOT NULL REFERENCES models(id),
            evaluation_id INTEGER REFERENCES evaluations(id),
            suites TEXT NOT NULL,            -- JSON list of suite names
            n INTEGER NOT NULL,
            failed INTEGER NOT NULL,
            passed INTEGER NOT NULL,
            results TEXT NOT NULL,           -- JSON: the whole run (cases, assertions, spans)
            created_at TEXT NOT NULL
        );
        CREATE INDEX idx_golden_runs_model ON golden_runs(model_id, id);
        CREATE INDEX idx_golden_runs_evaluation ON golden_runs(evaluation_id);
        CREATE TABLE golden_case_results (
            run_id INTEGER NOT NULL REFERENCES golden_runs(id),
            case_id TEXT NOT NULL,
            suite TEXT NOT NULL,
            passed INTEGER NOT NULL,
            failures TEXT NOT NULL,          -- JSON list of the failed assertions' labels
            PRIMARY KEY (run_id, case_id)
        );
        CREATE INDEX idx_golden_case_results_case ON golden_case_results(case_id, run_id);
    """)


@migration
def m037_rule_proposals(db: sqlite_utils.Database) -> None:
    """Rule proposals mined from supervisors' edits (``evaluation.proposals``): one row per
    recurring replacement or deletion, with its evidence; ``status`` candidate (below the
    thresholds or already covered), open (proposed), accepted (written to policies.dir) or
    dismissed (``dismissed_count``: proposed again only when the count doubles). Each mining run
    is recorded with the last review it read."""
    run_script(db, """
        CREATE TABLE rule_proposals (
            id INTEGER PRIMARY KEY,
            key TEXT NOT NULL UNIQUE,            -- kind + normalised phrases
            kind TEXT NOT NULL CHECK (kind IN ('terminology', 'banned')),
            avoid TEXT NOT NULL,                 -- what the drafts said
            preferred TEXT,                      -- terminology: what the supervisors wrote
            count INTEGER NOT NULL DEFAULT 0,
            supervisors TEXT NOT NULL DEFAULT '[]',  -- JSON list of user ids
            examples TEXT NOT NULL DEFAULT '[]',     -- JSON [{review_id, draft, final}], at most 3
            status TEXT NOT NULL DEFAULT 'candidate'
                CHECK (status IN ('candidate', 'open', 'accepted', 'dismissed')),
            dismissed_count INTEGER,
            decided_by TEXT,
            decided_at TEXT,
            file TEXT,                           -- the policy file an accepted proposal wrote
            entry TEXT,                          -- JSON: the rule or terminology entry written
            slack_channel TEXT,
            slack_ts TEXT,
            opened_at TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE INDEX idx_rule_proposals_status ON rule_proposals(status);
        CREATE TABLE rule_proposal_runs (
            id INTEGER PRIMARY KEY,
            at TEXT NOT NULL,
            actor TEXT NOT NULL,
            max_review_id INTEGER NOT NULL,
            reviews INTEGER NOT NULL,
            opened INTEGER NOT NULL
        );
    """)


@migration
def m038_samples_unique_indexes(db: sqlite_utils.Database) -> None:
    """``samples``' UNIQUE column constraints on ``dedupe_key`` and ``review_id`` become named
    unique indexes (``review_id``'s partial: only reviewed samples have one), the same rules. A
    constraint's index cannot be dropped; a named one can, so a large import builds it once by
    sorting (3 CPU s for 1M rows) instead of a million random inserts (6 s), and imported rows
    (no review) no longer touch the ``review_id`` index at all. SQLite's table rebuild: the
    table is copied as it is (ids kept), with foreign keys off (``foreign_keys_off``)."""
    import re

    conn = db.conn
    row = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'samples'").fetchone()
    sql = row[0]
    new = re.sub(r"(\breview_id\s+INTEGER)\s+UNIQUE\b", r"\1", sql, flags=re.I)
    new = re.sub(r"(\bdedupe_key\s+TEXT\s+NOT\s+NULL)\s+UNIQUE\b", r"\1", new, flags=re.I)
    if new == sql:
        return  # already without them
    indexes = [r[0] for r in conn.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'samples' AND sql IS NOT NULL")]
    count = conn.execute("SELECT count(*) FROM samples").fetchone()[0]
    conn.execute(re.sub(r"^\s*CREATE\s+TABLE\s+\"?samples\"?", "CREATE TABLE samples_m038", new, flags=re.I))
    conn.execute("INSERT INTO samples_m038 SELECT * FROM samples")
    conn.execute("DROP TABLE samples")
    conn.execute("ALTER TABLE samples_m038 RENAME TO samples")
    for index in indexes:
        conn.execute(index)
    conn.execute("CREATE UNIQUE INDEX idx_samples_dedupe_key ON samples(dedupe_key)")
    conn.execute("CREATE UNIQUE INDEX idx_samples_review_id ON samples(review_id) WHERE review_id IS NOT NULL")
    if conn.execute("SELECT count(*) FROM samples").fetchone()[0] != count:  # never: a copy
        raise sqlite3.DatabaseError("samples changed while its table was rebuilt")


m038_samples_unique_indexes.foreign_keys_off = True  # type: ignore[attr-defined]
