"""The bot's side of reply delivery (``replyloop.outbox``) and earned automation
(``replyloop.automation``): the decision hooks on the bot's store, the outbox sender with a Slack
poster for thread replies, automatic approval instead of a review card, revocation notices, and
the App Home line.

    sender = start(bot)                  # None when nothing is configured to be delivered
    automation = start_automation(bot)   # None when automation.enabled is false
"""

from __future__ import annotations

import json
import logging
import threading
from typing import TYPE_CHECKING

from slack_sdk.errors import SlackApiError

from replyloop.bot.slackclient import slack_error
from replyloop import automation as earned
from replyloop import i18n, outbox
from replyloop.i18n import N_, _, fmt_number

if TYPE_CHECKING:
    from replyloop.bot.app import Bot

log = logging.getLogger(__name__)

# Slack errors that no retry changes: the event is dead-lettered at once
FINAL_POST_ERRORS = {"channel_not_found", "is_archived", "not_in_channel", "msg_too_long", "no_text",
                     "invalid_blocks", "thread_not_found", "restricted_action", "invalid_auth", "account_inactive"}


def slack_poster(bot: "Bot") -> outbox.SlackPost:
    def post(channel: str, thread_ts: str, text: str, event: dict) -> None:
        try:
            bot.client.chat_postMessage(channel=channel, thread_ts=thread_ts, text=text,
                                        metadata={"event_type": "reply_decided",
                                                  "event_payload": {"event_id": event["id"]}})
        except SlackApiError as exc:
            error = slack_error(exc)
            retry_after = None
            if getattr(exc.response, "status_code", None) == 429:
                retry_after = outbox.retry_after_seconds((exc.response.headers or {}).get("Retry-After"))
            raise outbox.DeliveryFailure(f"chat.postMessage: {error}", permanent=error in FINAL_POST_ERRORS,
                                         retry_after=retry_after) from None
        except OSError as exc:
            raise outbox.DeliveryFailure(f"chat.postMessage: {exc}") from None
    return post


def slack_posted(bot: "Bot") -> outbox.SlackPosted:
    """Whether a thread already holds an event's reply: its messages' metadata (``event_id``)."""
    def posted(channel: str, thread_ts: str, event_id: str) -> bool:
        cursor = None
        for _page in range(10):  # 10 pages of 200 replies: more than any customer thread
            try:
                page = bot.client.conversations_replies(channel=channel, ts=thread_ts, limit=200,
                                                        include_all_metadata=True, cursor=cursor)
            except SlackApiError as exc:
                raise outbox.DeliveryFailure(f"conversations.replies: {slack_error(exc)}") from None
            except OSError as exc:
                raise outbox.DeliveryFailure(f"conversations.replies: {exc}") from None
            for message in page.get("messages") or []:
                payload = (message.get("metadata") or {}).get("event_payload") or {}
                if payload.get("event_id") == event_id:
                    return True
            cursor = (page.get("response_metadata") or {}).get("next_cursor")
            if not cursor:
                return False
        return False
    return posted


def start(bot: "Bot") -> outbox.Sender | None:
    """Install the decision hook and start the sender when anything is to be delivered."""
    if not outbox.enabled(bot.config):
        return None
    secret = outbox.validate(bot.config)
    outbox.install(bot.store, bot.config)
    return outbox.Sender(bot.store, bot.config, secret, slack_post=slack_poster(bot),
                         slack_posted=slack_posted(bot)).start()


def home_line(store) -> str | None:
    """App Home: one line about delivery (only when something was ever queued)."""
    c = outbox.counts(store)
    if not any(c.values()):
        return None
    line = _("*Delivery:* {delivered} delivered, {pending} pending, {dead} dead-lettered").format(
        delivered=fmt_number(c["delivered"]), pending=fmt_number(c["pending"]), dead=fmt_number(c["dead"]))
    if c["dead"]:
        line += " (`replyloop outbox list` / `replyloop outbox retry --all-dead`)"
    return line


def start_automation(bot: "Bot") -> earned.Automation | None:
    return earned.install(bot.store, bot.config)


def automatic(bot: "Bot", draft_id: int) -> bool:
    """Route a new draft (``Automation.route``): True when it was approved automatically (then no
    card is posted; its reply is delivered like any approval). A failure of the check (the
    embedding model cannot load) leaves the draft to a person."""
    if bot.automation is None:
        return False
    try:
        return bot.automation.route(draft_id).decision == "auto"
    except Exception:
        log.exception("the automation check of draft %s failed: it goes to review", draft_id)
        return False


_NOTICES = threading.Lock()  # one poster at a time: a revocation is announced once


def post_automation_notices(bot: "Bot") -> int:
    """Post revocations not announced yet to the review channel; returns how many."""
    with _NOTICES:
        return _post_notices(bot)


def _post_notices(bot: "Bot") -> int:
    posted = 0
    for row in bot.automation.pending_notices():
        with i18n.workspace():  # the review channel reads it
            text = ":rotating_light: " + _(
                "Automation for *{intent}* is revoked: {reason}. Its drafts go to review again; a supervisor can "
                "allow it again with `replyloop automation pin {intent} --allow`.").format(
                intent=row["intent"], reason=row["reason"])
        try:
            bot.client.chat_postMessage(channel=bot.config.file.slack.review_channel, text=text)
        except SlackApiError as exc:
            log.warning("posting the revocation of %s failed: %s", row["intent"], slack_error(exc))
            continue
        bot.automation.mark_notified(row["intent"])
        posted += 1
    return posted


AUTOMATION_PIN = "replyloop_automation_pin"
HOME_INTENTS = 10  # intents listed with a button on App Home (the rest: `replyloop automation list`)
STATES = {"manual": N_("manual"), "automatic": N_("automatic"), "revoked": N_("revoked")}
PINS = {"manual": N_("pinned manual"), "allowed": N_("pinned allowed")}


def automation_blocks(bot: "Bot") -> list[dict]:
    """App Home: one section per intent (state, evidence) with a button: *Pin manual*, or *Allow*
    for a pinned or revoked intent."""
    if bot.automation is None:
        return []
    blocks: list[dict] = [{"type": "divider"}]
    statuses = bot.automation.intents()
    for i, s in enumerate(statuses[:HOME_INTENTS]):
        lower = _("n/a") if s.lower is None else fmt_number(s.lower, 2)
        allow = s.pinned == "manual" or s.state == "revoked"
        state, pin = STATES.get(s.state), PINS.get(s.pinned or "")
        state = _(state) if state else s.state
        if s.pinned:
            state = _("{state}, {pinned}").format(state=state, pinned=_(pin) if pin else s.pinned)
        text = _("*{intent}*: {state} - {approved}/{reviews} approved without edit, lower bound {lower}").format(
            intent=s.intent, state=state, approved=fmt_number(s.approved), reviews=fmt_number(s.reviews), lower=lower)
        blocks.append({"type": "section", "block_id": f"automation_{i}", "text": {"type": "mrkdwn", "text": text[:2900]},
                       "accessory": {"type": "button", "action_id": AUTOMATION_PIN,
                                     "text": {"type": "plain_text", "text": _("Allow") if allow else _("Pin manual")},
                                     "value": json.dumps({"intent": s.intent, "allow": allow}, ensure_ascii=False)}})
    if len(statuses) > HOME_INTENTS:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": (
            _("… and {count} more intent(s): {command}").format(count=fmt_number(len(statuses) - HOME_INTENTS),
                                                                  command="`replyloop automation list`"))}]})
    return blocks


def pin_from_home(bot: "Bot", body: dict, action: dict) -> None:
    """A supervisor's click on an intent's button: pin it to manual or allow it (audit-logged
    under their Slack id), then App Home again, in their language."""
    from replyloop.bot.language import speaks

    user = (body.get("user") or {}).get("id")
    with speaks(bot, user):
        _pin_from_home(bot, user, action)


def _pin_from_home(bot: "Bot", user: str | None, action: dict) -> None:
    from replyloop.bot.review import NOT_SUPERVISOR

    if bot.automation is None:
        return
    if not bot.supervisors.is_supervisor(user):
        bot.client.chat_postMessage(channel=user, text=_(NOT_SUPERVISOR))
        return
    try:
        value = json.loads(action.get("value") or "")
        intent, allow = str(value["intent"]), bool(value["allow"])
        bot.automation.pin(intent, user, allow=allow, reason="App Home")
    except (ValueError, KeyError, TypeError, earned.AutomationError) as exc:
        bot.client.chat_postMessage(channel=user, text=_("Nothing changed: {error}").format(error=exc))
        return
    bot.publish_home(user)
