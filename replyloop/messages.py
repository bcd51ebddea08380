"""One message, two renderings: Slack mrkdwn and plain terminal text.

A message is built from parts once and shown twice::

    msg = message(icon("x"), "Retrain run #3 failed: ", bold("rl-7"), code_block(log_lines))
    str(msg)      # Slack:    ":x: Retrain run #3 failed: *rl-7*\\n```\\n...\\n```"
    msg.plain     # terminal: "Retrain run #3 failed: rl-7\\n..."

``Message`` is a ``str`` whose value is the mrkdwn, so everything that posts text to Slack
keeps working unchanged; a terminal asks ``to_plain(text)``. Text parts are never
interpreted: an ``*`` or a `` ` `` in an error message stays as it is in both renderings
(Slack's ``&``, ``<`` and ``>`` are escaped in the mrkdwn).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Icon:
    name: str  # a Slack emoji name without colons; the terminal shows nothing


@dataclass(frozen=True)
class Bold:
    text: str


@dataclass(frozen=True)
class CodeBlock:
    text: str  # its own lines: a fenced block in Slack, indented-free plain lines in a terminal


Part = str | Icon | Bold | CodeBlock


def icon(name: str) -> Icon:
    return Icon(name)


def bold(text: str) -> Bold:
    return Bold(str(text))


def code_block(text: str) -> CodeBlock:
    return CodeBlock(str(text))


def _escape(text: str) -> str:
    """Slack's three control characters in mrkdwn text."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class Message(str):
    """A str holding the Slack mrkdwn of its parts, with ``.plain`` for a terminal."""

    parts: tuple

    def __new__(cls, parts: tuple[Part, ...], escape: bool = False):
        out = []
        for i, part in enumerate(parts):
            if isinstance(part, Icon):
                out.append(f":{part.name}: ")
            elif isinstance(part, Bold):
                out.append(f"*{_escape(part.text) if escape else part.text}*")
            elif isinstance(part, CodeBlock):
                lead = "" if not out or out[-1].endswith("\n") else "\n"
                tail = "\n" if i + 1 < len(parts) else ""
                out.append(f"{lead}```\n{part.text}\n```{tail}")
            else:
                out.append(_escape(part) if escape else part)
        self = super().__new__(cls, "".join(out))
        self.parts = tuple(parts)
        return self

    def __reduce__(self):  # copy and pickle keep the parts
        return (Message, (self.parts,))

    @property
    def mrkdwn(self) -> str:
        return str.__str__(self)

    @property
    def plain(self) -> str:
        out = []
        for i, part in enumerate(self.parts):
            if isinstance(part, Icon):
                continue
            if isinstance(part, Bold):
                out.append(part.text)
            elif isinstance(part, CodeBlock):
                lead = "" if not out or out[-1].endswith("\n") else "\n"
                tail = "\n" if i + 1 < len(self.parts) else ""
                out.append(f"{lead}{part.text}{tail}")
            else:
                out.append(part)
        return "".join(out)


def message(*parts: Part) -> Message:
    """A message from text, ``icon()``, ``bold()`` and ``code_block()`` parts. Text is used as
    written in both renderings (callers that put Slack links such as ``<@U123>`` in it rely on that)."""
    return Message(tuple(p for p in parts if p != ""))


_EMOJI = re.compile(r"(?m)^:[a-z0-9_+-]+: ")
_FENCE = re.compile(r"(?m)^```\n?|\n?```$")


def to_plain(text: str) -> str:
    """The terminal rendering of ``text``: a Message's ``plain``; for a str from elsewhere (a
    plugin's notifier text), leading :emoji: and ``` fence lines are dropped. Bold marks in a
    plain str are left alone: an ``*`` there may be part of the text."""
    if isinstance(text, Message):
        return text.plain
    text = _EMOJI.sub("", text)
    return "\n".join(line for line in text.splitlines() if line.strip() != "```")
