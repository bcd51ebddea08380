"""Sentences that library code builds for people but that are also stored, logged or printed by
``--json`` (issue 22): their ``str`` value is English, the reader's language is asked for where
they are displayed.

    summary = Phrase(N_("{approved}/{reviews} approved without edit"), approved=3, reviews=4)
    str(summary)          # "3/4 approved without edit": the audit log, log lines, --json
    localized(summary)    # "4 次审核中 3 次未修改即通过" inside a Chinese display

The values may be phrases themselves (translated too); ``+`` joins phrases (and plain strings)
into one. The message id is marked with ``N_()`` where the phrase is built, so the catalog has it.
"""

from __future__ import annotations

from replyloop.i18n import _


class Phrase(str):
    """English text that can show itself in the current language: ``localized(p)``."""

    msgid: str
    values: dict

    def __new__(cls, msgid: str, **values) -> "Phrase":
        self = super().__new__(cls, msgid.format(**values))
        self.msgid, self.values = msgid, values
        return self

    def localized(self) -> str:
        msgid = self.msgid
        return _(msgid).format(**{k: localized(v) for k, v in self.values.items()})

    def __add__(self, other) -> "Phrase":
        return Phrase("{a}{b}", a=self, b=other)

    def __radd__(self, other) -> "Phrase":
        return Phrase("{a}{b}", a=other, b=self)

    def __reduce__(self):  # copy and pickle keep the message id
        return (_rebuild, (self.msgid, self.values))


def _rebuild(msgid: str, values: dict) -> Phrase:
    return Phrase(msgid, **values)


def localized(value):
    """A ``Phrase`` in the current language; anything else as it is."""
    return value.localized() if isinstance(value, Phrase) else value
