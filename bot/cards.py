"""Block Kit builders: the review card, the decided card, the edit and reject modals, App Home,
and the ``/retrain`` texts. Pure functions of plain data; no Slack calls here.

Every text is translated where it is built (``replyloop.i18n``), in the language current when the
builder runs: the caller chooses it (``i18n.workspace()`` for channel cards, the acting user's
language for modals and App Home). Times are shown in ``tz`` (``scheduler.timezone``).

Every text stays within Block Kit's limits, whatever the data (a 3,000-character rejection
reason, a 200 KB conversation id, hundreds of supervisors): Slack refuses a whole message or
view (``invalid_blocks``) when one field is over. The limits used (docs.slack.dev, Block Kit
reference): section text 3000, header 150, context 10 elements, button text 75 and value 2000,
input label 2000, ``plain_text_input`` ``max_length`` at most 3000, modal title / submit / close
24, ``private_metadata`` 3000, 50 blocks in a message and 100 in a modal or App Home.
"""

from __future__ import annotations

import datetime as dt
import json

from replyloop.i18n import N_, _, fmt_date, fmt_datetime, fmt_number, fmt_percent

APPROVE = "replyloop_approve"
EDIT = "replyloop_edit"
REJECT = "replyloop_reject"
EDIT_VIEW = "replyloop_edit_view"
REJECT_VIEW = "replyloop_reject_view"
REPLY_BLOCK = "reply"
REPLY_INPUT = "text"
REASON_BLOCK = "reason"
REASON_INPUT = "text"

VERDICT_ICON = {"pass": ":white_check_mark:", "warn": ":warning:", "block": ":no_entry:"}
# what people read for the stored identifiers (translated with _() where shown)
VERDICT_WORDS = {"pass": N_("pass"), "warn": N_("warn"), "block": N_("block")}
DECIDED_HEADER = {"approve": N_("Draft #{draft_id}: approved"), "edit": N_("Draft #{draft_id}: edited and approved"),
                  "reject": N_("Draft #{draft_id}: rejected")}
DECIDED_BY = {"approve": N_("Approved by {reviewer} at {when}"),
              "edit": N_("Edited and approved by {reviewer} at {when}"),
              "reject": N_("Rejected by {reviewer} at {when}")}
DECIDED_FALLBACK = {"approve": N_("Draft #{draft_id} approved by {reviewer}"),
                    "edit": N_("Draft #{draft_id} edited and approved by {reviewer}"),
                    "reject": N_("Draft #{draft_id} rejected by {reviewer}")}
ALREADY_DECIDED = {"approve": N_("Draft #{draft_id} was already approved by {reviewer} at {when}."),
                   "edit": N_("Draft #{draft_id} was already edited and approved by {reviewer} at {when}."),
                   "reject": N_("Draft #{draft_id} was already rejected by {reviewer} at {when}.")}
ROLE_WORDS = {"Champion": N_("Champion"), "Canary": N_("Canary")}
GATE_WORDS = {1: N_("passed"), 0: N_("failed")}
RUN_STATUS_WORDS = {"queued": N_("queued"), "running": N_("running"), "succeeded": N_("succeeded"),
                    "failed": N_("failed")}
TRIGGER_WORDS = {"cli": N_("cli"), "slack": N_("slack"), "scheduler": N_("scheduler")}  # run triggers
MODEL_WORDS = {"external": N_("external")}  # intake.EXTERNAL_MODEL: a draft written outside replyloop
MAX_TEXT = 2900     # a section's text: Slack's limit is 3000 (room for a label)
MAX_HEADER = 150    # a header's plain_text
MAX_CONTEXT = 300   # one context element (a category, a conversation id)
MAX_INPUT = 3000    # plain_text_input max_length (Slack's largest): the edited reply, the reason
MAX_ERROR = 1900    # a modal error message
MAX_TITLE = 24      # a modal's title, submit and close
MAX_HOME_BLOCKS = 100


def escape(text: str) -> str:
    """Escape Slack mrkdwn control characters (``&``, ``<``, ``>``)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: str, limit: int = MAX_TEXT) -> str:
    """At most ``limit`` characters; never cuts an escaped entity (``&amp;``) in half."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    amp = cut.rfind("&", max(0, len(cut) - 4))
    if amp != -1 and ";" not in cut[amp:]:
        cut = cut[:amp]
    return cut + "…"


def clip_plain(text: str, limit: int) -> str:
    """Plain text (no entities) of at most ``limit`` characters."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _plain(text: str, limit: int) -> dict:
    return {"type": "plain_text", "text": clip_plain(text, limit)}


def _section(block_id: str | None, text: str) -> dict:
    block = {"type": "section", "text": {"type": "mrkdwn", "text": _clip(text, 3000)}}
    if block_id:
        block["block_id"] = block_id
    return block


def _word(words: dict, key, default: str | None = None) -> str:
    """The translated word of a stored identifier (a verdict, a status); an unknown one as stored."""
    word = words.get(key)
    return _(word) if word else (default if default is not None else str(key))


def when(value: str | None, tz: str | None = None, format: str = "medium") -> str:
    """A stored ISO time as people read it, in ``tz`` (``scheduler.timezone``) and the current
    language; a value that is not an ISO time is shown as stored."""
    if not value:
        return ""
    try:
        moment = dt.datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    return fmt_datetime(moment, tz, format=format)


def highlight(text: str, violations: list[dict]) -> str:
    """The text as mrkdwn with every violating span marked as ``*~phrase~*`` (bold, struck)."""
    spans = sorted(
        (int(v["start"]), int(v["end"])) for v in violations
        if isinstance(v.get("start"), int) and isinstance(v.get("end"), int) and 0 <= v["start"] < v["end"] <= len(text)
    )
    out, pos = [], 0
    for start, end in spans:
        if start < pos:  # overlapping spans: extend the previous mark only
            continue
        out.append(escape(text[pos:start]))
        out.append(f"*~{escape(text[start:end])}~*")
        pos = end
    out.append(escape(text[pos:]))
    return "".join(out)


def violation_lines(violations: list[dict]) -> list[str]:
    lines = []
    for v in violations:
        line = _("• `{rule}` ({severity}): {message}").format(
            rule=v.get("rule", "?"), severity=_word(VERDICT_WORDS, v.get("severity", "?")),
            message=escape(str(v.get("message", ""))))
        if v.get("match"):
            line += _(" — “{match}”").format(match=escape(str(v["match"])))
        if v.get("suggestion"):
            line += "\n   " + _("_suggestion:_ {suggestion}").format(suggestion=escape(str(v["suggestion"])))
        lines.append(line)
    return lines


def _question_blocks(draft: dict) -> list[dict]:
    return [
        {"type": "section", "block_id": "question",
         "text": {"type": "mrkdwn", "text": _("*Customer question*") + f"\n>{_clip(escape(draft['question']))}"}},
    ]


def _context(draft: dict) -> dict:
    verdict = draft.get("verdict") or "pass"
    name = draft.get("model_name")
    if name:
        model = _word(MODEL_WORDS, name)
    elif draft.get("model_id"):
        model = _("model {model_id}").format(model_id=draft["model_id"])
    else:
        model = _("unknown")
    items = [
        _("*Category:* {category}").format(category=_clip(escape(draft.get("category") or _("(none)")), MAX_CONTEXT)),
        _("*Model:* {model}").format(model=_clip(escape(model), MAX_CONTEXT)),
        _("*Policy:* {icon} {verdict}").format(icon=VERDICT_ICON.get(verdict, ""), verdict=_word(VERDICT_WORDS, verdict)),
        _("*Conversation:* {conversation}").format(
            conversation=_clip(escape(str(draft.get("conversation_id", ""))), MAX_CONTEXT)),
    ]
    return {"type": "context", "block_id": "meta", "elements": [{"type": "mrkdwn", "text": t} for t in items]}


def review_card(draft: dict) -> tuple[str, list[dict]]:
    """(fallback text, blocks) of the card a supervisor decides on. ``draft`` is a
    ``Store.get_draft`` row. A draft with a blocking violation has no Approve button."""
    draft_id = draft["id"]
    violations = draft.get("violations") or []
    verdict = draft.get("verdict") or "pass"
    blocks = [{"type": "header", "text": _plain(_("Review draft #{draft_id}").format(draft_id=draft_id), MAX_HEADER)}]
    blocks += _question_blocks(draft)
    blocks.append({"type": "section", "block_id": "draft",
                   "text": {"type": "mrkdwn", "text": _("*AI draft*") + f"\n{_clip(highlight(draft['text'], violations))}"}})
    blocks.append(_context(draft))
    if violations:
        if verdict == "block":
            head = _(":no_entry: *Blocked by policy* — edit before approving")
        elif verdict == "warn":
            head = _(":warning: *Policy warning*")
        else:
            head = _("*Policy notes*")
        blocks.append({"type": "section", "block_id": "policy",
                       "text": {"type": "mrkdwn", "text": _clip(head + "\n" + "\n".join(violation_lines(violations)))}})
    buttons = []
    value = str(draft_id)
    if verdict != "block":
        buttons.append({"type": "button", "action_id": APPROVE, "style": "primary", "value": value,
                        "text": _plain(_("Approve"), 75)})
    buttons.append({"type": "button", "action_id": EDIT, "value": value, "text": _plain(_("Edit"), 75)})
    buttons.append({"type": "button", "action_id": REJECT, "style": "danger", "value": value,
                    "text": _plain(_("Reject"), 75)})
    blocks.append({"type": "actions", "block_id": f"review_{draft_id}", "elements": buttons})
    # the notification: no mentions, no links
    text = _("Review draft #{draft_id}: {question}").format(draft_id=draft_id,
                                                            question=escape(_clip(draft["question"], 150)))
    return text, blocks


def decided_card(draft: dict, tz: str | None = None) -> tuple[str, list[dict]]:
    """The card after the decision: who decided what, when (in ``tz``); no buttons."""
    decision = draft["decision"]
    reviewer = f"<@{draft['reviewer']}>"
    header = DECIDED_HEADER[decision]
    blocks = [{"type": "header", "text": _plain(_(header).format(draft_id=draft["id"]), MAX_HEADER)}]
    blocks += _question_blocks(draft)
    if decision == "reject":
        blocks.append({"type": "section", "block_id": "draft",
                       "text": {"type": "mrkdwn", "text": _("*Rejected draft*") + f"\n~{_clip(escape(draft['text']))}~"}})
    else:
        label = _("*Approved reply*") if decision == "approve" else _("*Edited reply (approved)*")
        blocks.append({"type": "section", "block_id": "final",
                       "text": {"type": "mrkdwn", "text": f"{label}\n{_clip(escape(draft['final_text'] or ''))}"}})
    blocks.append(_context(draft))
    icon = {"approve": ":white_check_mark:", "edit": ":pencil2:", "reject": ":x:"}[decision]
    by = DECIDED_BY[decision]
    line = f"{icon} " + _(by).format(reviewer=reviewer, when=when(draft["decided_at"], tz))
    if decision in ("approve", "edit") and "sample_id" in draft and draft["sample_id"] is None:
        line += "\n" + _("The reply was already in the dataset: no new sample was added.")  # cli16
    if draft.get("reason"):  # up to MAX_INPUT characters, more once escaped: clipped to the section
        line += "\n" + _("*Reason:* {reason}").format(reason=escape(draft["reason"]))
    blocks.append({"type": "section", "block_id": "decision", "text": {"type": "mrkdwn", "text": _clip(line)}})
    from replyloop.bot.golden import card_block  # golden23: "Add to golden suite" (a section accessory, no actions block)

    blocks += card_block(draft)
    fallback = DECIDED_FALLBACK[decision]
    return _(fallback).format(draft_id=draft["id"], reviewer=reviewer), blocks


def already_decided_text(draft: dict, tz: str | None = None) -> str:
    text = ALREADY_DECIDED[draft["decision"]]
    return _(text).format(draft_id=draft["id"], reviewer=f"<@{draft['reviewer']}>",
                          when=when(draft["decided_at"], tz))


def _metadata(draft_id: int, channel: str | None, ts: str | None) -> str:
    return json.dumps({"draft_id": draft_id, "channel": channel, "ts": ts})


def parse_metadata(raw: str) -> dict:
    try:
        data = json.loads(raw or "{}")
    except (TypeError, ValueError):
        data = None
    if not isinstance(data, dict) or type(data.get("draft_id")) is not int:
        raise ValueError("private_metadata has no draft_id")
    return data


def edit_modal(draft: dict, channel: str | None, ts: str | None) -> dict:
    """The edit modal, prefilled with the draft; the reply is re-checked on submit."""
    blocks = _question_blocks(draft)
    if draft.get("violations"):
        blocks.append({"type": "context", "block_id": "policy", "elements": [
            {"type": "mrkdwn", "text": _clip("\n".join(violation_lines(draft["violations"])), 1900)}]})
    blocks.append({
        "type": "input", "block_id": REPLY_BLOCK,
        "label": _plain(_("Reply"), 2000),
        "element": {"type": "plain_text_input", "action_id": REPLY_INPUT, "multiline": True,
                    "max_length": MAX_INPUT, "initial_value": draft["text"][:MAX_INPUT]},
    })
    return _modal(EDIT_VIEW, _("Edit draft #{draft_id}").format(draft_id=draft["id"]), _("Approve edit"),
                  draft, channel, ts, blocks)


def reject_modal(draft: dict, channel: str | None, ts: str | None) -> dict:
    return _modal(REJECT_VIEW, _("Reject draft #{draft_id}").format(draft_id=draft["id"]), _("Reject"),
                  draft, channel, ts, _question_blocks(draft) + [{
                      "type": "input", "block_id": REASON_BLOCK, "optional": True,
                      "label": _plain(_("Reason (optional)"), 2000),
                      "element": {"type": "plain_text_input", "action_id": REASON_INPUT, "multiline": True,
                                  "max_length": MAX_INPUT},
                  }])


def _modal(callback_id: str, title: str, submit: str, draft: dict, channel: str | None, ts: str | None,
           blocks: list[dict]) -> dict:
    """A review modal: the draft's id, channel and card ts ride in private_metadata."""
    return {
        "type": "modal", "callback_id": callback_id,
        "private_metadata": _metadata(draft["id"], channel, ts),
        "title": _plain(title, MAX_TITLE),
        "submit": _plain(submit, MAX_TITLE),
        "close": _plain(_("Cancel"), MAX_TITLE),
        "blocks": blocks,
    }


def _pct(value) -> str:
    """A score (consistency, chrF, a share) with three decimals in the locale; n/a when unknown."""
    return _("n/a") if value is None else fmt_number(value, 3)


def model_line(model: dict | None, role: str, tz: str | None = None) -> str:
    """One line about the champion or the canary (``role``: ``Champion`` / ``Canary``)."""
    label = _word(ROLE_WORDS, role)
    if not model:
        return _("*{role}:* none").format(role=label)
    line = _("*{role}:* `{name}` (id {model_id})").format(role=label, name=escape(model["name"]), model_id=model["id"])
    if model.get("canary_percent") and role == "Canary":
        line += _(", {share} of conversations").format(share=fmt_percent(model["canary_percent"] / 100))
    ev = model.get("evaluation")
    if ev:
        chrf = "" if ev.get("mean_chrf") is None else _(", chrF {chrf}").format(chrf=_pct(ev["mean_chrf"]))
        line += _(" — consistency {consistency}{chrf}, share above threshold {share}, gate {gate} ({when})").format(
            consistency=_pct(ev.get("mean_similarity")), chrf=chrf, share=_pct(ev.get("share_above")),
            gate=_word(GATE_WORDS, ev.get("gate_passed"), _("n/a")), when=when(ev["created_at"], tz, "short"))
        if ev.get("embedding_unreadable"):
            line += " " + _(":warning: the embedding model cannot read the references, chrF decided the gate")
    else:
        line += _(" — not evaluated yet")
    return line


def _chunks(head: str, lines: list[str], limit: int = MAX_TEXT) -> list[str]:
    """``head`` and ``lines`` as texts of at most ``limit`` characters each, split between lines."""
    out, current = [], head
    for line in lines:
        line = _clip(line, limit)
        if len(current) + 1 + len(line) > limit:
            out.append(current)
            current = line
        else:
            current = f"{current}\n{line}" if current else line
    out.append(current)
    return out


def home_view(home: dict) -> dict:
    """App Home: the queue, approvals this week per supervisor, champion and canary. Long lists
    are split over several sections; past Slack's 100 blocks the rest is counted, not listed.
    ``home`` is ``status.home``'s data (language-free); times in its ``timezone``."""
    tz = home.get("timezone")
    approvals = home["approvals_this_week"]
    lines = [_("• {reviewer}: {approved} approved, {edited} edited, {rejected} rejected").format(
        reviewer=f"<@{r['reviewer']}>", approved=fmt_number(r["approved"] or 0), edited=fmt_number(r["edited"] or 0),
        rejected=fmt_number(r["rejected"] or 0)) for r in approvals] or [_("• none yet")]
    head = [
        {"type": "header", "text": _plain("replyloop", MAX_HEADER)},  # the product's name
        _section("queue", _("*Review queue:* {count} draft(s) waiting").format(count=fmt_number(home["queue"]))),
    ]
    tail = [
        {"type": "divider"},
        _section("models", model_line(home["champion"], "Champion", tz) + "\n" + model_line(home["canary"], "Canary", tz)),
    ]
    for key in ("delivery", "automation"):  # deliver21: one line each, when there is something to say
        if home.get(key):
            tail.append(_section(key, home[key]))
    tail.extend(home.get("automation_blocks") or [])  # deliver21: per-intent pin / allow buttons
    start = dt.datetime.fromisoformat(home["week_start"])
    texts = _chunks(_("*This week (since {date})*").format(date=fmt_date(start.date())), lines)
    room = MAX_HOME_BLOCKS - len(head) - len(tail)
    if len(texts) > room:
        shown = texts[: room - 1]
        listed = sum(t.count("\n• ") + t.startswith("• ") for t in shown)
        texts = shown + [_("… and {count} more supervisor(s)").format(count=fmt_number(len(lines) - listed))]
    sections = [_section("approvals" if i == 0 else f"approvals_{i}", t) for i, t in enumerate(texts)]
    return {"type": "home", "blocks": head + sections + tail}


def retrain_status_text(status: dict) -> str:
    """``/retrain status``: ``status.retrain_status``'s data as text (times in its ``timezone``)."""
    tz = status.get("timezone")
    lines = [_("*Approved samples since the last training:* {count} (threshold {threshold})").format(
        count=fmt_number(status["samples_since"]), threshold=fmt_number(status["threshold"]))]
    running = status["running"]
    if running:
        for run in running:
            total = run.get("total_steps")
            step = fmt_number(run.get("step") or 0)
            progress = (_("step {step}/{total}").format(step=step, total=fmt_number(total)) if total
                        else _("step {step}").format(step=step))
            loss = _(", loss {loss}").format(loss=fmt_number(run["loss"], 4)) if run.get("loss") is not None else ""
            lines.append(_("*Running:* run #{run_id} ({trigger}), {progress}{loss}, since {when}").format(
                run_id=run["id"], trigger=_word(TRIGGER_WORDS, run["trigger"]), progress=progress, loss=loss,
                when=when(run["started_at"], tz, "short")))
    else:
        lines.append(_("*Running:* nothing"))
    lines.append(model_line(status["champion"], "Champion", tz))
    if status.get("canary"):
        lines.append(model_line(status["canary"], "Canary", tz))
    trial = status.get("canary_trial")
    if trial:
        step = trial["next"]  # a status.NEXT_STEP message id
        lines.append(_("*Canary trial:* {reviews}/{min_reviews} reviews, day {age} of {max_days}: {summary}. "
                       "Next: {next}.").format(
            reviews=fmt_number(trial["reviews"]), min_reviews=fmt_number(trial["min_reviews"]),
            age=fmt_number(trial["age_days"], 1), max_days=f"{trial['max_days']:g}", summary=escape(trial["summary"]),
            next=_(step)))
    return "\n".join(lines)


def retrain_history_text(runs: list[dict], tz: str | None = None) -> str:
    if not runs:
        return _("No training runs yet.")
    lines = [_("*Recent training runs*")]
    for r in runs:
        who = f", <@{r['requested_by']}>" if r.get("requested_by") else ""
        line = _("• #{run_id} {status} ({trigger}{who}) started {started}").format(
            run_id=r["id"], status=_word(RUN_STATUS_WORDS, r["status"]), trigger=_word(TRIGGER_WORDS, r["trigger"]),
            who=who, started=when(r["started_at"], tz, "short"))
        if r.get("finished_at"):
            line += _(", finished {finished}").format(finished=when(r["finished_at"], tz, "short"))
        if r.get("loss") is not None:
            line += _(", loss {loss}").format(loss=fmt_number(r["loss"], 4))
        if r.get("model_name"):
            line += f" → `{escape(r['model_name'])}`"
        if r.get("error"):
            line += f" — {escape(r['error'][:200])}"
        lines.append(line)
    return "\n".join(lines)
