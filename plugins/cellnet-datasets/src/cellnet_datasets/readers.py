"""Readers for user files (JSONL, CSV, TSV, plain text). Every problem is a
:class:`~cellnet_core.errors.DataError` whose message starts ``<file>: line <n>:``."""

from __future__ import annotations

import codecs
import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from cellnet_core.errors import ConfigError, DataError

#: (line number, record) — a JSON object, a CSV row keyed by the header, or ``{"text": line}``.
Record = tuple[int, dict[str, Any]]

_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv", ".tab": "tsv"}


def detect_format(path: str | Path, fmt: str = "auto") -> str:
    """``fmt`` unless ``auto``; then by extension: .jsonl/.ndjson/.json → jsonl, .csv → csv,
    .tsv/.tab → tsv, anything else → txt (one text per line)."""
    if fmt != "auto":
        return fmt
    return _EXTENSIONS.get(Path(path).suffix.lower(), "txt")


def require_file(path: str | Path) -> Path:
    """``path`` as a :class:`Path` when it names an existing file; otherwise a :class:`DataError`
    that says what is there instead (nothing, a directory)."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{path}: no such file")
    if p.is_dir():
        raise DataError(f"{path}: is a directory, expected a file (e.g. {p / 'pairs.jsonl'})")
    return p


def read_text(path: str | Path, encoding: str = "utf-8") -> str:
    """The whole file as text; missing, empty or wrongly encoded files raise :class:`DataError`."""
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise ConfigError(f"data.encoding: unknown encoding '{encoding}'") from None
    p = require_file(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise DataError(f"{path}: line {line}: not valid {encoding} (byte 0x{raw[exc.start]:02x} at column {col}); "
                        f"save the file as {encoding} or set the dataset's 'encoding'") from None
    text = text.lstrip("\ufeff")  # a UTF-8 byte-order mark is not data
    if not text.strip():
        raise DataError(f"{path}: file is empty")
    return text


def read_jsonl(path: str | Path, encoding: str = "utf-8") -> list[Record]:
    """One JSON object per line; blank lines are skipped."""
    out: list[Record] = []
    for n, line in enumerate(read_text(path, encoding).splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line, parse_constant=_no_constant)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: line {n}: invalid JSON: {exc.msg} (column {exc.colno})") from None
        except _NotJson as exc:
            raise DataError(f"{path}: line {n}: {exc}") from None
        except RecursionError:
            raise DataError(f"{path}: line {n}: invalid JSON: nested too deeply to read") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}: line {n}: expected a JSON object, got {_json_type(obj)}")
        out.append((n, obj))
    return out


def read_delimited(path: str | Path, delimiter: str, required: tuple[str, ...], encoding: str = "utf-8") -> list[Record]:
    """CSV/TSV with a header row naming the columns; ``required`` columns must be in it."""
    text = read_text(path, encoding)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
        while not any(h.strip() for h in header):
            header = next(reader)
    except StopIteration:
        raise DataError(f"{path}: file is empty") from None
    except csv.Error as exc:
        raise DataError(f"{path}: line {reader.line_num}: unreadable header: {exc}") from None
    header_line = reader.line_num
    header = [h.strip() for h in header]
    for col in required:
        if col not in header:
            kind = "TSV" if delimiter == "\t" else "CSV"
            raise DataError(f"{path}: line {header_line}: missing column '{col}' in the {kind} header "
                            f"(columns: {', '.join(header)})")
    out: list[Record] = []
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise DataError(f"{path}: line {reader.line_num}: unreadable row: {exc}") from None
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise DataError(f"{path}: line {reader.line_num}: expected {len(header)} fields as in the header, "
                            f"got {len(row)}")
        out.append((reader.line_num, dict(zip(header, row))))
    return out


def read_lines(path: str | Path, encoding: str = "utf-8") -> list[Record]:
    """Plain text: each non-blank line is one record ``{"text": line}``."""
    return [(n, {"text": line}) for n, line in enumerate(read_text(path, encoding).splitlines(), 1)
            if line.strip()]


def read_records(path: str | Path, fmt: str, required: tuple[str, ...], encoding: str = "utf-8") -> list[Record]:
    """``(line, record)`` pairs of a JSONL, CSV or TSV file (format from the extension unless
    given); ``required`` fields must be present."""
    fmt = detect_format(path, fmt)
    if fmt == "jsonl":
        return read_jsonl(path, encoding)
    if fmt == "csv":
        return read_delimited(path, ",", required, encoding)
    if fmt == "tsv":
        return read_delimited(path, "\t", required, encoding)
    return read_lines(path, encoding)


class _NotJson(ValueError):
    """A JSON extension Python's reader accepts and cellnet refuses (``NaN``, ``Infinity``)."""


def _no_constant(name: str) -> Any:
    # json.loads reads NaN/Infinity as floats; strict JSON has no such values, and as a text field
    # "nan" would be trained on as a sentence
    raise _NotJson(f"{name} is not a JSON value (a missing value? leave the row out; text? quote it: \"{name}\")")


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def get_text(record: dict[str, Any], field: str, path: str | Path, line: int, *, required: bool = True) -> str | None:
    """``record[field]`` as a string. Numbers are written out; other types are an error."""
    if field not in record or (record[field] is None and not required):
        if required:
            raise DataError(f"{path}: line {line}: missing field '{field}'")
        return None
    value = record[field]
    if isinstance(value, str):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        raise DataError(f"{path}: line {line}: field '{field}' is {value}, not a text")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise DataError(f"{path}: line {line}: field '{field}' must be a string, got {_json_type(value)}")


def get_list(record: dict[str, Any], field: str, path: str | Path, line: int) -> list[Any]:
    """``record[field]`` as a list; missing or not a list is a DataError naming file and line."""
    if field not in record:
        raise DataError(f"{path}: line {line}: missing field '{field}'")
    value = record[field]
    if not isinstance(value, list):
        raise DataError(f"{path}: line {line}: field '{field}' must be a list, got {_json_type(value)}")
    return value
