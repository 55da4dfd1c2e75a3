"""Read tabular files (CSV/TSV/Parquet/JSON lines, optionally gzipped) into columns of strings.

Every value keeps the source line it came from, so that a later check (an unparsable timestamp,
say) can name the file, the line and the column. Malformed input raises `DataFormatError`.
"""

from __future__ import annotations

import ast
import csv
import gzip
import io
import json
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Iterable, Iterator

import numpy as np

from genrec.errors import DataFormatError

FORMATS = ("csv", "tsv", "parquet", "jsonl")


def detect_format(path: str | Path) -> str:
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    ext = suffixes[-1] if suffixes else ""
    fmt = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".txt": "tsv", ".parquet": "parquet",
           ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}.get(ext)
    if fmt is None:
        raise DataFormatError(path, f"unknown file type '{ext or Path(path).name}' "
                                    f"(expected .csv, .tsv, .parquet, .jsonl or .json, optionally .gz)")
    return fmt


@dataclass
class Columns:
    """Column values as Python objects, with the source line (or row) of each record."""

    path: str
    values: dict[str, list] = field(default_factory=dict)
    lines: list[int] = field(default_factory=list)
    unit: str = "line"

    def __len__(self) -> int:
        return len(self.lines)

    def require(self, *names: str) -> None:
        for name in names:
            if name not in self.values:
                raise DataFormatError(self.path, f"no such column (found: {', '.join(self.values) or 'none'})",
                                      line=1 if self.unit == "line" else None, column=name)

    def error(self, index: int, column: str, message: str) -> DataFormatError:
        return DataFormatError(self.path, message, line=self.lines[index], column=column, unit=self.unit)


def open_text(path: str | Path, encoding: str = "utf-8") -> IO[str]:
    path = Path(path)
    if not path.exists():
        raise DataFormatError(path, "file not found")
    raw = gzip.open(path, "rb") if path.suffix.lower() == ".gz" else open(path, "rb")
    return io.TextIOWrapper(raw, encoding=encoding, newline="")


class _LineCounter:
    """Wraps a text stream to know which line a decompression error happened on."""

    def __init__(self, stream: IO[str]):
        self.stream, self.line = stream, 0

    def __iter__(self) -> Iterator[str]:
        for text in self.stream:
            self.line += 1
            yield text


def _guard_stream(path: str, counter: _LineCounter, rows: Iterable):
    """Turn gzip/zlib/encoding failures into a located one-line error."""
    try:
        yield from rows
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataFormatError(path, f"truncated or corrupt gzip data ({exc})", line=counter.line + 1) from None
    except UnicodeDecodeError as exc:
        raise DataFormatError(path, f"not valid text in the expected encoding ({exc.reason})",
                              line=counter.line + 1) from None


def read_delimited(stream: IO[str], path: str, delimiter: str, fieldnames: list[str] | None = None,
                   strip_type_suffix: bool = False) -> Columns:
    """CSV/TSV with a header row (or `fieldnames` for headerless files such as GroupLens u.data)."""
    counter = _LineCounter(stream)
    reader = csv.reader(counter, delimiter=delimiter,
                        quoting=csv.QUOTE_NONE if delimiter in "\t|" else csv.QUOTE_MINIMAL)
    rows = _guard_stream(path, counter, reader)
    try:
        header = list(fieldnames) if fieldnames is not None else next(rows)
    except StopIteration:
        raise DataFormatError(path, "file is empty") from None
    if strip_type_suffix:  # RecBole atomic files: "user_id:token"
        header = [h.split(":", 1)[0] for h in header]
    header = [h.strip() for h in header]
    if len(set(header)) != len(header):
        raise DataFormatError(path, f"duplicate column names in header: {header}", line=1)
    cols = Columns(path=path, values={h: [] for h in header})
    lists = [cols.values[h] for h in header]
    width = len(header)
    try:
        for row in rows:
            if len(row) != width:
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # blank line
                raise DataFormatError(path, f"expected {width} fields, found {len(row)}", line=counter.line)
            for target, value in zip(lists, row):
                target.append(value)
            cols.lines.append(counter.line)
    except csv.Error as exc:
        raise DataFormatError(path, f"CSV parse error: {exc}", line=counter.line) from None
    return cols


def read_json_lines(stream: IO[str], path: str, allow_python_literals: bool = False) -> Columns:
    """One JSON object per line. Amazon's 2014 metadata is Python-literal dicts, parsed safely
    with `ast.literal_eval` when `allow_python_literals` is set (never `eval`)."""
    counter = _LineCounter(stream)
    cols = Columns(path=path)
    n = 0
    for text in _guard_stream(path, counter, counter):
        text = text.strip()
        if not text:
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            record = None
            if allow_python_literals:
                try:
                    record = ast.literal_eval(text)
                except (ValueError, SyntaxError, MemoryError, RecursionError):
                    record = None
            if record is None:
                raise DataFormatError(path, f"invalid JSON at character {exc.colno}: {exc.msg}",
                                      line=counter.line) from None
        if not isinstance(record, dict):
            raise DataFormatError(path, f"expected a JSON object, found {type(record).__name__}",
                                  line=counter.line)
        for key, value in record.items():
            column = cols.values.get(key)
            if column is None:
                column = cols.values[key] = [None] * n
            column.append(value)
        n += 1
        for column in cols.values.values():
            if len(column) < n:
                column.append(None)
        cols.lines.append(counter.line)
    return cols


def read_parquet(path: str) -> Columns:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises a zoo of types for corrupt files
        raise DataFormatError(path, f"cannot read Parquet: {exc}") from None
    cols = Columns(path=path, unit="row")
    cols.values = {name: table.column(name).to_pylist() for name in table.column_names}
    cols.lines = list(range(1, table.num_rows + 1))
    return cols


def read_columns(path: str | Path, fmt: str | None = None, delimiter: str | None = None,
                 allow_python_literals: bool = False) -> Columns:
    """Read any supported file into `Columns`."""
    path = Path(path)
    fmt = fmt or detect_format(path)
    if not path.exists():
        raise DataFormatError(path, "file not found")
    if fmt == "parquet":
        return read_parquet(str(path))
    with open_text(path) as stream:
        if fmt == "jsonl":
            return read_json_lines(stream, str(path), allow_python_literals)
        return read_delimited(stream, str(path), delimiter or ("\t" if fmt == "tsv" else ","))


# ----------------------------------------------------------------------------------------------
# Value parsing with located errors


def parse_timestamps(cols: Columns, column: str) -> np.ndarray:
    """Seconds since the epoch as float64: numbers (int/float or numeric strings) or ISO-8601."""
    values = cols.values[column]
    out = np.empty(len(values), dtype=np.float64)
    for i, value in enumerate(values):
        try:
            out[i] = _to_seconds(value)
        except (TypeError, ValueError):
            raise cols.error(i, column, f"cannot parse timestamp {value!r} "
                                        f"(expected seconds since 1970 or an ISO-8601 date)") from None
    return out


def _to_seconds(value) -> float:
    if isinstance(value, bool) or value is None:
        raise ValueError
    if isinstance(value, (int, float)):
        if value != value:  # NaN
            raise ValueError
        return float(value)
    if isinstance(value, datetime):
        dt = value
    else:
        text = str(value).strip()
        try:
            return float(text)
        except ValueError:
            dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def parse_floats(cols: Columns, column: str) -> np.ndarray:
    values = cols.values[column]
    out = np.empty(len(values), dtype=np.float64)
    for i, value in enumerate(values):
        try:
            if value is None or isinstance(value, bool):
                raise ValueError
            out[i] = float(value)
        except (TypeError, ValueError):
            raise cols.error(i, column, f"cannot parse number {value!r}") from None
    return out


def parse_ids(cols: Columns, column: str) -> np.ndarray:
    """Identifiers as non-empty strings (object array)."""
    values = cols.values[column]
    out = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        if value is None or isinstance(value, (dict, list)):
            raise cols.error(i, column, f"expected an identifier, found {value!r}")
        text = str(value).strip()
        if not text:
            raise cols.error(i, column, "empty identifier")
        out[i] = text
    return out
