"""Post the weekly report to Slack: a summary message, then the charts (files upload v2).

The client is the project's usual one (``bot.slackclient.web_client``: ``SLACK_BOT_TOKEN``,
``slack.api_base_url``, retries on 429 honouring ``Retry-After``, 5xx and connection errors).
``slack.report_channel`` should be a channel id (``C0123...``): ``chat.postMessage``
also accepts a name, but ``files.completeUploadExternal`` does not.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from replyloop.evaluation.report import (ACTION_WORDS, ROLE_WORDS, WeeklyReport, _word, fmt_int, fmt_num, fmt_pct,
                                         fmt_pp, week_text)
from replyloop.i18n import N_, _, fmt_date, workspace
from replyloop.config import Config, Secrets
from replyloop.errors import ConfigError, ReplyloopError

CHART_ORDER = ("automation.png", "consistency.png", "reviews.png", "violations.png")
CHART_TITLES = {"automation.png": N_("Automation rate"), "consistency.png": N_("Champion consistency"),
                "reviews.png": N_("Supervisor decisions"), "violations.png": N_("Policy violations")}


class ReportPostError(ReplyloopError):
    """Could not post the weekly report to Slack"""


@dataclass
class PostResult:
    channel: str
    ts: str
    file_ids: list[str] = field(default_factory=list)


def make_client(config: Config, secrets: Secrets | None = None):
    """The Slack WebClient of this workspace (token from ``SLACK_BOT_TOKEN``): the project's one
    factory, ``bot.slackclient.web_client`` (retries 429 after Retry-After, 5xx, connection errors)."""
    from replyloop.bot.slackclient import web_client

    secrets = secrets or Secrets.from_env()
    if not secrets.slack_bot_token:
        raise ConfigError("SLACK_BOT_TOKEN is not set: the weekly report is posted with the bot token")
    return web_client(config, secrets)


def summary_text(report: WeeklyReport) -> str:
    """The message supervisors read, in the workspace's language: key numbers and the change
    since last week."""
    with workspace():
        return _summary_text(report)


def _summary_text(report: WeeklyReport) -> str:
    r = report
    this = r.this_week
    now = r.consistency_at(r.label)
    week, previous = week_text(r.label), week_text(r.previous_label)
    # TRANSLATORS: a Babel date pattern (the week's first day and the next Monday)
    day = _("yyyy-MM-dd")
    lines = [_("*Weekly consistency report {week}* ({start} to {end} excl.)").format(
        week=week, start=fmt_date(r.start.date(), format=day), end=fmt_date(r.end.date(), format=day))]
    if r.empty:
        lines.append(_("No activity in {week}: no drafts, reviews, evaluations or model changes.").format(week=week))
    unreadable = now is not None and now in r.unreadable
    lines += [
        "• " + _("Automation (approved without edit): *{rate}* of {reviews} reviews ({change} vs {previous})").format(
            rate=fmt_pct(this.automation_rate), reviews=fmt_int(this.reviewed), change=fmt_pp(r.automation_change),
            previous=previous),
        "• " + _("Decisions: {approved} approved unchanged, {edited} edited, {rejected} rejected").format(
            approved=fmt_int(this.approved), edited=fmt_int(this.edited), rejected=fmt_int(this.rejected)),
        "• " + _("Champion consistency: *{mean}* ({change} vs {previous}), chrF *{chrf}* ({chrf_change})").format(
            mean=fmt_num(now and now.mean_similarity), change=fmt_num(r.consistency_change, signed=True),
            previous=previous, chrf=fmt_num(now and now.mean_chrf), chrf_change=fmt_num(r.chrf_change, signed=True))
        + (" :warning: " + _("the embedding model cannot read the references, chrF decides") if unreadable else ""),
        "• " + _("Policy: {flagged} of {created} drafts flagged, {blocked} blocked, {approved_bad} approved with a"
                 " violation").format(flagged=fmt_int(r.drafts_flagged), created=fmt_int(r.drafts_created),
                                      blocked=fmt_int(r.drafts_blocked),
                                      approved_bad=fmt_int(len(r.approved_violation_drafts)))
        + (" :warning:" if r.approved_violation_drafts else ""),
    ]
    champion = f"{r.champion.name}" if r.champion else _("none")
    canary = f"{r.canary.name} ({r.canary.percent}%)" if r.canary else _("none")
    lines.append("• " + _("Models: champion {champion}, canary {canary}").format(champion=champion, canary=canary))
    for m in r.model_rates:
        if m.role in ("champion", "canary"):
            lines.append("    " + _("{role} {model}: {rate} approved unchanged of {reviews} (95% CI {low}–{high})").format(
                role=_word(ROLE_WORDS, m.role), model=m.name, rate=fmt_pct(m.rate), reviews=fmt_int(m.reviews),
                low=fmt_pct(m.ci_low), high=fmt_pct(m.ci_high)))
    for e in r.events:
        verb = _word(ACTION_WORDS, e.action.split(".", 1)[1])
        lines.append(f"• {verb} {e.model_name}" + (f": {e.reason}" if e.reason else ""))
    if r.replacements:
        top = ", ".join(f"{x.old or '∅'} → {x.new or '∅'} ({x.count})" for x in r.replacements[:3])
        lines.append("• " + _("Most frequent edits: {edits}").format(edits=top))
    return "\n".join(lines)


def post_weekly_report(config: Config, report: WeeklyReport, client=None) -> PostResult:
    """Post the summary to ``slack.report_channel`` and upload the charts under it."""
    from slack_sdk.errors import SlackApiError, SlackClientError

    if not report.files:
        raise ReportPostError("the report has not been written yet: build it (build_weekly_report) first")
    client = client or make_client(config)
    channel = config.file.slack.report_channel
    if not channel:
        raise ConfigError("slack.report_channel is empty: set the channel the weekly report goes to")
    text = summary_text(report)
    try:
        message = client.chat_postMessage(
            channel=channel, text=text, unfurl_links=False,
            blocks=[{"type": "section", "text": {"type": "mrkdwn", "text": text[:2900]}}])
        with workspace():
            uploads = [{"file": str(report.files[name]), "filename": f"{report.label}-{name}",
                        "title": _chart_title(name, report.label)} for name in CHART_ORDER if name in report.files]
            comment = _("Charts for {week}").format(week=week_text(report.label))
        file_ids: list[str] = []
        if uploads:
            response = client.files_upload_v2(
                file_uploads=uploads, channel=message.get("channel") or channel,
                initial_comment=comment, request_file_info=False)
            file_ids = [f.get("id") for f in response.get("files") or []]
    except SlackApiError as exc:
        raise ReportPostError(f"Slack refused the weekly report for {channel}:"
                              f" {exc.response.get('error', exc)}") from None
    except SlackClientError as exc:
        raise ReportPostError(f"could not reach Slack at {config.file.slack.api_base_url}: {exc}") from None
    return PostResult(channel=message.get("channel") or channel, ts=message.get("ts"), file_ids=file_ids)


def _chart_title(name: str, label: str) -> str:
    title = CHART_TITLES[name]
    return f"{_(title)} {week_text(label)}"
