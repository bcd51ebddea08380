"""Slack: turn a reviewed draft into a golden case ("Add to golden suite" on the decided card).

The decided card of an approved or edited draft carries an "Add to golden suite" button. It
opens a modal prefilled with the question, the approved text as the reference and suggested
assertions (``evaluation.golden.suggest_assertions``: a ``not-contains`` for what the supervisor
deleted, a ``chrf`` against the approved text, ``policy-clean``), as YAML the supervisor can
edit. On submit the case is validated with every suite of ``evaluation.golden_dir`` and written
to ``<suite>.yaml`` atomically (``evaluation.golden.add_case``) before the ack, then audit-logged
(``golden.add``); errors ride on the ack next to the field they concern.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from replyloop.bot import cards
from replyloop.i18n import _

if TYPE_CHECKING:
    from replyloop.bot.app import Bot

log = logging.getLogger(__name__)

ADD = "replyloop_golden_add"
VIEW = "replyloop_golden_view"
SUITE_BLOCK, ID_BLOCK, QUESTION_BLOCK, REFERENCE_BLOCK, ASSERT_BLOCK = (
    "golden_suite", "golden_id", "golden_question", "golden_reference", "golden_assert")
INPUT = "text"
DEFAULT_SUITE = "slack"


def card_block(draft: dict) -> list[dict]:
    """The decided card's "Add to golden suite" button (approved or edited drafts only); a
    section accessory, so the card keeps no actions block."""
    if draft.get("decision") not in ("approve", "edit"):
        return []
    return [{"type": "section", "block_id": "golden",
             "text": {"type": "mrkdwn", "text": _("Must this question always be answered like this?")},
             "accessory": {"type": "button", "action_id": ADD, "value": str(draft["id"]),
                           "text": cards._plain(_("Add to golden suite"), 75)}}]


def _input(block_id: str, label: str, value: str, multiline: bool = False, hint: str | None = None) -> dict:
    block = {"type": "input", "block_id": block_id, "label": {"type": "plain_text", "text": label},
             "element": {"type": "plain_text_input", "action_id": INPUT, "multiline": multiline,
                         "max_length": cards.MAX_INPUT, "initial_value": value[:cards.MAX_INPUT]}}
    if hint:
        block["hint"] = {"type": "plain_text", "text": hint}
    return block


def suggested_yaml(draft: dict) -> str:
    from replyloop.evaluation.golden import suggest_assertions

    final = draft.get("final_text") or draft.get("text") or ""
    return "\n".join("- " + json.dumps(a, ensure_ascii=False) for a in suggest_assertions(draft.get("text") or "", final))


def modal(draft: dict, channel: str | None, ts: str | None) -> dict:
    reference = draft.get("final_text") or draft.get("text") or ""
    blocks = [
        _input(SUITE_BLOCK, _("Suite (the file evals/<suite>.yaml)"), DEFAULT_SUITE),
        _input(ID_BLOCK, _("Case id (unique across the suites)"), f"draft-{draft['id']}"),
        _input(QUESTION_BLOCK, _("Question"), draft.get("question") or "", multiline=True),
        _input(REFERENCE_BLOCK, _("Reference (the approved reply)"), reference, multiline=True),
        _input(ASSERT_BLOCK, _("Assertions (YAML list)"), suggested_yaml(draft), multiline=True,
               hint=_("Assertion types: {types} (README \"Golden suites\")").format(
                   types="contains, not-contains, regex, similar, chrf, policy-clean, terminology, max-chars, "
                         "min-chars, not-repetitive")),
    ]
    return {"type": "modal", "callback_id": VIEW,
            "private_metadata": json.dumps({"draft_id": draft["id"], "channel": channel, "ts": ts}),
            "title": cards._plain(_("Add to golden suite"), cards.MAX_TITLE),
            "submit": cards._plain(_("Add case"), cards.MAX_TITLE),
            "close": cards._plain(_("Cancel"), cards.MAX_TITLE),
            "blocks": blocks}


def open_modal(bot: "Bot", body: dict, action: dict) -> None:
    from replyloop.bot import review
    from replyloop.errors import NotFoundError

    user = (body.get("user") or {}).get("id")
    channel, ts = review._container(body)
    if not review._guard(bot, user, channel):
        return
    try:
        draft = bot.store.get_draft(review._action_draft_id(action))
    except NotFoundError as exc:
        review.ephemeral(bot, channel, user, str(exc))
        return
    if draft.get("decision") not in ("approve", "edit"):
        review.ephemeral(bot, channel, user, _("Draft #{draft_id} has no approved reply to keep as a golden case.").format(
            draft_id=draft["id"]))
        return
    bot.client.views_open(trigger_id=body["trigger_id"], view=modal(draft, channel, ts))


def _value(view: dict, block: str) -> str:
    actions = (((view.get("state") or {}).get("values") or {}).get(block) or {})
    for value in actions.values():  # one input per block
        return ((value or {}).get("value") or "").strip()
    return ""


def _case(view: dict) -> tuple[str, dict, dict]:
    """(suite, case dict, errors by block) from a submission."""
    import yaml

    errors: dict[str, str] = {}
    suite = _value(view, SUITE_BLOCK)
    case = {"id": _value(view, ID_BLOCK), "question": _value(view, QUESTION_BLOCK)}
    reference = _value(view, REFERENCE_BLOCK)
    if reference:
        case["reference"] = reference
    for block, key in ((SUITE_BLOCK, suite), (ID_BLOCK, case["id"]), (QUESTION_BLOCK, case["question"])):
        if not key:
            errors[block] = _("Required.")
    try:
        text = _value(view, ASSERT_BLOCK) or "[]"
        if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=yaml.SafeLoader)):
            raise yaml.YAMLError(_("anchors and aliases (&, *) are not allowed here"))  # no billion laughs
        asserts = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or exc
        errors[ASSERT_BLOCK] = (_("Not valid YAML (line {line}): {problem}").format(line=mark.line + 1, problem=problem)
                                if mark else _("Not valid YAML: {problem}").format(problem=problem))
        asserts = []
    if not errors.get(ASSERT_BLOCK) and (not isinstance(asserts, list) or not asserts
                                         or not all(isinstance(a, dict) for a in asserts)):
        errors[ASSERT_BLOCK] = _("Give a YAML list of assertions, e.g. {example}").format(
            example="- {type: contains, value: 七天无理由}")
    case["assert"] = asserts if isinstance(asserts, list) else []
    return suite, case, errors


def _block_of(message: str) -> str:
    """Which field a validation message concerns."""
    if "suite name" in message:
        return SUITE_BLOCK
    if "duplicate case id" in message or "key 'cases.0.id'" in message:
        return ID_BLOCK
    if "key 'cases.0.question'" in message:
        return QUESTION_BLOCK
    if "reference" in message and "assert" not in message:
        return REFERENCE_BLOCK
    return ASSERT_BLOCK


def submit(bot: "Bot", body: dict, view: dict) -> tuple[dict | None, dict | None]:
    """Before the ack: validate, write the case and its audit row. Returns ``(errors by block,
    None)`` or ``(None, the outcome for after the ack)``; the outcome's ``text`` is a callable, so
    the notice is worded (maybe after a users.info lookup of the user's language) after the ack."""
    from replyloop.evaluation import golden

    user = (body.get("user") or {}).get("id")
    try:
        meta = json.loads(view.get("private_metadata") or "{}")
    except ValueError:
        meta = {}
    if not isinstance(meta, dict):
        meta = {}
    outcome = {"user": user, "channel": meta.get("channel"), "draft_id": meta.get("draft_id")}
    if not bot.supervisors.is_supervisor(user):
        return None, {**outcome, "text": lambda: _("Only supervisors can add golden cases.")}
    suite, case, errors = _case(view)
    if errors:
        return errors, None
    directory = golden.golden_dir(bot.config)
    try:
        with bot.store.transaction():  # the audit row commits only when the file is written
            added = golden.add_case(directory, suite, case)
            bot.store.audit(user, "golden.add", "golden_case", added.id,
                            {"suite": added.suite, "file": str(added.file), "line": added.line,
                             "draft_id": meta.get("draft_id"), "assert": [a.type for a in added.assertions]})
    except golden.GoldenError as exc:
        found: dict[str, str] = {}
        for line in str(exc).splitlines():
            block = _block_of(line)
            found[block] = cards.clip_plain("; ".join(filter(None, [found.get(block), _short(line)])), cards.MAX_ERROR)
        return found, None
    return None, {**outcome, "text": lambda: _("Added golden case `{case}` to `{file}` (line {line}). "
                                               "`replyloop eval MODEL --suite {suite}` runs it.").format(
        case=added.id, file=added.file.name, line=added.line, suite=added.suite)}


def _short(message: str) -> str:
    """``/path/evals/slack.yaml:12: case 'x': message`` -> ``slack.yaml:12: message``."""
    import re

    message = re.sub(r"(?:/[^\s/:()]+)+/([^/\s:()]+)", r"\1", message)  # file names, not paths
    m = re.match(r"^([^:]+:\d+): case '[^']*': (.*)$", message, re.S)
    if m and m.group(2).startswith("duplicate case id"):
        return m.group(2)  # where it would have gone is no line of the file
    return f"{m.group(1)}: {m.group(2)}" if m else message


def after_submit(bot: "Bot", outcome: dict) -> None:
    from replyloop.bot import review

    review.ephemeral(bot, outcome.get("channel"), outcome["user"], outcome["text"]())  # worded after the ack


def register(app, bot: "Bot") -> None:
    from replyloop.bot.language import speaks, user_of

    @app.action(ADD)
    def on_add(ack, body, action):
        ack()
        with speaks(bot, user_of(body)):  # the modal in the clicking user's language
            open_modal(bot, body, action)

    @app.view(VIEW)
    def on_submit(ack, body, view):
        with speaks(bot, user_of(body)):  # errors and the notice (after_ack inherits it)
            errors, outcome = submit(bot, body, view)  # the case is in its file before Slack hears 200
            if errors:
                ack(response_action="errors", errors=errors)
                return
            ack()
            bot.after_ack(after_submit, outcome)
