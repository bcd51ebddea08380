"""Static checks on policy regexes, done once at load time.

- ``backtracking_problem(pattern)``: a reason when the regex can backtrack catastrophically
  (a variable-length quantifier nested in another unbounded one, ``(a+)+``, ``(a*)*``,
  ``(\\d{1,3})+``; overlapping alternatives under an unbounded quantifier, ``(a|a)*``,
  ``(a|ab)+``), else None.
- ``required_literal(pattern)``: the longest literal run every match must contain
  (``保证在?(24|二十四)小时内?发货`` -> ``保证``), used as an Aho-Corasick trigger so a pattern
  only runs on replies that contain its literal; None when there is none.
- ``trigger_literals(pattern)``: all the strings a pattern can match when there are only a few
  (``风一(很|非常)?见线`` -> three strings), else ``[required_literal(pattern)]``: the automaton
  triggers of a pattern.
- ``dead_ranges(pattern, alive)``: the class ranges none of whose characters is ``alive``
  (``[A-Z]`` against case-folded text), so a rule that could never fire is rejected at load time.
- ``unsupported(pattern)``: a reason for constructs the engine does not allow (backreferences,
  named groups, inline flags), since patterns are combined into one regex.

They read the parse tree of Python's own regex parser (``re._parser``).
"""

from __future__ import annotations

import re

try:  # Python >= 3.11
    from re import _constants as C
    from re import _parser as P
except ImportError:  # pragma: no cover - older Pythons
    import sre_constants as C  # type: ignore
    import sre_parse as P  # type: ignore

_REPEATS = (C.MAX_REPEAT, C.MIN_REPEAT) + ((C.POSSESSIVE_REPEAT,) if hasattr(C, "POSSESSIVE_REPEAT") else ())
_ANY = "any"


def _parse(pattern: str):
    return P.parse(pattern)


def _items(sub):
    return list(sub.data if hasattr(sub, "data") else sub)


def _children(op, av):
    """Sub-sequences of one parse node."""
    if op in _REPEATS:
        return [av[2]]
    if op == C.SUBPATTERN:
        return [av[-1]]
    if op == C.BRANCH:
        return list(av[1])
    if op in (C.ASSERT, C.ASSERT_NOT):
        return [av[1]]
    if op == getattr(C, "ATOMIC_GROUP", None):
        return [av]
    if op == C.GROUPREF_EXISTS:
        return [x for x in av[1:] if x is not None]
    return []


def _has_variable_repeat(seq) -> bool:
    for op, av in _items(seq):
        if op in _REPEATS and av[1] > 1 and av[0] != av[1]:
            return True
        if any(_has_variable_repeat(child) for child in _children(op, av)):
            return True
    return False


def _first_set(seq):
    """Characters a sequence can start with: a set of (lo, hi) ranges, or _ANY."""
    ranges = set()
    for op, av in _items(seq):
        if op == C.LITERAL:
            ranges.add((av, av))
            return ranges
        if op == C.IN:
            for iop, iav in av:
                if iop == C.LITERAL:
                    ranges.add((iav, iav))
                elif iop == C.RANGE:
                    ranges.add(tuple(iav))
                else:  # categories, negation
                    return _ANY
            return ranges
        if op == C.SUBPATTERN:
            inner = _first_set(av[-1])
            if inner == _ANY:
                return _ANY
            ranges |= inner
            return ranges
        if op == C.BRANCH:
            for alt in av[1]:
                inner = _first_set(alt)
                if inner == _ANY:
                    return _ANY
                ranges |= inner
            return ranges
        if op in _REPEATS:
            inner = _first_set(av[2])
            if inner == _ANY:
                return _ANY
            ranges |= inner
            if av[0] == 0:
                continue  # optional: what follows can start the match too
            return ranges
        if op in (C.AT, C.ASSERT, C.ASSERT_NOT):
            continue
        return _ANY  # ANY, NOT_LITERAL, CATEGORY, ...
    return ranges


def _overlap(a, b) -> bool:
    if a == _ANY or b == _ANY:
        return True
    return any(lo1 <= hi2 and lo2 <= hi1 for lo1, hi1 in a for lo2, hi2 in b)


def _class_overlaps(items) -> bool:
    ranges = [tuple(iav) if iop == C.RANGE else (iav, iav) for iop, iav in items if iop in (C.LITERAL, C.RANGE)]
    categories = [iav for iop, iav in items if iop == C.CATEGORY]
    if len(categories) > 1:
        return True
    return any(_overlap({ranges[i]}, {ranges[j]}) for i in range(len(ranges)) for j in range(i + 1, len(ranges)))


def _branches_overlap(seq) -> bool:
    for op, av in _items(seq):
        if op == C.IN and _class_overlaps(av):
            return True  # (a|a) is parsed into the class [aa]
        if op == C.BRANCH:
            if any(not _items(alt) for alt in av[1]):
                return True  # (a|ab) is parsed into a(|b): alternatives with a common prefix
            firsts = [_first_set(alt) for alt in av[1]]
            for i in range(len(firsts)):
                for j in range(i + 1, len(firsts)):
                    if _overlap(firsts[i], firsts[j]):
                        return True
        if op in _REPEATS:
            continue  # judged on its own
        if any(_branches_overlap(child) for child in _children(op, av)):
            return True
    return False


def _walk_problem(seq) -> str | None:
    for op, av in _items(seq):
        if op in _REPEATS and av[1] > 1:
            body = av[2]
            if _has_variable_repeat(body):
                return "nested quantifiers (like (a+)+) can backtrack catastrophically"
            if av[1] == C.MAXREPEAT and _branches_overlap(body):
                return "overlapping alternatives under a quantifier (like (a|a)*) can backtrack catastrophically"
        for child in _children(op, av):
            problem = _walk_problem(child)
            if problem:
                return problem
    return None


def backtracking_problem(pattern: str) -> str | None:
    return _walk_problem(_parse(pattern))


def unsupported(pattern: str) -> str | None:
    parsed = _parse(pattern)
    if parsed.state.groupdict:
        return "named groups are not supported (patterns are combined into one regex)"
    if parsed.state.flags & ~(re.UNICODE | getattr(C, "SRE_FLAG_UNICODE", 0)):
        return "inline flags are not supported (text is already case-folded)"

    def refs(seq) -> bool:
        for op, av in _items(seq):
            if op in (C.GROUPREF, C.GROUPREF_EXISTS):
                return True
            if any(refs(child) for child in _children(op, av)):
                return True
        return False

    if refs(parsed):
        return "backreferences are not supported (patterns are combined into one regex)"
    return None


def literals(pattern: str) -> list[str]:
    """Every literal character of the pattern (to check it is written in normalised form)."""
    out = []

    def walk(seq):
        for op, av in _items(seq):
            if op == C.LITERAL:
                out.append(chr(av))
            elif op == C.IN:
                out.extend(chr(iav) for iop, iav in av if iop == C.LITERAL)
            for child in _children(op, av):
                walk(child)

    walk(_parse(pattern))
    return out


def ranges(pattern: str) -> list[tuple[int, int]]:
    """Every character range ``[lo-hi]`` of the pattern's classes, as code points (negated classes excluded)."""
    out = []

    def walk(seq):
        for op, av in _items(seq):
            if op == C.IN and not any(iop == C.NEGATE for iop, _ in av):
                out.extend(tuple(iav) for iop, iav in av if iop == C.RANGE)
            for child in _children(op, av):
                walk(child)

    walk(_parse(pattern))
    return out


def dead_ranges(pattern: str, alive, limit: int = 0x3000) -> list[tuple[int, int]]:
    """The ranges of the pattern none of whose characters satisfies ``alive`` (``[A-Z]`` on case-folded
    text). Ranges wider than ``limit`` are not scanned (counted as alive)."""
    dead = []
    for lo, hi in ranges(pattern):
        if hi - lo < limit and not any(alive(chr(c)) for c in range(lo, hi + 1)):
            dead.append((lo, hi))
    return dead


def required_literal(pattern: str) -> str | None:
    """The longest run of literal characters at the top level of the pattern (must be in every match)."""
    best, run = "", []
    parsed = _parse(pattern)
    for op, av in _items(parsed) + [(None, None)]:
        if op == C.LITERAL:
            run.append(chr(av))
            continue
        if len(run) > len(best):
            best = "".join(run)
        run = []
    return best or None


_NOT_FINITE = None


def _expand(seq, limit: int):
    """Every string ``seq`` can match, when that is a set of at most ``limit`` strings; else None."""
    out = {""}
    for op, av in _items(seq):
        if op == C.LITERAL:
            alts = {chr(av)}
        elif op == C.IN:
            if any(iop not in (C.LITERAL, C.RANGE) for iop, _ in av):
                return _NOT_FINITE  # negation, categories
            alts = set()
            for iop, iav in av:
                lo, hi = (iav, iav) if iop == C.LITERAL else iav
                if hi - lo >= limit:
                    return _NOT_FINITE
                alts.update(chr(c) for c in range(lo, hi + 1))
        elif op == C.SUBPATTERN:
            if av[1] or av[2]:
                return _NOT_FINITE  # inline flags
            alts = _expand(av[-1], limit)
        elif op == C.BRANCH:
            alts = set()
            for alt in av[1]:
                inner = _expand(alt, limit)
                if inner is None:
                    return _NOT_FINITE
                alts |= inner
        elif op in _REPEATS:
            lo, hi, body = av
            if hi == C.MAXREPEAT or hi > limit:
                return _NOT_FINITE
            inner = _expand(body, limit)
            if inner is None:
                return _NOT_FINITE
            alts, power = set(), {""}
            for k in range(hi + 1):
                if k >= lo:
                    alts |= power
                if k < hi:
                    power = {a + b for a in power for b in inner}
                    if len(power) > limit:
                        return _NOT_FINITE
        else:
            return _NOT_FINITE  # ANY, anchors, lookarounds, categories, ...
        if alts is None or len(alts) * len(out) > limit:
            return _NOT_FINITE
        out = {a + b for a in out for b in alts}
    return out


def _mandatory_body(op, av, limit: int):
    """For ``X{lo,hi}`` with lo >= 1 and few strings for X: those strings (a match of the repeat
    starts and ends with one match of X), else None."""
    if op in _REPEATS and av[0] >= 1:
        return _expand(av[2], limit)
    return None


def _best(candidates):
    """The most selective trigger set: longest shortest string, then fewest strings."""
    usable = [c for c in candidates if c and "" not in c]
    return max(usable, key=lambda c: (min(map(len, c)), -len(c)), default=None)


def trigger_literals(pattern: str, limit: int = 16) -> list[str] | None:
    """Literals of which every match of the pattern contains at least one, for the automaton.

    A pattern that can only match a few strings (``保证在?(24|二十四)小时内?发货``: 8 strings)
    gets all of them. Otherwise the best run of consecutive top-level items that can only match
    a few strings, extended by one repetition of a neighbouring ``X{1,n}``
    (``风一[0-9]{1,3}见线``: ``风一0`` ... ``风一9``); at most ``limit`` strings; None when
    there is no such run.
    """
    parsed = _parse(pattern)
    whole = _expand(parsed, limit)
    if whole and "" not in whole:
        return sorted(whole)
    items = _items(parsed)
    sets = [_expand([item], limit) for item in items]
    candidates = []
    i = 0
    while i < len(items):
        if sets[i] is None:
            i += 1
            continue
        j, run = i, {""}
        while j < len(items) and sets[j] is not None and len(run) * len(sets[j]) <= limit:
            run = {a + b for a in run for b in sets[j]}
            j += 1
        candidates.append(run)
        before = _mandatory_body(*items[i - 1], limit) if i > 0 and sets[i - 1] is None else None
        after = _mandatory_body(*items[j], limit) if j < len(items) and sets[j] is None else None
        if before and len(before) * len(run) <= limit:
            candidates.append({a + b for a in before for b in run})
        if after and len(after) * len(run) <= limit:
            candidates.append({a + b for a in run for b in after})
        i = max(j, i + 1)
    best = _best(candidates)
    return sorted(best) if best else None


_QUANTIFIER = re.compile(r"(?:[?*+]|\{\d*(?:,\d*)?\})[?+]?")
_SPECIALS = set(".^$*+?{}[]\\|()")
_ESCAPE_LEN = {"x": 4, "u": 6, "U": 10}


def _vanishes(ch: str) -> bool:
    """True for a character that normalisation removes (whitespace, punctuation, symbols)."""
    from replyloop.evaluation.textmap import compact

    return not compact(ch)


def _escape(pattern: str, i: int) -> tuple[str, int]:
    """The escape starting at ``pattern[i] == '\\\\'``: its source and the index after it."""
    c = pattern[i + 1] if i + 1 < len(pattern) else ""
    if c in _ESCAPE_LEN:
        n = _ESCAPE_LEN[c]
        return pattern[i:i + n], i + n
    if c == "N" and pattern.startswith("{", i + 2):
        j = pattern.index("}", i) + 1
        return pattern[i:j], j
    return pattern[i:i + 2], i + 2


def _class_end(pattern: str, i: int) -> int:
    """Index just after the character class starting at ``pattern[i] == '['``."""
    j = i + 1
    if j < len(pattern) and pattern[j] == "^":
        j += 1
    if j < len(pattern) and pattern[j] == "]":
        j += 1
    while j < len(pattern) and pattern[j] != "]":
        j += 2 if pattern[j] == "\\" else 1
    if j >= len(pattern):
        raise re.error("unterminated character set", pattern, i)
    return j + 1


def _normalise_class(body: str) -> str | None:
    """A class body without the members normalisation removes; None when none is left."""
    if body.startswith("^"):
        return body  # a negated class: left as written
    tokens, i = [], 0
    while i < len(body):
        if body[i] == "\\":
            token, i = _escape(body, i)
        else:
            token, i = body[i], i + 1
        tokens.append(token)
    out, k = [], 0
    while k < len(tokens):
        if k + 2 < len(tokens) and tokens[k + 1] == "-":  # a range (escaped ends too): kept as written
            out.extend(tokens[k:k + 3])
            k += 3
            continue
        token = tokens[k]
        k += 1
        if token in ("\\s", "\\W"):
            continue
        literal = token[1] if len(token) == 2 and token[0] == "\\" and not token[1].isalnum() else token
        if len(literal) == 1 and _vanishes(literal):
            continue
        out.append(token)
    return "".join(out) or None


def normalise_pattern(pattern: str) -> str:
    """Rewrite a pattern to match normalised text, the way the reply text is normalised.

    Normalisation removes whitespace and punctuation, so ``\\s``, ``\\s+``, ``\\s*``, ``\\W``, a
    literal space, ``,?``, ``\\.``, word boundaries ``\\b`` / ``\\B`` and such class members are
    removed with their quantifiers (``ships?\\s+within\\s+24\\s+hours,?\\s+guaranteed`` ->
    ``ships?within24hoursguaranteed``); literal letters outside classes are case-folded and made
    half-width (``Full`` -> ``full``). Anything else is kept as written. Raises ``re.error`` on
    a pattern that does not compile.
    """
    from replyloop.evaluation.textmap import fold

    re.compile(pattern)
    out, i, n = [], 0, len(pattern)
    while i < n:
        ch = pattern[i]
        drop = False
        if ch == "\\":
            token, i = _escape(pattern, i)
            if token in ("\\s", "\\W", "\\b", "\\B"):
                drop = True
            elif len(token) == 2 and not token[1].isalnum() and _vanishes(token[1]):
                drop = True
            else:
                out.append(token)
        elif ch == "[":
            j = _class_end(pattern, i)
            body = _normalise_class(pattern[i + 1:j - 1])
            i = j
            if body is None:
                drop = True
            else:
                out.append(f"[{body}]")
        elif ch in _SPECIALS:
            out.append(ch)
            i += 1
            if ch == "(" and pattern.startswith("?", i):  # (?:, (?=, (?!, (?<=, (?<!: keep the marker
                m = re.match(r"\?(?::|=|!|<=|<!)", pattern[i:])
                if m:
                    out.append(m.group())
                    i += m.end()
            elif ch == "{":  # a quantifier's body
                m = re.match(r"\d*(?:,\d*)?\}", pattern[i:])
                if m:
                    out.append(m.group())
                    i += m.end()
        elif _vanishes(ch):
            drop = True
            i += 1
        else:
            folded = fold(ch)
            out.append(folded if len(folded) == 1 else ch)
            i += 1
        if drop:
            m = _QUANTIFIER.match(pattern, i)
            if m:
                i = m.end()
    rewritten = "".join(out)
    try:
        re.compile(rewritten)
    except re.error:
        return pattern  # the rewrite broke it: check the pattern as written (its error names it)
    return rewritten
