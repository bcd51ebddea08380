"""Entry point: ``replyloop`` (console script) and ``python -m replyloop``."""

from __future__ import annotations

import importlib
import os
import sys

import typer
from typer.core import TyperGroup

from replyloop.errors import ReplyloopError


# typer >= 0.29 vendors click; take its ClickException from the class tree it really uses.
_ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


class UserError(_ClickException):
    """A ReplyloopError shown as ``Error: message`` with its exit code, no traceback."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class _Group(TyperGroup):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ReplyloopError as exc:
            raise UserError(str(exc), exc.exit_code) from None


app = typer.Typer(
    cls=_Group,
    name="replyloop",
    help="Keep a customer-service LLM consistent with what its supervisors approve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    add_completion=False,
)

# Each module defines register(app). Order = order in --help.
COMMAND_MODULES = [
    "replyloop.cli.workspace",   # init
    "replyloop.cli.data",        # data import/export/stats/snapshot
    "replyloop.cli.check",       # check
    "replyloop.cli.train",       # train, train merge, train export
    "replyloop.cli.evaluate",    # eval
    "replyloop.cli.models",      # models ..., draft
    "replyloop.cli.pipeline",    # retrain
    "replyloop.cli.serve",       # serve
    "replyloop.cli.report",      # report weekly
    "replyloop.cli.demo",        # demo
    "replyloop.cli.outbox",      # outbox list|retry, automation list|pin|unpin (deliver21)
    "replyloop.cli.rules",       # rules propose/list/accept/dismiss, reply (rules19)
]

for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(app)


def main() -> None:
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no "Loading weights" bars in CLI output
    # peft calls a transformers method that transformers 5 deprecates: not the user's concern
    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)
    app(prog_name="replyloop")


if __name__ == "__main__":
    sys.exit(main())
