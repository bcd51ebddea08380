"""Post the weekly report to Slack: a summary message, then the charts (files upload v2).

The client is the project's usual one (``bot.slackclient.web_client``: ``SLACK_BOT_TOKEN``,
``slack.api_base_url``, retries on 429 honouring ``Retry-After``, 5xx and connection errors).
``slack.report_channel`` should be a channel id (``C0123...``): ``chat.postMessage``
also accepts a name, but ``files.completeUploadExternal`` does not.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from replyloop.evaluation.report import WeeklyReport, fmt_num, fmt_pct, fmt_pp
from replyloop.config import Config, Secrets
from replyloop.errors import ConfigError, ReplyloopError

CHART_ORDER = ("automation.png", "consistency.png", "reviews.png", "violations.png")
CHART_TITLES = {"automation.png": "Automation rate", "consistency.png": "Champion consistency",
                "reviews.png": "Supervisor decisions", "violations.png": "Policy violations"}


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
    """The message supervisors read: key numbers and the change since last week."""
    r = report
    this = r.this_week
    now = r.consistency_at(r.label)
    lines = [f"*Weekly consistency report {r.label}* ({r.start.date()} to {(r.end.date())} excl.)"]
    if r.empty:
        lines.append(f"No activity in {r.label}: no drafts, reviews, evaluations or model changes.")
    lines += [
        f"• Automation (approved without edit): *{fmt_pct(this.automation_rate)}* of {this.reviewed} reviews"
        f" ({fmt_pp(r.automation_change)} vs {r.previous_label})",
        f"• Decisions: {this.approved} approved unchanged, {this.edited} edited, {this.rejected} rejected",
        f"• Champion consistency: *{fmt_num(now and now.mean_similarity)}*"
        f" ({fmt_num(r.consistency_change, signed=True)} vs {r.previous_label}),"
        f" chrF *{fmt_num(now and now.mean_chrf)}* ({fmt_num(r.chrf_change, signed=True)})"
        + (" :warning: the embedding model cannot read the references, chrF decides"
           if now is not None and now in r.unreadable else ""),
        f"• Policy: {r.drafts_flagged} of {r.drafts_created} drafts flagged, {r.drafts_blocked} blocked,"
        f" {len(r.approved_violation_drafts)} approved with a violation"
        + (" :warning:" if r.approved_violation_drafts else ""),
    ]
    champion = f"{r.champion.name}" if r.champion else "none"
    canary = f"{r.canary.name} ({r.canary.percent}%)" if r.canary else "none"
    lines.append(f"• Models: champion {champion}, canary {canary}")
    for m in r.model_rates:
        if m.role in ("champion", "canary"):
            lines.append(f"    {m.role} {m.name}: {fmt_pct(m.rate)} approved unchanged of {m.reviews}"
                         f" (95% CI {fmt_pct(m.ci_low)}–{fmt_pct(m.ci_high)})")
    for e in r.events:
        verb = e.action.split(".", 1)[1]
        lines.append(f"• {verb} {e.model_name}" + (f": {e.reason}" if e.reason else ""))
    if r.replacements:
        top = ", ".join(f"{x.old or '∅'} → {x.new or '∅'} ({x.count})" for x in r.replacements[:3])
        lines.append(f"• Most frequent edits: {top}")
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
        uploads = [{"file": str(report.files[name]), "filename": f"{report.label}-{name}",
                    "title": f"{CHART_TITLES[name]} {report.label}"}
                   for name in CHART_ORDER if name in report.files]
        file_ids: list[str] = []
        if uploads:
            response = client.files_upload_v2(
                file_uploads=uploads, channel=message.get("channel") or channel,
                initial_comment=f"Charts for {report.label}", request_file_info=False)
            file_ids = [f.get("id") for f in response.get("files") or []]
    except SlackApiError as exc:
        raise ReportPostError(f"Slack refused the weekly report for {channel}:"
                              f" {exc.response.get('error', exc)}") from None
    except SlackClientError as exc:
        raise ReportPostError(f"could not reach Slack at {config.file.slack.api_base_url}: {exc}") from None
    return PostResult(channel=message.get("channel") or channel, ts=message.get("ts"), file_ids=file_ids)
