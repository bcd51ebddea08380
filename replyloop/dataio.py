"""Read and write Q&A files: lora-scripts CSV, JSONL (prompt/response or chat messages), ChatML.

Readers stream the file and check every field (``replyloop.fields``); a bad row raises
``DataFormatError`` (``FieldError`` for a bad field) naming the file and line. The store
stages the whole stream before it writes anything, so a malformed file is rejected whole.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import hashlib
import io
import itertools
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from replyloop import csvsafe, fields
from replyloop.errors import DataFormatError, FieldError
from replyloop.pii import Scrubber
from replyloop.store import SampleIn, staging_row
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
    callback_url: str | None = None  # deliver21: POST /intake's webhook for this question (replyloop.outbox)


QUESTION_FIELDS = ("conversation_id", "question", "category", "draft")
SAMPLE_FIELDS = ("prompt", "response", "category", "intent")


def question_from_mapping(data: Mapping, strict: bool = False) -> QuestionIn:
    """A customer question from a mapping (a JSON object, a CSV row), every field checked against
    ``replyloop.fields`` (lengths, characters, types). ``strict``: unknown keys are refused too
    (the HTTP intake). Raises FieldError naming the field."""
    if strict:
        fields.unknown_fields(data, QUESTION_FIELDS)
    return QuestionIn(fields.clean("conversation_id", data.get("conversation_id"), required=True),
                      fields.clean("question", data.get("question"), required=True),
                      fields.clean("category", data.get("category")), fields.clean("draft", data.get("draft")))


def sample_from_mapping(data: Mapping) -> SampleIn:
    """A sample (``prompt``, ``response``, optional ``category``, ``intent``) checked like a question."""
    return SampleIn(fields.clean("prompt", data.get("prompt"), required=True),
                    fields.clean("response", data.get("response"), required=True),
                    fields.clean("category", data.get("category")), fields.clean("intent", data.get("intent")))


def _open_error(path: Path, exc: OSError) -> DataFormatError:
    if isinstance(exc, FileNotFoundError):
        return DataFormatError(f"{path}: file not found")
    if isinstance(exc, IsADirectoryError):
        return DataFormatError(f"{path}: is a directory, expected a file")
    return DataFormatError(f"{path}: cannot read ({exc.strerror or exc})")


def _codec(encoding: str) -> str:
    codec = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8", "utf-8-sig") else encoding
    try:
        codecs.lookup(codec)
    except LookupError:
        raise DataFormatError(f"unknown encoding {encoding!r}") from None
    return codec


def read_text(path: Path, encoding: str = "utf-8") -> str:
    """Decode a file; UTF-8 may carry a BOM. A decoding error names the line."""
    raw = read_bytes(path)
    codec = _codec(encoding)
    try:
        return raw.decode(codec)
    except UnicodeDecodeError as exc:
        raise _not_valid_text(path, encoding, raw[: exc.start].count(b"\n") + 1) from None


@contextlib.contextmanager
def _open_lines(path: Path, encoding: str, newline: str) -> Iterator[TextIO]:
    """The file opened as text for streaming; an unreadable file, and a decoding error anywhere
    in it, is a DataFormatError naming the file and line (found by ``read_text`` on that path)."""
    codec = _codec(encoding)
    try:
        fh = open(path, encoding=codec, newline=newline)
    except OSError as exc:
        raise _open_error(path, exc) from None
    try:
        with fh:
            yield fh
    except UnicodeDecodeError:
        read_text(path, encoding)  # raises with the line number
        raise DataFormatError(f"{path}: not valid {encoding} text") from None


def detect_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    raise DataFormatError(f"{path}: cannot tell the format from the extension {suffix or '(none)'}; use .csv or .jsonl")


def _csv_reader(path: Path, lines: Iterable[str], required: tuple[str, ...]):
    """``(csv reader, header)``, the header checked for the ``required`` columns."""
    reader = csv.reader(io.StringIO(lines, newline="") if isinstance(lines, str) else lines, strict=True)
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
    return reader, header


def _csv_dict(header: list[str], values: list[str]) -> dict | None:
    """A CSV record as a dict (None for a blank one); a wrong field count is a DataFormatError."""
    if not values or all(not v.strip() for v in values):
        return None
    if len(values) != len(header):
        raise DataFormatError(f"expected {len(header)} fields, found {len(values)} (check the quoting)")
    return dict(zip(header, [csvsafe.unescape(v) if v[:1] == "'" else v for v in values]))


def _csv_records(path: Path, reader) -> Iterator[tuple[int, list[str]]]:
    """``(line the record starts on, values)`` of each record after the header."""
    previous = reader.line_num
    try:
        for values in reader:
            line = previous + 1
            previous = reader.line_num
            yield line, values
    except csv.Error as exc:
        raise DataFormatError(f"{path}:{reader.line_num}: broken CSV quoting ({exc})") from None


def _csv_rows(path: Path, lines: Iterable[str], required: tuple[str, ...]) -> Iterator[tuple[int, dict]]:
    reader, header = _csv_reader(path, lines, required)
    for line, values in _csv_records(path, reader):
        try:
            row = _csv_dict(header, values)
        except DataFormatError as exc:
            raise DataFormatError(f"{path}:{line}: {exc}") from None
        if row is not None:
            yield line, row


def _chat_pair(messages) -> tuple[str, str]:
    if not isinstance(messages, list) or not messages:
        raise FieldError("messages", "'messages' must be a non-empty list")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) \
                or not isinstance(message.get("content"), str):
            raise FieldError("messages", f"messages[{i}] needs string 'role' and 'content'")
    last = messages[-1]
    if last["role"] != "assistant":
        raise FieldError("messages", "the last message must be the assistant's reply")
    users = [m for m in messages[:-1] if m["role"] == "user"]
    if not users:
        raise FieldError("messages", "no user message before the assistant's reply")
    try:
        prompt = fields.clean("prompt", users[-1]["content"], required=True)
    except FieldError as exc:
        raise FieldError("messages", exc.reason.replace("empty prompt", "empty user message")) from None
    try:
        response = fields.clean("response", last["content"], required=True)
    except FieldError as exc:
        raise FieldError("messages", exc.reason) from None
    return prompt, response


def jsonl_rows(path: Path, text: str | Iterable[str], expected: str = "a JSON object") -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` for each non-blank line of JSONL ``text`` (a string, or lines
    read with ``newline="\\n"``) read from ``path``; a line that is not JSON, nests too deeply, or
    is not an object (``expected`` says what was), is a DataFormatError naming ``path:line``.

    Lines end at ``\\n`` only (``\\r\\n`` too): ``str.splitlines`` would also split on U+2028,
    U+2029 and U+0085, which ``json.dumps(ensure_ascii=False)`` leaves raw inside strings."""
    lines = text.split("\n") if isinstance(text, str) else text
    for line, raw in enumerate(lines, start=1):
        try:
            obj = _json_object(raw, expected)
        except DataFormatError as exc:
            raise DataFormatError(f"{path}:{line}: {exc}") from None
        if obj is not None:
            yield line, obj


def _json_object(raw: str, expected: str = "a JSON object") -> dict | None:
    """One JSONL line as an object (None for a blank line); errors are unlocated DataFormatErrors."""
    raw = raw.removesuffix("\n").removesuffix("\r")
    if not raw.strip():
        return None
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"bad JSON ({exc.msg})") from None
    except RecursionError:
        raise DataFormatError("bad JSON (nested too deeply)") from None
    except ValueError as exc:  # an integer of more than 4300 digits, ...
        raise DataFormatError(f"bad JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise DataFormatError(f"expected {expected}")
    return obj


def _rows(path: Path, fh: TextIO, fmt: str, required: tuple[str, ...]) -> Iterator[tuple[int, dict]]:
    return _csv_rows(path, fh, required) if fmt == "csv" else jsonl_rows(path, fh)


def _sample(obj: dict) -> SampleIn:
    if "messages" in obj:
        prompt, response = _chat_pair(obj["messages"])
        return SampleIn(prompt, response, fields.clean("category", obj.get("category")),
                        fields.clean("intent", obj.get("intent")))
    if "prompt" in obj or "response" in obj:
        return sample_from_mapping(obj)
    raise DataFormatError("expected 'prompt' and 'response', or 'messages'")


def iter_samples(path: str | Path, encoding: str = "utf-8") -> Iterator[tuple[int, SampleIn]]:
    """``(line, sample)`` of a CSV (``prompt,response[,category,intent]``) or JSONL file, read as a
    stream (the file is never held in memory whole). A bad row raises DataFormatError (a
    FieldError for a bad field) naming ``path:line``; an empty file too."""
    path = Path(path)
    fmt = detect_format(path)
    empty = True
    with _open_lines(path, encoding, newline="" if fmt == "csv" else "\n") as fh:
        for line, row in _rows(path, fh, fmt, ("prompt", "response")):
            try:
                sample = _sample(row)
            except FieldError as exc:
                raise exc.at(f"{path}:{line}") from None
            except DataFormatError as exc:
                raise DataFormatError(f"{path}:{line}: {exc}") from None
            empty = False
            yield line, sample
    if empty:
        raise DataFormatError(f"{path}: no samples in the file")


PARALLEL_MIN_BYTES = 8 * 2**20  # a smaller file is validated in this process (no worker start-up)
CHUNK_ROWS = 10_000
BLOCK_BYTES = 2 * 2**20  # the file is handed to the validating processes in blocks of about this size
MAX_RECORD_BYTES = 16 * 2**20  # longer than any valid record (the csv module's limit is 131,072 a value)
# encodings in which a line feed or a double quote byte is always that character (never part of
# a multibyte one), so the raw file can be cut into blocks at line ends; another encoding
# (UTF-16, ...) is read through a text stream in this process
BLOCK_ENCODINGS = {"utf-8", "utf-8-sig", "gbk", "gb18030", "gb2312", "big5", "cp936", "cp950", "ascii", "iso8859-1",
                   "cp1252"}


def iter_staged(path: str | Path, encoding: str = "utf-8") -> Iterator[tuple]:
    """``store.staging_row`` tuples of a samples file, in file order, one row at a time (the
    exact path: ``import_file`` falls back to it, and its errors are the reference)."""
    for line, sample in iter_samples(path, encoding):
        yield staging_row(line, sample)


class _Anomaly(Exception):
    """The fast path met something only the exact path handles (the import starts over on it)."""


_STAGE_WRITERS: dict[str, object] = {}  # staging directory -> this process's StagingWriter


def _stage_rows(directory: str, rows: list[tuple] | None = None, columns: tuple | None = None) -> tuple:
    """Write validated rows (or their ``columns``) to this process's staging file:
    ``("ok", file name, keys)``."""
    writer = _STAGE_WRITERS.get(directory)
    if writer is None:
        import os

        from replyloop.store import StagingWriter
        writer = _STAGE_WRITERS[directory] = StagingWriter(Path(directory) / f"stage-{os.getpid()}.db")
    return ("ok", writer.path.name, writer.write_columns(*columns) if columns else writer.write(rows))


def _stage_chunk(directory: str, fmt: str, header: list[str] | None, lines: list[int],
                 records: list) -> tuple:
    """Validate, key and stage one chunk of parsed records (in a worker process, or in the
    importing one) into this process's staging file; returns ``("ok", file, keys)`` or
    ``("error", line, message, field)`` for the chunk's first bad row (raised in the parent in
    file order)."""
    try:
        columns = _fast_csv_rows(header, lines, list(zip(*records))) if fmt == "csv" and _widths_ok(header, records) \
            else None
        if columns is not None:
            return _stage_rows(directory, columns=columns)
        rows = _exact_rows(fmt, header, lines, records)
    except _RowError as exc:
        return ("error", *exc.args)
    return _stage_rows(directory, rows)


def _stage_block(directory: str, fmt: str, codec: str, header: list[str] | None, line: int, newline: int,
                 data: bytes) -> tuple:
    """Decode, parse, validate, key and stage one block of the raw file: whole records, the
    first on line ``line + 1`` (``newline``: the line feeds before it, for a decoding error).
    Returns what ``_stage_chunk`` does, ``("decode", line)`` for bytes that are not valid in
    the encoding (after the rows before them proved good), or ``("anomaly",)``: broken quoting
    (perhaps only a block cut inside a quoted value by a stray quote), which the exact path
    reports or reads."""
    try:
        text = data.decode(codec)
    except UnicodeDecodeError as exc:
        good = data.rfind(b"\n", 0, exc.start) + 1
        done = _stage_block(directory, fmt, codec, header, line, newline, data[:good]) if good else ("ok",)
        return done if done[0] != "ok" else ("decode", newline + data.count(b"\n", 0, exc.start) + 1)
    if fmt != "csv":
        records = text.split("\n")
        if records and records[-1] == "":
            records.pop()
        return _stage_chunk(directory, fmt, header, list(range(line + 1, line + 1 + len(records))), records)
    body = text
    if "\r" in text:
        if text.count("\r") != text.count("\r\n"):  # a lone CR ends a record too: the csv module
            return _stage_parsed(directory, header, line, text)
        body = text.replace("\r\n", "\n")  # CRLF line ends (inside a quoted value: the csv module, below)
    # a record is a line (a line with an odd number of quotes opens a value with a line break:
    # the csv module) and, in a line without quotes, a value ends at a comma
    lines = body.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        return ("ok", None, (b"", b"", b""))
    if max(map(len, lines)) > csv.field_size_limit():
        return ("anomaly",)  # the csv module refuses such a value: its error is the reference
    numbers = list(range(line + 1, line + 1 + len(lines)))
    width = len(header)
    quoted, parsed = [], []
    if '"' in body:
        quoted = [i for i, row in enumerate(lines) if '"' in row]
        if any(lines[i].count('"') % 2 for i in quoted):
            return _stage_parsed(directory, header, line, text)
        try:
            parsed = list(csv.reader([lines[i] for i in quoted], strict=True))
        except csv.Error:
            return ("anomaly",)
        if len(parsed) != len(quoted):
            return ("anomaly",)
    plain = lines
    if quoted:
        plain = lines.copy()
        for i in quoted:
            plain[i] = "," * (width - 1)  # a stand-in, replaced by the csv module's values below
    if (len(set(header)) == width and all(len(values) == width for values in parsed)
            and list(map(str.count, plain, itertools.repeat(","))).count(width - 1) == len(plain)):
        flat = ",".join(plain).split(",")  # every line has its values: cut them all in one go
        columns = [flat[i::width] for i in range(width)]
        for i, values in zip(quoted, parsed):
            for column, value in zip(columns, values):
                column[i] = value
        columns = _fast_csv_rows(header, numbers, columns)
        if columns is not None:
            return _stage_rows(directory, columns=columns)
    records = [row.split(",") for row in lines]
    for i, values in zip(quoted, parsed):
        records[i] = values
    return _stage_chunk(directory, fmt, header, numbers, records)


def _stage_parsed(directory: str, header: list[str], line: int, text: str) -> tuple:
    """A CSV block read by the csv module (values with line breaks, lone CRs)."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        records = list(reader)
    except csv.Error:
        return ("anomaly",)
    return _stage_chunk(directory, "csv", header, _record_lines(line, records, line + reader.line_num), records)


class _RowError(Exception):
    """``(line, message, field or None)`` of a chunk's first bad row."""


def _exact_rows(fmt: str, header: list[str] | None, lines: list[int], records: list) -> list[tuple]:
    """The chunk row by row, with the readers' own checks (their exact errors)."""
    out = []
    for line, raw in zip(lines, records):
        try:
            row = _csv_dict(header, raw) if fmt == "csv" else _json_object(raw)
            if row is not None:
                out.append(staging_row(line, _sample(row)))
        except FieldError as exc:
            raise _RowError(line, exc.reason, exc.field) from None
        except DataFormatError as exc:
            raise _RowError(line, str(exc), None) from None
    return out


def _widths_ok(header: list[str], records: list[list[str]]) -> bool:
    """Every record has one value per column, and no column name repeats (the last one counts)."""
    return bool(records) and set(map(len, records)) == {len(header)} and len(set(header)) == len(header)


def _fast_csv_rows(header: list[str], lines: list[int], columns: list) -> tuple | None:
    """The chunk's staging rows as columns (``store.STAGING_COLUMNS``) from its CSV ``columns``
    (one sequence of values per header column), checked column by column (a few C calls per chunk instead of several per row);
    None when any row needs the exact path (a blank row, a quoted formula cell, text outside
    the fast character set, a bad value): then ``_exact_rows`` takes the chunk."""
    from replyloop.textnorm import compact_many

    index = {name: header.index(name) for name in SAMPLE_FIELDS if name in header}
    texts = {}
    for name in ("prompt", "response"):
        values = columns[index[name]]
        joined = "\n".join(values)
        limit = fields.MAX_LENGTH[name]
        if (joined[:1] == "'" or "\n'" in joined or fields._BAD_OR_INVISIBLE_IN_TEXT.search(joined)
                or max(map(len, values)) > limit):
            return None
        texts[name] = list(map(str.strip, values))
        if "" in texts[name]:  # a blank value: the exact path says so
            return None
    count = len(lines)
    labels = {}
    for name in ("category", "intent"):
        if name not in index:
            labels[name] = [None] * count
            continue
        values = columns[index[name]]
        clean = {}
        for value in set(values):
            if value[:1] == "'":
                return None
            try:
                clean[value] = fields.clean(name, value)
            except FieldError:
                return None
        labels[name] = list(map(clean.__getitem__, values))
    prompts, responses = texts["prompt"], texts["response"]
    keys = compact_many(prompts)
    digest = hashlib.sha256  # textnorm.dedupe_key and prompt_key, inlined: two hashes a row is most of the work
    dedupe = [digest(f"{k}\x1f{r}".encode()).hexdigest() for k, r in zip(keys, compact_many(responses))]
    prompt_keys = [digest(k.encode()).hexdigest()[:16] for k in keys]
    return (lines, prompts, responses, labels["category"], labels["intent"], dedupe, prompt_keys)


def _record_lines(start: int, records: list[list[str]], end: int) -> list[int]:
    """The line each CSV record of a chunk starts on: ``start`` is the reader's ``line_num``
    before the chunk, ``end`` after it. Records of one line each are the common case; a quoted
    line break inside a value makes its record longer."""
    if end - start == len(records):
        return list(range(start + 1, end + 1))
    lines, line = [], start + 1
    for values in records:
        lines.append(line)
        text = "".join(values)
        line += 1 + text.count("\n") + text.count("\r") - text.count("\r\n")
    if line != end + 1:
        raise _Anomaly("line count")
    return lines


def import_file(store, path: str | Path, encoding: str = "utf-8", workers: int | None = None,
                source: str = "import", approved_by: str | None = None):
    """Import a samples file (CSV or JSONL) into ``store`` all or nothing; returns the store's
    ``ImportResult``.

    The raw file is cut here into blocks of whole records (``BLOCK_BYTES``; an encoding outside
    ``BLOCK_ENCODINGS``: chunks of ``CHUNK_ROWS`` records parsed here); each block is decoded,
    parsed, validated, keyed and written to a staging file by one of ``workers`` forked
    processes (default: one per CPU, at most 4, for a file of ``PARALLEL_MIN_BYTES`` or more;
    0: in this process), at most two blocks ahead each, so memory stays bounded. Nothing takes
    the store's write lock until the whole file is valid; then ``Store.import_staged`` moves the
    rows in one transaction. The first bad row in file order raises (DataFormatError /
    FieldError naming ``path:line``), as ``iter_samples`` would. Workers are forked, so only
    from a single-threaded process (the CLI); with other threads running (``serve``) or
    without ``fork`` the file is validated here."""
    import multiprocessing
    import os
    import threading

    from replyloop.store import Staging

    path = Path(path)
    detect_format(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise _open_error(path, exc) from None
    if workers is None:
        workers = min(os.cpu_count() or 1, 4) if size >= PARALLEL_MIN_BYTES else 0
    if threading.active_count() > 1 or "fork" not in multiprocessing.get_all_start_methods():
        workers = 0  # forking a process with other threads can deadlock the child
    try:
        with Staging() as staging:
            _stage_file(path, encoding, workers, staging)
            return store.import_staged(staging, source, approved_by)
    except _Anomaly:  # the exact path, row by row
        return store.import_rows(iter_staged(path, encoding), source, approved_by)


def _watch_parent(parent: int) -> None:
    """Worker start-up: end the worker when the importing process is gone (``kill -9``: forked
    workers hold the task pipe open themselves and would wait on it for ever)."""
    import os
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="replyloop-import-watch", daemon=True).start()


def _not_valid_text(path: Path, encoding: str, line: int) -> DataFormatError:
    hint = " (try --encoding gbk)" if _codec(encoding) == "utf-8-sig" else ""
    return DataFormatError(f"{path}:{line}: not valid {encoding} text{hint}")


def _blocks(path: Path, fmt: str, encoding: str) -> tuple[list[str] | None, Iterator[tuple]] | None:
    """``(header, blocks)``: the CSV header (None for JSONL) and ``(line, newline, bytes)`` of
    each block of whole records after it (``_stage_block``), read from the raw file; None when
    the file is read the other way (an encoding outside ``BLOCK_ENCODINGS``, a header with a
    quote or a lone CR, an empty or one-line file)."""
    codec = _codec(encoding)
    if codecs.lookup(codec).name not in BLOCK_ENCODINGS:
        return None
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise _open_error(path, exc) from None
    header = None
    line = newline = 0
    if fmt == "csv":
        head = fh.readline()
        if not head.endswith(b"\n") or b'"' in head or b"\r" in head[:-2]:
            fh.close()
            return None
        try:
            text = head.decode(codec)
        except UnicodeDecodeError:
            fh.close()
            raise _not_valid_text(path, encoding, 1) from None
        _, header = _csv_reader(path, [text], ("prompt", "response"))
        line = newline = 1
    block_codec = "utf-8" if codec == "utf-8-sig" else codec  # the BOM is before the header

    def blocks() -> Iterator[tuple]:
        nonlocal line, newline
        with fh:
            if fmt != "csv":  # a JSONL file may start with a BOM too
                first = fh.read(3)
                if first != codecs.BOM_UTF8 or codec != "utf-8-sig":
                    fh.seek(0)
            carry = b""
            while True:
                data = fh.read(BLOCK_BYTES)
                buf = carry + data if carry else data
                if not data:
                    if buf:
                        yield line, newline, buf
                    return
                cut = buf.rfind(b"\n") + 1
                if fmt == "csv" and b'"' in buf:  # a line feed inside a quoted value is no record end
                    quotes = buf.count(b'"', 0, cut)  # even at the end of a record (quotes come in pairs)
                    while cut and quotes % 2:
                        before = buf.rfind(b"\n", 0, cut - 1) + 1
                        quotes -= buf.count(b'"', before, cut)
                        cut = before
                if not cut:
                    if len(buf) > MAX_RECORD_BYTES:  # no record is this long: a stray quote (a"b)
                        raise _Anomaly("no record end")
                    carry = buf
                    continue
                block, carry = buf[:cut], buf[cut:]
                yield line, newline, block
                lf = block.count(b"\n")
                line += lf + block.count(b"\r") - block.count(b"\r\n")
                newline += lf

    return header, blocks()


def _stage_file(path: Path, encoding: str, workers: int, staging) -> None:
    import collections
    import multiprocessing
    import os
    from concurrent.futures import Future, ProcessPoolExecutor

    fmt = detect_format(path)
    directory = str(staging.directory)
    pending: collections.deque = collections.deque()
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"), initializer=_watch_parent,
                               initargs=(os.getpid(),)) if workers else None

    def submit(fn, *args) -> None:
        if pool is not None:
            pending.append(pool.submit(fn, directory, *args))
            return
        future: Future = Future()
        future.set_result(fn(directory, *args))
        pending.append(future)

    def collect(final: bool = False) -> None:
        while pending and (final or len(pending) >= 2 * max(workers, 1) or pending[0].done()):
            done = pending.popleft().result()
            if done[0] == "error":
                _, line, message, field_name = done
                if field_name is not None:
                    raise FieldError(field_name, message, f"{path}:{line}")
                raise DataFormatError(f"{path}:{line}: {message}")
            if done[0] == "decode":
                raise _not_valid_text(path, encoding, done[1])
            if done[0] == "anomaly":
                raise _Anomaly("broken CSV")
            if done[1] is not None:
                staging.add_keys(*done[2], file=done[1])

    try:
        raw = _blocks(path, fmt, encoding)
        if raw is not None:
            header, blocks = raw
            codec = _codec(encoding)
            codec = "utf-8" if codec == "utf-8-sig" else codec
            for line, newline, data in blocks:
                submit(_stage_block, fmt, codec, header, line, newline, data)
                collect()
        else:
            _submit_parsed(path, fmt, encoding, submit, collect)
        collect(final=True)
    finally:
        for future in pending:
            future.cancel()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        writer = _STAGE_WRITERS.pop(directory, None)
        if writer is not None:
            writer.close()
    if not len(staging):
        raise DataFormatError(f"{path}: no samples in the file")


def _submit_parsed(path: Path, fmt: str, encoding: str, submit, collect) -> None:
    """The file read through a text stream here, in chunks of ``CHUNK_ROWS`` parsed records."""
    with _open_lines(path, encoding, newline="" if fmt == "csv" else "\n") as fh:
        if fmt == "csv":
            reader, header = _csv_reader(path, fh, ("prompt", "response"))
            while True:
                start = reader.line_num
                try:
                    records = list(itertools.islice(reader, CHUNK_ROWS))
                except csv.Error:  # the exact path names the line, or an earlier bad row
                    raise _Anomaly("broken CSV") from None
                if not records:
                    break
                submit(_stage_chunk, fmt, header, _record_lines(start, records, reader.line_num), records)
                collect()
        else:
            line = 0
            while True:
                records = list(itertools.islice(fh, CHUNK_ROWS))
                if not records:
                    break
                submit(_stage_chunk, fmt, None, list(range(line + 1, line + 1 + len(records))), records)
                line += len(records)
                collect()


def read_samples(path: str | Path, encoding: str = "utf-8") -> list[SampleIn]:
    """All samples of a CSV (``prompt,response[,category,intent]``) or JSONL file."""
    return [sample for _, sample in iter_samples(path, encoding)]


def read_questions(path: str | Path, encoding: str = "utf-8") -> list[QuestionIn]:
    """Customer questions from CSV (``conversation_id,question[,category,draft]``) or JSONL."""
    path = Path(path)
    fmt = detect_format(path)
    questions = []
    with _open_lines(path, encoding, newline="" if fmt == "csv" else "\n") as fh:
        for line, row in _rows(path, fh, fmt, ("conversation_id", "question")):
            try:
                questions.append(question_from_mapping(row))
            except FieldError as exc:
                raise exc.at(f"{path}:{line}") from None
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


def export_samples(rows: Iterable[dict], fmt: str, out: str | Path, scrubber: Scrubber | None = None,
                   system_prompt: str | None = None, csv_safe: bool = True) -> Path:
    """Write samples for other tools. lora-scripts: ``out`` is the ``train_data_dir`` and gets
    ``metadata.csv``; llama-factory (alpaca) / llama-factory-sharegpt: ``out`` is LLaMA-Factory's
    ``dataset_dir`` and gets ``replyloop.json`` plus a ``replyloop`` entry in ``dataset_info.json``
    (other entries kept); jsonl and chatml: ``out`` is the file. Returns the data file written.

    Written to a temporary file that replaces the target at the end (removed on failure); an
    ``out`` of the wrong kind (a file for lora-scripts, a directory for jsonl) or a path that
    cannot be written is a DataFormatError naming it. ``csv_safe`` (lora-scripts): a cell that a
    spreadsheet would run as a formula gets a leading quote (``replyloop.csvsafe``)."""
    if fmt not in FORMATS:
        raise DataFormatError(f"unknown export format {fmt!r} (choose {', '.join(FORMATS)})")
    out = Path(out)
    if fmt in DIR_FORMATS and out.exists() and not out.is_dir():
        what = METADATA_NAME if fmt == "lora-scripts" else f"{LLAMA_FACTORY_DATASET}.json and {DATASET_INFO_NAME}"
        raise DataFormatError(f"{out}: is a file; --format {fmt} writes {what} into a directory")
    if fmt not in DIR_FORMATS and out.is_dir():
        raise DataFormatError(f"{out}: is a directory; --format {fmt} writes a file (give a file name)")
    clean = (lambda s: scrubber.scrub(s)) if scrubber else (lambda s: s)
    records = ((clean(r["prompt"]), clean(r["response"]), r.get("category") or "", r.get("intent") or "")
               for r in rows)  # a stream: ``rows`` may be a cursor over a million samples
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
        _write_records(tmp, fmt, records, system_prompt, csv_safe)
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


def _write_records(tmp: Path, fmt: str, records: Iterable[tuple[str, str, str, str]], system_prompt: str | None,
                   csv_safe: bool = True) -> None:
    if fmt == "lora-scripts":
        with tmp.open("w", encoding="utf-8", newline="") as fh:
            writer = csvsafe.writer(fh, safe=csv_safe)
            writer.writerow(["prompt", "response", "category", "intent"])
            writer.writerows(records)
        return
    if fmt.startswith("llama-factory"):  # a JSON array, as LLaMA-Factory's data/README.md shows
        with tmp.open("w", encoding="utf-8") as fh:  # streamed: the text of json.dumps(items, indent=1)
            first = True
            for prompt, response, _category, _intent in records:
                if fmt == "llama-factory":
                    item = {"instruction": prompt, "input": "", "output": response}
                else:
                    item = {"conversations": [{"from": "human", "value": prompt}, {"from": "gpt", "value": response}]}
                if system_prompt:
                    item["system"] = system_prompt
                fh.write(("[\n " if first else ",\n ") + json.dumps(item, ensure_ascii=False, indent=1).replace("\n", "\n "))
                first = False
            fh.write("[]\n" if first else "\n]\n")
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
