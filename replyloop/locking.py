"""One pipeline run at a time, across processes: a lock row in SQLite with the owner's pid
and a heartbeat. A lock whose owner died (kill -9, machine restart) is stale and can be
taken over by ``recover``."""

from __future__ import annotations

import datetime as dt
import os
import socket

from replyloop import timeutil
from replyloop.errors import LockedError
from replyloop.store import Store

PIPELINE = "pipeline"
STALE_AFTER = dt.timedelta(minutes=10)


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child still answers kill(0); treat it as dead
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


class RunLock:
    def __init__(self, store: Store, name: str = PIPELINE):
        self.store = store
        self.name = name
        self.pid = os.getpid()
        self.host = socket.gethostname()

    def holder(self) -> dict | None:
        return self.store.one("SELECT * FROM locks WHERE name = ?", (self.name,))

    def is_stale(self, row: dict) -> bool:
        """The owner is gone: on this host, its pid is dead; on another host (a shared
        workspace), it has not sent a heartbeat for STALE_AFTER."""
        if row["owner_host"] == self.host:
            return not pid_alive(row["owner_pid"])
        return timeutil.now() - timeutil.parse(row["heartbeat_at"]) > STALE_AFTER

    def acquire(self, run_id: int | None = None, take_over_stale: bool = False) -> None:
        """Take the lock or raise LockedError describing the run that holds it."""
        now = timeutil.now_iso()
        with self.store.transaction() as db:
            row = self.holder()
            if row is not None and take_over_stale and self.is_stale(row):
                db.execute("DELETE FROM locks WHERE name = ?", (self.name,))
                self.store.audit("replyloop", "lock.recovered", "lock", self.name, {"pid": row["owner_pid"]})
                row = None
            if row is not None:
                if not self.is_stale(row):
                    if self.name != PIPELINE:
                        raise LockedError(f"another `replyloop {self.name}` is running on this workspace "
                                          f"(pid {row['owner_pid']} on {row['owner_host']}, since "
                                          f"{row['acquired_at'][:19]} UTC)")
                    raise LockedError(describe_holder(self.store, row))
                raise LockedError(
                    f"a previous run (pid {row['owner_pid']}) died without releasing the lock; "
                    "run `replyloop retrain --recover` or restart `replyloop serve` to clean it up")
            db.execute(
                "INSERT INTO locks (name, owner_pid, owner_host, run_id, acquired_at, heartbeat_at)"
                " VALUES (?, ?, ?, ?, ?, ?)", (self.name, self.pid, self.host, run_id, now, now))

    def set_run(self, run_id: int) -> None:
        with self.store.transaction() as db:
            db.execute("UPDATE locks SET run_id = ? WHERE name = ? AND owner_pid = ?", (run_id, self.name, self.pid))

    def heartbeat(self) -> None:
        with self.store.transaction() as db:
            db.execute("UPDATE locks SET heartbeat_at = ? WHERE name = ? AND owner_pid = ? AND owner_host = ?",
                       (timeutil.now_iso(), self.name, self.pid, self.host))

    def release(self) -> None:
        with self.store.transaction() as db:
            db.execute("DELETE FROM locks WHERE name = ? AND owner_pid = ? AND owner_host = ?",
                       (self.name, self.pid, self.host))


def describe_holder(store: Store, row: dict) -> str:
    run = store.one("SELECT * FROM training_runs WHERE id = ?", (row["run_id"],)) if row.get("run_id") else None
    if run is None:
        return f"a retrain is already running (pid {row['owner_pid']}, since {row['acquired_at'][:19]} UTC)"
    progress = f"step {run['step'] or 0}/{run['total_steps'] or '?'}"
    if run["loss"] is not None:
        progress += f", loss {run['loss']:.3f}"
    return (f"run #{run['id']} is already running ({progress}; started {run['started_at'][:19]} UTC "
            f"by {run['requested_by'] or run['trigger']})")
