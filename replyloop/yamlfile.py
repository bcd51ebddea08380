"""Load YAML files so that errors can name the file, the line and the key.

Used by the workspace config, the training config and the policy files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from replyloop.errors import ConfigError
from replyloop.textfile import read_utf8


@dataclass
class YamlDoc:
    """Parsed YAML plus the line (1-based) of every key path, e.g. ("training", "lora_rank")."""

    path: Path
    data: Any
    lines: dict[tuple, int] = field(default_factory=dict)

    def line_of(self, loc: tuple) -> int | None:
        loc = tuple(loc)
        while loc:
            if loc in self.lines:
                return self.lines[loc]
            loc = loc[:-1]
        return None

    def where(self, loc: tuple) -> str:
        line = self.line_of(loc)
        return f"{self.path}:{line}" if line else str(self.path)


_FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when installed


def _walk(node: yaml.Node, prefix: tuple, lines: dict, path: Path, error: type[Exception]) -> None:
    """Record the line of every key path; a key repeated in one mapping raises ``error``.

    PyYAML would silently keep the last of two equal keys (a second ``phrases:`` in a rule
    drops the first list), so a repeat is an error naming file, line and key.
    """
    if isinstance(node, yaml.MappingNode):
        seen: dict[tuple, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            line = key_node.start_mark.line + 1
            if isinstance(key_node, yaml.ScalarNode):
                ident = (key_node.tag, key)
                if ident in seen:
                    dotted = ".".join(str(part) for part in prefix + (key,))
                    raise error(f"{path}:{line}: duplicate key '{dotted}' (first at line {seen[ident]})")
                seen[ident] = line
            else:
                continue  # a complex (mapping/sequence) key: not addressable by a key path
            lines[prefix + (key,)] = line
            _walk(value_node, prefix + (key,), lines, path, error)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[prefix + (index,)] = item.start_mark.line + 1
            _walk(item, prefix + (index,), lines, path, error)


def load_yaml(path: str | Path, error: type[Exception] = ConfigError, *, fast: bool = False) -> YamlDoc:
    """Read a YAML file; syntax errors become ``error`` naming file and line.

    Parsed once: the node tree (with line marks) is composed and checked for duplicate keys
    (``file:line: duplicate key 'a.b'``), then the data is built from it.
    ``fast=True`` uses libyaml's ``CSafeLoader`` when PyYAML has it (policy files with
    thousands of rules); otherwise the pure-Python ``SafeLoader``.
    """
    path = Path(path)
    text = read_utf8(path, error)
    loader = (_FAST_LOADER if fast else yaml.SafeLoader)(text)
    lines: dict[tuple, int] = {}
    try:
        node = loader.get_single_node()
        if node is not None:
            _walk(node, (), lines, path, error)  # before construction, which flattens merge keys
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise error(f"{where}: invalid YAML: {problem}") from None
    finally:
        loader.dispose()
    return YamlDoc(path=path, data=data, lines=lines)


def describe_error(err: dict) -> str:
    """A short message for one pydantic error dict (``unknown key``, ``required key is missing``...)."""
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    return err.get("msg", "invalid value")


def validation_messages(doc: YamlDoc, exc: ValidationError, prefix: tuple = ()) -> list[str]:
    """One line per pydantic error: ``file:line: key 'a.b': message``."""
    found = []
    for err in exc.errors():
        loc = prefix + tuple(err["loc"])
        key = ".".join(str(part) for part in loc)
        found.append((doc.line_of(loc) or 0, f"{doc.where(loc)}: key '{key}': {describe_error(err)}"))
    return [message for _, message in sorted(found, key=lambda item: item[0])]


def parse_model(doc: YamlDoc, model: type[BaseModel], error: type[Exception] = ConfigError,
                data: Any = None) -> BaseModel:
    """Validate ``doc.data`` (or ``data``) against ``model``; all errors in one exception."""
    payload = doc.data if data is None else data
    if payload is None:
        payload = {}
    if not isinstance(payload, dict):
        raise error(f"{doc.path}: expected a mapping of keys at the top level")
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise error("\n".join(validation_messages(doc, exc))) from None
