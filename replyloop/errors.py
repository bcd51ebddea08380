"""User-facing errors. Each class's docstring is its default message.

Library code raises these; only the CLI and the Slack listeners turn them into an
exit code or a Slack message.

Exit codes of every ``replyloop`` command (the README's "Exit codes" table):
0 success, 1 the work failed or was refused, 2 bad input (a usage mistake, a bad file, path,
option or config, an unknown or ambiguous reference), 3 the promotion gate failed
(``eval``, ``retrain``).
"""

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_GATE_FAILED = 3


class ReplyloopError(Exception):
    """replyloop failed"""

    exit_code = 1

    def __init__(self, message: str | None = None):
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigError(ReplyloopError):
    """Invalid configuration"""

    exit_code = 2


class DataFormatError(ReplyloopError):
    """Malformed input file"""

    exit_code = 2


class NotFoundError(ReplyloopError):
    """Record not found"""


class UsageError(ReplyloopError):
    """Invalid input"""

    exit_code = 2


class PathError(UsageError):
    """A path given cannot be used"""


class SnapshotNotFound(NotFoundError):
    """Snapshot not found"""

    exit_code = 2


class AmbiguousError(UsageError):
    """The short reference matches more than one record"""


class ConflictError(ReplyloopError):
    """The record was changed by someone else first"""


class LockedError(ReplyloopError):
    """Another run holds the lock"""


class PolicyError(ReplyloopError):
    """Invalid policy file"""

    exit_code = 2


class TrainingError(ReplyloopError):
    """Training failed"""


class GateFailed(ReplyloopError):
    """The promotion gate did not pass"""


class FieldError(DataFormatError):
    """A field of the input is invalid"""

    def __init__(self, field: str, message: str, where: str | None = None):
        self.field, self.reason, self.where = field, message, where
        super().__init__(f"{where}: {message}" if where else message)

    def at(self, where: str) -> "FieldError":
        """The same error located in a file (``path:line``)."""
        return FieldError(self.field, self.reason, where)
