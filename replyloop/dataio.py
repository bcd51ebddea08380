"""Read and write Q&A files: lora-scripts CSV, JSONL (prompt/response or chat messages), ChatML.

Readers parse the whole file before anything is stored, and raise ``DataFormatError``
naming the file and line, so a malformed file is rejected whole.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from replyloop.errors import DataFormatError
from replyloop.pii import Scrubber
from replyloop.store import SampleIn
from replyloop.textfile import read_bytes

FORMATS = ("lora-scripts", "jsonl", "chatml", "llama-factory", "llama-factory-sharegpt")
DIR_FORMATS = ("lora-scripts", "llama-factory", "llama-factory-sharegpt")  # OUT is a directory
METADATA_NAME = "metadata.csv"
# LLaMA-Factory reads a dataset_dir holding dataset_info.json, which names each dataset's file
# and columns (hiyouga/LLaMA-Factory data/README.md); ours is registered under this name
LLAMA_FACTORY_DATASET = "replyloop"
DATASET_INFO_NAME = "dataset_info.json"


@dataclass(frozen=True)
class QuestionIn:
    conversation_id: str
    question: str
    category: str | None = None
    draft: str | None = None


def read_text(path: Path, encoding: str = "utf-8") -> str:
    """Decode a file; UTF-8 may carry a BOM. A decoding error names the line."""
    raw = read_bytes(path)
    codec = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8", "utf-8-sig") else encoding
    try:
        return raw.decode(codec)
    except LookupError:
        raise DataFormatError(f"unknown encoding {encoding!r}") from None
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        hint = " (try --encoding gbk)" if codec == "utf-8-sig" else ""
        raise DataFormatError(f"{path}:{line}: not valid {encoding} text{hint}") from None


def detect_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    raise DataFormatError(f"{path}: cannot tell the format from the extension {suffix or '(none)'}; use .csv or .jsonl")


def _csv_rows(path: Path, text: str, required: tuple[str, ...]) -> Iterable[tuple[int, dict]]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise DataFormatError(f"{path}: the file is empty") from None
    except csv.Error as exc:
        raise DataFormatError(f"{path}:1: broken CSV ({exc})") from None
    header = [h.strip().lower() for h in header]
    missing = [c for c in required if c not in header]
    if missing:
        raise DataFormatError(
            f"{path}:1: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            f"(found: {', '.join(header) or 'nothing'})")
    previous = reader.line_num
    try:
        for values in reader:
            line = previous + 1  # the physical line the record starts on
            previous = reader.line_num
            if not values or all(not v.strip() for v in values):
                continue
            if len(values) != len(header):
                raise DataFormatError(
                    f"{path}:{line}: expected {len(header)} fields, found {len(values)} (check the quoting)")
            yield line, dict(zip(header, values))
    except csv.Error as exc:
        raise DataFormatError(f"{path}:{reader.line_num}: broken CSV quoting ({exc})") from None


def _field(path: Path, line: int, row: dict, name: str) -> str:
    value = row.get(name)
    if not isinstance(value, str) or not value.strip():
        raise DataFormatError(f"{path}:{line}: empty {name}")
    return value.strip()


def _optional(row: dict, name: str) -> str | None:
    value = row.get(name)
    return value.strip() if isinstance(value, str) and value.strip() else None


def _chat_pair(path: Path, line: int, messages) -> tuple[str, str]:
    if not isinstance(messages, list) or not messages:
        raise DataFormatError(f"{path}:{line}: 'messages' must be a non-empty list")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) \
                or not isinstance(message.get("content"), str):
            raise DataFormatError(f"{path}:{line}: messages[{i}] needs string 'role' and 'content'")
    last = messages[-1]
    if last["role"] != "assistant":
        raise DataFormatError(f"{path}:{line}: the last message must be the assistant's reply")
    users = [m for m in messages[:-1] if m["role"] == "user"]
    if not users:
        raise DataFormatError(f"{path}:{line}: no user message before the assistant's reply")
    prompt, response = users[-1]["content"].strip(), last["content"].strip()
    if not prompt:
        raise DataFormatError(f"{path}:{line}: empty user message")
    if not response:
        raise DataFormatError(f"{path}:{line}: empty response")
    return prompt, response


def jsonl_rows(path: Path, text: str, expected: str = "a JSON object") -> Iterable[tuple[int, dict]]:
    """``(line number, object)`` for each non-blank line of JSONL ``text`` read from ``path``;
    a line that is not JSON, or not an object (``expected`` says what was), is a
    DataFormatError naming ``path:line``.

    Lines end at ``\n`` only (``\r\n`` too): ``str.splitlines`` would also split on U+2028,
    U+2029 and U+0085, which ``json.dumps(ensure_ascii=False)`` leaves raw inside strings."""
    for line, raw in enumerate(text.split("\n"), start=1):
        raw = raw.removesuffix("\r")
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DataFormatError(f"{path}:{line}: bad JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise DataFormatError(f"{path}:{line}: expected {expected}")
        yield line, obj


def read_samples(path: str | Path, encoding: str = "utf-8") -> list[SampleIn]:
    """All samples of a CSV (``prompt,response[,category,intent]``) or JSONL file."""
    path = Path(path)
    fmt = detect_format(path)
    text = read_text(path, encoding)
    samples = []
    if fmt == "csv":
        for line, row in _csv_rows(path, text, ("prompt", "response")):
            samples.append(SampleIn(_field(path, line, row, "prompt"), _field(path, line, row, "response"),
                                    _optional(row, "category"), _optional(row, "intent")))
    else:
        for line, obj in jsonl_rows(path, text):
            if "messages" in obj:
                prompt, response = _chat_pair(path, line, obj["messages"])
            elif "prompt" in obj or "response" in obj:
                prompt, response = _field(path, line, obj, "prompt"), _field(path, line, obj, "response")
            else:
                raise DataFormatError(f"{path}:{line}: expected 'prompt' and 'response', or 'messages'")
            samples.append(SampleIn(prompt, response, _optional(obj, "category"), _optional(obj, "intent")))
    if not samples:
        raise DataFormatError(f"{path}: no samples in the file")
    return samples


def read_questions(path: str | Path, encoding: str = "utf-8") -> list[QuestionIn]:
    """Customer questions from CSV (``conversation_id,question[,category,draft]``) or JSONL."""
    path = Path(path)
    fmt = detect_format(path)
    text = read_text(path, encoding)
    rows = _csv_rows(path, text, ("conversation_id", "question")) if fmt == "csv" else jsonl_rows(path, text)
    questions = [
        QuestionIn(_field(path, line, row, "conversation_id"), _field(path, line, row, "question"),
                   _optional(row, "category"), _optional(row, "draft"))
        for line, row in rows
    ]
    if not questions:
        raise DataFormatError(f"{path}: no questions in the file")
    return questions


# -- export ---------------------------------------------------------------------------------


def llama_factory_entry(fmt: str, file_name: str, system_prompt: str | None) -> dict:
    """The ``dataset_info.json`` entry describing our file (LLaMA-Factory data/README.md)."""
    if fmt == "llama-factory":  # alpaca: instruction (+ input) -> output, optional system column
        columns = {"prompt": "instruction", "query": "input", "response": "output"}
        if system_prompt:
            columns["system"] = "system"
        return {"file_name": file_name, "formatting": "alpaca", "columns": columns}
    columns = {"messages": "conversations"}
    if system_prompt:
        columns["system"] = "system"
    return {"file_name": file_name, "formatting": "sharegpt", "columns": columns,
            "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"}}


def _dataset_info(path: Path) -> dict:
    """An existing ``dataset_info.json`` (a LLaMA-Factory ``data/`` folder) to add our entry to."""
    if not path.exists():
        return {}
    try:
        info = json.loads(read_text(path))
    except ValueError as exc:
        line = getattr(exc, "lineno", None)
        raise DataFormatError(f"{path}{':' + str(line) if line else ''}: not valid JSON ({exc}); "
                              "fix it or export into another directory") from None
    if not isinstance(info, dict):
        raise DataFormatError(f"{path}: expected a JSON object of dataset entries")
    return info


def export_samples(rows: list[dict], fmt: str, out: str | Path, scrubber: Scrubber | None = None,
                   system_prompt: str | None = None) -> Path:
    """Write samples for other tools. lora-scripts: ``out`` is the ``train_data_dir`` and gets
    ``metadata.csv``; llama-factory (alpaca) / llama-factory-sharegpt: ``out`` is LLaMA-Factory's
    ``dataset_dir`` and gets ``replyloop.json`` plus a ``replyloop`` entry in ``dataset_info.json``
    (other entries kept); jsonl and chatml: ``out`` is the file. Returns the data file written.

    Written to a temporary file that replaces the target at the end (removed on failure); an
    ``out`` of the wrong kind (a file for lora-scripts, a directory for jsonl) or a path that
    cannot be written is a DataFormatError naming it."""
    if fmt not in FORMATS:
        raise DataFormatError(f"unknown export format {fmt!r} (choose {', '.join(FORMATS)})")
    out = Path(out)
    if fmt in DIR_FORMATS and out.exists() and not out.is_dir():
        what = METADATA_NAME if fmt == "lora-scripts" else f"{LLAMA_FACTORY_DATASET}.json and {DATASET_INFO_NAME}"
        raise DataFormatError(f"{out}: is a file; --format {fmt} writes {what} into a directory")
    if fmt not in DIR_FORMATS and out.is_dir():
        raise DataFormatError(f"{out}: is a directory; --format {fmt} writes a file (give a file name)")
    clean = (lambda s: scrubber.scrub(s)) if scrubber else (lambda s: s)
    records = [(clean(r["prompt"]), clean(r["response"]), r.get("category") or "", r.get("intent") or "")
               for r in rows]
    if fmt == "lora-scripts":
        target = out / METADATA_NAME
    elif fmt in DIR_FORMATS:
        target = out / f"{LLAMA_FACTORY_DATASET}.json"
    else:
        target = out
    info_path = out / DATASET_INFO_NAME
    info = None
    if fmt.startswith("llama-factory"):  # read (and reject) a broken dataset_info.json before writing anything
        info = _dataset_info(info_path)
        info[LLAMA_FACTORY_DATASET] = llama_factory_entry(fmt, target.name, system_prompt)
    tmp = target.with_name(target.name + ".tmp")
    info_tmp = info_path.with_name(info_path.name + ".tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a parent that is a file, permission denied, ...
        raise DataFormatError(f"{target.parent}: cannot create the directory ({exc.strerror or exc})") from None
    try:
        _write_records(tmp, fmt, records, system_prompt)
        if info is not None:
            info_tmp.write_text(json.dumps(info, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        tmp.replace(target)
        if info is not None:
            info_tmp.replace(info_path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        info_tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise DataFormatError(f"{target}: cannot write ({exc.strerror or exc})") from None
        raise
    return target


def _write_records(tmp: Path, fmt: str, records: list[tuple[str, str, str, str]], system_prompt: str | None) -> None:
    if fmt == "lora-scripts":
        with tmp.open("w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["prompt", "response", "category", "intent"])
            writer.writerows(records)
        return
    if fmt.startswith("llama-factory"):  # a JSON array, as LLaMA-Factory's data/README.md shows
        items = []
        for prompt, response, _category, _intent in records:
            if fmt == "llama-factory":
                item = {"instruction": prompt, "input": "", "output": response}
            else:
                item = {"conversations": [{"from": "human", "value": prompt}, {"from": "gpt", "value": response}]}
            if system_prompt:
                item["system"] = system_prompt
            items.append(item)
        tmp.write_text(json.dumps(items, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        return
    with tmp.open("w", encoding="utf-8") as fh:
        for prompt, response, category, intent in records:
            if fmt == "jsonl":
                obj = {"prompt": prompt, "response": response}
                if category:
                    obj["category"] = category
                if intent:
                    obj["intent"] = intent
            else:
                messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
                messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
                obj = {"messages": messages}
                if category:
                    obj["category"] = category
            fh.write(json.dumps(obj, ensure_ascii=False) + "\n")
