"""A lock's owner is a process, not a pid: after a restart (a container's `serve` is pid 1 again,
a machine reboot, pid reuse) the pid alone would keep a dead owner's lock forever."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from replyloop import timeutil
from replyloop.errors import LockedError
from replyloop.locking import RunLock, process_identity, same_process
from replyloop.pipeline import recover

linux_only = pytest.mark.skipif(process_identity(os.getpid()) is None, reason="needs /proc (Linux)")


def insert_lock(store, name, pid, started, host=None, heartbeat=None):
    at = heartbeat or timeutil.now_iso()
    with store.transaction() as db:
        db.execute("INSERT INTO locks (name, owner_pid, owner_host, owner_started, acquired_at, heartbeat_at)"
                   " VALUES (?, ?, ?, ?, ?, ?)", (name, pid, host or socket.gethostname(), started, at, at))


@linux_only
def test_process_identity_is_boot_and_start_time():
    me = process_identity(os.getpid())
    boot, start = me.rsplit(":", 1)
    with open("/proc/sys/kernel/random/boot_id") as fh:
        assert boot == fh.read().strip()
    assert start.isdigit() and process_identity(os.getpid()) == me
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert process_identity(child.pid) is None  # gone
    assert same_process(os.getpid(), me) is True
    assert same_process(os.getpid(), f"{boot}:{int(start) + 1}") is False   # pid reused later
    assert same_process(os.getpid(), f"another-boot:{start}") is False      # machine restarted
    assert same_process(os.getpid(), None) is None                          # nothing recorded


@linux_only
def test_own_pid_not_held_by_this_process_is_stale_and_taken_over(workspace):
    _, store = workspace
    insert_lock(store, "pipeline", os.getpid(), None)  # a predecessor with this pid (container pid 1)
    lock = RunLock(store)
    assert lock.is_stale(lock.holder())
    with pytest.raises(LockedError, match="died without releasing the lock"):
        lock.acquire()
    lock.acquire(take_over_stale=True)
    assert lock.holder()["owner_started"] == process_identity(os.getpid())
    # now this process holds it: a second acquire here is refused, the lock is not stale
    assert not RunLock(store).is_stale(lock.holder())
    with pytest.raises(LockedError, match="already running"):
        RunLock(store).acquire(take_over_stale=True)
    lock.release()
    assert lock.holder() is None


@linux_only
def test_recover_frees_a_lock_whose_pid_now_belongs_to_another_process(workspace):
    _, store = workspace
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        boot, start = process_identity(other.pid).rsplit(":", 1)
        insert_lock(store, "pipeline", other.pid, f"{boot}:{int(start) - 1}")  # the pid was reused
        recover(store)
        assert store.one("SELECT * FROM locks") is None
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


@linux_only
def test_a_held_lock_of_a_live_process_on_this_host_is_refused(workspace):
    config, store = workspace
    code = ("from replyloop.store import Store; from replyloop.locking import RunLock; import time\n"
            "RunLock(Store(%r), name='serve').acquire(); print('locked', flush=True); time.sleep(30)\n"
            % str(config.db_path))
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        lock = RunLock(store, name="serve")
        row = lock.holder()
        assert row["owner_pid"] == holder.pid and row["owner_started"] == process_identity(holder.pid)
        assert not lock.is_stale(row)
        with pytest.raises(LockedError, match=rf"another `replyloop serve` is running .*pid {holder.pid}"):
            lock.acquire(take_over_stale=True)
        recover(store)  # only the pipeline lock is its business, and a live owner's lock stays anyway
        assert lock.holder()["owner_pid"] == holder.pid
    finally:
        holder.kill()
        holder.wait()


def test_heartbeat_env_is_checked(workspace, monkeypatch):
    from replyloop.errors import ConfigError

    _, store = workspace
    monkeypatch.setenv("REPLYLOOP_LOCK_HEARTBEAT_S", "soon")
    with pytest.raises(ConfigError, match="REPLYLOOP_LOCK_HEARTBEAT_S: expected seconds"):
        RunLock(store, name="serve").keep_alive()
