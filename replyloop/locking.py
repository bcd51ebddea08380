"""One pipeline run at a time, across processes: a lock row in SQLite with the owner's pid,
its start time and a heartbeat. A lock whose owner died (kill -9, machine restart) is stale
and can be taken over by ``recover``. A pid alone does not name a process: after a restart
the pid may belong to someone else (a container's ``serve`` is pid 1 again), so the owner's
start time and the boot id are recorded too (``process_identity``)."""

from __future__ import annotations

import datetime as dt
import functools
import logging
import os
import socket
import threading
from collections.abc import Callable

from replyloop import timeutil
from replyloop.errors import ConfigError, LockedError
from replyloop.store import Store

PIPELINE = "pipeline"
STALE_AFTER = dt.timedelta(minutes=10)
HEARTBEAT_EVERY_S = STALE_AFTER.total_seconds() / 10  # a long-lived owner (``serve``) refreshes it this often

log = logging.getLogger(__name__)

# the locks this process holds: (database file, lock name)
_held: set[tuple[str, str]] = set()
_held_guard = threading.Lock()


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


def _heartbeat_every() -> float:
    """HEARTBEAT_EVERY_S, or $REPLYLOOP_LOCK_HEARTBEAT_S (seconds; tests use it to watch it move)."""
    raw = os.environ.get("REPLYLOOP_LOCK_HEARTBEAT_S", "").strip()
    if not raw:
        return HEARTBEAT_EVERY_S
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not 0 < value < STALE_AFTER.total_seconds():
        raise ConfigError(f"REPLYLOOP_LOCK_HEARTBEAT_S: expected seconds between 0 and "
                          f"{STALE_AFTER.total_seconds():.0f}, got {raw!r}")
    return value


@functools.lru_cache(maxsize=1)  # fixed while this process runs
def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
            return fh.read().strip() or None
    except OSError:
        return None


def process_identity(pid: int) -> str | None:
    """``<boot id>:<start time>`` of a live process (Linux: /proc/<pid>/stat field 22, in clock
    ticks since boot), or None where it cannot be read (process gone, no /proc). Two processes
    with the same pid, before and after a restart or pid reuse, have different identities."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        start = fields[19]  # fields after "comm)" begin at field 3 (state); field 22 is starttime
    except (OSError, IndexError):
        return None
    boot = _boot_id()
    return f"{boot}:{start}" if boot else None


def same_process(pid: int, identity: str | None) -> bool | None:
    """Whether ``pid`` is still the process recorded as ``identity``: True / False, or None when
    that cannot be told (nothing recorded, or no /proc on this platform)."""
    if not identity:
        return None
    current = process_identity(pid)
    if current is None:
        return None if _boot_id() is None else False
    return current == identity


class RunLock:
    def __init__(self, store: Store, name: str = PIPELINE):
        self.store = store
        self.name = name
        self.pid = os.getpid()
        self.host = socket.gethostname()
        self.identity = process_identity(self.pid)

    @property
    def _key(self) -> tuple[str, str]:
        return (str(self.store.path.resolve()), self.name)

    def holder(self) -> dict | None:
        return self.store.one("SELECT * FROM locks WHERE name = ?", (self.name,))

    def is_stale(self, row: dict) -> bool:
        """The owner is gone. On this host: its pid is dead, or now belongs to another process
        (its start time or the boot id differ from the recorded ones), or it is this very
        process, which does not hold the lock (a restarted container's pid 1 finding its
        predecessor's lock). On another host (a shared workspace): it has not sent a heartbeat
        for STALE_AFTER."""
        if row["owner_host"] == self.host:
            pid = row["owner_pid"]
            if not pid_alive(pid):
                return True
            if same_process(pid, row.get("owner_started")) is False:
                return True
            if pid == self.pid:
                with _held_guard:
                    return self._key not in _held
            return False
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
                "INSERT INTO locks (name, owner_pid, owner_host, owner_started, run_id, acquired_at, heartbeat_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)", (self.name, self.pid, self.host, self.identity, run_id, now, now))
        with _held_guard:
            _held.add(self._key)

    def set_run(self, run_id: int) -> None:
        with self.store.transaction() as db:
            db.execute("UPDATE locks SET run_id = ? WHERE name = ? AND owner_pid = ?", (run_id, self.name, self.pid))

    def heartbeat(self) -> bool:
        """Refresh the heartbeat; False when this process no longer holds the lock."""
        with self.store.transaction() as db:
            cur = db.execute("UPDATE locks SET heartbeat_at = ? WHERE name = ? AND owner_pid = ? AND owner_host = ?",
                             (timeutil.now_iso(), self.name, self.pid, self.host))
            return cur.rowcount > 0

    def keep_alive(self, every_s: float | None = None) -> Callable[[], None]:
        """Heartbeat from a daemon thread every ``every_s`` seconds (default HEARTBEAT_EVERY_S)
        until the returned function is called (it waits for the thread): a long-lived owner
        (``serve``) stays fresh for other hosts' staleness check."""
        stop = threading.Event()
        interval = _heartbeat_every() if every_s is None else every_s

        def beat() -> None:
            try:
                while not stop.wait(interval):
                    try:
                        if not self.heartbeat() and not stop.is_set():
                            log.error("the %s lock is no longer held by this process (pid %s)", self.name, self.pid)
                    except Exception:  # a busy or briefly unavailable database: try again next time
                        if not stop.is_set():
                            log.exception("could not refresh the %s lock's heartbeat", self.name)
            finally:
                self.store.release_thread()  # this thread's connection, before the owner closes the store

        thread = threading.Thread(target=beat, name=f"{self.name}-lock-heartbeat", daemon=True)
        thread.start()

        def stop_beating() -> None:
            stop.set()
            # a heartbeat in flight may wait out the busy timeout: let it finish before the
            # caller releases the lock and closes the store
            thread.join()

        return stop_beating

    def release(self) -> None:
        with self.store.transaction() as db:
            db.execute("DELETE FROM locks WHERE name = ? AND owner_pid = ? AND owner_host = ?",
                       (self.name, self.pid, self.host))
        with _held_guard:
            _held.discard(self._key)


def describe_holder(store: Store, row: dict) -> str:
    run = store.one("SELECT * FROM training_runs WHERE id = ?", (row["run_id"],)) if row.get("run_id") else None
    if run is None:
        return f"a retrain is already running (pid {row['owner_pid']}, since {row['acquired_at'][:19]} UTC)"
    progress = f"step {run['step'] or 0}/{run['total_steps'] or '?'}"
    if run["loss"] is not None:
        progress += f", loss {run['loss']:.3f}"
    return (f"run #{run['id']} is already running ({progress}; started {run['started_at'][:19]} UTC "
            f"by {run['requested_by'] or run['trigger']})")
