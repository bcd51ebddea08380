"""Rule proposals in Slack: a card per proposal in the review channel with Accept / Edit / Dismiss
(supervisors only). Accept validates and writes the policy file before the click is acknowledged
(``evaluation.proposals.accept``: one transaction, so of concurrent clicks exactly one writes),
then the bot reloads its policy engine: the next draft is checked against the new rule.

    register(app, bot)                                   # in bot.app._register
    post_cards(client, store, channel, proposals)        # the proposals job, `rules propose --post`
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from replyloop import i18n
from replyloop.evaluation import proposals as props
from replyloop.errors import NotFoundError, ReplyloopError
from replyloop.i18n import N_, _, fmt_number

if TYPE_CHECKING:
    from replyloop.bot.app import Bot

log = logging.getLogger(__name__)

ACCEPT = "replyloop_rule_accept"
EDIT = "replyloop_rule_edit"
DISMISS = "replyloop_rule_dismiss"
EDIT_VIEW = "replyloop_rule_edit_view"
# modal blocks (each input's action id is "text", as the review modals')
PREFERRED_BLOCK, AVOID_BLOCK, ID_BLOCK, SEVERITY_BLOCK, MESSAGE_BLOCK = (
    "rule_preferred", "rule_avoid", "rule_id", "rule_severity", "rule_message")
INPUT = "text"
NOT_SUPERVISOR = N_("Only supervisors can accept, edit or dismiss rule proposals.")


def _clip(text: str, limit: int = 2900) -> str:
    from replyloop.bot.cards import _clip as clip

    return clip(text, limit)


STATUS_WORDS = {"open": N_("open"), "accepted": N_("accepted"), "dismissed": N_("dismissed")}


def _button(action_id: str, label: str, value: str, style: str | None = None) -> dict:
    from replyloop.bot.cards import clip_plain

    button = {"type": "button", "action_id": action_id, "text": {"type": "plain_text", "text": clip_plain(label, 75)},
              "value": value}
    if style:
        button["style"] = style
    return button


def summary(p: dict) -> str:
    """One line (the card's notification text): ``#3 terminology 快递单号 → 运单号 (4 edits, 2 supervisors)``."""
    if p["kind"] == "terminology":
        what = _("terminology {avoid} → {preferred}").format(avoid=p["avoid"], preferred=p["preferred"])
    else:
        what = _("banned delete “{avoid}”").format(avoid=p["avoid"])
    status = STATUS_WORDS.get(p["status"])
    return _("Rule proposal #{id}: #{id} {what} ({edits} edits, {supervisors} supervisors) [{status}]").format(
        id=p["id"], what=what, edits=fmt_number(p["count"]), supervisors=fmt_number(len(p["supervisors"])),
        status=_(status) if status else p["status"])


def card(p: dict) -> tuple[str, list[dict]]:
    """The proposal card: what, the evidence (counts, supervisors, three example edits), buttons.
    A channel message: call it inside ``i18n.workspace()``."""
    from replyloop.bot.cards import escape

    if p["kind"] == "terminology":
        what = _("*Terminology:* say *{preferred}*, not ~{avoid}~").format(
            preferred=escape(p["preferred"]), avoid=escape(p["avoid"]))
    else:
        what = _("*Banned phrase:* “{avoid}” (supervisors delete it)").format(avoid=escape(p["avoid"]))
    text = summary(p)
    evidence = _("{edits} edits by {supervisors} supervisors: {names}").format(
        edits=fmt_number(p["count"]), supervisors=fmt_number(len(p["supervisors"])),
        names=", ".join(f"<@{escape(u)}>" for u in p["supervisors"][:20]))
    examples = "\n".join(f"• ~{escape(_short(e['draft']))}~ → {escape(_short(e['final']))}" for e in p["examples"])
    blocks = [
        {"type": "section", "block_id": f"rule_{p['id']}", "text": {"type": "mrkdwn", "text": _clip(
            ":bulb: " + _("*Rule proposal #{id}* (mined from supervisors' edits)").format(id=p["id"]) + f"\n{what}")}},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": _clip(evidence, 300)}]},
        {"type": "section", "text": {"type": "mrkdwn", "text": _clip(_("*Examples:*") + "\n" + examples)}},
    ]
    if p["status"] == "open":
        value = str(p["id"])
        blocks.append({"type": "actions", "block_id": f"rule_actions_{p['id']}", "elements": [
            _button(ACCEPT, _("Accept"), value, "primary"),
            _button(EDIT, _("Edit"), value),
            _button(DISMISS, _("Dismiss"), value, "danger"),
        ]})
    else:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": _clip(decided_text(p), 300)}]})
    return text, blocks


def _short(text: str, limit: int = 120) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def decided_text(p: dict, tz: str | None = None) -> str:
    from replyloop.bot.cards import when

    if p["status"] == "accepted":
        return ":white_check_mark: " + _("Accepted by <@{user}> at {when}: written to `{file}`").format(
            user=p["decided_by"], when=when(p["decided_at"], tz, "short"), file=p["file"])
    if p["status"] == "dismissed":
        return ":x: " + _("Dismissed by <@{user}> at {when} (proposed again when its count reaches {count})").format(
            user=p["decided_by"], when=when(p["decided_at"], tz, "short"), count=fmt_number(2 * (p["dismissed_count"] or 0)))
    status = STATUS_WORDS.get(p["status"])
    return _("Status: {status}").format(status=_(status) if status else p["status"])


def post_cards(client, store, channel: str, proposals: list[dict]) -> int:
    """Post a card per proposal and remember where it is; returns how many were posted."""
    posted = 0
    for p in proposals:
        with i18n.workspace():  # the review channel reads it
            text, blocks = card(p)
        resp = client.chat_postMessage(channel=channel, text=text, blocks=blocks)
        props.set_card(store, p["id"], resp["channel"], resp["ts"])
        posted += 1
    return posted


def _proposal_id(action: dict) -> int:
    try:
        value = int(action.get("value", ""))
    except (TypeError, ValueError):
        value = 0
    if not 0 < value < 2**63:
        raise NotFoundError(_("button value {value} is not a rule proposal id").format(
            value=repr(str(action.get("value"))[:40])))
    return value


def _container(body: dict) -> tuple[str | None, str | None]:
    from replyloop.bot.review import _container as container

    return container(body)


@dataclass(frozen=True)
class Outcome:
    user: str
    channel: str | None
    ts: str | None
    proposal_id: int | None = None
    created: bool = False
    accepted: bool = False
    # what to tell the clicking user, worded after the ack (their language may need a users.info
    # lookup, which must not delay the ack): a callable giving the text in the current language
    notice: Callable[[], str] | None = None
    refused: bool = False  # the accept / dismiss itself failed (the notice says why)


class WatchingChecker:
    """The bot's policy checker, reloaded when policies.dir changes (a file accepted here, by
    ``replyloop rules accept`` or edited by hand): at most once a second it compares the folder's
    file names, sizes and modification times with what it loaded. A folder that no longer loads
    keeps the last good engine (logged)."""

    def __init__(self, config, engine):
        self.config = config
        self._engine = engine
        self._lock = threading.Lock()
        self._signature = self._current()
        self._checked = time.monotonic()

    @property
    def engine(self):
        return self._engine

    def _current(self) -> tuple:
        directory = self.config.policies_dir
        try:
            return tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in directory.iterdir()
                                if p.suffix in (".yaml", ".yml") and p.is_file()))
        except OSError:
            return ()

    def reload(self, force: bool = False) -> bool:
        """Load the folder again when it changed (or ``force``); True when a new engine is in use."""
        from replyloop.evaluation.policy import load_policies

        with self._lock:
            signature = self._current()
            self._checked = time.monotonic()
            if signature == self._signature and not force:
                return False
            try:
                engine = load_policies(self.config.policies_dir)
            except ReplyloopError as exc:
                log.error("policies.dir changed but does not load; keeping the last good policies: %s", exc)
                self._signature = signature
                return False
            self._engine, self._signature = engine, signature
        log.info("policies reloaded from %s: %r", self.config.policies_dir, engine)
        return True

    def __call__(self, text: str) -> dict:
        from replyloop.drafting import check_policies

        if time.monotonic() - self._checked >= 1.0:
            self.reload()
        verdict, violations = check_policies(self._engine, text)
        return {"verdict": verdict, "violations": violations}


def reload_policies(bot: "Bot") -> None:
    """Load policies.dir again now and make it the bot's checker (intake, the Edit modal's check)."""
    if isinstance(bot.checker, WatchingChecker):
        bot.checker.reload(force=True)
        return
    from replyloop.evaluation.policy import load_policies

    bot.checker = WatchingChecker(bot.config, load_policies(bot.config.policies_dir))


def decide(bot: "Bot", user: str, channel: str | None, ts: str | None, proposal_id: int, action: str,
           entry: props.Entry | None = None) -> Outcome:
    """Accept (validate + write the file) or Dismiss, durable before the ack; errors become a notice."""
    try:
        if action == "accept":
            result = props.accept(bot.config, bot.store, proposal_id, user, entry)
        else:
            result = props.dismiss(bot.store, proposal_id, user)
    except ReplyloopError as exc:  # ProposalError (invalid policy set, no policies.dir), NotFoundError
        reason = str(exc)  # (``exc`` itself is unbound once the except block ends)

        def refused() -> str:
            head = (_("Rule proposal #{id} was not accepted:") if action == "accept"
                    else _("Rule proposal #{id} was not dismissed:")).format(id=proposal_id)
            return f"{head}\n{reason}"
        return Outcome(user, channel, ts, proposal_id, notice=refused, refused=True)
    p = result.proposal
    if not result.created:
        return Outcome(user, channel, ts, proposal_id, notice=lambda: _("Rule proposal #{id}: {decided}").format(
            id=proposal_id, decided=decided_text(p, bot.config.file.scheduler.timezone)))
    return Outcome(user, channel, ts, proposal_id, created=True, accepted=action == "accept")


def finish(bot: "Bot", outcome: Outcome) -> None:
    """After the ack: reload the policies (Accept), update the card, or tell the user why not."""
    from replyloop.bot.review import ephemeral

    if outcome.accepted:
        reload_policies(bot)
    if outcome.notice:
        ephemeral(bot, outcome.channel, outcome.user, outcome.notice())
        return
    p = props.get(bot.store, outcome.proposal_id)
    channel, ts = p["slack_channel"] or outcome.channel, p["slack_ts"] or outcome.ts
    if channel and ts:
        with i18n.workspace():  # the card is the channel's, whoever clicked
            text, blocks = card(p)
        bot.client.chat_update(channel=channel, ts=ts, text=text, blocks=blocks)


def on_click(bot: "Bot", body: dict, action: dict, kind: str) -> Outcome:
    user = (body.get("user") or {}).get("id")
    channel, ts = _container(body)
    if not bot.supervisors.is_supervisor(user):
        return Outcome(user, channel, ts, notice=lambda: _(NOT_SUPERVISOR))
    try:
        proposal_id = _proposal_id(action)
    except NotFoundError as exc:
        message = str(exc)
        return Outcome(user, channel, ts, notice=lambda: message)
    return decide(bot, user, channel, ts, proposal_id, kind)


def _input(block_id: str, label: str, value: str, multiline: bool = False, optional: bool = False) -> dict:
    return {"type": "input", "block_id": block_id, "optional": optional,
            "label": {"type": "plain_text", "text": label},
            "element": {"type": "plain_text_input", "action_id": INPUT, "initial_value": value[:3000],
                        "multiline": multiline, "max_length": 3000}}


def edit_modal(bot: "Bot", p: dict, channel: str | None, ts: str | None) -> dict:
    entry = props.default_entry(bot.config, p)
    if p["kind"] == "terminology":
        blocks = [_input(PREFERRED_BLOCK, _("Preferred term"), entry.preferred),
                  _input(AVOID_BLOCK, _("Terms to avoid (comma-separated)"), ", ".join(entry.avoid))]
    else:
        blocks = [_input(ID_BLOCK, _("Rule id"), entry.rule_id),
                  _input(AVOID_BLOCK, _("Banned phrases (comma-separated)"), ", ".join(entry.avoid)),
                  _input(SEVERITY_BLOCK, _("Severity (warn or block)"), entry.severity),
                  _input(MESSAGE_BLOCK, _("Message shown to reviewers"), entry.message)]
    from replyloop.bot.cards import MAX_TITLE, clip_plain

    return {"type": "modal", "callback_id": EDIT_VIEW,
            "title": {"type": "plain_text", "text": clip_plain(_("Rule proposal #{id}").format(id=p["id"]), MAX_TITLE)},
            "submit": {"type": "plain_text", "text": clip_plain(_("Accept"), MAX_TITLE)},
            "close": {"type": "plain_text", "text": clip_plain(_("Cancel"), MAX_TITLE)},
            "private_metadata": json.dumps({"proposal_id": p["id"], "channel": channel, "ts": ts}),
            "blocks": blocks}


def open_edit(bot: "Bot", body: dict, action: dict) -> None:
    from replyloop.bot.review import ephemeral

    user = (body.get("user") or {}).get("id")
    channel, ts = _container(body)
    if not bot.supervisors.is_supervisor(user):
        ephemeral(bot, channel, user, _(NOT_SUPERVISOR))
        return
    try:
        p = props.get(bot.store, _proposal_id(action))
    except NotFoundError as exc:
        ephemeral(bot, channel, user, str(exc))
        return
    if p["status"] != "open":
        ephemeral(bot, channel, user, _("Rule proposal #{id}: {decided}").format(
            id=p["id"], decided=decided_text(p, bot.config.file.scheduler.timezone)))
        return
    bot.client.views_open(trigger_id=body["trigger_id"], view=edit_modal(bot, p, channel, ts))


def _value(view: dict, block: str) -> str:
    value = (((view.get("state") or {}).get("values") or {}).get(block) or {}).get(INPUT) or {}
    return (value.get("value") or "").strip()


def _metadata(view: dict) -> dict:
    try:
        meta = json.loads(view.get("private_metadata") or "{}")
    except ValueError:
        meta = {}
    return meta if isinstance(meta, dict) else {}


def submission_entry(bot: "Bot", view: dict) -> tuple[int | None, props.Entry | None, dict | None]:
    """(proposal id, the edited entry, modal errors by block id)."""
    meta = _metadata(view)
    try:
        p = props.get(bot.store, int(meta.get("proposal_id")))
    except (TypeError, ValueError, NotFoundError):
        return None, None, {AVOID_BLOCK: _("This rule proposal no longer exists.")}
    avoid = props.split_phrases(_value(view, AVOID_BLOCK))
    if not avoid:
        return p["id"], None, {AVOID_BLOCK: _("Give at least one phrase.")}
    if p["kind"] == "terminology":
        preferred = _value(view, PREFERRED_BLOCK)
        if not preferred:
            return p["id"], None, {PREFERRED_BLOCK: _("The preferred term is empty.")}
        return p["id"], props.Entry("terminology", preferred=preferred, avoid=avoid), None
    rule_id, severity, message = _value(view, ID_BLOCK), _value(view, SEVERITY_BLOCK).lower(), _value(view, MESSAGE_BLOCK)
    errors = {}
    if not rule_id:
        errors[ID_BLOCK] = _("The rule id is empty.")
    if severity not in ("warn", "block"):
        errors[SEVERITY_BLOCK] = _("Severity is warn or block.")
    if not message:
        errors[MESSAGE_BLOCK] = _("The message is empty.")
    if errors:
        return p["id"], None, errors
    return p["id"], props.Entry("banned", avoid=avoid, rule_id=rule_id, severity=severity, message=message), None


def on_edit_submit(bot: "Bot", body: dict, view: dict) -> tuple[dict | None, Outcome | None]:
    """The Edit modal's Accept: (modal errors, or the outcome to finish after the ack). An entry
    that would make the policy set invalid is refused in the modal with the loader's reason."""
    user = (body.get("user") or {}).get("id")
    meta = _metadata(view)
    if not bot.supervisors.is_supervisor(user):
        return {AVOID_BLOCK: _(NOT_SUPERVISOR)}, None
    proposal_id, entry, errors = submission_entry(bot, view)
    if errors:
        return errors, None
    outcome = decide(bot, user, meta.get("channel"), meta.get("ts"), proposal_id, "accept", entry)
    if outcome.refused:  # the reason, on the field it is about (modal errors ride on the ack)
        notice = outcome.notice()
        block = (ID_BLOCK if entry.kind == "banned" and "duplicate rule id" in notice
                 else PREFERRED_BLOCK if entry.kind == "terminology" and "duplicate terminology" in notice
                 else AVOID_BLOCK)
        return {block: notice[:1900]}, None
    return None, outcome


def register(app, bot: "Bot") -> None:
    if getattr(bot.checker, "engine", None) is not None and not isinstance(bot.checker, WatchingChecker):
        bot.checker = WatchingChecker(bot.config, bot.checker.engine)  # the policy engine, kept current
    from replyloop.bot.language import speaks, user_of

    # each listener speaks the clicking user's language (notices, the modal, its errors); the
    # card itself is updated in the workspace's (finish); after_ack inherits the language
    @app.action(ACCEPT)
    def on_accept(ack, body, action):
        with speaks(bot, user_of(body)):
            outcome = on_click(bot, body, action, "accept")  # the file is written before Slack hears 200
            ack()
            bot.after_ack(finish, outcome)

    @app.action(DISMISS)
    def on_dismiss(ack, body, action):
        with speaks(bot, user_of(body)):
            outcome = on_click(bot, body, action, "dismiss")
            ack()
            bot.after_ack(finish, outcome)

    @app.action(EDIT)
    def on_edit(ack, body, action):
        ack()
        with speaks(bot, user_of(body)):
            open_edit(bot, body, action)

    @app.view(EDIT_VIEW)
    def on_submit(ack, body, view):
        with speaks(bot, user_of(body)):
            errors, outcome = on_edit_submit(bot, body, view)
            if errors:
                ack(response_action="errors", errors=errors)
                return
            ack()
            bot.after_ack(finish, outcome)
