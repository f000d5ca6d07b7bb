"""Tables: the one reader of CSV and TSV files (optionally gzipped) and of their label
cells, for every dataset and protocol file the package reads (CSVDataset, MIMIC-CXR's
metadata, split and CheXpert tables, the CheXpert 8x200 retrieval protocol).

The file is checked before it is trusted: a FIFO or device is refused, never read; text
that is not UTF-8, a truncated gzip stream, a stray quote (which would merge every later
row into one field) and a row with more fields than the header has columns raise
:class:`DataFileError` (a ValueError) naming the file and the line.
"""

import csv
import gzip
import io
import math
import zlib

from ._io import read_regular_file
from .errors import DataFileError

__all__ = [
    "check_row",
    "column_index",
    "detect_delimiter",
    "parse_label",
    "read_table",
    "read_text",
]


def read_text(path):
    """The text of a CSV/TSV file, gunzipped when the name ends in .gz; a UTF-8
    byte-order mark is dropped. DataFileError for anything that is not UTF-8 text in a
    regular file (with the line of the first bad byte) or a truncated gzip stream."""
    raw = read_regular_file(path, DataFileError, "a CSV or TSV file")
    if str(path).endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except EOFError:
            raise DataFileError(
                f"{path} is truncated: the gzip stream ends before its "
                "end marker (an interrupted download or copy?)"
            ) from None
        except (gzip.BadGzipFile, zlib.error) as error:
            raise DataFileError(f"{path} is not a readable gzip file: {error}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise DataFileError(
            f"{path}, line {line}: byte 0x{raw[error.start]:02x} is not "
            "UTF-8 text; expected UTF-8 (re-save the file as UTF-8, e.g. "
            "iconv -f latin1 -t utf-8)"
        ) from None


def detect_delimiter(header_line):
    """Tab when the header line has more tabs than commas, else comma."""
    return "\t" if header_line.count("\t") > header_line.count(",") else ","


def read_table(path, delimiter=None):
    """(column names, rows as lists, the line each row starts on) of a CSV/TSV
    (optionally .gz) file. Quoted fields may hold delimiters and line breaks, and a
    field may be of any length. The table is parsed strictly, because a stray quote
    otherwise merges every later row into one field: a quoted field that does not end
    with a quote followed by the delimiter or the end of the line, and a row with more
    non-empty fields than the header has columns (an unquoted delimiter in a report),
    raise DataFileError with the line."""
    text = read_text(path)
    f = io.StringIO(text, newline="")
    header_line = f.readline()
    if not header_line.strip():
        raise DataFileError(f"{path} is empty: expected a header line with column names")
    if delimiter is None:
        delimiter = detect_delimiter(header_line)
    columns = next(csv.reader([header_line], delimiter=delimiter))
    columns = [c.strip() for c in columns]
    reader = csv.reader(f, delimiter=delimiter, strict=True)
    rows, lines = [], []
    # The limit is process-wide: raised for this read (no field can be longer than the
    # text), then put back.
    limit = csv.field_size_limit()
    csv.field_size_limit(max(limit, len(text) + 1))
    try:
        while True:
            line = reader.line_num + 2  # the header was line 1
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as error:
                raise DataFileError(
                    f"{path}, line {line}: the row starting here is not well-formed "
                    f"({error}): a field that starts with a quote must end with a quote "
                    f"followed by {delimiter!r} or the end of the line; a stray quote "
                    "would merge the rows after it"
                ) from None
            if not row:
                continue
            if len(row) > len(columns) and any(v.strip() for v in row[len(columns) :]):
                raise DataFileError(
                    f"{path}, line {line}: {len(row)} fields, but the header has "
                    f"{len(columns)} columns; quote fields that contain {delimiter!r}"
                )
            rows.append(row)
            lines.append(line)
    finally:
        csv.field_size_limit(limit)
    return columns, rows, lines


def check_row(row, needed, path, line, columns):
    """Refuse a row too short to hold the columns at the indices `needed`."""
    if len(row) <= max(needed):
        raise DataFileError(
            f"{path}, line {line}: {len(row)} fields, but the header has "
            f"{len(columns)} columns"
        )


def column_index(columns, name, path, role):
    if name in columns:
        return columns.index(name)
    found = ", ".join(repr(c) for c in columns)
    raise ValueError(f"{role} column {name!r} not found in {path}; columns found: {found}")


def parse_label(text, path, line, column, *, blank, values=None):
    """The number in one label cell of a table.

    text : the cell as read (None counts as blank).
    blank : what an empty cell means. Every reader says so explicitly, because the
        datasets disagree: ``math.nan`` for "unknown" (CSVDataset, MIMIC-CXR's CheXpert
        labels, where blank means the labeler did not mention the finding and NaN
        keeps that apart from a negative), ``0`` for "negative" (the CheXpert 8x200
        protocol's candidates, where an unmentioned finding is not a hit).
    values : the numbers allowed (e.g. ``(1, 0, -1)``), or None for any number.

    Returns a float (or ``blank``). Raises DataFileError (a ValueError) naming the file,
    the line and the column when the cell is not a number, or not one of ``values``.
    """
    text = (text or "").strip()
    if text == "":
        return blank
    try:
        number = float(text)
    except ValueError:
        number = None
    if values is None:
        if number is None:
            raise DataFileError(
                f"{path}, line {line}: label column {column!r} holds {text!r}, not a number"
            )
        return number
    if number is None or math.isnan(number) or number not in values:
        allowed = ", ".join(f"{v:g}" for v in values)
        raise DataFileError(
            f"{path}, line {line}, column {column!r}: label {text!r} is "
            f"not {allowed} or blank"
        )
    return number
