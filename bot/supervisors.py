"""Who may approve, edit, reject and ``/retrain now``: configured user ids plus the members of a
Slack user group (``usergroups.users.list``), cached for a short while."""

from __future__ import annotations

import logging
import threading
import time

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

log = logging.getLogger(__name__)


class Supervisors:
    def __init__(self, client: WebClient | None, user_ids: list[str], group: str = "", ttl_s: float = 60.0):
        self.client = client
        self.user_ids = frozenset(u.strip() for u in user_ids if u.strip())
        self.group = group.strip()
        self.ttl_s = ttl_s
        self._members: frozenset[str] = frozenset()
        self._fetched_at = float("-inf")
        self._lock = threading.Lock()

    def group_members(self) -> frozenset[str]:
        """Members of the supervisor group, refreshed at most every ``ttl_s`` seconds. When Slack
        cannot be asked, the last known members are kept (and logged)."""
        if not self.group or self.client is None:
            return frozenset()
        with self._lock:
            if time.monotonic() - self._fetched_at < self.ttl_s:
                return self._members
            try:
                resp = self.client.usergroups_users_list(usergroup=self.group)
                self._members = frozenset(resp.get("users") or [])
            except SlackApiError as exc:
                log.warning("usergroups.users.list for %s failed: %s", self.group, exc.response.get("error"))
            self._fetched_at = time.monotonic()
            return self._members

    def is_supervisor(self, user_id: str | None) -> bool:
        if not user_id:
            return False
        return user_id in self.user_ids or user_id in self.group_members()

    def all(self) -> frozenset[str]:
        return self.user_ids | self.group_members()
