"""The environment of the processes a run launches (trainer, ``evaluation.command``).

They never need the bot's secrets, and a cluster launcher (``srun``, ``kubectl``) would carry
them into a job: ``child_env`` drops the Slack tokens, the signing secret and the intake token.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

SECRET_VARS = ("SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET", "SLACK_APP_TOKEN", "REPLYLOOP_INTAKE_TOKEN")
# any other Slack or replyloop credential by its name (SLACK_CLIENT_SECRET, REPLYLOOP_..._TOKEN)
_SECRET_NAME = re.compile(r"^(SLACK|REPLYLOOP)_\w*(TOKEN|SECRET|PASSWORD)\w*$", re.IGNORECASE)


def is_secret(name: str) -> bool:
    return name in SECRET_VARS or bool(_SECRET_NAME.match(name))


def child_env(extra: Mapping[str, str] | None = None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) without the secrets, plus ``extra``."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if not is_secret(k)}
    env.update(extra or {})
    return env
