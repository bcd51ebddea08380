"""Who may approve, edit, reject and ``/retrain now``: configured user ids plus the members of a
Slack user group (``usergroups.users.list``), cached for a short while."""

from __future__ import annotations

import logging
import threading
import time

from slack_sdk import WebClient

from replyloop.bot.slackclient import slack_error

log = logging.getLogger(__name__)


class Supervisors:
    def __init__(self, client: WebClient | None, user_ids: list[str], group: str = "", ttl_s: float = 60.0):
        self.client = client
        self.user_ids = frozenset(u.strip() for u in user_ids if u.strip())
        self.group = group.strip()
        self.ttl_s = ttl_s
        self._members: frozenset[str] = frozenset()
        self._fetched_at = float("-inf")
        self._refreshing = False   # one thread asks Slack; the others use the last known members
        self._cond = threading.Condition()

    def group_members(self) -> frozenset[str]:
        """Members of the supervisor group, refreshed at most every ``ttl_s`` seconds. When Slack
        cannot be asked (an error answer, a network failure), the last known members are kept,
        logged, and Slack is asked again after ``ttl_s``. The Slack call runs outside the lock,
        and once members are known it runs on a background thread: a click is checked against
        the last known members before its ack and never waits for Slack (only the very first
        fetch, or one after a failed fetch with no members known, is waited for)."""
        if not self.group or self.client is None:
            return frozenset()
        with self._cond:
            while self._refreshing and self._fetched_at == float("-inf"):  # the very first fetch
                self._cond.wait()
            if self._refreshing or time.monotonic() - self._fetched_at < self.ttl_s:
                return self._members
            self._refreshing = True
            background = bool(self._members)
            if background:
                self._fetched_at = time.monotonic()  # nobody else starts a refresh meanwhile
        if background:
            threading.Thread(target=self._refresh, name="replyloop-supervisors", daemon=True).start()
            return self._members
        self._refresh()
        return self._members

    def _refresh(self) -> None:
        members = None
        try:
            resp = self.client.usergroups_users_list(usergroup=self.group)
            members = frozenset(resp.get("users") or [])
        except Exception as exc:
            log.warning("usergroups.users.list for %s failed: %s (keeping the last known members)",
                        self.group, slack_error(exc))
        finally:
            with self._cond:
                if members is not None:
                    self._members = members
                self._fetched_at = time.monotonic()
                self._refreshing = False
                self._cond.notify_all()

    def is_supervisor(self, user_id: str | None) -> bool:
        if not user_id:
            return False
        return user_id in self.user_ids or user_id in self.group_members()

    def all(self) -> frozenset[str]:
        return self.user_ids | self.group_members()
