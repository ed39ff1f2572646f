"""Reading a corpus: plain text lines, JSON lines, a Parquet column, CoNLL-U with gold parts of speech, standard
input, or the bundled sample, into records in input order.

Bad records never stop a run: each comes back with the reason it cannot be measured (an empty line, a JSON line
that does not parse, a missing field). A file that cannot be used at all (unreadable, malformed CoNLL-U, a missing
Parquet column) is one `InputError` naming the file and the line or column, raised before any work.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError, OptionError
from ..names import CORPUS_FORMATS, SAMPLE_CORPUS

EXTENSIONS = {".txt": "text", ".text": "text", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".conllu": "conllu"}
SAMPLE = "sample"
"""The source name of the bundled sample corpus: the UD English-EWT dev split (2,001 sentences, gold UPOS)."""
STDIN = "-"
EMPTY = "empty"


@dataclass(frozen=True)
class Word:
    """One word of a text: its characters [start, end) and its universal part of speech (None if unknown)."""

    start: int
    end: int
    upos: str | None


@dataclass(frozen=True)
class Record:
    """One input record: its text, or None with the reason it cannot be measured."""

    text: str | None
    sent_id: str | None = None
    words: tuple[Word, ...] | None = None
    """Gold words (CoNLL-U), in order; None where the source has none."""
    reason: str | None = None


@dataclass(frozen=True)
class Source:
    """A corpus read into memory: its records in input order, where it came from, and the SHA-256 of its bytes."""

    records: tuple[Record, ...]
    path: str
    sha256: str
    format: str
    gold: bool
    """Whether the records carry gold parts of speech (CoNLL-U)."""


def sample_path() -> Path:
    """The bundled sample corpus (CC BY-SA 4.0; its LICENSE.txt and README.md sit beside it)."""
    return SAMPLE_CORPUS


def read_source(
    source: str | Path | Iterable[str], *, format: str = "auto", text_field: str = "text", limit: int | None = None
) -> Source:
    """Read `source` (a path, `"-"` for standard input, `"sample"`, or an iterable of strings): its first `limit`
    records, in input order."""
    if format not in CORPUS_FORMATS:
        raise OptionError(f"unknown format {format!r}; choose one of: {', '.join(CORPUS_FORMATS)}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise OptionError(f"limit must be a whole number of at least 1; got {limit!r}")
    if not isinstance(source, (str, Path)):
        return _from_strings(source, limit)
    name = str(source)
    if name == SAMPLE:
        if format not in ("auto", "conllu"):
            raise OptionError(f"the sample corpus is CoNLL-U; --format {format} does not apply to it")
        path, chosen, data = str(sample_path()), "conllu", sample_path().read_bytes()
    elif name == STDIN:
        path, chosen, data = STDIN, "text" if format == "auto" else format, sys.stdin.buffer.read()
    else:
        path, chosen, data = name, _guess(Path(name)) if format == "auto" else format, _read_bytes(Path(name))
    digest = hashlib.sha256(data).hexdigest()
    if chosen == "text":
        records = _text_records(data, limit)
    elif chosen == "jsonl":
        records = _jsonl_records(data, path, text_field, limit)
    elif chosen == "parquet":
        records = _parquet_records(data, path, text_field, limit)
    else:
        records = _conllu_records(data, path, limit)
    return Source(tuple(records), path, digest, chosen, gold=chosen == "conllu")


def _guess(path: Path) -> str:
    found = EXTENSIONS.get(path.suffix.lower())
    if found is None:
        what = f"extension {path.suffix!r}" if path.suffix else "no extension"
        raise OptionError(f"cannot tell the format of {path} ({what}); choose one with --format text|jsonl|parquet|conllu")
    return found


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise InputError(f"cannot read {path}: {error.strerror or error}") from error


def _from_strings(items: Iterable[str], limit: int | None) -> Source:
    """An iterable of texts from Python; its digest covers every text, each as a JSON string on its own line."""
    digest = hashlib.sha256()
    records = []
    for item in items:
        if limit is not None and len(records) == limit:
            break
        digest.update((json.dumps(item if isinstance(item, str) else repr(item)) + "\n").encode())
        if not isinstance(item, str):
            records.append(Record(None, reason=f"not a string but {type(item).__name__}"))
        else:
            records.append(_text_record(item))
    return Source(tuple(records), "<python iterable>", digest.hexdigest(), "text", gold=False)


def _text_record(text: str, sent_id: str | None = None) -> Record:
    return Record(text, sent_id) if text.strip() else Record(None, sent_id, reason=EMPTY)


def _lines(data: bytes) -> Iterator[tuple[int, bytes]]:
    """Line numbers (from 1) and lines, without their end-of-line; no empty last line after a final newline."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for number, line in enumerate(lines, 1):
        yield number, line.removesuffix(b"\r")


def _decode(line: bytes) -> tuple[str | None, str | None]:
    try:
        return line.decode("utf-8"), None
    except UnicodeDecodeError as error:
        return None, f"not valid UTF-8 (byte 0x{line[error.start]:02x} at byte {error.start + 1})"


def _text_records(data: bytes, limit: int | None) -> list[Record]:
    records = []
    for _, line in _lines(data):
        if limit is not None and len(records) == limit:
            break
        text, problem = _decode(line)
        records.append(Record(None, reason=problem) if text is None else _text_record(text))
    return records


def _jsonl_records(data: bytes, path: str, field: str, limit: int | None) -> list[Record]:
    records: list[Record] = []
    first_keys: list[str] | None = None
    with_field = 0
    for _, line in _lines(data):
        if limit is not None and len(records) == limit:
            break
        text, problem = _decode(line)
        if text is None:
            records.append(Record(None, reason=problem))
            continue
        if not text.strip():
            records.append(Record(None, reason=EMPTY))
            continue
        try:
            value: Any = json.loads(text)
        except json.JSONDecodeError as error:
            records.append(Record(None, reason=f"not valid JSON ({error.msg} at column {error.colno})"))
            continue
        if not isinstance(value, dict):
            records.append(Record(None, reason=f"a JSON {type(value).__name__}, not an object"))
            continue
        first_keys = list(value) if first_keys is None else first_keys
        if field not in value:
            records.append(Record(None, reason=f"no field {field!r}"))
            continue
        with_field += 1
        if isinstance(value[field], str):
            records.append(_text_record(value[field]))
        else:
            records.append(Record(None, reason=f"field {field!r} is {type(value[field]).__name__}, not a string"))
    if first_keys is not None and not with_field:
        raise InputError(
            f"{path}: no record has the field {field!r} (the first has: {', '.join(first_keys)}); choose one with --text-field"
        )
    return records


def _parquet_records(data: bytes, path: str, column: str, limit: int | None) -> list[Record]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table_file = pq.ParquetFile(io.BytesIO(data))
    except (pa.ArrowException, OSError) as error:
        raise InputError(f"cannot read {path} as Parquet: {str(error).splitlines()[0]}") from error
    schema = table_file.schema_arrow
    if column not in schema.names:
        raise InputError(
            f"{path} has no column {column!r} (its columns: {', '.join(schema.names)}); choose one with --text-field"
        )
    kind = schema.field(column).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)):
        raise InputError(f"{path}: column {column!r} holds {kind}, not text; choose a text column with --text-field")
    records: list[Record] = []
    for batch in table_file.iter_batches(columns=[column]):
        for value in batch.column(0).to_pylist():
            if limit is not None and len(records) == limit:
                return records
            records.append(Record(None, reason="null") if value is None else _text_record(value))
    return records


def _conllu_records(data: bytes, path: str, limit: int | None) -> list[Record]:
    """Sentences of a CoNLL-U file: the `# text =` line, `# sent_id`, and each syntactic word's characters in the
    text with its UPOS. Words are found in the text in order (`SpaceAfter=No` means no space before the next);
    the words of a multiword token share its characters, split where their forms spell it out."""
    records: list[Record] = []
    block: list[tuple[int, str]] = []
    for number, raw in _lines(data):
        line, problem = _decode(raw)
        if line is None:
            raise InputError(f"{path}, line {number}: {problem}")
        if line.strip():
            block.append((number, line))
            continue
        if block:
            records.append(_sentence(block, path))
            block = []
            if limit is not None and len(records) == limit:
                return records
    if block:
        records.append(_sentence(block, path))
    return records[:limit] if limit is not None else records


def _sentence(block: list[tuple[int, str]], path: str) -> Record:
    text = sent_id = None
    rows: list[tuple[int, list[str]]] = []
    for number, line in block:
        if line.startswith("#"):
            key, _, value = line[1:].partition("=")
            if key.strip() == "text":
                text = value.strip()
            elif key.strip() == "sent_id":
                sent_id = value.strip()
            continue
        columns = line.split("\t")
        if len(columns) != 10:
            raise InputError(f"{path}, line {number}: a word line needs 10 tab-separated columns, this one has {len(columns)}")
        rows.append((number, columns))
    first = block[0][0]
    if text is None:
        raise InputError(f"{path}, line {first}: the sentence has no '# text =' line")
    if not rows:
        raise InputError(f"{path}, line {first}: the sentence has no word lines")
    return Record(text, sent_id, _align(text, rows, path)) if text.strip() else Record(None, sent_id, reason=EMPTY)


def _align(text: str, rows: list[tuple[int, list[str]]], path: str) -> tuple[Word, ...]:
    """Each syntactic word's span in `text`, found surface token by surface token."""
    words: list[Word] = []
    cursor = 0
    covered = 0
    """The last word id inside the multiword token being read (0: none)."""
    pending: list[tuple[str, str | None]] = []
    span = (0, 0)
    for number, columns in rows:
        ident, form, upos = columns[0], columns[1], columns[3]
        tag = None if upos == "_" else upos
        if "." in ident:
            continue  # an empty node: not in the text
        if "-" in ident:
            low, _, high = ident.partition("-")
            if not (low.isdigit() and high.isdigit()):
                raise InputError(f"{path}, line {number}: bad multiword token id {ident!r}")
            span = _find(text, form, cursor, number, path)
            cursor, covered, pending = span[1], int(high), []
            continue
        if not ident.isdigit():
            raise InputError(f"{path}, line {number}: bad word id {ident!r}")
        if int(ident) <= covered:
            pending.append((form, tag))
            if int(ident) == covered:
                words.extend(_split(text, span, pending))
                covered = 0
            continue
        start, cursor = _find(text, form, cursor, number, path)
        words.append(Word(start, cursor, tag))
    return tuple(words)


def _find(text: str, form: str, cursor: int, number: int, path: str) -> tuple[int, int]:
    start = cursor
    while start < len(text) and text[start].isspace():
        start += 1
    if not form or not text.startswith(form, start):
        raise InputError(f"{path}, line {number}: the form {form!r} is not next in the sentence's text (at character {start})")
    return start, start + len(form)


def _split(text: str, span: tuple[int, int], parts: list[tuple[str, str | None]]) -> list[Word]:
    """The words of a multiword token: contiguous pieces where their forms spell the token out (`did`+`n't`),
    else the whole token for the first word and empty spans for the rest."""
    start, end = span
    if "".join(form for form, _ in parts).casefold() == text[start:end].casefold():
        found, at = [], start
        for form, tag in parts:
            found.append(Word(at, at + len(form), tag))
            at += len(form)
        return found
    return [Word(start, end, parts[0][1])] + [Word(end, end, tag) for _, tag in parts[1:]]
