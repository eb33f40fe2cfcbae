"""`vlm-tune rate export`: the store's current scores as the ratings builder's CSV, so

    python -m data_builders.ratings --ratings ratings.csv --output pairs/

builds DPO pairs from it unchanged. Response mode: columns image, prompt, response, rater, score (one row
per rater x item x candidate). Image mode: image, prompt, rater, score — the builder reads a file without a
`response` column as image mode (images made for the same prompt are compared). Image paths are relative
to the CSV's folder. Items the task file no longer lists are left out unless asked for. The file is written
atomically and never replaces an existing one without `overwrite`.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

from vlm_tune.core.errors import UserError
from vlm_tune.core.io import atomic_write_text
from vlm_tune.rate.store import RatingsStore

COLUMNS = {"response": ("image", "prompt", "response", "rater", "score"),
           "image": ("image", "prompt", "rater", "score")}


@dataclass(frozen=True)
class ExportResult:
    path: Path
    rows: int
    raters: int
    items: int
    removed_left_out: int  # ratings of removed items not written


def csv_rows(store: RatingsStore, csv_folder: Path, include_removed: bool = False) -> tuple[list[str], list[list]]:
    """(header, rows) of the builder's CSV; image paths relative to csv_folder, POSIX separators."""
    mode = store.meta("mode") or "response"
    items = {item.item_id: item for item in store.items() + store.items(removed=True)}
    rows = []
    for rating in store.ratings(include_removed=include_removed):
        item = items[rating.item_id]
        image = Path(os.path.relpath(item.image_path, csv_folder)).as_posix()
        if mode == "response":
            response = dict(item.responses)[rating.response_id]
            rows.append([image, item.prompt, response, rating.rater, rating.score])
        else:
            rows.append([image, item.prompt, rating.rater, rating.score])
    return list(COLUMNS[mode]), rows


def export_csv(store: RatingsStore, output, overwrite: bool = False, include_removed: bool = False) -> ExportResult:
    output = Path(output)
    if output.is_dir():
        raise UserError(f"{output} is a folder; --output names the CSV file to write")
    if output.exists() and not overwrite:
        raise UserError(f"{output} exists; pass --overwrite to replace it")
    header, rows = csv_rows(store, output.resolve().parent, include_removed)
    if not rows:
        raise UserError(f"{store.path}: no ratings yet, nothing to export")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(output, buffer.getvalue())
    everything = len(store.ratings(include_removed=True))
    raters = {row[header.index("rater")] for row in rows}
    items = {(row[0], row[1]) for row in rows}
    return ExportResult(output, len(rows), len(raters), len(items), everything - len(rows))
