"""The policy engine: banned promises and terminology, checked on every reply.

    from replyloop.evaluation.policy import load_policies
    engine = load_policies("policies/")       # PolicyError on a bad file; build once, reuse
    result = engine.check("我们保证全額賠付")    # CheckResult(verdict="block", violations=[...])
    engine.fix("请提供快递条码")                 # "请提供电子面单"

How a reply is checked:

0. Markup (HTML, Markdown, Slack mrkdwn), URL-encoding, number forms and look-alike letters are
   read through (``evaluation.readthrough``); spans are mapped back to the original reply.
1. The reply is normalised (``evaluation.textmap``: NFKC, casefold, Traditional to Simplified,
   whitespace / punctuation / zero-width characters dropped).
2. One literal scan (``evaluation.literalscan``: Hyperscan, or ``ahocorasick_rs`` where it has no
   wheel) holds every normalised phrase of every rule, every terminology ``avoid`` term, and per
   regex either all the strings it can match (when there are at most 16) or a few literals one of
   which every match contains (``evaluation.regexcheck``): a regex only runs on replies that
   contain one of its literals. A reply without a match costs one normalisation and one scan
   (every key at every position, overlapping matches). Regexes without a literal are combined into
   one regex that is searched once per reply. So the cost per reply hardly grows with the rule count.
3. Only when something matched is the offset map built: spans are reported in the original text.
   A hit whose original text joins two clauses (``…赔付。全额…``) is dropped (``_joins_clauses``).
   Phrases that start or end with a Latin letter or digit must sit on word boundaries in the
   original text and keep its word breaks (``scam`` does not match ``bus camp``).
4. A rule hit is dropped when the words right next to it in its clause negate it
   (``evaluation.negation``: a chain of negators and modal words just before it, or a refusal
   such as ``不了`` / ``is not possible`` just after it; other hits are cut out of that context).
   Terminology hits are not subject to negation: they are about wording. Rhetorical questions,
   double negation, denied verbs, echoed questions answered yes or no and refuted mentions are
   read there too (issue 17; see ``evaluation.negation``).
5. Hostile text stays linear: the context is searched within ``CONTEXT_WINDOW`` characters of a
   hit, overlapping hits are merged once, and a rule reports at most ``MAX_HITS_PER_RULE`` hits.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from itertools import compress, count, islice
from unicodedata import combining as _combining
from dataclasses import asdict, dataclass, field
from pathlib import Path

from replyloop.evaluation.negation import is_negated
from replyloop.evaluation.literalscan import LiteralScanner
from replyloop.evaluation.policy_files import Phrase, PolicySet, Rule, Term, read_policies
from replyloop.evaluation.readthrough import has_other_reading, needs_read_through, read_through
from replyloop.evaluation.regexcheck import trigger_literals
from replyloop.evaluation.textmap import TextMap, fold, normalise

__all__ = ["CheckResult", "PolicyEngine", "Violation", "load_policies"]

_SEVERITY_RANK = {"pass": 0, "warn": 1, "block": 2}
# Clause boundaries: Chinese and Latin sentence punctuation and newlines ('.' between digits is a decimal point).
# That is ``[，。！？；,!?;\n\r\uff0e\uff61\u2029\u2028]|(?<!\d)\.|\.(?!\d)`` (``_BOUNDARY_PLAIN``),
# written with one leading character class so that ``re`` scans for it in C instead of trying
# the alternation at every position (several times faster on a clause without a boundary): a
# character of the class that is not a '.', or a '.' without a digit before it or after it.
_BOUNDARY_PLAIN = r"[，。！？；,!?;\n\r\uff0e\uff61\u2029\u2028]|(?<!\d)\.|\.(?!\d)"
_BOUNDARY = re.compile(r"[，。！？；,!?;\n\r\uff0e\uff61\u2029\u2028.](?:(?<!\.)|(?<!\d\.)|(?!\d))")
_SENTENCE_END_PLAIN = r"[。！？；!?;\n\r\uff0e\uff61\u2029\u2028]|(?<!\d)\.|\.(?!\d)"  # an answer runs to it
_SENTENCE_END = re.compile(r"[。！？；!?;\n\r\uff0e\uff61\u2029\u2028.](?:(?<!\.)|(?<!\d\.)|(?!\d))")
_ALNUM = re.compile(r"[a-z0-9]")
_WORDS = re.compile(r"[^\W_]+")


@dataclass(frozen=True)
class Violation:
    rule: str
    severity: str            # "block" | "warn"
    message: str
    start: int               # span in the original text
    end: int
    match: str               # text[start:end]
    suggestion: str | None = None  # terminology: the preferred term

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class CheckResult:
    verdict: str             # "pass" | "warn" | "block"
    violations: list[Violation] = field(default_factory=list)

    @property
    def blocked(self) -> bool:
        return self.verdict == "block"

    def to_dict(self) -> dict:
        return {"verdict": self.verdict, "violations": [v.to_dict() for v in self.violations]}


def _latin_gaps(text: str) -> tuple[int, ...]:
    """Positions in the compact form where a word break sat between two Latin letters / digits."""
    gaps, length, prev = [], 0, ""
    for word in _WORDS.findall(fold(text)):
        if prev and _ALNUM.match(prev[-1]) and _ALNUM.match(word[0]):
            gaps.append(length)
        length += len(word)
        prev = word
    return tuple(gaps)


# Characters that do not show as a word break: invisible format characters (zero-width space,
# soft hyphen, word joiner, ...) and Markdown emphasis marks (``ful\u200bl``, ``c**o**mpensation``).
_INVISIBLE = re.compile(r"[\u00ad\u034f\u180e\u200b-\u200f\u2060-\u2064\ufeff*_~`]+")


def _gaps_match(hit: str, gaps: tuple[int, ...]) -> bool:
    """Does the hit keep the phrase's word breaks? Read with and without the characters that may
    not show (``_INVISIBLE``): either reading will do (when in doubt, the hit stays)."""
    if _latin_gaps(hit) == gaps:
        return True
    return _INVISIBLE.search(hit) is not None and _latin_gaps(_INVISIBLE.sub("", hit)) == gaps


@dataclass(frozen=True)
class _Literal:
    """One literal-scan entry: a rule phrase, a terminology term, or a regex trigger."""

    kind: str                # "rule" | "term" | "trigger"
    index: int               # rule, term or pattern index
    phrase: Phrase | None = None
    latin_start: bool = False
    latin_end: bool = False
    gaps: tuple[int, ...] = ()
    word_check: bool = False  # latin_start or latin_end or gaps: check the hit's word boundaries


def _literal(kind: str, index: int, phrase: Phrase) -> _Literal:
    latin_start = bool(_ALNUM.match(phrase.norm[0]))
    latin_end = bool(_ALNUM.match(phrase.norm[-1]))
    gaps = _latin_gaps(phrase.text) if _ALNUM.search(phrase.norm) else ()
    return _Literal(kind, index, phrase, latin_start, latin_end, gaps, latin_start or latin_end or bool(gaps))


class PolicyEngine:
    """Compiled policies. Build once (``load_policies``), then call ``check`` / ``fix`` per reply."""

    def __init__(self, policies: PolicySet, scan_backend: str | None = None):
        self.rules: tuple[Rule, ...] = policies.rules
        self.terms: tuple[Term, ...] = policies.terms
        self.files: tuple[Path, ...] = policies.files
        self._patterns: list[tuple[int, re.Pattern]] = []
        untriggered: list[int] = []
        entries: dict[str, list[_Literal]] = {}
        for r, rule in enumerate(self.rules):
            for phrase in rule.phrases:
                entries.setdefault(phrase.norm, []).append(_literal("rule", r, phrase))
            for pattern in rule.patterns:
                p = len(self._patterns)
                self._patterns.append((r, re.compile(pattern)))
                triggers = trigger_literals(pattern)
                for trigger in triggers or ():
                    entries.setdefault(trigger, []).append(_Literal("trigger", p))
                if not triggers:
                    untriggered.append(p)
        for t, term in enumerate(self.terms):
            for phrase in term.avoid:
                entries.setdefault(phrase.norm, []).append(_literal("term", t, phrase))
        # One scan over all keys (``evaluation.literalscan``); a match is (key index, start, end)
        # in characters of the normalised text, every key that occurs at every position
        # (as a plain ``str.find`` over all keys would).
        self._keys: tuple[str, ...] = tuple(entries)
        self._values: tuple[tuple[tuple[_Literal, ...], tuple[int, ...]], ...] = tuple(
            (tuple(v for v in values if v.kind != "trigger"), tuple(v.index for v in values if v.kind == "trigger"))
            for values in entries.values()
        )
        self._scanner = LiteralScanner(self._keys, backend=scan_backend)
        self._scan = self._scanner.find if entries else None
        self._untriggered = tuple(untriggered)
        self._any_untriggered = (
            re.compile("|".join(f"(?:{self._patterns[p][1].pattern})" for p in untriggered)) if untriggered else None
        )

    def __repr__(self) -> str:
        return f"PolicyEngine({len(self.rules)} rules, {len(self.terms)} terminology entries)"

    # -- matching -------------------------------------------------------------------------

    def _matches(self, norm: str) -> list[tuple[int, int, int]]:
        """Every (key index, nstart, nend) of a literal key in ``norm``, overlapping ones included."""
        return self._scan(norm) if self._scan is not None else []

    def _raw_hits(self, norm: str, matches: list[tuple[int, int, int]] | None = None) -> list[tuple]:
        """(literal or pattern index, nstart, nend) over the normalised text.

        ``matches`` is the literal scan of ``norm`` when the caller already has it.
        """
        hits: list[tuple] = []
        run: set[int] = set()
        if matches is None:
            matches = self._matches(norm)
        values = self._values
        for key, nstart, nend in matches:
            literals, triggers = values[key]
            if triggers:
                run.update(triggers)
            for lit in literals:
                hits.append((lit, nstart, nend))
        if self._any_untriggered is not None and self._any_untriggered.search(norm):
            run.update(self._untriggered)
        for p in sorted(run):
            for m in self._patterns[p][1].finditer(norm):
                if m.end() > m.start():
                    hits.append((p, m.start(), m.end()))
        return hits

    @staticmethod
    def _on_word_boundaries(text: str, lit: _Literal, start: int, end: int) -> bool:
        if lit.latin_start and start > 0 and _ALNUM.match(fold(text[start - 1])):
            return False
        if lit.latin_end and end < len(text) and _ALNUM.match(fold(text[end])):
            return False
        if lit.latin_start or lit.latin_end or lit.gaps:
            return _gaps_match(text[start:end], lit.gaps)
        return True

    def check(self, text: str) -> CheckResult:
        """Check one reply; spans point into ``text``.

        Markup, encodings, number forms and look-alike letters are read through first
        (``evaluation.readthrough``): the reply is checked as it reads, spans map back to ``text``.
        """
        if needs_read_through(text) is None:  # the usual reply: one character-class search
            # ``self._check(text)``, its fast path inlined (this runs on every reply)
            norm, aligned = normalise(text)
            matches = self._scan(norm) if self._scan is not None else []
            if not matches and (self._any_untriggered is None or self._any_untriggered.search(norm) is None):
                return CheckResult("pass", [])
            return self._check_hits(text, norm, aligned, matches)
        result = self._check_read(text, read_through(text))
        # Markup that only some renderers hide (hidden HTML, ~single tilde~ strike-through, a bidi
        # override): the reply blocks when either reading blocks (``readthrough._HIDDEN``).
        if result.verdict != "block" and has_other_reading(text):
            second = self._check_read(text, read_through(text, other=True))
            if second.verdict == "block":
                return second
        return result

    def _check_read(self, text: str, clean) -> CheckResult:
        """``_check`` of the reply as read (``clean``; None: as written), spans in ``text``."""
        if clean is None:
            return self._check(text)
        result = self._check(clean.text)
        if not result.violations:
            return result
        violations = []
        for v in result.violations:
            start, end = clean.span(v.start, v.end)
            violations.append(Violation(v.rule, v.severity, v.message, start, end, text[start:end], v.suggestion))
        return CheckResult(result.verdict, violations)

    def _check(self, text: str) -> CheckResult:
        norm, aligned = normalise(text)
        matches = self._scan(norm) if self._scan is not None else []
        # Fast path (most replies): no literal matched and no literal-free regex matches.
        if not matches and (self._any_untriggered is None or self._any_untriggered.search(norm) is None):
            return CheckResult("pass", [])
        return self._check_hits(text, norm, aligned, matches)

    def _check_hits(self, text: str, norm: str, aligned: bool, matches: list[tuple[int, int, int]]) -> CheckResult:
        """``_check`` of ``text`` once ``(norm, aligned) = normalise(text)`` and ``matches`` (its
        literal scan) are known and something may have matched."""
        hits = self._raw_hits(norm, matches)
        if not hits:
            return CheckResult("pass", [])
        # The offset map (``TextMap``): ``starts[i]`` is the original index of ``norm[i]``.
        if aligned:
            # ``TextMap.aligned(text, norm).starts`` (the indices of the letters and digits of
            # ``text``), only as far as the hits need: from the start up to the last hit's end, or
            # from the end back to the first hit's start when that is shorter (the entries
            # before it are left 0 and never read).
            first = min(h[1] for h in hits) if len(hits) > 1 else hits[0][1]
            last = max(h[2] for h in hits) if len(hits) > 1 else hits[0][2]
            if last <= len(norm) - first:
                starts = list(islice(compress(count(), map(str.isalnum, text)), last))
            else:
                tail = list(islice(compress(count(len(text) - 1, -1), map(str.isalnum, reversed(text))),
                                   len(norm) - first))
                tail.reverse()
                starts = [0] * first + tail
        else:
            tm = TextMap.build(text)
            starts = tm.starts
            if tm.norm != norm:  # only for pathological text (e.g. a mark separated from its letter)
                hits = self._raw_hits(tm.norm)
        found: dict[tuple, Violation] = {}
        if len(hits) > 1:
            hits.sort(key=lambda h: (h[1], -h[2]))
        spans: list[tuple[int, int]] = []   # every accepted hit (rules and terminology)
        rule_hits: list[tuple[Rule, int, int]] = []
        length = len(text)
        for what, ns, ne in hits:
            # ``TextMap.span(ns, ne)``: the end goes on over combining marks after the last character
            start, end = starts[ns], starts[ne - 1] + 1
            while end < length and _combining(text[end]):
                end += 1
            literal = isinstance(what, _Literal)
            if literal and what.word_check and not self._on_word_boundaries(text, what, start, end):
                continue
            # A clause boundary is not a letter or a digit: in aligned text a hit whose original
            # span is as long as its normalised one has none inside (nothing was dropped there).
            if ((not aligned or end - start != ne - ns) and _BOUNDARY.search(text, start, end) is not None
                    and _joins_clauses(text, start, end)):
                continue
            spans.append((start, end))
            if literal:
                if what.kind == "term":
                    term = self.terms[what.index]
                    v = Violation(term.id, "warn", f"用“{term.preferred}”，不用“{what.phrase.text}”",
                                  start, end, text[start:end], term.preferred)
                    found.setdefault((v.rule, start, end), v)
                    continue
                rule = self.rules[what.index]
            else:
                rule = self.rules[self._patterns[what][0]]
            rule_hits.append((rule, start, end))
        return self._verdict(text, spans, rule_hits, found)

    @staticmethod
    def _verdict(text: str, spans: list[tuple[int, int]], rule_hits: list[tuple[Rule, int, int]],
                 found: dict[tuple, Violation]) -> CheckResult:
        """The result once the accepted hits are known: ``spans`` (every one, rules and
        terminology, in order), ``rule_hits`` (the rules' own) and ``found`` (terminology
        violations so far). A rule hit in a negated clause is left out."""
        clauses = _Clauses(text, spans)
        reported: dict[str, int] = {}
        for rule, start, end in rule_hits:
            if (rule.id, start, end) in found or reported.get(rule.id, 0) >= MAX_HITS_PER_RULE:
                continue
            if clauses.negated(start, end):
                continue
            reported[rule.id] = reported.get(rule.id, 0) + 1
            v = Violation(rule.id, rule.severity, rule.message, start, end, text[start:end])
            found.setdefault((v.rule, start, end), v)
        if len(found) <= 1:  # the usual hit: nothing to order or nest
            violations = list(found.values())
            return CheckResult(violations[0].severity if violations else "pass", violations)
        violations = _drop_nested(sorted(found.values(), key=lambda v: (v.start, -v.end, v.rule)))
        verdict = max((v.severity for v in violations), key=_SEVERITY_RANK.get, default="pass")
        return CheckResult(verdict, violations)

    def check_many(self, texts) -> list[CheckResult]:
        return [self.check(t) for t in texts]

    def fix(self, text: str) -> str:
        """Rewrite every terminology hit to the preferred term (rules are left to a human)."""
        edits = [v for v in self.check(text).violations if v.suggestion is not None]
        out, last = [], 0
        for v in sorted(edits, key=lambda v: v.start):
            if v.start < last:
                continue  # overlaps an edit already made
            out.append(text[last:v.start])
            out.append(v.suggestion)
            last = v.end
        out.append(text[last:])
        return "".join(out)


# Negation reads the words right next to a hit: its context is cut to this many characters on
# each side (a clause of a real reply is far shorter), so hostile text stays linear.
CONTEXT_WINDOW = 256
# A rule reports at most this many violations per reply (its verdict is settled by the first).
MAX_HITS_PER_RULE = 50


class _Clauses:
    """The clause context of every hit of one text (built once per text, whatever its hit count).

    ``spans`` are every accepted hit. Overlapping hits form one component (a hit inside
    another is negated with it); the neighbouring components end a hit's context, and so do
    the clause boundaries, which are searched for within ``CONTEXT_WINDOW`` characters only.
    """

    def __init__(self, text: str, spans=()):
        self.text = text
        starts: list[int] = []
        ends: list[int] = []
        for s, e in (sorted(spans) if len(spans) > 1 else ()):
            if ends and s < ends[-1]:
                if e > ends[-1]:
                    ends[-1] = e
            else:
                starts.append(s)
                ends.append(e)
        self.starts, self.ends = starts, ends
        self._negated: dict = {}

    def context(self, start: int, end: int) -> tuple[str, str]:
        return self.around(start, end)[:2]

    def negated(self, start: int, end: int) -> bool:
        """``is_negated`` of the hit's context; hits of one component share it (computed once)."""
        key = (start, end)
        starts = self.starts
        if starts:
            i = bisect_right(starts, start) - 1
            if i >= 0 and self.ends[i] > start:
                key = i
        cache = self._negated
        if key not in cache:
            cache[key] = is_negated(*self.around(start, end))
        return cache[key]

    def around(self, start: int, end: int) -> tuple[str, str, str, str]:
        """(prefix, suffix, answer, topic): ``answer`` is the next clause when this one ends with a
        question mark (``全额赔付？不行``), ``topic`` the next clause when this one names the hit as
        its topic (``关于全额赔付，我们无法承诺``, ``As for full compensation, we cannot offer that``);
        else empty."""
        text, starts, ends = self.text, self.starts, self.ends
        lo, hi = max(0, start - CONTEXT_WINDOW), min(len(text), end + CONTEXT_WINDOW)
        if starts:
            i = bisect_right(starts, start) - 1   # the component that holds the hit
            if i >= 0 and ends[i] > start:
                start, end = starts[i], max(end, ends[i])
                lo, hi = max(0, start - CONTEXT_WINDOW), min(len(text), end + CONTEXT_WINDOW)
                if i > 0 and ends[i - 1] > lo:    # the hit before ends the context on the left
                    lo = ends[i - 1]
                if i + 1 < len(starts) and starts[i + 1] < hi:
                    hi = starts[i + 1]
        # The clause starts after the last boundary before the hit: the first one in the reversed
        # text before it (the boundary pattern reads the same both ways: a '.' between digits is a
        # decimal point). The reversed slice starts with the hit's first character and ends one
        # character before ``lo``, so the look-arounds see what they would see forwards.
        base = lo - 1 if lo else 0
        last = _BOUNDARY.search(text[base:start + 1][::-1], 1)
        if last is not None and start - last.start() >= lo:
            lo = start - last.start() + 1
        nxt = _BOUNDARY.search(text, end, hi)  # the lookbehind ``(?<!\d)`` still sees the hit's last character
        answer = ""
        if nxt:
            hi = nxt.start()
            if nxt.group() in "？?":
                after = nxt.end()
                # 全额赔付？？ 不行; the answer on the next line, after a quote mark or a dash
                # (``Full compensation?\n\nNo.``, ``？> 不行``, ``? — No.``)
                while after < len(text) and text[after] in _BEFORE_ANSWER:
                    after += 1
                stop = _SENTENCE_END.search(text, after, after + CONTEXT_WINDOW)
                answer = text[after:stop.start() if stop else min(len(text), after + CONTEXT_WINDOW)]
            elif nxt.group() in "，,：:" and _is_topic(text, lo, start, end, hi):
                after = nxt.end()
                stop = _SENTENCE_END.search(text, after, after + CONTEXT_WINDOW)
                topic = text[after:stop.start() if stop else min(len(text), after + CONTEXT_WINDOW)]
                return text[lo:start], text[end:hi], answer, topic
        return text[lo:start], text[end:hi], answer, ""


def _context(text: str, start: int, end: int, spans) -> tuple[str, str]:
    """The text before and after the hit ``[start, end)`` in its clause, for negation.

    A hit that overlaps the beginning (or end) of this one widens it: a hit inside another is
    negated with it. Another hit in the clause ends the context: its words (``绝对不会有问题``)
    are not negators of this one. (One text with many hits: build ``_Clauses`` once.)
    """
    return _Clauses(text, spans).context(start, end)


_LETTER = re.compile(r"[^\W_]")


def _joins_clauses(text: str, start: int, end: int) -> bool:
    """True when the hit ``[start, end)`` is the end of one clause and the start of the next
    (``我们会赔付。全额退款需要审核``: normalisation drops the full stop, but no one reads
    ``赔付全额`` there).

    That is: every piece between the clause boundaries inside the hit has at least two letters
    or digits, and both outer clauses go on beyond the hit. A promise spelt out with a boundary
    between single characters (``全。额。赔。付``), or whose pieces make up a whole clause on
    one side (``我们保证全额。赔付。``), still counts: when in doubt, the hit stays.
    """
    pieces = _BOUNDARY.split(text[start:end])
    if len(pieces) < 2:
        return False
    for piece in pieces:
        if len(piece) < 2 or (not piece.isalnum() and len(_LETTER.findall(piece)) < 2):
            return False
    return _goes_on(text, start - 1, -1) and _goes_on(text, end, 1)


def _goes_on(text: str, i: int, step: int) -> bool:
    """Does the clause go on from ``text[i]`` (step -1: to the left, 1: to the right) with a
    letter or digit before a clause boundary? Looks at most ``CONTEXT_WINDOW`` characters."""
    for i in range(i, min(len(text), i + CONTEXT_WINDOW) if step > 0 else max(-1, i - CONTEXT_WINDOW), step):
        ch = text[i]
        if ch.isalnum():
            return True
        if ch in _CLAUSE_ENDS and not (ch == "." and 0 < i < len(text) - 1
                                        and text[i - 1].isdigit() and text[i + 1].isdigit()):
            return False
    return False


# A clause that names the hit as its topic (关于全额赔付， / 您说的全额赔付， / As for full compensation,):
# the next clause says what becomes of it. Only the hit's own clause, ending right after the hit
# (or 的话, 的问题, 这一点, 的要求 ...).
# The marker is followed by the hit within a few words that make no statement (关于您说的全额赔付, not
# 关于售后我们全额赔付: a subject or a modal word there makes the clause a promise).
_TOPIC = re.compile(r"(?:关于|对于|至于|针对|(?:您|你|客户|顾客|亲)(?:所)?(?:说|提到|要求|提出|咨询|问|申请|反馈)的)"
                    r"(?:(?!我们|本店|平台|店铺|会|将|能|可以|保证|承诺|一定|肯定|都|就)[^，,。.!?！？；;]){0,10}$"
                    r"|\b(?:as\s+for|regarding|concerning|about|with\s+regard\s+to)(?:\s+(?:a|an|the|your|our))?\s*$", re.I)
_TOPIC_AFTER = re.compile(r"[\s\"'“”‘’「」*_]*(的话|的问题|问题|这一点|这点|这个|的要求|要求|的申请|一事|事宜|的事)?"
                          r"[\s\"'“”‘’「」*_]*", re.I)


def _is_topic(text: str, lo: int, start: int, end: int, hi: int) -> bool:
    after = _TOPIC_AFTER.fullmatch(text, end, hi)
    if after is None:
        return False
    return after.group(1) == "的话" or _TOPIC.search(text, max(lo, start - 40), start) is not None


_BEFORE_ANSWER = frozenset("？?！! \t\n\r>—–-")
_CLAUSE_ENDS = frozenset("，。！？；,!?;.\n\r\uff0e\uff61\u2029\u2028")


def _drop_nested(violations: list[Violation]) -> list[Violation]:
    """Drop a hit of a rule that lies inside another hit of the same rule.

    ``violations`` are sorted by (start, -end): a hit is nested when an earlier kept hit of its
    rule reaches at least as far.
    """
    kept: list[Violation] = []
    reach: dict[str, int] = {}
    for v in violations:
        if reach.get(v.rule, -1) >= v.end:
            continue
        kept.append(v)
        reach[v.rule] = v.end
    return kept


def load_policies(directory: str | Path | None = None) -> PolicyEngine:
    """Load and compile every policy file of ``directory`` (default: the shipped ``policies/``).

    Raises ``replyloop.errors.PolicyError`` naming file, line and rule id; nothing is half-loaded.
    """
    if directory is None:
        from replyloop.paths import default_policies_dir

        directory = default_policies_dir()
    return PolicyEngine(read_policies(directory))
