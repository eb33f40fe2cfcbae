"""Where a row is and why it was dropped, in words a user can act on: 'line N' of a CSV / JSONL file
(as the file counts lines), 'row N' of a Parquet file, the record of an Argilla / Label Studio export;
plus the per-reason examples and the one-line reason summary of reports and errors."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from data_builders.ratings.read import RatingsTable, unlimited_csv_fields
from data_builders.ratings.schema import EXAMPLES_PER_REASON, ITEM_REASONS, REASONS

# --- file lines ---


def _nonblank_lines(path: Path) -> np.ndarray:
    """1-based numbers of the file's non-blank physical lines (vectorised over the bytes)."""
    data = np.frombuffer(path.read_bytes(), dtype=np.uint8)
    begin = 3 if data[:3].tobytes() == b"\xef\xbb\xbf" else 0
    breaks = np.flatnonzero(data == 10)
    starts = np.r_[begin, breaks + 1]
    ends = np.r_[breaks, len(data)]
    keep = starts <= ends  # drops a final empty segment after the last newline
    starts, ends = starts[keep], ends[keep]
    spaces = np.zeros(256, dtype=bool)
    spaces[[9, 11, 12, 13, 32]] = True
    blank = ends == starts
    maybe = np.flatnonzero(~blank & (ends - starts <= 64))  # only short lines can be all blanks
    for i in maybe[spaces[data[starts[maybe]]]]:
        blank[i] = bool(spaces[data[starts[i] : ends[i]]].all())
    return np.flatnonzero(~blank) + 1


def _csv_record_lines(path: Path, n_records: int, records) -> dict[int, int]:
    """File line (1-based) where each wanted record starts.

    Records near the top: the csv module walks to them. Further down: when the file has exactly
    one non-blank line per record (plus the header), no record spans lines and counting lines
    over the bytes is exact and fast; otherwise the csv module walks the whole way.
    """
    wanted = {int(r) for r in records}
    if not wanted:
        return {}
    last = max(wanted)
    if last >= 20_000:
        lines = _nonblank_lines(path)
        if len(lines) == n_records + 1:
            return {r: int(lines[r + 1]) for r in wanted}
    out: dict[int, int] = {}
    record = -2  # the first non-blank record is the header, record -1
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as handle, unlimited_csv_fields():
        reader = csv.reader(handle)
        start = 1
        for row in reader:
            if row and not (len(row) == 1 and not row[0].strip()):
                record += 1
                if record in wanted:
                    out[record] = start
                if record >= last:
                    break
            start = reader.line_num + 1
    return out


def locations(table: RatingsTable, rows) -> dict[int, str]:
    """'line N' (CSV/JSONL, as in the file), 'row N' (Parquet, 1-based) or the export record of table rows."""
    records = {int(r): int(table.records[r]) for r in rows}
    if table.labels is not None:
        return {r: str(table.labels[rec]) for r, rec in records.items()}
    if table.format == "csv":
        lines = _csv_record_lines(table.path, table.n_records, records.values())
        return {r: f"line {lines[rec]}" if rec in lines else f"row {rec + 1}" for r, rec in records.items()}
    if table.format == "jsonl":
        return {r: f"line {int(table.line_numbers[rec])}" for r, rec in records.items()}
    return {r: f"row {rec + 1}" for r, rec in records.items()}


# --- why ---


def reason_summary(reason: np.ndarray) -> str:
    """'N rows, M usable; 3 bad score, 1 tie' for an error message."""
    parts = [f"{int((reason == i).sum())} {name}" for i, name in enumerate(REASONS) if (reason == i).any()]
    return f"{len(reason)} rows, {int((reason < 0).sum())} usable" + ("; " + ", ".join(parts) if parts else "")


def row_detail(table: RatingsTable, row: int, name: str, item_raters, item_codes) -> str:
    """A short description of why one row was dropped."""
    if name == "missing value":
        columns = [c for c in ("prompt", "rater", "response") if c in table.columns and table.text(c, row) == ""]
        return "empty " + ", ".join(columns)
    if name in ("bad score", "out of scale"):
        return f"score {table.text('score_text', row)!r}"
    if name in ("missing image", "unreadable image"):
        return f"image {table.text('image', row)!r}"
    if name == "duplicate rater×item":
        return f"rater {table.text('rater', row)!r} rated this item before"
    if "response" in table.columns:
        what = f"response {table.text('response', row)[:50]!r} to prompt {table.text('prompt', row)[:50]!r}"
    else:
        what = f"image {table.text('image', row)!r} for prompt {table.text('prompt', row)[:50]!r}"
    if name == "too few raters":
        return f"{what}: {int(item_raters[item_codes[row]])} rater(s)"
    return what


def drop_examples(table: RatingsTable, reason: np.ndarray, item_raters, item_codes) -> dict:
    """Up to EXAMPLES_PER_REASON located examples per drop reason (distinct items for item reasons)."""
    picked = {}
    for i, name in enumerate(REASONS):
        rows = np.flatnonzero(reason == i)
        if name in ITEM_REASONS and len(rows):
            rows = np.sort(rows[np.unique(item_codes[rows], return_index=True)[1]])
        if len(rows):
            picked[name] = rows[:EXAMPLES_PER_REASON]
    if not picked:
        return {}
    where = locations(table, np.concatenate(list(picked.values())))
    return {
        name: [f"{where[int(r)]}: {row_detail(table, int(r), name, item_raters, item_codes)}" for r in rows]
        for name, rows in picked.items()
    }
