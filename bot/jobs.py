"""Scheduled jobs that ``replyloop serve`` runs with APScheduler.

What the jobs post (pipeline, canary and drift messages, rule proposal cards) is for the review
channel: each job runs inside ``i18n.workspace()``, the workspace's ``ui.language``.

Jobs live in a persistent SQLAlchemy job store in the workspace database, so schedules
survive restarts; coalescing and a misfire grace time mean a bot that was down for a day
runs one missed job, not twenty. Job functions are module-level (the job store keeps a
reference to them) and take the config path, so each run reloads the current config.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from replyloop import i18n
from replyloop.config import Config, Secrets, load_config
from replyloop.errors import ConfigError, LockedError
from replyloop.store import Store

log = logging.getLogger(__name__)

THRESHOLD_JOB = "replyloop-threshold"
CANARY_JOB = "replyloop-canary"
WEEKLY_JOB = "replyloop-weekly-report"
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def weekly_trigger(spec: str, timezone: str):
    """``mon 09:00`` (day and time) or a 5-field crontab line, in the configured time zone."""
    from apscheduler.triggers.cron import CronTrigger

    match = re.fullmatch(r"\s*([a-z]{3})\s+(\d{1,2}):(\d{2})\s*", spec.lower())
    try:
        if match and match.group(1) in DAYS:
            return CronTrigger(day_of_week=match.group(1), hour=int(match.group(2)), minute=int(match.group(3)),
                               timezone=timezone)
        return CronTrigger.from_crontab(spec, timezone=timezone)
    except (ValueError, LookupError) as exc:
        raise ConfigError(f"scheduler.weekly_report_cron / timezone: {spec!r} in {timezone!r}: {exc}") from None


def slack_notifier(config: Config, channel: str | None = None):
    """Post to the review channel when a bot token is configured; log otherwise."""
    secrets = Secrets.from_env()
    if not secrets.slack_bot_token:
        return lambda text: log.info("%s", text)
    from replyloop.bot.slackclient import web_client

    client = web_client(config, secrets)
    target = channel or config.file.slack.review_channel

    def notify(text: str) -> None:
        try:
            client.chat_postMessage(channel=target, text=text)
        except Exception:  # a Slack outage must not fail the pipeline
            log.exception("could not post to Slack channel %s", target)

    return notify


def threshold_job(config_path: str) -> str:
    """Start the pipeline when enough new approved samples have accumulated."""
    from replyloop.pipeline import check_due, run_pipeline

    config = load_config(config_path)
    with Store(config.db_path) as store:
        due = check_due(config, store)
        if not due.due:
            log.info("threshold job: not due (%s)", due.reason)
            return "not due: " + due.reason
        try:
            with i18n.workspace():
                result = run_pipeline(config, store, trigger="scheduler", notify=slack_notifier(config))
        except LockedError as exc:
            return f"skipped: {exc}"
        return f"{result.status}: {result.message.splitlines()[0]}"


def canary_job(config_path: str) -> str:
    from replyloop.canary import judge_canary

    config = load_config(config_path)
    with Store(config.db_path) as store, i18n.workspace():
        outcome = judge_canary(config, store, notify=slack_notifier(config))
    if outcome is None:
        return "no canary"
    if outcome["decision"] == "wait":
        return f"wait ({outcome['outcome']}: {outcome['summary']})"
    return outcome["decision"]


def weekly_report_job(config_path: str) -> str:
    from replyloop.evaluation.report import build_weekly_report
    from replyloop.evaluation.report_slack import post_weekly_report

    config = load_config(config_path)
    with Store(config.db_path) as store, i18n.workspace():
        report = build_weekly_report(config, store)
    if Secrets.from_env().slack_bot_token:
        with i18n.workspace():
            post_weekly_report(config, report)
    return str(getattr(report, "out_dir", report))


# -- rules19: the daily drift alarms and rule proposals (README "Drift alarms", "Rule proposals") --
DRIFT_JOB = "replyloop-drift-alarms"
PROPOSALS_JOB = "replyloop-rule-proposals"


def daily_trigger(spec: str, key: str, timezone: str):
    """``daily 09:30`` (or a 5-field crontab line) in the configured time zone; None for ``off``."""
    from apscheduler.triggers.cron import CronTrigger

    if spec.strip().lower() == "off":
        return None
    match = re.fullmatch(r"\s*daily\s+(\d{1,2}):(\d{2})\s*", spec.lower())
    try:
        if match:
            return CronTrigger(hour=int(match.group(1)), minute=int(match.group(2)), timezone=timezone)
        return CronTrigger.from_crontab(spec, timezone=timezone)
    except (ValueError, LookupError) as exc:
        raise ConfigError(f"{key}: {spec!r} in {timezone!r}: {exc} (use 'daily HH:MM', a crontab line or off)") from None


def drift_job(config_path: str) -> str:
    """Check the drift alarms and post each one that fired to the review channel."""
    from replyloop.drift import run_alarms

    config = load_config(config_path)
    with Store(config.db_path) as store, i18n.workspace():
        report = run_alarms(config, store, notify=slack_notifier(config))
    return ", ".join(f"{c.name}: {c.status}" for c in report.checks)


def proposals_job(config_path: str) -> str:
    """Mine the edits since the last run and post the new rule proposals to the review channel."""
    from replyloop.evaluation.proposals import propose

    config = load_config(config_path)
    with Store(config.db_path) as store:
        run = propose(config, store, actor="scheduler")
        if run.opened and Secrets.from_env().slack_bot_token:
            from replyloop.bot.proposals import post_cards
            from replyloop.bot.slackclient import web_client

            post_cards(web_client(config), store, config.file.slack.review_channel, run.opened)
    return f"{run.reviews} edits read, {len(run.opened)} proposals opened"


def rules19_jobs(config: Config) -> tuple[list[tuple], list[str]]:
    """(jobs to schedule, job ids switched off)."""
    tz = config.file.scheduler.timezone
    jobs, off = [], []
    for job_id, func, spec, key, name in (
            (DRIFT_JOB, drift_job, config.file.drift.schedule, "drift.schedule", "drift alarms"),
            (PROPOSALS_JOB, proposals_job, config.file.proposals.schedule, "proposals.schedule", "rule proposals")):
        trigger = daily_trigger(spec, key, tz)
        if trigger is None:
            off.append(job_id)
        else:
            jobs.append((job_id, func, trigger, name))
    return jobs, off
# -- end rules19 ------------------------------------------------------------------------------


def same_trigger(stored, wanted) -> bool:
    """Whether a stored job's trigger is the configured one. ``str()`` of an APScheduler 3
    trigger omits its time zone, jitter and (for cron) start and end dates, so compare those
    too; an interval trigger's start date is "now" at each build and is left out."""
    from apscheduler.triggers.cron import CronTrigger

    if type(stored) is not type(wanted) or str(stored) != str(wanted):
        return False
    if str(getattr(stored, "timezone", None)) != str(getattr(wanted, "timezone", None)):
        return False
    if getattr(stored, "jitter", None) != getattr(wanted, "jitter", None):
        return False
    if getattr(stored, "end_date", None) != getattr(wanted, "end_date", None):
        return False
    if isinstance(wanted, CronTrigger) and stored.start_date != wanted.start_date:
        return False
    return True


def build_scheduler(config: Config, background: bool = True, start: bool = True):
    """A scheduler with the three jobs, their schedules persisted in the workspace database."""
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.background import BackgroundScheduler
    from apscheduler.schedulers.blocking import BlockingScheduler
    from apscheduler.triggers.interval import IntervalTrigger

    if config.source is None:
        raise ConfigError("the scheduler needs a config file (replyloop.yaml) so jobs can reload it")
    sched = config.file.scheduler
    weekly = weekly_trigger(sched.weekly_report_cron, sched.timezone)
    cls = BackgroundScheduler if background else BlockingScheduler
    scheduler = cls(
        jobstores={"default": SQLAlchemyJobStore(url=f"sqlite:///{Path(config.db_path).resolve()}",
                                                 tablename="apscheduler_jobs")},
        job_defaults={"coalesce": True, "max_instances": 1,
                      "misfire_grace_time": int(sched.misfire_grace_minutes * 60)},
        timezone=sched.timezone,
    )
    args = [str(config.source)]
    jobs = [
        (THRESHOLD_JOB, threshold_job, IntervalTrigger(minutes=sched.check_every_minutes, timezone=sched.timezone),
         "retrain when enough new samples"),
        (CANARY_JOB, canary_job, IntervalTrigger(minutes=sched.check_every_minutes, timezone=sched.timezone),
         "judge the canary"),
        (WEEKLY_JOB, weekly_report_job, weekly, "weekly consistency report"),
    ]
    extra_jobs, jobs_off = rules19_jobs(config)  # rules19: drift alarms, rule proposals
    jobs += extra_jobs
    scheduler.start(paused=True)
    for job_id in jobs_off:  # rules19: a schedule switched off removes its stored job
        if scheduler.get_job(job_id) is not None:
            scheduler.remove_job(job_id)
    for job_id, func, trigger, name in jobs:
        existing = scheduler.get_job(job_id)
        if existing is not None and same_trigger(existing.trigger, trigger) and list(existing.args) == args:
            continue  # keep the stored schedule: a missed run is coalesced into one
        scheduler.add_job(func, trigger, args=args, id=job_id, replace_existing=True, name=name)
    if start:
        scheduler.resume()
    return scheduler


class JobRunner:
    """What ``bot.server.serve`` starts and stops: the scheduler with its three jobs."""

    def __init__(self, config: Config):
        self.config = config
        self.scheduler = None

    def start(self) -> None:
        self.scheduler = build_scheduler(self.config, start=True)
        for job in self.scheduler.get_jobs():
            log.info("scheduled %s: next run %s", job.name, job.next_run_time)

    @property
    def running(self) -> bool:
        """Started and not paused (what ``GET /health`` reports)."""
        from apscheduler.schedulers.base import STATE_RUNNING

        return self.scheduler is not None and self.scheduler.state == STATE_RUNNING

    def shutdown(self, wait: bool = False) -> None:
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=wait)
            self.scheduler = None


def pipeline_starter(config: Config, store: Store):
    """The ``start_pipeline`` callable behind ``/retrain now``: runs the pipeline in the calling
    (background) thread; a running job makes it raise LockedError, which the bot reports."""
    from replyloop.pipeline import run_pipeline

    def start_pipeline(trigger: str = "slack", requested_by: str | None = None, notify=None):
        return run_pipeline(config, store, trigger=trigger, requested_by=requested_by,
                            notify=notify or slack_notifier(config))

    return start_pipeline
