"""Reading a ratings file into a RatingsTable: CSV / JSONL / Parquet tables by extension (or an
Argilla / Label Studio export, mapped to the same columns by imports.py), column matching, numeric
scores and stray blank rows. Cells are kept as factorized text so a million rows stay cheap."""

from __future__ import annotations

import csv
import io
import json
import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from pyarrow import csv as pa_csv

from data_builders.ratings.imports import ImportFields, export_rows, is_argilla, is_labelstudio
from data_builders.ratings.schema import (
    FORMATS,
    IMPORT_FORMATS,
    INPUT_FORMATS,
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    RatingsError,
)

# --- the table ---


@dataclass
class RatingsTable:
    """A ratings file as factorized text columns: column -> (codes per row, distinct stripped values)."""

    path: Path
    format: str
    columns: dict[str, tuple[np.ndarray, np.ndarray]]
    score: np.ndarray  # float64, NaN where the cell is not a number
    records: np.ndarray  # 0-based record index in the file (blank lines are not records)
    unknown_columns: list[str]
    blank_rows: int
    n_records: int  # records the parser read, blank rows included
    line_numbers: np.ndarray | None = None  # JSONL: file line of each record
    labels: np.ndarray | None = None  # imports: where each record is in the export ("task 3, annotation 1")
    import_summary: dict | None = None  # imports: records read, ratings taken, what was skipped and why
    images: dict[str, bytes] | None = None  # imports: images embedded in the export, by their image name

    def __len__(self) -> int:
        return len(self.score)

    def text(self, column: str, row: int) -> str:
        codes, names = self.columns[column]
        return str(names[codes[row]])


def _text_codes(values) -> tuple[np.ndarray, np.ndarray]:
    """Factorize any column into (codes, stripped distinct strings); missing -> ''.

    Stripping the distinct values (not the rows) is what makes 1 M rows cheap.
    """
    codes, uniques = pd.factorize(values)
    names = [u if isinstance(u, str) else str(u) for u in np.asarray(uniques, dtype=object)]
    names = np.array([n.strip() for n in names] + [""], dtype=object)
    codes = np.where(codes < 0, len(names) - 1, codes)
    merged, distinct = pd.factorize(names)  # '  a' and 'a' become one value
    return merged[codes].astype(np.int64), np.asarray(distinct, dtype=object)


# --- CSV ---
# The csv module refuses a field over 128 KiB (`field larger than field limit`); Arrow and pandas have
# parsed the file by the time it walks it (to name lines), so a long response is data, not an error.
CSV_FIELD_LIMIT = 2**31 - 1
OTHER_DELIMITERS = {";": "semicolons", "\t": "tabs", "|": "vertical bars"}


@contextmanager
def unlimited_csv_fields():
    """csv readers in this block take fields of any length (the module's limit is process-wide: restored)."""
    previous = csv.field_size_limit(CSV_FIELD_LIMIT)
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def _csv_header(path: Path) -> list[str] | None:
    """The first non-blank CSV record (the header), or None if there is none or it will not parse."""
    with open(path, "rb") as handle:
        head = handle.read(1 << 16).decode("utf-8-sig", errors="replace")
    try:
        with unlimited_csv_fields():
            for row in csv.reader(io.StringIO(head, newline="")):
                if row and any(cell.strip() for cell in row):
                    return row
    except csv.Error:
        return None
    return None


def _check_delimiter(path: Path, header: list[str] | None) -> None:
    """A header that is one cell holding ';' (a spreadsheet's "CSV" in a comma-decimal locale), tabs or '|':
    one line saying so, instead of 'missing required columns'."""
    if not header or len(header) != 1:
        return
    found = [(header[0].count(mark), name) for mark, name in OTHER_DELIMITERS.items() if mark in header[0]]
    if found:
        name = max(found)[1]
        raise RatingsError(f"{path}: the columns are separated by {name}, not commas (header {header[0][:80]!r}); "
                           f"the builder reads comma-separated CSV: save or export the file with commas")


def _first_long_record(path: Path) -> int | None:
    """File line of the first record with more fields than the header (error path only)."""
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as handle, unlimited_csv_fields():
        reader = csv.reader(handle)
        start, width = 1, None
        for row in reader:
            if row and not (len(row) == 1 and not row[0].strip()):
                if width is None:
                    width = len(row)
                elif len(row) > width:
                    return start
            start = reader.line_num + 1
    return None


def _read_csv_arrow(path: Path) -> pd.DataFrame | None:
    """Arrow's multithreaded parser, every column as text (no NA guessing: "NA" is a bad score, not a
    missing one); None when it refuses the file (pandas then reads it)."""
    header = _csv_header(path)
    if not header or len(set(header)) != len(header):
        return None
    try:
        table = pa_csv.read_csv(
            path,
            parse_options=pa_csv.ParseOptions(newlines_in_values=True),
            convert_options=pa_csv.ConvertOptions(
                column_types={name: pa.string() for name in header},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
                null_values=[],
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowKeyError):
        return None
    return table.to_pandas() if table.column_names == header else None


def _read_csv(path: Path) -> pd.DataFrame:
    # Fast path: Arrow skips empty lines and a BOM like pandas does. Anything it refuses
    # (whitespace-only lines, short rows, bad UTF-8, odd quoting) goes to pandas' C parser, which
    # skips whitespace-only lines too, pads short rows with empty cells (reported row by row
    # later) and refuses rows with extra cells.
    _check_delimiter(path, _csv_header(path))
    frame = _read_csv_arrow(path)
    if frame is not None:
        return frame
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)  # extra cells in the first row
            return pd.read_csv(
                path, dtype=str, keep_default_na=False, encoding="utf-8-sig", engine="c", index_col=False
            )
    except pd.errors.EmptyDataError:
        raise RatingsError(f"{path}: the file is empty") from None
    except pd.errors.ParserWarning:
        raise RatingsError(f"{path} line {_first_long_record(path)}: more cells than the header has") from None
    except UnicodeDecodeError:
        data = path.read_bytes()
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            raise RatingsError(f"{path} line {line}: not UTF-8 text (is this really a CSV file?)") from None
        raise RatingsError(f"{path}: not UTF-8 text") from None
    except (pd.errors.ParserError, ValueError) as exc:
        text = " ".join(str(exc).split())
        match = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", text)
        if match:
            expected, line, saw = match.groups()
            raise RatingsError(f"{path} line {line}: {saw} cells, the header has {expected}") from None
        raise RatingsError(f"{path}: cannot parse as CSV ({text})") from None


# --- JSONL and Parquet ---


def _read_jsonl(path: Path) -> tuple[pd.DataFrame, np.ndarray]:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise RatingsError(f"{path}: not a UTF-8 JSON-lines file ({exc.reason} at byte {exc.start})") from None
    lines = text.splitlines()
    line_numbers = np.array([i + 1 for i, line in enumerate(lines) if line.strip()], dtype=np.int64)
    if len(line_numbers) == 0:
        raise RatingsError(f"{path}: the file is empty")
    kept = [lines[i - 1] for i in line_numbers]
    try:
        frame = pd.read_json(io.StringIO("\n".join(kept)), lines=True, dtype=False)
    except ValueError:
        frame = None
    if frame is None or len(frame) != len(kept):
        for number, line in zip(line_numbers, kept):  # only on failure: find the line to name
            try:
                ok = isinstance(json.loads(line), dict)
            except ValueError:
                ok = False
            if not ok:
                raise RatingsError(f"{path} line {number}: not a JSON object") from None
        raise RatingsError(f"{path}: cannot parse as JSON lines")
    return frame, line_numbers


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises many types for a broken file
        message = " ".join(str(exc).split())[:200]
        raise RatingsError(f"{path}: cannot read as Parquet ({type(exc).__name__}: {message})") from None


# --- annotation-tool exports (mapped to rows by imports.py) ---


def detect_format(path: Path) -> str:
    """csv / jsonl / parquet (the builder's table) or argilla / labelstudio, from the extension and,
    for .json / .jsonl / .parquet, the first record's keys."""
    suffix = path.suffix.lower()
    if suffix == ".json":
        return _json_export_kind(path, _load_json(path))
    fmt = FORMATS.get(suffix)
    if fmt is None:
        raise RatingsError(
            f"{path}: unknown extension {path.suffix!r}; use .csv, .jsonl or .parquet "
            "(or .json for an Argilla / Label Studio export), or pass --format"
        )
    if fmt == "jsonl":
        with open(path, encoding="utf-8-sig", errors="replace") as handle:
            line = next((line for line in handle if line.strip()), "")
        try:
            first = json.loads(line)
        except ValueError:  # the table reader names the bad line
            first = None
        if isinstance(first, dict) and (is_argilla(first) or is_labelstudio(first)):
            return "argilla" if is_argilla(first) else "labelstudio"
    elif fmt == "parquet":
        try:
            import pyarrow.parquet as pq

            if is_argilla(pq.read_schema(path).names):
                return "argilla"
        except Exception:  # not readable as Parquet: the table reader names the problem
            pass
    return fmt


def _json_lines(path: Path, text: str) -> list:
    """Every non-blank line as a JSON value; RatingsError naming the first line that is not one."""
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except ValueError:
                raise RatingsError(f"{path} line {number}: not a JSON object") from None
    return records


def _load_json(path: Path):
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise RatingsError(f"{path}: not UTF-8 JSON ({exc.reason} at byte {exc.start})") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        if str(exc).startswith("Extra data"):  # JSON lines in a .json file, as datasets' to_json writes them
            return _json_lines(path, text)
        raise RatingsError(f"{path}: not valid JSON ({exc})") from None


def _json_export_kind(path: Path, data) -> str:
    if not isinstance(data, list):
        raise RatingsError(f"{path}: expected a JSON list of records or tasks, found a {type(data).__name__}")
    first = next((r for r in data if isinstance(r, dict)), None)
    if first is not None and is_argilla(first):
        return "argilla"
    if first is not None and is_labelstudio(first):
        return "labelstudio"
    keys = ", ".join(map(str, first)) if first else "none"
    raise RatingsError(f"{path}: neither a Label Studio nor an Argilla export (first record's keys: {keys}); "
                       "ratings tables are .csv, .jsonl or .parquet")


def _export_records(path: Path) -> list:
    """The export's records (tasks) as Python objects: a .json list, JSON lines, or Parquet rows."""
    suffix = path.suffix.lower()
    if FORMATS.get(suffix) == "parquet":
        try:
            return pd.read_parquet(path).to_dict("records")
        except Exception as exc:  # pyarrow raises many types for a broken file
            raise RatingsError(f"{path}: cannot read as Parquet ({type(exc).__name__})") from None
    if FORMATS.get(suffix) == "jsonl":
        return _json_lines(path, path.read_bytes().decode("utf-8-sig", errors="replace"))
    data = _load_json(path)
    if not isinstance(data, list):
        raise RatingsError(f"{path}: expected a JSON list of records or tasks, found a {type(data).__name__}")
    return data


# --- read ---


def read_ratings(path, input_format: str = "auto", fields: ImportFields | None = None) -> RatingsTable:
    """Read a ratings file into a RatingsTable: a CSV / JSONL / Parquet table (by extension), or an
    Argilla / Label Studio export (detected from the file, see imports.py); input_format forces one.

    Column names are matched case-insensitively after stripping; rows whose known cells are all
    empty (",,,," lines of a spreadsheet export) are skipped and counted as blank rows.
    """
    path = Path(path)
    if not path.is_file():
        raise RatingsError(f"{path}: no such file")
    if input_format not in INPUT_FORMATS:
        raise RatingsError(f"bad --format {input_format!r}: choose {', '.join(INPUT_FORMATS)}")
    fmt = detect_format(path) if input_format == "auto" else input_format
    if path.stat().st_size == 0:
        raise RatingsError(f"{path}: the file is empty")
    if fmt in IMPORT_FORMATS:
        imported = export_rows(path, fmt, _export_records(path), fields or ImportFields())
        return table_from_frame(path, fmt, imported.frame, labels=imported.labels, import_summary=imported.summary,
                                images=imported.images)
    line_numbers = None
    if fmt == "csv":
        raw = _read_csv(path)
    elif fmt == "jsonl":
        raw, line_numbers = _read_jsonl(path)
    else:
        raw = _read_parquet(path)
    return table_from_frame(path, fmt, raw, line_numbers)


def _match_columns(path: Path, raw: pd.DataFrame) -> tuple[dict[str, object], list[str]]:
    """Known column -> the frame's column (names stripped, any case), and the unknown names."""
    names = [str(c).replace("\ufeff", "").strip().lower() for c in raw.columns]
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise RatingsError(f"{path}: duplicate column name(s) {', '.join(dupes)}")
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        found = ", ".join(names) if names else "none"
        raise RatingsError(f"{path}: missing required column(s) {', '.join(missing)} (found: {found})")
    unknown = [c for c in names if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    return dict(zip(names, raw.columns)), unknown


def table_from_frame(path: Path, fmt: str, raw: pd.DataFrame, line_numbers=None, labels=None,
                     import_summary=None, images=None) -> RatingsTable:
    """The RatingsTable of a parsed file: text codes per known column, numeric scores, blank rows left out."""
    by_name, unknown = _match_columns(path, raw)
    columns = {}
    for name in REQUIRED_COLUMNS + OPTIONAL_COLUMNS:
        if name in by_name:
            key = "score_text" if name == "score" else name
            columns[key] = _text_codes(raw[by_name[name]])
    score_column = raw[by_name["score"]]
    if pd.api.types.is_numeric_dtype(score_column) and not pd.api.types.is_bool_dtype(score_column):
        score = score_column.to_numpy(dtype=np.float64, na_value=np.nan)
    else:  # parse each distinct text once
        codes, distinct = columns["score_text"]
        score = pd.to_numeric(pd.Series(distinct, dtype=object), errors="coerce").to_numpy(dtype=np.float64)[codes]
    n_records = len(score)
    records = np.arange(n_records, dtype=np.int64)

    # A row with every known cell empty is a stray blank line, not a rating.
    blank = np.ones(len(score), dtype=bool)
    for codes, distinct in columns.values():
        empty = np.flatnonzero(distinct == "")
        blank &= np.isin(codes, empty)
    n_blank = int(blank.sum())
    if n_blank:
        keep = ~blank
        columns = {k: (codes[keep], distinct) for k, (codes, distinct) in columns.items()}
        score, records = score[keep], records[keep]
    if len(score) == 0:
        raise RatingsError(f"{path}: no rating rows (only a header or blank lines)")
    return RatingsTable(path, fmt, columns, score, records, unknown, n_blank, n_records, line_numbers, labels,
                        import_summary, images)
