"""Team ratings -> DPO preference pairs (TRL conversational format with images).

A team rates model outputs together and everyone's taste differs; this builder turns the raw
ratings into preference pairs a DPOTrainer can learn the *team's* taste from, and says how much
the team agreed before anyone trains on it. Every input row is accounted for: it is either used
or dropped with a named reason, and report.json / report.md list the counts with examples.

Input: a CSV, JSONL or Parquet file (by extension) with columns `image` (path relative to the
ratings file's folder), `prompt`, `rater`, `score` and optionally `response`.
- with `response` (response mode): a group is one (image, prompt), its items are the responses;
  a pair prefers the response the team scored higher.
- without it (image mode): a group is one prompt, its items are the images made for it; a pair
  is a judge example showing two images ("Which image better matches ...? first/second"), the
  better one put first in half of the pairs (or both orders with --both-orders).

Scores are z-scored per rater (unless --no-zscore), averaged per item, and pairs are taken
best-worst (one per group), all (every C(k,2) pair) or adjacent (k-1 consecutive by score);
pairs whose mean scores differ by no more than --margin are ties and never become pairs.
Agreement is Krippendorff's alpha (interval and ordinal) on the raw scores, with a rater table
(leave-one-out correlation with the others flags a rater who disagrees with everyone).

Row buckets: a row is `used` when its item ends up in a pair; otherwise it is dropped for the
first reason that applies (REASONS below: missing value, bad score, out of scale, missing image,
unreadable image, duplicate rater x item, too few raters, alone in group, tie, length mismatch,
not selected). --strict refuses the file on the first row with an input problem (the reasons up
to `too few raters`, or an unknown column) and names its line.

Usage:
    python -m data_builders.ratings --ratings team/ratings.csv --output artifacts/dpo-pairs \\
        [--scale 1-5|LO-HI|infer] [--no-zscore] [--min-raters 2] [--margin 0.0] \\
        [--pairs best-worst|all|adjacent] [--length-match 0.5] [--min-alpha 0.667] \\
        [--strict] [--test-size 0.1] [--seed 0] [--both-orders] [--overwrite]

    from data_builders.ratings import build_pairs, save_pairs
    dataset_dict, report = build_pairs("team/ratings.csv", pairs="all", margin=0.25)
    save_pairs(dataset_dict, report, "artifacts/dpo-pairs")

The output directory holds a DatasetDict (splits train/test, split by group; an empty split is
left out) loadable with datasets.load_from_disk, plus report.json, report.md and
margin_hist.png. Rows: images, prompt, chosen, rejected, group, chosen_score, rejected_score,
margin, n_raters. Bad input is one `error: ...` line on stderr and exit code 2, nothing written.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import math
import re
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless; set before anything can pull in pyplot
import datasets
import krippendorff
import numpy as np
import pandas as pd
import pyarrow as pa
from datasets.table import InMemoryTable
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image
from pyarrow import csv as pa_csv

from data_builders._common import (
    is_nonempty,
    non_negative_int,
    positive_int,
    staged_replace,
)

# --- constants ---


class RatingsError(ValueError):
    """Bad ratings input or settings; the message is one line naming the file."""


REQUIRED_COLUMNS = ("image", "prompt", "rater", "score")
OPTIONAL_COLUMNS = ("response",)
PAIR_STRATEGIES = ("best-worst", "all", "adjacent")
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}

# Every input row ends in exactly one bucket: used, or the first of these reasons that applies.
REASONS = (
    "missing value",
    "bad score",
    "out of scale",
    "missing image",
    "unreadable image",
    "duplicate rater×item",
    "too few raters",
    "alone in group",
    "tie",
    "length mismatch",
    "not selected",
)
REASON_HELP = {
    "missing value": "empty prompt or rater (or response in response mode)",
    "bad score": "score is empty, not a number, NaN or infinite",
    "out of scale": "score outside the rating scale",
    "missing image": "image path empty or the file does not exist",
    "unreadable image": "the file exists but PIL cannot open it",
    "duplicate rater×item": "the same rater rated the same item again; the first rating is kept",
    "too few raters": "the item was rated by fewer than --min-raters raters",
    "alone in group": "the item is the only one of its group, so there is nothing to compare it with",
    "tie": "the item's mean score is within --margin of every other item of its group (equal means)",
    "length mismatch": "the item's only pairs were removed by --length-match",
    "not selected": "the item is not one the --pairs strategy pairs (e.g. a middle item under best-worst)",
}
# Problems of the input itself (too few raters last); --strict refuses a file with any of them.
# The rest are outcomes of pairing (ties, the strategy) that --strict leaves to the report.
STRICT_REASONS = REASONS[: REASONS.index("too few raters") + 1]
ALPHA_RELIABLE = 0.667  # Krippendorff's lowest acceptable alpha for tentative conclusions
LOW_CORRELATION = 0.2  # a rater below this leave-one-out correlation disagrees with everyone
EPS = 1e-9  # float slack when comparing mean scores: equal means must never look different
LIBRARY_ALPHA_CELLS = 20_000_000  # units x values^2 the krippendorff package may materialise
EXAMPLES_PER_REASON = 5

IMAGE_MODE_QUESTION = "Which image better matches: \"{prompt}\"? Answer 'first' or 'second'."
MESSAGES = datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")})
FEATURES = datasets.Features(
    {
        "images": datasets.List(datasets.Image()),
        "prompt": MESSAGES,
        "chosen": MESSAGES,
        "rejected": MESSAGES,
        "group": datasets.Value("string"),
        "chosen_score": datasets.Value("float64"),
        "rejected_score": datasets.Value("float64"),
        "margin": datasets.Value("float64"),
        "n_raters": datasets.Value("int64"),
    }
)


# --- read ---


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


def _csv_header(path: Path) -> list[str] | None:
    """The first non-blank CSV record (the header), or None if there is none or it will not parse."""
    with open(path, "rb") as handle:
        head = handle.read(1 << 16).decode("utf-8-sig", errors="replace")
    try:
        for row in csv.reader(io.StringIO(head, newline="")):
            if row and any(cell.strip() for cell in row):
                return row
    except csv.Error:
        return None
    return None


def _first_long_record(path: Path) -> int | None:
    """File line of the first record with more fields than the header (error path only)."""
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as handle:
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


def _read_csv(path: Path) -> pd.DataFrame:
    # Fast path: Arrow's multithreaded parser, every column as text (no NA guessing: "NA" is a
    # bad score, not a missing one). It skips empty lines and a BOM like pandas does. Anything
    # it refuses (whitespace-only lines, short rows, bad UTF-8, odd quoting) goes to pandas' C
    # parser, which skips whitespace-only lines too, pads short rows with empty cells (reported
    # row by row later) and refuses rows with extra cells.
    header = _csv_header(path)
    if header and len(set(header)) == len(header):
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
            if table.column_names == header:
                return table.to_pandas()
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowKeyError):
            pass
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


def read_ratings(path) -> RatingsTable:
    """Read a CSV / JSONL / Parquet ratings file (by extension) into a RatingsTable.

    Column names are matched case-insensitively after stripping; rows whose known cells are all
    empty (",,,," lines of a spreadsheet export) are skipped and counted as blank rows.
    """
    path = Path(path)
    if not path.is_file():
        raise RatingsError(f"{path}: no such file")
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise RatingsError(f"{path}: unknown extension {path.suffix!r}; use .csv, .jsonl or .parquet")
    if path.stat().st_size == 0:
        raise RatingsError(f"{path}: the file is empty")
    line_numbers = None
    if fmt == "csv":
        raw = _read_csv(path)
    elif fmt == "jsonl":
        raw, line_numbers = _read_jsonl(path)
    else:
        raw = _read_parquet(path)

    names = [str(c).replace("\ufeff", "").strip().lower() for c in raw.columns]
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise RatingsError(f"{path}: duplicate column name(s) {', '.join(dupes)}")
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        found = ", ".join(names) if names else "none"
        raise RatingsError(f"{path}: missing required column(s) {', '.join(missing)} (found: {found})")
    unknown = [c for c in names if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    by_name = dict(zip(names, raw.columns))

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
    return RatingsTable(path, fmt, columns, score, records, unknown, n_blank, n_records, line_numbers)


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
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as handle:
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


def _locations(table: RatingsTable, rows) -> dict[int, str]:
    """'line N' (CSV/JSONL, as in the file) or 'row N' (Parquet, 1-based) for table rows."""
    records = {int(r): int(table.records[r]) for r in rows}
    if table.format == "csv":
        lines = _csv_record_lines(table.path, table.n_records, records.values())
        return {r: f"line {lines[rec]}" if rec in lines else f"row {rec + 1}" for r, rec in records.items()}
    if table.format == "jsonl":
        return {r: f"line {int(table.line_numbers[rec])}" for r, rec in records.items()}
    return {r: f"row {rec + 1}" for r, rec in records.items()}


# --- validate ---


def parse_scale(scale) -> tuple[float, float] | None:
    """'1-5' / '0.5-10' / '-2-2' -> (lo, hi); 'infer' -> None; a (lo, hi) pair passes through."""
    if isinstance(scale, (tuple, list)) and len(scale) == 2:
        lo, hi = float(scale[0]), float(scale[1])
    elif isinstance(scale, str) and scale.strip().lower() == "infer":
        return None
    else:
        number = r"\s*(-?\d+(?:\.\d+)?)\s*"
        match = re.fullmatch(f"{number}(?:-|\\.\\.|:){number}", str(scale))
        if not match:
            raise RatingsError(f"bad --scale {scale!r}: use LO-HI (e.g. 1-5 or 0.5-10) or 'infer'")
        lo, hi = float(match.group(1)), float(match.group(2))
    if not lo < hi:
        raise RatingsError(f"bad --scale {scale!r}: the low end must be below the high end")
    return lo, hi


def _combine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Codes of the pairs (a, b) in order of first appearance (a, b: non-negative int codes)."""
    key = a.astype(np.int64) * (int(b.max()) + 1 if len(b) else 1) + b.astype(np.int64)
    return pd.factorize(key)[0].astype(np.int64)


def _image_ok(path: Path) -> bool:
    try:
        with Image.open(path) as image:
            image.verify()
    except Exception:  # PIL raises many types for a broken file
        return False
    return True


def _check_images(image_codes, image_names, base: Path, candidate: np.ndarray):
    """Per distinct image path: (missing, unreadable) flags and resolved paths; opens each once.

    Only paths that a still-valid row uses are checked, and only existing ones are opened.
    """
    paths = [base / name if name else base for name in image_names]
    missing = np.zeros(len(paths), dtype=bool)
    unreadable = np.zeros(len(paths), dtype=bool)
    for code in np.unique(image_codes[candidate]):
        if not image_names[code] or not paths[code].is_file():
            missing[code] = True
        elif not _image_ok(paths[code]):
            unreadable[code] = True
    return missing, unreadable, paths


# --- agreement ---


def _pairable_value_counts(items: np.ndarray, value_index: np.ndarray, n_values: int) -> np.ndarray:
    """(units x values) counts of the units rated by at least two raters (others add nothing)."""
    per_item = np.bincount(items)
    pairable_items = np.flatnonzero(per_item >= 2)
    keep = per_item[items] >= 2
    unit = np.searchsorted(pairable_items, items[keep])
    counts = np.bincount(unit * n_values + value_index[keep], minlength=len(pairable_items) * n_values)
    return counts.reshape(len(pairable_items), n_values)


def _alpha_from_counts(counts: np.ndarray, domain: np.ndarray, level: str) -> float:
    """Krippendorff's alpha from the coincidence matrix, without the units x V x V array.

    Same formulas as krippendorff.alpha: o = sum_u (n_u n_u^T - diag n_u) / (m_u - 1),
    e = (n n^T - diag n) / (n.. - 1), alpha = 1 - sum(o d) / sum(e d).
    """
    counts = counts.astype(np.float64)
    weighted = counts / (counts.sum(axis=1) - 1.0)[:, None]
    o = weighted.T @ counts - np.diag(weighted.sum(axis=0))
    n_v = o.sum(axis=0)
    e = (np.outer(n_v, n_v) - np.diag(n_v)) / (n_v.sum() - 1.0)
    if level == "interval":
        d = (domain[:, None] - domain[None, :]) ** 2
    else:  # ordinal: (sum of n_g for g between c and k - (n_c + n_k) / 2)^2
        cum = np.concatenate([[0.0], np.cumsum(n_v)])
        i = np.arange(len(domain))
        lo, hi = np.minimum.outer(i, i), np.maximum.outer(i, i)
        d = (cum[hi + 1] - cum[lo] - (n_v[lo] + n_v[hi]) / 2.0) ** 2
    return float(1.0 - (o * d).sum() / (e * d).sum())


def interval_alpha(items: np.ndarray, values: np.ndarray) -> float | None:
    """Interval alpha in closed form (any real values, no value domain needed).

    sum over pairs within a unit of (v_i - v_j)^2 is 2 (m sum v^2 - (sum v)^2), so
    alpha = 1 - (n.. - 1) sum_u [(m_u S2_u - S1_u^2) / (m_u - 1)] / (n.. S2 - S1^2).
    """
    per_item = np.bincount(items)
    keep = per_item[items] >= 2
    items, values = items[keep], values[keep]
    if len(values) < 2:
        return None
    m = np.bincount(items)
    s1, s2 = np.bincount(items, values), np.bincount(items, values * values)
    rated = m >= 2
    within = ((m[rated] * s2[rated] - s1[rated] ** 2) / (m[rated] - 1)).sum()
    n = len(values)
    total = n * (values * values).sum() - values.sum() ** 2
    if total <= 1e-12 * max(n, 1):
        return None
    return float(1.0 - (n - 1) * within / total)


def agreement(items: np.ndarray, values: np.ndarray, domain: np.ndarray, force_exact: bool = False) -> dict:
    """Krippendorff's alpha, interval and ordinal, of raw scores (one rating per rater x item).

    Equals krippendorff.alpha(reliability_data=raters x items matrix, value_domain=domain, ...):
    the package is called with the units x values counts (what it builds from that matrix
    itself, minus units with one rating, which add nothing) when they fit in memory; above
    LIBRARY_ALPHA_CELLS the same formulas are evaluated from the coincidence matrix directly.
    Either way every unit is used, nothing is subsampled.
    """
    value_index = np.searchsorted(domain, values)
    counts = _pairable_value_counts(items, value_index, len(domain))
    n_units = int(counts.shape[0])
    out = {
        "alpha_interval": None,
        "alpha_ordinal": None,
        "alpha_items_used": n_units,
        "alpha_ratings_used": int(counts.sum()),
        "alpha_method": None,
        "alpha_note": None,
    }
    if n_units == 0:
        out["alpha_note"] = "not computable: no item was rated by two raters"
        return out
    if np.count_nonzero(counts.sum(axis=0)) < 2:
        out["alpha_note"] = "not computable: every rating has the same value"
        return out
    use_library = not force_exact and n_units * len(domain) ** 2 <= LIBRARY_ALPHA_CELLS
    for level in ("interval", "ordinal"):
        if use_library:
            value = float(krippendorff.alpha(value_counts=counts, value_domain=domain, level_of_measurement=level))
        else:
            value = _alpha_from_counts(counts, domain, level)
        out[f"alpha_{level}"] = value if math.isfinite(value) else None
    out["alpha_method"] = (
        "krippendorff.alpha (value counts of the full raters x items matrix)"
        if use_library
        else "exact coincidence-matrix formula of krippendorff.alpha on the full matrix (the package would need "
        "units x values^2 memory here)"
    )
    return out


def rater_table(rater_codes, rater_names, items, values) -> list[dict]:
    """Per rater: count, mean, sd (population), Pearson r with the other raters' mean (leave-one-out)."""
    n_raters = len(rater_names)
    count = np.bincount(rater_codes, minlength=n_raters).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.bincount(rater_codes, values, n_raters) / count
        centred = values - mean[rater_codes]
        sd = np.sqrt(np.bincount(rater_codes, centred * centred, n_raters) / count)
    # Leave-one-out consensus of each rating: the mean of the other raters of the same item.
    per_item = np.bincount(items)
    item_sum = np.bincount(items, values)
    shared = per_item[items] >= 2
    r, x = rater_codes[shared], values[shared]
    y = (item_sum[items[shared]] - x) / (per_item[items[shared]] - 1)
    n = np.bincount(r, minlength=n_raters).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):  # centred per rater, then summed
        xc = x - (np.bincount(r, x, n_raters) / n)[r]
        yc = y - (np.bincount(r, y, n_raters) / n)[r]
        sxy, sxx, syy = (np.bincount(r, a * b, n_raters) for a, b in ((xc, yc), (xc, xc), (yc, yc)))
        corr = np.where((n >= 3) & (sxx > 1e-12) & (syy > 1e-12), sxy / np.sqrt(sxx * syy), np.nan)
    table = []
    for k in np.flatnonzero(count > 0):
        r_value = float(np.clip(corr[k], -1.0, 1.0)) if math.isfinite(corr[k]) else None
        table.append(
            {
                "rater": str(rater_names[k]),
                "count": int(count[k]),
                "mean": float(mean[k]),
                "sd": float(sd[k]),
                "loo_r": r_value,
                "shared_items": int(n[k]),
                "zero_variance": bool(sd[k] < 1e-12),
                "disagrees_with_everyone": r_value is not None and r_value < LOW_CORRELATION,
            }
        )
    return table


# --- pairs ---


def _candidate_pairs(order, group_sorted, strategy: str) -> tuple[np.ndarray, np.ndarray]:
    """(better, worse) item codes; `order` holds the items sorted by group, then score descending."""
    n = len(order)
    if n == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    starts = np.flatnonzero(np.r_[True, group_sorted[1:] != group_sorted[:-1]])
    ends = np.r_[starts[1:], n]
    sizes = ends - starts
    if strategy == "best-worst":
        many = sizes >= 2
        return order[starts[many]], order[ends[many] - 1]
    if strategy == "adjacent":
        same = np.flatnonzero(group_sorted[1:] == group_sorted[:-1])
        return order[same], order[same + 1]
    better, worse = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
    for k in np.unique(sizes[sizes >= 2]):  # all: every C(k, 2) pair, groups of one size at once
        i, j = np.triu_indices(int(k), 1)
        first = starts[sizes == k][:, None]
        better.append(order[(first + i).ravel()])
        worse.append(order[(first + j).ravel()])
    return np.concatenate(better), np.concatenate(worse)


def split_groups(n_groups: int, test_size: float, seed: int) -> np.ndarray:
    """Test mask over n_groups groups: round(test_size * n), at least 1 if there are two or
    more groups and test_size > 0, never all of them."""
    n_test = int(round(test_size * n_groups))
    if test_size > 0 and n_groups >= 2:
        n_test = max(n_test, 1)
    n_test = min(n_test, max(n_groups - 1, 0))
    test = np.zeros(n_groups, dtype=bool)
    test[np.random.default_rng([seed, 0]).permutation(n_groups)[:n_test]] = True
    return test


def _group_id(*parts: str) -> str:
    """Stable short id of a group: the same (image, prompt) always gets the same id."""
    return hashlib.sha1("\x1f".join(parts).encode("utf-8")).hexdigest()[:12]


def _messages(role: str, texts, index: np.ndarray) -> pa.Array:
    """One single-message conversation per row: content texts[index[row]]."""
    texts = texts if isinstance(texts, pa.Array) else pa.array(list(texts), type=pa.string())
    contents = texts.take(pa.array(index))
    roles = pa.array([role], type=pa.string()).take(pa.array(np.zeros(len(index), dtype=np.int64)))
    struct = pa.StructArray.from_arrays([roles, contents], names=["role", "content"])
    return pa.ListArray.from_arrays(pa.array(np.arange(len(contents) + 1, dtype=np.int32)), struct)


def _image_lists(cells: pa.Array, per_row: np.ndarray) -> pa.Array:
    """Rows of images: per_row is (rows x k) indices into the distinct image cells."""
    values = cells.take(pa.array(per_row.ravel()))
    offsets = np.arange(0, per_row.size + 1, per_row.shape[1], dtype=np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), values)


def _to_dataset(columns: dict) -> datasets.Dataset:
    table = pa.table(columns).cast(FEATURES.arrow_schema)
    return datasets.Dataset(InMemoryTable(table), info=datasets.DatasetInfo(features=FEATURES))


# --- build ---


def build_pairs(
    ratings_path,
    scale="1-5",
    zscore: bool = True,
    min_raters: int = 2,
    margin: float = 0.0,
    pairs: str = "best-worst",
    length_match: float | None = None,
    min_alpha: float | None = None,
    strict: bool = False,
    test_size: float = 0.1,
    seed: int = 0,
    both_orders: bool = False,
) -> tuple[datasets.DatasetDict, dict]:
    """Ratings file -> (DatasetDict of preference pairs, report dict). Raises RatingsError."""
    clock = [("start", time.perf_counter())]
    path = Path(ratings_path)
    bounds = parse_scale(scale)
    if pairs not in PAIR_STRATEGIES:
        raise RatingsError(f"bad pairs strategy {pairs!r}: choose {', '.join(PAIR_STRATEGIES)}")
    if min_raters < 1:
        raise RatingsError(f"min_raters must be >= 1, got {min_raters}")
    if not (margin >= 0 and math.isfinite(margin)):
        raise RatingsError(f"margin must be a finite number >= 0, got {margin}")
    if length_match is not None and not 0 < length_match <= 1:
        raise RatingsError(f"length_match must be in (0, 1], got {length_match}")
    if not 0 <= test_size < 1:
        raise RatingsError(f"test_size must be in [0, 1), got {test_size}")
    if seed < 0:
        raise RatingsError(f"seed must be >= 0, got {seed}")

    table = read_ratings(path)
    clock.append(("read", time.perf_counter()))
    if strict and table.unknown_columns:
        raise RatingsError(f"{path}: unknown column(s) {', '.join(table.unknown_columns)} (--strict)")
    mode = "response" if "response" in table.columns else "image"
    if length_match is not None and mode == "image":
        raise RatingsError(f"{path}: --length-match needs a response column (this file has none: image mode)")

    n_rows = len(table)
    reason = np.full(n_rows, -1, dtype=np.int8)  # index into REASONS; -1 = still fine

    def drop(mask, name: str) -> None:
        reason[(reason < 0) & mask] = REASONS.index(name)

    def empty(column: str) -> np.ndarray:
        codes, distinct = table.columns[column]
        return np.isin(codes, np.flatnonzero(distinct == ""))

    # --- row checks; the first failing one names the row's bucket
    image_codes, image_names = table.columns["image"]
    prompt_codes, prompt_names = table.columns["prompt"]
    rater_codes, rater_names = table.columns["rater"]
    missing_value = empty("prompt") | empty("rater")
    if mode == "response":
        response_codes, response_names = table.columns["response"]
        missing_value |= empty("response")
    drop(missing_value, "missing value")
    score = table.score
    drop(~np.isfinite(score), "bad score")
    if bounds is None:
        numeric = score[reason < 0]
        if len(numeric) == 0:
            raise RatingsError(f"{path}: no numeric scores to infer --scale from ({_reason_summary(reason)})")
        bounds = (float(numeric.min()), float(numeric.max()))
    lo, hi = bounds
    with np.errstate(invalid="ignore"):
        drop((score < lo) | (score > hi), "out of scale")
    missing_img, unreadable_img, image_paths = _check_images(
        image_codes, image_names, path.resolve().parent, reason < 0
    )
    drop(missing_img[image_codes], "missing image")
    drop(unreadable_img[image_codes], "unreadable image")

    if mode == "response":  # item = (image, prompt, response); group = (image, prompt)
        group_codes = _combine(image_codes, prompt_codes)
        item_codes = _combine(group_codes, response_codes)
    else:  # item = (image, prompt); group = prompt
        group_codes = _combine(prompt_codes, np.zeros_like(prompt_codes))
        item_codes = _combine(prompt_codes, image_codes)
    n_items = int(item_codes.max()) + 1
    fine = np.flatnonzero(reason < 0)
    repeat = pd.Series(rater_codes[fine] * np.int64(n_items) + item_codes[fine]).duplicated(keep="first").to_numpy()
    reason[fine[repeat]] = REASONS.index("duplicate rater×item")
    valid = reason < 0

    # --- per-rater z-scores over all valid ratings; items rated by too few raters go
    v_rater, v_item, v_score = rater_codes[valid], item_codes[valid], score[valid]
    n_rater_codes = len(rater_names)
    r_count = np.bincount(v_rater, minlength=n_rater_codes)
    r_mean = np.bincount(v_rater, v_score, n_rater_codes) / np.maximum(r_count, 1)
    r_sd = np.sqrt(np.bincount(v_rater, (v_score - r_mean[v_rater]) ** 2, n_rater_codes) / np.maximum(r_count, 1))
    flat = r_sd < 1e-12
    zero_variance = np.flatnonzero((r_count > 0) & flat)
    if zscore:
        unit_values = np.where(flat[v_rater], 0.0, (v_score - r_mean[v_rater]) / np.where(flat, 1.0, r_sd)[v_rater])
    else:
        unit_values = v_score
    item_raters = np.bincount(v_item, minlength=n_items)
    too_few = np.zeros(n_rows, dtype=bool)
    too_few[valid] = item_raters[v_item] < min_raters
    drop(too_few, "too few raters")
    clock.append(("validate", time.perf_counter()))

    if strict:  # name the first defective row; an item left with too few raters only if none
        codes = [REASONS.index(name) for name in STRICT_REASONS]
        bad = np.flatnonzero(np.isin(reason, codes[:-1]))
        if len(bad) == 0:
            bad = np.flatnonzero(reason == codes[-1])
        if len(bad):
            row = int(bad[0])
            name = REASONS[reason[row]]
            where = _locations(table, [row])[row]
            detail = _detail(table, row, name, item_raters, item_codes)
            raise RatingsError(f"{path} {where}: {name} ({detail}); --strict refuses any dropped row")
    if not valid.any():
        raise RatingsError(f"{path}: no valid rating rows ({_reason_summary(reason)})")

    # --- agreement on raw scores (every valid rating, before the --min-raters filter)
    # Value domain: the scale's integers, or the observed values for a float scale (or an integer
    # one too wide to list). Unobserved values carry no weight, so alpha is the same either way.
    observed = np.unique(v_score)
    integer_scale = float(lo).is_integer() and float(hi).is_integer() and bool(np.all(observed == np.rint(observed)))
    domain = np.arange(lo, hi + 1.0) if integer_scale and hi - lo < 1000 else observed
    agree = agreement(v_item, v_score, domain)
    agree["alpha_interval_zscored"] = interval_alpha(v_item, unit_values) if zscore else None
    raters = rater_table(v_rater, rater_names, v_item, v_score)
    clock.append(("agreement", time.perf_counter()))
    alpha_i = agree["alpha_interval"]
    if min_alpha is not None and (alpha_i is None or alpha_i < min_alpha):
        shown = agree["alpha_note"] if alpha_i is None else f"{alpha_i:.3f}"
        raise RatingsError(f"{path}: Krippendorff's alpha (interval) {shown} is below --min-alpha {min_alpha:g}")

    # --- items: mean over raters of the rows still in
    kept = reason < 0
    k_item = item_codes[kept]
    counts = np.bincount(k_item, minlength=n_items)
    sums = np.bincount(k_item, unit_values[kept[valid]], n_items)  # unit_values is aligned to valid rows
    live = np.flatnonzero(counts > 0)
    if len(live) == 0:
        raise RatingsError(f"{path}: no item was rated by at least {min_raters} raters ({_reason_summary(reason)})")
    item_score = np.full(n_items, np.nan)
    item_score[live] = sums[live] / counts[live]

    def per_item(codes: np.ndarray) -> np.ndarray:
        out = np.zeros(n_items, dtype=np.int64)
        out[item_codes] = codes
        return out

    item_group, item_image, item_prompt = per_item(group_codes), per_item(image_codes), per_item(prompt_codes)
    if mode == "response":
        item_response = per_item(response_codes)
        response_length = np.fromiter((len(s) for s in response_names), dtype=np.int64, count=len(response_names))

    # --- pairs: items by group, score descending, first appearance
    order = live[np.lexsort((live, -item_score[live], item_group[live]))]
    better, worse = _candidate_pairs(order, item_group[order], pairs)
    n_candidates = len(better)
    wide = item_score[better] - item_score[worse] > margin + EPS
    better, worse = better[wide], worse[wide]
    selected = np.zeros(n_items, dtype=bool)
    selected[better] = selected[worse] = True
    n_length_removed = 0
    if length_match is not None:
        la, lb = response_length[item_response[better]], response_length[item_response[worse]]
        fits = np.minimum(la, lb) / np.maximum(np.maximum(la, lb), 1) >= length_match - 1e-12
        n_length_removed = int((~fits).sum())
        better, worse = better[fits], worse[fits]
    paired = np.zeros(n_items, dtype=bool)
    paired[better] = paired[worse] = True

    # --- what happened to each live item -> the bucket of its rows
    n_group_codes = int(item_group.max()) + 1
    group_size = np.bincount(item_group[live], minlength=n_group_codes)
    g_max, g_min = np.full(n_group_codes, -np.inf), np.full(n_group_codes, np.inf)
    np.maximum.at(g_max, item_group[live], item_score[live])
    np.minimum.at(g_min, item_group[live], item_score[live])
    with np.errstate(invalid="ignore"):
        comparable = (g_max[item_group] - item_score > margin + EPS) | (item_score - g_min[item_group] > margin + EPS)
    outcome = np.full(n_items, -1, dtype=np.int8)
    outcome[~comparable] = REASONS.index("tie")
    outcome[comparable & selected] = REASONS.index("length mismatch")
    outcome[comparable & ~selected] = REASONS.index("not selected")
    outcome[group_size[item_group] < 2] = REASONS.index("alone in group")
    outcome[paired] = -1
    reason[kept] = outcome[k_item]

    dropped = {name: int((reason == i).sum()) for i, name in enumerate(REASONS)}
    rows_used = int((reason < 0).sum())
    assert n_rows == rows_used + sum(dropped.values()), "row accounting is broken"
    if len(better) == 0:
        raise RatingsError(f"{path}: no preference pairs ({_reason_summary(reason)})")
    clock.append(("pairs", time.perf_counter()))

    # --- split by group, then the pair rows (ordered by group first appearance, chosen rank)
    pair_order = np.lexsort((np.arange(len(better)), item_group[better]))
    better, worse = better[pair_order], worse[pair_order]
    pair_group = item_group[better]
    groups_with_pairs = np.unique(pair_group)
    test_group = split_groups(len(groups_with_pairs), test_size, seed)
    pair_test = test_group[np.searchsorted(groups_with_pairs, pair_group)]

    used_images = np.unique(np.concatenate([item_image[better], item_image[worse]]))
    cell_of_image = np.full(len(image_names), -1, dtype=np.int64)
    cell_of_image[used_images] = np.arange(len(used_images))
    cells = pa.StructArray.from_arrays(
        [
            pa.array([image_paths[c].read_bytes() for c in used_images], type=pa.binary()),
            pa.array([str(image_names[c]) for c in used_images], type=pa.string()),
        ],
        names=["bytes", "path"],
    )
    group_ids = np.empty(n_group_codes, dtype=object)
    for g, item in zip(groups_with_pairs, better[np.searchsorted(pair_group, groups_with_pairs)]):
        prompt = str(prompt_names[item_prompt[item]])
        parts = (str(image_names[item_image[item]]), prompt) if mode == "response" else (prompt,)
        group_ids[g] = _group_id(*parts)

    if mode == "response":
        prompt_texts = pa.array(list(prompt_names), type=pa.string())
        response_texts = pa.array(list(response_names), type=pa.string())
    else:
        question_texts = pa.array([IMAGE_MODE_QUESTION.format(prompt=p) for p in prompt_names], type=pa.string())
    splits, balance = {}, {}
    for split_index, (split, mask) in enumerate((("train", ~pair_test), ("test", pair_test))):
        idx = np.flatnonzero(mask)
        if len(idx) == 0:
            continue  # datasets saves a 0-row split but cannot load it back
        b, w = better[idx], worse[idx]
        if mode == "response":
            images = _image_lists(cells, cell_of_image[item_image[b]][:, None])
            prompt = _messages("user", prompt_texts, item_prompt[b])
            chosen = _messages("assistant", response_texts, item_response[b])
            rejected = _messages("assistant", response_texts, item_response[w])
        else:
            if both_orders:
                b, w = np.repeat(b, 2), np.repeat(w, 2)
                first = np.tile([True, False], len(idx))
            else:  # exactly half (rounded down) show the better image first, seeded
                first = np.zeros(len(idx), dtype=bool)
                first[: len(idx) // 2] = True
                first = first[np.random.default_rng([seed, 1 + split_index]).permutation(len(idx))]
            shown = np.where(first[:, None], np.c_[item_image[b], item_image[w]], np.c_[item_image[w], item_image[b]])
            images = _image_lists(cells, cell_of_image[shown])
            prompt = _messages("user", question_texts, item_prompt[b])
            chosen = _messages("assistant", ("first", "second"), np.where(first, 0, 1))
            rejected = _messages("assistant", ("first", "second"), np.where(first, 1, 0))
            balance[split] = {"better_first": int(first.sum()), "better_second": int((~first).sum())}
        splits[split] = _to_dataset(
            {
                "images": images,
                "prompt": prompt,
                "chosen": chosen,
                "rejected": rejected,
                "group": pa.array(group_ids[item_group[b]], type=pa.string()),
                "chosen_score": item_score[b],
                "rejected_score": item_score[w],
                "margin": item_score[b] - item_score[w],
                "n_raters": np.minimum(item_raters[b], item_raters[w]).astype(np.int64),
            }
        )
    dataset_dict = datasets.DatasetDict(splits)
    clock.append(("dataset", time.perf_counter()))

    # --- report
    margins = item_score[better] - item_score[worse]
    examples = _examples(table, reason, item_raters, item_codes)
    clock.append(("report", time.perf_counter()))
    warnings = []
    if alpha_i is not None and alpha_i < ALPHA_RELIABLE:
        warnings.append(
            f"low agreement: Krippendorff's alpha (interval) = {alpha_i:.3f} < {ALPHA_RELIABLE}; "
            "the team's consensus is not reliable and the pairs may teach noise"
        )
    elif alpha_i is None:
        warnings.append(f"agreement {agree['alpha_note']}")
    for row in raters:
        if row["disagrees_with_everyone"]:
            warnings.append(
                f"rater {row['rater']!r} disagrees with everyone (r = {row['loo_r']:.2f} with the other raters' mean)"
            )
    if len(zero_variance):
        names = ", ".join(repr(str(rater_names[r])) for r in zero_variance)
        warnings.append(
            f"rater(s) {names} gave every item the same score" + (": z = 0 for all their ratings" if zscore else "")
        )
    if "test" not in splits:
        warnings.append(
            "the test split is empty: only one group has pairs" if len(groups_with_pairs) == 1
            else "the test split is empty: --test-size 0"
        )
    if table.unknown_columns:
        warnings.append(f"unknown column(s) ignored: {', '.join(table.unknown_columns)}")
    if both_orders and mode == "response":
        warnings.append("--both-orders only applies to image mode (no response column); ignored")

    report = {
        "ratings_file": str(path),
        "format": table.format,
        "mode": mode,
        "rows_read": n_rows,
        "rows_used": rows_used,
        "dropped": dropped,
        "dropped_examples": examples,
        "reasons_explained": dict(REASON_HELP),
        "unknown_columns": {"count": len(table.unknown_columns), "names": table.unknown_columns},
        "blank_rows_skipped": table.blank_rows,
        "scale": {"low": lo, "high": hi, "inferred": parse_scale(scale) is None},
        "zscore": bool(zscore),
        "score_units": "z" if zscore else "raw",
        "score_units_explained": (
            "chosen_score, rejected_score and margin are means over raters of per-rater z-scores"
            if zscore else "chosen_score, rejected_score and margin are means over raters of raw scores"
        ),
        "zero_variance_raters": [str(rater_names[r]) for r in zero_variance],
        "min_raters": int(min_raters),
        "margin": float(margin),
        "pairs_strategy": pairs,
        "length_match": length_match,
        "both_orders": bool(both_orders) if mode == "image" else None,
        "strict": bool(strict),
        "counts": {
            "raters": len(raters),
            "items_rated": int((item_raters > 0).sum()),
            "items_in_pairs": int(paired.sum()),
            "groups": int(np.count_nonzero(group_size)),
            "groups_with_pairs": int(len(groups_with_pairs)),
            "images_in_pairs": int(len(used_images)),
        },
        "agreement": {
            **agree,
            "value_domain": [float(v) for v in domain],
            "reliable_above": ALPHA_RELIABLE,
            "scores": "raw scores of every valid rating (before the --min-raters filter)",
            "alpha_interval_zscored_explained": (
                "interval alpha of the per-rater z-scores: agreement once each rater's leniency and spread are removed"
            ),
        },
        "raters": raters,
        "rater_correlation": (
            "Pearson r of the rater's raw scores with the mean of the other raters on the items they share"
        ),
        "pairs": {
            "train": len(splits["train"]) if "train" in splits else 0,
            "test": len(splits["test"]) if "test" in splits else 0,
            "distinct_pairs": int(len(better)),
            "candidates": int(n_candidates),
            "removed_as_ties": int(n_candidates - wide.sum()),
            "removed_by_length_match": n_length_removed,
            "train_groups": int((~test_group).sum()),
            "test_groups": int(test_group.sum()),
        },
        "position_balance": balance or None,
        "margin_stats": {
            "units": "z" if zscore else "raw",
            "min": float(margins.min()),
            "mean": float(margins.mean()),
            "median": float(np.median(margins)),
            "max": float(margins.max()),
        },
        "split": {"by": "group", "test_size": float(test_size), "seed": int(seed)},
        "warnings": warnings,
        "timings_s": {name: round(t - clock[i][1], 3) for i, (name, t) in enumerate(clock[1:])},
    }
    _print_warnings(report)
    return dataset_dict, report


def _reason_summary(reason: np.ndarray) -> str:
    parts = [f"{int((reason == i).sum())} {name}" for i, name in enumerate(REASONS) if (reason == i).any()]
    return f"{len(reason)} rows, {int((reason < 0).sum())} usable" + ("; " + ", ".join(parts) if parts else "")


def _detail(table: RatingsTable, row: int, name: str, item_raters, item_codes) -> str:
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


ITEM_REASONS = ("too few raters", "alone in group", "tie", "length mismatch", "not selected")


def _examples(table: RatingsTable, reason: np.ndarray, item_raters, item_codes) -> dict:
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
    where = _locations(table, np.concatenate(list(picked.values())))
    return {
        name: [f"{where[int(r)]}: {_detail(table, int(r), name, item_raters, item_codes)}" for r in rows]
        for name, rows in picked.items()
    }


def _print_warnings(report: dict) -> None:
    alpha_i = report["agreement"]["alpha_interval"]
    if alpha_i is not None and alpha_i < ALPHA_RELIABLE:
        bar = "WARNING " + "=" * 72
        z = report["agreement"]["alpha_interval_zscored"]
        lines = [
            bar,
            f"WARNING: the raters disagree: Krippendorff's alpha (interval) = {alpha_i:.3f} "
            f"(ordinal {_fmt(report['agreement']['alpha_ordinal'])}), below {ALPHA_RELIABLE}.",
            "WARNING: below 0.667 a consensus is not reliable enough even for tentative conclusions;",
            "WARNING: DPO pairs built on it teach the model noise as much as the team's taste.",
        ]
        if z is not None:
            lines.append(f"WARNING: after removing each rater's leniency (z-scores) alpha is {z:.3f}.")
        lines += [
            "WARNING: See the rater table in report.md (raters flagged 'disagrees with everyone'),",
            "WARNING: agree on a rating guide and re-rate, or pass --min-alpha to refuse such files.",
            bar,
        ]
        print("\n".join(lines), file=sys.stderr)
    for line in report["warnings"]:
        if not line.startswith("low agreement"):
            print(f"warning: {line}", file=sys.stderr)


# --- save ---


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _cell(text) -> str:
    """User text made safe for one markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def render_report_md(report: dict, hist_name: str = "margin_hist.png") -> str:
    """report.json as a human-readable page."""
    a = report["agreement"]
    lines = [
        "# Preference pairs from team ratings",
        "",
        f"- ratings file: `{report['ratings_file']}` ({report['format']}, {report['mode']} mode)",
        f"- scale: {report['scale']['low']:g}–{report['scale']['high']:g}"
        + (" (inferred from the scores)" if report["scale"]["inferred"] else ""),
        f"- scores: {report['score_units_explained']}",
        f"- pairs: {report['pairs_strategy']}, margin > {report['margin']:g}, min raters {report['min_raters']}"
        + (f", length match ≥ {report['length_match']:g}" if report["length_match"] else "")
        + (", both orders" if report["both_orders"] else ""),
        f"- **{report['pairs']['train']} train / {report['pairs']['test']} test pairs** "
        f"from {report['rows_used']} of {report['rows_read']} rows",
        "",
    ]
    if report["warnings"]:
        lines += ["## Warnings", ""]
        alpha_i = a["alpha_interval"]
        if alpha_i is not None and alpha_i < ALPHA_RELIABLE:
            lines += [
                f"> **WARNING: the raters disagree.** Krippendorff's α (interval) = {alpha_i:.3f} is below "
                f"{ALPHA_RELIABLE}, the lowest value for tentative conclusions. The pairs below follow a consensus "
                "the team does not share; agree on a rating guide and re-rate, or drop the raters flagged below.",
                "",
            ]
        lines += [f"- {w}" for w in report["warnings"] if not w.startswith("low agreement")] + [""]

    lines += ["## Rows", "", "| bucket | rows | meaning | examples |", "|---|---:|---|---|"]
    lines.append(f"| used | {report['rows_used']} | the row's item is in at least one pair | |")
    for name, count in report["dropped"].items():
        if count:
            shown = "<br>".join(_cell(e) for e in report["dropped_examples"].get(name, []))
            lines.append(f"| {name} | {count} | {report['reasons_explained'][name]} | {shown} |")
    lines.append(f"| **read** | **{report['rows_read']}** | used + dropped | |")
    notes = []
    if report["unknown_columns"]["count"]:
        notes.append(
            f"unknown columns ({report['unknown_columns']['count']}): "
            + ", ".join(f"`{n}`" for n in report["unknown_columns"]["names"])
            + " — ignored, rows kept"
        )
    if report["blank_rows_skipped"]:
        notes.append(f"{report['blank_rows_skipped']} row(s) with every cell empty skipped (not counted as rows)")
    lines += [""] + [f"Note: {n}." for n in notes] + ([""] if notes else [])

    lines += [
        "## Agreement",
        "",
        "| Krippendorff's α | value |",
        "|---|---:|",
        f"| interval | {_fmt(a['alpha_interval'])} |",
        f"| ordinal | {_fmt(a['alpha_ordinal'])} |",
        f"| interval, on per-rater z-scores | {_fmt(a['alpha_interval_zscored'])} |",
        "",
        f"On {a['scores']}: {a['alpha_items_used']} items rated by two or more raters "
        f"({a['alpha_ratings_used']} ratings). α ≥ 0.8 is reliable, ≥ {ALPHA_RELIABLE} tentative."
        + (f" {a['alpha_note']}." if a["alpha_note"] else "")
        + " The z-scored α leaves out each rater's leniency and spread: when it is much higher than the"
        " raw α, the team ranks alike but uses the scale differently (z-scoring, on by default, handles that).",
        "",
        f"Computed with: {a['alpha_method']}." if a["alpha_method"] else "",
        "",
        "## Raters",
        "",
        "| rater | ratings | mean | sd | r with others | shared items | flag |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["raters"]:
        flags = []
        if r["disagrees_with_everyone"]:
            flags.append("**disagrees with everyone**")
        if r["zero_variance"]:
            flags.append("same score for everything")
        lines.append(
            f"| {_cell(r['rater'])} | {r['count']} | {r['mean']:.2f} | {r['sd']:.2f} | {_fmt(r['loo_r'], 2)} | "
            f"{r['shared_items']} | {', '.join(flags)} |"
        )
    lines += ["", f"r with others: {report['rater_correlation']}; flagged below {LOW_CORRELATION}.", ""]

    p, m = report["pairs"], report["margin_stats"]
    lines += [
        "## Pairs",
        "",
        "| split | pairs | groups |",
        "|---|---:|---:|",
        f"| train | {p['train']} | {p['train_groups']} |",
        f"| test | {p['test']} | {p['test_groups']} |",
        "",
        f"{p['candidates']} candidate pairs from the {report['pairs_strategy']} strategy, {p['removed_as_ties']} "
        f"removed as ties (difference ≤ margin), {p['removed_by_length_match']} by length matching; split by group "
        f"(seed {report['split']['seed']}, test size {report['split']['test_size']:g}).",
        "",
        f"Margin (chosen − rejected, {m['units']} units): min {m['min']:.3f}, median {m['median']:.3f}, "
        f"mean {m['mean']:.3f}, max {m['max']:.3f}.",
        "",
        f"![pair margins]({hist_name})",
        "",
    ]
    if report["position_balance"]:
        lines += ["| split | better image first | better image second |", "|---|---:|---:|"]
        for split, b in report["position_balance"].items():
            lines.append(f"| {split} | {b['better_first']} | {b['better_second']} |")
        lines.append("")
    return "\n".join(lines)


def _margin_histogram(margins: np.ndarray, units: str, target: Path) -> None:
    fig = Figure(figsize=(5, 3), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.hist(margins, bins=min(30, max(5, len(margins) // 5)), color="#1f5fd6", edgecolor="white")
    ax.set_xlabel(f"chosen − rejected mean score ({units})")
    ax.set_ylabel("pairs")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"Pair margins (n = {len(margins)})")
    fig.tight_layout()
    fig.savefig(target)


def save_pairs(dataset_dict: datasets.DatasetDict, report: dict, output_dir, overwrite: bool = False) -> Path:
    """Dataset + report.json + report.md + margin_hist.png, built in a staging dir then renamed.

    An interrupted run leaves output_dir as it was; an existing non-empty output_dir is only
    replaced with overwrite=True (FileExistsError otherwise).
    """

    def write(target: Path) -> None:
        dataset_dict.save_to_disk(str(target))
        margins = np.concatenate([np.asarray(ds["margin"], dtype=np.float64) for ds in dataset_dict.values()])
        _margin_histogram(margins, report["margin_stats"]["units"], target / "margin_hist.png")
        (target / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        (target / "report.md").write_text(render_report_md(report), encoding="utf-8")

    return staged_replace(Path(output_dir), overwrite, write)


# --- command line ---


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def _ratio(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def _parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m data_builders.ratings",
        description="Turn a team's ratings (CSV/JSONL/Parquet) into DPO preference pairs with an agreement report.",
    )
    parser.add_argument("--ratings", required=True, type=Path, help="ratings file (.csv, .jsonl or .parquet)")
    parser.add_argument("--output", required=True, type=Path, help="directory to write")
    parser.add_argument("--scale", default="1-5", help="rating scale LO-HI, or 'infer' (default %(default)s)")
    parser.add_argument("--no-zscore", dest="zscore", action="store_false",
                        help="average raw scores instead of per-rater z-scores")
    parser.add_argument("--min-raters", type=positive_int, default=2,
                        help="drop items rated by fewer raters (default %(default)s)")
    parser.add_argument("--margin", type=_non_negative_float, default=0.0,
                        help="minimum chosen - rejected mean score; smaller is a tie (default %(default)s)")
    parser.add_argument("--pairs", choices=PAIR_STRATEGIES, default="best-worst",
                        help="pairs per group (default %(default)s)")
    parser.add_argument("--length-match", type=_ratio, default=None,
                        help="keep pairs whose shorter/longer response length ratio is at least this")
    parser.add_argument("--min-alpha", type=float, default=None,
                        help="refuse if Krippendorff's alpha (interval) is below this")
    parser.add_argument("--strict", action="store_true", help="any bad row or unknown column is an error")
    parser.add_argument("--test-size", type=_fraction, default=0.1,
                        help="fraction of groups in test (default %(default)s)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="split/order seed (default %(default)s)")
    parser.add_argument("--both-orders", action="store_true", help="image mode: emit every pair in both orders")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = _parse_args(argv)
    # Check before reading so a refused run costs nothing.
    if is_nonempty(args.output) and not args.overwrite:
        print(f"error: {args.output} exists and is not empty; pass --overwrite", file=sys.stderr)
        return 2
    try:
        dataset_dict, report = build_pairs(
            args.ratings,
            scale=args.scale,
            zscore=args.zscore,
            min_raters=args.min_raters,
            margin=args.margin,
            pairs=args.pairs,
            length_match=args.length_match,
            min_alpha=args.min_alpha,
            strict=args.strict,
            test_size=args.test_size,
            seed=args.seed,
            both_orders=args.both_orders,
        )
        save_pairs(dataset_dict, report, args.output, overwrite=args.overwrite)
    except (RatingsError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    a = report["agreement"]
    print(
        f"wrote {args.output} (train {report['pairs']['train']}, test {report['pairs']['test']} pairs; "
        f"{report['rows_used']}/{report['rows_read']} rows used; alpha interval {_fmt(a['alpha_interval'])}, "
        f"ordinal {_fmt(a['alpha_ordinal'])}; see {args.output / 'report.md'})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
