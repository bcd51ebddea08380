"""Read and validate policy files (``policies/*.yaml``).

Format (every key other than these is an error)::

    rules:
      - id: full-compensation        # unique across all files
        severity: block              # block | warn
        message: 不得承诺全额赔付
        phrases: [全额赔付, full compensation]          # literal phrases
        patterns: ['保证在?(24|二十四)小时内?发货']     # regexes over normalised text (optional);
                                                        # normalised at load: \\s, spaces, punctuation
                                                        # and \\b removed, letters case-folded
    terminology:
      - preferred: 电子面单
        avoid: [快递条码]

Every problem in every file is collected and raised as one ``PolicyError`` whose lines name the
file, the line and the rule id; nothing is returned half-loaded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from replyloop.evaluation import regexcheck
from replyloop.evaluation.readthrough import read_through
from replyloop.evaluation.textmap import compact, fold
from replyloop.errors import PolicyError
from replyloop.yamlfile import YamlDoc, describe_error, load_yaml


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RuleSpec(_Spec):
    id: str = Field(min_length=1)
    severity: Literal["block", "warn"]
    message: str = Field(min_length=1)
    phrases: list[str] = Field(default_factory=list)
    patterns: list[str] = Field(default_factory=list)


class TermSpec(_Spec):
    preferred: str = Field(min_length=1)
    avoid: list[str] = Field(min_length=1)


class PolicyFileSpec(_Spec):
    rules: list[RuleSpec] = Field(default_factory=list)
    terminology: list[TermSpec] = Field(default_factory=list)


@dataclass(frozen=True)
class Phrase:
    text: str   # as written
    norm: str   # normalised (what is matched)


@dataclass(frozen=True)
class Rule:
    id: str
    severity: str
    message: str
    phrases: tuple[Phrase, ...]
    patterns: tuple[str, ...]
    file: Path
    line: int | None


@dataclass(frozen=True)
class Term:
    id: str
    preferred: str
    avoid: tuple[Phrase, ...]
    file: Path
    line: int | None


@dataclass(frozen=True)
class PolicySet:
    rules: tuple[Rule, ...]
    terms: tuple[Term, ...]
    files: tuple[Path, ...]


# list key -> (the entry's naming field, the label's word)
_ENTRY_NAMES = {"rules": ("id", "rule"), "terminology": ("preferred", "terminology")}


def _rule_label(doc: YamlDoc, loc: tuple) -> str:
    if len(loc) >= 2 and loc[0] in _ENTRY_NAMES and isinstance(loc[1], int):
        field, word = _ENTRY_NAMES[loc[0]]
        try:
            name = doc.data[loc[0]][loc[1]].get(field)
        except (AttributeError, IndexError, KeyError, TypeError):
            name = None
        return f"{word} '{name}'" if name else f"{word} #{loc[1] + 1}"
    return "file"


def _error(doc: YamlDoc, loc: tuple, message: str) -> str:
    return f"{doc.where(loc)}: {_rule_label(doc, loc)}: {message}"


def _check_pattern(pattern: str) -> str | None:
    try:
        re.compile(pattern)
    except re.error as exc:
        return f"regex does not compile: {exc}"
    problem = regexcheck.unsupported(pattern) or regexcheck.backtracking_problem(pattern)
    if problem:
        return problem
    if re.fullmatch(pattern, ""):
        return "regex matches the empty string"
    odd = sorted({ch for ch in regexcheck.literals(pattern) if fold(ch) != ch or not compact(ch)})
    if odd:
        return ("regex is matched against normalised text (simplified, half-width, lower-case, no spaces "
                f"or punctuation) and can never match these characters: {' '.join(repr(c) for c in odd)}")
    dead = regexcheck.dead_ranges(pattern, lambda ch: fold(ch) == ch and compact(ch) == ch)
    if dead:
        return ("regex is matched against normalised text (simplified, half-width, lower-case, no spaces "
                "or punctuation) and can never match any character of these ranges: "
                + " ".join(f"[{chr(lo)}-{chr(hi)}]" for lo, hi in dead))
    return None


def _phrases(doc: YamlDoc, loc: tuple, values: list[str], errors: list[str]) -> tuple[Phrase, ...]:
    out = []
    for i, text in enumerate(values):
        clean = read_through(text)  # a phrase is read like a reply (三天内 -> 3天内, markup, look-alikes)
        norm = compact(clean.text if clean is not None else text)
        if not norm:
            errors.append(_error(doc, loc + (i,), f"empty phrase {text!r} (nothing left after normalisation)"))
            continue
        out.append(Phrase(text=text, norm=norm))
    return tuple(out)


def _load_file(path: Path, seen: dict[str, str], errors: list[str]) -> tuple[list[Rule], list[Term]]:
    try:
        doc = load_yaml(path, PolicyError, fast=True)  # libyaml: 10,000 rules in about a second
    except PolicyError as exc:
        errors.append(str(exc))
        return [], []
    if doc.data is None:
        return [], []
    if not isinstance(doc.data, dict):
        errors.append(f"{path}: expected a mapping with 'rules' and/or 'terminology' at the top level")
        return [], []
    try:
        spec = PolicyFileSpec.model_validate(doc.data)
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(err["loc"])
            key = ".".join(str(part) for part in loc)
            errors.append(_error(doc, loc, f"key '{key}': {describe_error(err)}"))
        return [], []

    rules, terms = [], []
    for i, r in enumerate(spec.rules):
        loc = ("rules", i)
        where = doc.where(loc)
        if r.id in seen:
            errors.append(_error(doc, loc + ("id",), f"duplicate rule id (first defined at {seen[r.id]})"))
        else:
            seen[r.id] = where
        if not r.phrases and not r.patterns:
            errors.append(_error(doc, loc, "needs at least one of 'phrases' or 'patterns'"))
        phrases = _phrases(doc, loc + ("phrases",), r.phrases, errors)
        patterns = []
        for j, pattern in enumerate(r.patterns):
            try:
                compiled = regexcheck.normalise_pattern(pattern)
            except re.error as exc:
                compiled, problem = pattern, f"regex does not compile: {exc}"
            else:
                problem = _check_pattern(compiled)
            if problem:
                shown = f"{pattern!r} (as matched: {compiled!r})" if compiled != pattern else repr(pattern)
                errors.append(_error(doc, loc + ("patterns", j), f"pattern {shown}: {problem}"))
            patterns.append(compiled)
        rules.append(Rule(id=r.id, severity=r.severity, message=r.message, phrases=phrases,
                          patterns=tuple(patterns), file=path, line=doc.line_of(loc)))
    for i, t in enumerate(spec.terminology):
        loc = ("terminology", i)
        term_id = f"terminology:{t.preferred}"
        if term_id in seen:
            errors.append(_error(doc, loc + ("preferred",), f"duplicate terminology entry (first defined at {seen[term_id]})"))
        else:
            seen[term_id] = doc.where(loc)
        avoid = _phrases(doc, loc + ("avoid",), t.avoid, errors)
        terms.append(Term(id=term_id, preferred=t.preferred, avoid=avoid, file=path, line=doc.line_of(loc)))
    return rules, terms


def policy_files(directory: str | Path) -> list[Path]:
    directory = Path(directory)
    if not directory.is_dir():
        raise PolicyError(f"{directory}: policy directory not found")
    files = sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    if not files:
        raise PolicyError(f"{directory}: no policy files (*.yaml)")
    return files


def read_policies(directory: str | Path) -> PolicySet:
    """Parse and validate every ``*.yaml`` / ``*.yml`` file of ``directory``; all errors at once."""
    files = policy_files(directory)
    seen: dict[str, str] = {}
    errors: list[str] = []
    rules: list[Rule] = []
    terms: list[Term] = []
    for path in files:
        r, t = _load_file(path, seen, errors)
        rules.extend(r)
        terms.extend(t)
    if errors:
        raise PolicyError("\n".join(errors))
    return PolicySet(rules=tuple(rules), terms=tuple(terms), files=tuple(files))
