"""Mask personal data (phone numbers, emails, ID-card and order numbers) before data leaves the store."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

# Order first: ID-card and order numbers are long digit runs that also contain phone-like parts.
PATTERNS: dict[str, re.Pattern] = {
    "email": re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"),
    "id_card": re.compile(r"(?<![0-9])[1-9]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[0-9Xx](?![0-9])"),
    "order": re.compile(r"(?:(?<=订单号)|(?<=订单)|(?<=单号)|(?<=order)|(?<=order no\.)|(?<=order #))[\s:：#]*[A-Za-z]{0,3}\d{8,24}|(?<![0-9])\d{14,24}(?![0-9])", re.IGNORECASE),
    "phone": re.compile(r"(?<![0-9])(?:\+?86[\s-]?)?1[3-9]\d(?:[\s-]?\d{4}){2}(?![0-9])"),
}
MASKS = {"email": "[EMAIL]", "id_card": "[ID_CARD]", "order": "[ORDER]", "phone": "[PHONE]"}


@dataclass
class Scrubber:
    phone: bool = True
    email: bool = True
    id_card: bool = True
    order: bool = True

    def __post_init__(self):
        self.counts: Counter = Counter()

    def scrub(self, text: str) -> str:
        for kind, pattern in PATTERNS.items():
            if not getattr(self, kind):
                continue
            text, n = pattern.subn(lambda m, k=kind: self._mask(m, k), text)
            self.counts[kind] += n
        return text

    @staticmethod
    def _mask(match: re.Match, kind: str) -> str:
        value = match.group(0)
        lead = len(value) - len(value.lstrip(" :：#"))  # keep "订单号：" punctuation readable
        return value[:lead] + MASKS[kind]
