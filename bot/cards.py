"""Block Kit builders: the review card, the decided card, the edit and reject modals, App Home,
and the ``/retrain`` texts. Pure functions of plain data; no Slack calls here.

Every text stays within Block Kit's limits, whatever the data (a 3,000-character rejection
reason, a 200 KB conversation id, hundreds of supervisors): Slack refuses a whole message or
view (``invalid_blocks``) when one field is over. The limits used (docs.slack.dev, Block Kit
reference): section text 3000, header 150, context 10 elements, button text 75 and value 2000,
input label 2000, ``plain_text_input`` ``max_length`` at most 3000, modal title / submit / close
24, ``private_metadata`` 3000, 50 blocks in a message and 100 in a modal or App Home.
"""

from __future__ import annotations

import json

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
DECISION_WORDS = {"approve": "Approved", "edit": "Edited and approved", "reject": "Rejected"}
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
        line = f"• `{v.get('rule', '?')}` ({v.get('severity', '?')}): {escape(str(v.get('message', '')))}"
        if v.get("match"):
            line += f" — “{escape(str(v['match']))}”"
        if v.get("suggestion"):
            line += f"\n   _suggestion:_ {escape(str(v['suggestion']))}"
        lines.append(line)
    return lines


def _question_blocks(draft: dict) -> list[dict]:
    return [
        {"type": "section", "block_id": "question",
         "text": {"type": "mrkdwn", "text": f"*Customer question*\n>{_clip(escape(draft['question']))}"}},
    ]


def _context(draft: dict) -> dict:
    verdict = draft.get("verdict") or "pass"
    model = draft.get("model_name") or (f"model {draft['model_id']}" if draft.get("model_id") else "unknown")
    items = [
        f"*Category:* {_clip(escape(draft.get('category') or '(none)'), MAX_CONTEXT)}",
        f"*Model:* {_clip(escape(model), MAX_CONTEXT)}",
        f"*Policy:* {VERDICT_ICON.get(verdict, '')} {verdict}",
        f"*Conversation:* {_clip(escape(str(draft.get('conversation_id', ''))), MAX_CONTEXT)}",
    ]
    return {"type": "context", "block_id": "meta", "elements": [{"type": "mrkdwn", "text": t} for t in items]}


def review_card(draft: dict) -> tuple[str, list[dict]]:
    """(fallback text, blocks) of the card a supervisor decides on. ``draft`` is a
    ``Store.get_draft`` row. A draft with a blocking violation has no Approve button."""
    draft_id = draft["id"]
    violations = draft.get("violations") or []
    verdict = draft.get("verdict") or "pass"
    blocks = [{"type": "header", "text": _plain(f"Review draft #{draft_id}", MAX_HEADER)}]
    blocks += _question_blocks(draft)
    blocks.append({"type": "section", "block_id": "draft",
                   "text": {"type": "mrkdwn", "text": f"*AI draft*\n{_clip(highlight(draft['text'], violations))}"}})
    blocks.append(_context(draft))
    if violations:
        head = {"block": ":no_entry: *Blocked by policy* — edit before approving",
                "warn": ":warning: *Policy warning*"}.get(verdict, "*Policy notes*")
        blocks.append({"type": "section", "block_id": "policy",
                       "text": {"type": "mrkdwn", "text": _clip(head + "\n" + "\n".join(violation_lines(violations)))}})
    buttons = []
    value = str(draft_id)
    if verdict != "block":
        buttons.append({"type": "button", "action_id": APPROVE, "style": "primary", "value": value,
                        "text": {"type": "plain_text", "text": "Approve"}})
    buttons.append({"type": "button", "action_id": EDIT, "value": value,
                    "text": {"type": "plain_text", "text": "Edit"}})
    buttons.append({"type": "button", "action_id": REJECT, "style": "danger", "value": value,
                    "text": {"type": "plain_text", "text": "Reject"}})
    blocks.append({"type": "actions", "block_id": f"review_{draft_id}", "elements": buttons})
    text = f"Review draft #{draft_id}: {escape(_clip(draft['question'], 150))}"  # the notification: no mentions, no links
    return text, blocks


def decided_card(draft: dict) -> tuple[str, list[dict]]:
    """The card after the decision: who decided what, when; no buttons."""
    decision = draft["decision"]
    when = draft["decided_at"]
    blocks = [{"type": "header", "text": _plain(f"Draft #{draft['id']}: {DECISION_WORDS[decision].lower()}",
                                                MAX_HEADER)}]
    blocks += _question_blocks(draft)
    if decision == "reject":
        blocks.append({"type": "section", "block_id": "draft",
                       "text": {"type": "mrkdwn", "text": f"*Rejected draft*\n~{_clip(escape(draft['text']))}~"}})
    else:
        label = "*Approved reply*" if decision == "approve" else "*Edited reply (approved)*"
        blocks.append({"type": "section", "block_id": "final",
                       "text": {"type": "mrkdwn", "text": f"{label}\n{_clip(escape(draft['final_text'] or ''))}"}})
    blocks.append(_context(draft))
    icon = {"approve": ":white_check_mark:", "edit": ":pencil2:", "reject": ":x:"}[decision]
    line = f"{icon} {DECISION_WORDS[decision]} by <@{draft['reviewer']}> at {when}"
    if decision in ("approve", "edit") and "sample_id" in draft and draft["sample_id"] is None:
        line += "\nThe reply was already in the dataset: no new sample was added."  # cli16
    if draft.get("reason"):  # up to MAX_INPUT characters, more once escaped: clipped to the section
        line += f"\n*Reason:* {escape(draft['reason'])}"
    blocks.append({"type": "section", "block_id": "decision", "text": {"type": "mrkdwn", "text": _clip(line)}})
    from replyloop.bot.golden import card_block  # golden23: "Add to golden suite" (a section accessory, no actions block)

    blocks += card_block(draft)
    text = f"Draft #{draft['id']} {DECISION_WORDS[decision].lower()} by <@{draft['reviewer']}>"
    return text, blocks


def already_decided_text(draft: dict) -> str:
    word = DECISION_WORDS[draft["decision"]].lower()
    return f"Draft #{draft['id']} was already {word} by <@{draft['reviewer']}> at {draft['decided_at']}."


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
        "label": {"type": "plain_text", "text": "Reply"},
        "element": {"type": "plain_text_input", "action_id": REPLY_INPUT, "multiline": True,
                    "max_length": MAX_INPUT, "initial_value": draft["text"][:MAX_INPUT]},
    })
    return _modal(EDIT_VIEW, f"Edit draft #{draft['id']}", "Approve edit", draft, channel, ts, blocks)


def reject_modal(draft: dict, channel: str | None, ts: str | None) -> dict:
    return _modal(REJECT_VIEW, f"Reject draft #{draft['id']}", "Reject", draft, channel, ts,
                  _question_blocks(draft) + [{
                      "type": "input", "block_id": REASON_BLOCK, "optional": True,
                      "label": {"type": "plain_text", "text": "Reason (optional)"},
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
        "close": _plain("Cancel", MAX_TITLE),
        "blocks": blocks,
    }


def _pct(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def model_line(model: dict | None, role: str) -> str:
    if not model:
        return f"*{role}:* none"
    line = f"*{role}:* `{escape(model['name'])}` (id {model['id']})"
    if model.get("canary_percent") and role == "Canary":
        line += f", {model['canary_percent']}% of conversations"
    ev = model.get("evaluation")
    if ev:
        gate = {1: "passed", 0: "failed"}.get(ev.get("gate_passed"), "n/a")
        chrf = "" if ev.get("mean_chrf") is None else f", chrF {_pct(ev['mean_chrf'])}"
        line += (f" — consistency {_pct(ev.get('mean_similarity'))}{chrf}, share above threshold "
                 f"{_pct(ev.get('share_above'))}, gate {gate} ({ev['created_at'][:16]})")
        if ev.get("embedding_unreadable"):
            line += " :warning: the embedding model cannot read the references, chrF decided the gate"
    else:
        line += " — not evaluated yet"
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
    are split over several sections; past Slack's 100 blocks the rest is counted, not listed."""
    approvals = home["approvals_this_week"]
    lines = [f"• <@{r['reviewer']}>: {r['approved']} approved, {r['edited']} edited, {r['rejected']} rejected"
             for r in approvals] or ["• none yet"]
    head = [
        {"type": "header", "text": _plain("replyloop", MAX_HEADER)},
        _section("queue", f"*Review queue:* {home['queue']} draft(s) waiting"),
    ]
    tail = [
        {"type": "divider"},
        _section("models", model_line(home["champion"], "Champion") + "\n" + model_line(home["canary"], "Canary")),
    ]
    for key in ("delivery", "automation"):  # deliver21: one line each, when there is something to say
        if home.get(key):
            tail.append(_section(key, home[key]))
    tail.extend(home.get("automation_blocks") or [])  # deliver21: per-intent pin / allow buttons
    texts = _chunks(f"*This week (since {home['week_start'][:10]})*", lines)
    room = MAX_HOME_BLOCKS - len(head) - len(tail)
    if len(texts) > room:
        shown = texts[: room - 1]
        listed = sum(t.count("\n• ") + t.startswith("• ") for t in shown)
        texts = shown + [f"… and {len(lines) - listed} more supervisor(s)"]
    sections = [_section("approvals" if i == 0 else f"approvals_{i}", t) for i, t in enumerate(texts)]
    return {"type": "home", "blocks": head + sections + tail}


def retrain_status_text(status: dict) -> str:
    lines = [f"*Approved samples since the last training:* {status['samples_since']} "
             f"(threshold {status['threshold']})"]
    running = status["running"]
    if running:
        for run in running:
            total = run.get("total_steps")
            progress = f"step {run.get('step') or 0}/{total}" if total else f"step {run.get('step') or 0}"
            loss = f", loss {run['loss']:.4f}" if run.get("loss") is not None else ""
            lines.append(f"*Running:* run #{run['id']} ({run['trigger']}), {progress}{loss}, since {run['started_at'][:16]}")
    else:
        lines.append("*Running:* nothing")
    lines.append(model_line(status["champion"], "Champion"))
    if status.get("canary"):
        lines.append(model_line(status["canary"], "Canary"))
    trial = status.get("canary_trial")
    if trial:
        lines.append(f"*Canary trial:* {trial['reviews']}/{trial['min_reviews']} reviews, day "
                     f"{trial['age_days']:.1f} of {trial['max_days']:g}: {escape(trial['summary'])}. "
                     f"Next: {trial['next']}.")
    return "\n".join(lines)


def retrain_history_text(runs: list[dict]) -> str:
    if not runs:
        return "No training runs yet."
    lines = ["*Recent training runs*"]
    for r in runs:
        line = f"• #{r['id']} {r['status']} ({r['trigger']}"
        if r.get("requested_by"):
            line += f", <@{r['requested_by']}>"
        line += f") started {r['started_at'][:16]}"
        if r.get("finished_at"):
            line += f", finished {r['finished_at'][:16]}"
        if r.get("loss") is not None:
            line += f", loss {r['loss']:.4f}"
        if r.get("model_name"):
            line += f" → `{escape(r['model_name'])}`"
        if r.get("error"):
            line += f" — {escape(r['error'][:200])}"
        lines.append(line)
    return "\n".join(lines)
