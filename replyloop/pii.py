"""Mask personal data (phone numbers, emails, ID-card and order numbers) before data leaves the store."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

# Full-width digits, letters and punctuation (a Chinese IME in full-width mode) are matched as
# their ASCII forms. One character to one character, so match offsets in the
# translated text are offsets in the original, and unmasked text keeps its original characters.
_HALF_WIDTH = str.maketrans({**{chr(0xFF01 + i): chr(0x21 + i) for i in range(94)}, "\u3000": " "})  # ！..～

# Order first: ID-card and order numbers are long digit runs that also contain phone-like parts.
PATTERNS: dict[str, re.Pattern] = {
    "email": re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"),
    # 18 characters in 6-8-4 groups (region, birth date, sequence + check), optionally spaced or dashed.
    "id_card": re.compile(r"(?<![0-9])[1-9]\d{5}[\s-]?(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])"
                          r"[\s-]?\d{3}[0-9Xx](?![0-9])"),
    "order": re.compile(r"(?:(?<=订单号)|(?<=订单)|(?<=单号)|(?<=order)|(?<=order no\.)|(?<=order #))"
                        r"[\s:#是为]*[A-Za-z]{0,3}\d{8,24}|(?<![0-9])\d{14,24}(?![0-9])", re.IGNORECASE),
    # Mobile: 3-4-4 (optionally +86 / 0086 / 86 first); after a country code also 4-3-4.
    "phone": re.compile(r"(?<![0-9])(?:(?:\+|00)?86[\s-]?)?1[3-9]\d(?:[\s-]?\d{4}){2}(?![0-9])"
                        r"|(?<![0-9])(?:\+|00)?86[\s-]?1[3-9]\d{2}[\s-]?\d{3}[\s-]?\d{4}(?![0-9])"),
    # Landline: a 0-prefixed area code of 3-4 digits (010, 0755) in parentheses or followed by a
    # space or dash, then 7-8 digits; run together (01012345678) only after a phone word, so
    # invoice codes, barcodes and other 0-led numbers stay readable.
    "landline": re.compile(r"(?<![0-9])(?:\(0[1-9]\d{1,2}\)[\s-]?|0[1-9]\d{1,2}[\s-])\d{7,8}(?![0-9])"
                           r"|(?:(?<=电话)|(?<=座机)|(?<=固话)|(?<=tel)|(?<=phone))[\s:：是为]*0[1-9]\d{1,2}\d{7,8}(?![0-9])",
                           re.IGNORECASE),
}
# The Scrubber switch (and the count) each pattern belongs to.
KIND_OF = {"landline": "phone"}
MASKS = {"email": "[EMAIL]", "id_card": "[ID_CARD]", "order": "[ORDER]", "phone": "[PHONE]"}
_LEAD = " \t\u3000:：#＃是为"  # kept before the mask so "订单号是[ORDER]" stays readable


@dataclass
class Scrubber:
    phone: bool = True
    email: bool = True
    id_card: bool = True
    order: bool = True

    def __post_init__(self):
        self.counts: Counter = Counter()

    def scrub(self, text: str) -> str:
        matched = text.translate(_HALF_WIDTH)  # same length as text
        for name, pattern in PATTERNS.items():
            kind = KIND_OF.get(name, name)
            if not getattr(self, kind):
                continue
            pieces, last = [], 0
            for match in pattern.finditer(matched):
                start, end = match.span()
                value = text[start:end]
                lead = len(value) - len(value.lstrip(_LEAD))
                pieces += [text[last:start], value[:lead], MASKS[kind]]
                last = end
                self.counts[kind] += 1
            if pieces:
                text = "".join(pieces) + text[last:]
                matched = text.translate(_HALF_WIDTH)
        return text
