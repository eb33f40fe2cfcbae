"""Row checks: every row gets the first drop reason that applies to it (missing value, bad or
out-of-scale score, missing or unreadable image, duplicate rater×item), items and groups get their
codes, and --strict refuses a file with any input problem, naming its first bad row. An image outside
the ratings file's folder refuses the file (unless --allow_outside_images): it is never embedded silently."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from data_builders.ratings.locate import locations, reason_summary, row_detail
from data_builders.ratings.read import RatingsTable
from data_builders.ratings.schema import REASONS, STRICT_REASONS, RatingsError


@dataclass
class RowChecks:
    """What the checks found, row by row (reason: index into REASONS, -1 while the row is fine)."""

    mode: str  # "response" (items are responses to one image + prompt) or "image" (images for one prompt)
    reason: np.ndarray
    lo: float
    hi: float
    image_sources: list  # per distinct image cell: its file (Path) or, embedded in an export, its bytes
    group_codes: np.ndarray
    item_codes: np.ndarray
    n_items: int
    valid: np.ndarray  # rows that passed every row check (before --min-raters)

    def drop(self, mask: np.ndarray, name: str) -> None:
        """Give the rows in mask that are still fine the reason `name`."""
        self.reason[(self.reason < 0) & mask] = REASONS.index(name)


# --- images ---


def _image_ok(source) -> bool:
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            image.verify()
    except Exception:  # PIL raises many types for a broken file
        return False
    return True


def image_sources(table: RatingsTable) -> list:
    """Per distinct image cell: the file it names (relative to the ratings file's folder) or its embedded bytes."""
    base = table.path.resolve().parent
    embedded = table.images or {}
    return [embedded[name] if name in embedded else (base / name if name else base) for name in table.columns["image"][1]]


def refuse_outside_images(table: RatingsTable, sources: list) -> None:
    """RatingsError naming the first row whose image is an existing file outside the ratings file's folder
    (an absolute path, or one climbing out with '..'): it would be embedded in the pairs without a word.
    Symlinks inside the folder are the user's own choice and stay allowed; a path that does not exist is a
    missing image, dropped as before."""
    codes, names = table.columns["image"]
    for code, name in enumerate(names):
        source = sources[code]
        if not name or not isinstance(source, Path):
            continue
        climbs = os.path.isabs(name) or os.path.normpath(name).split(os.sep)[0] == ".."
        if climbs and source.is_file():
            row = int(np.flatnonzero(codes == code)[0])
            where = locations(table, [row])[row]
            raise RatingsError(f"{table.path} {where}: image {name!r} is outside the ratings file's folder "
                               f"({table.path.resolve().parent}); images are read from there only — move them in, "
                               f"or pass --allow_outside_images to read images from anywhere")


def _check_images(sources: list, image_codes, image_names, candidate: np.ndarray):
    """Per distinct image: (missing, unreadable) flags; opens each once.

    Only images that a still-valid row uses are checked, and only existing ones are opened.
    """
    missing = np.zeros(len(sources), dtype=bool)
    unreadable = np.zeros(len(sources), dtype=bool)
    for code in np.unique(image_codes[candidate]):
        source = sources[code]
        if not image_names[code] or (isinstance(source, Path) and not source.is_file()):
            missing[code] = True
        elif not _image_ok(source):
            unreadable[code] = True
    return missing, unreadable


# --- items ---


def _combine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Codes of the pairs (a, b) in order of first appearance (a, b: non-negative int codes)."""
    key = a.astype(np.int64) * (int(b.max()) + 1 if len(b) else 1) + b.astype(np.int64)
    return pd.factorize(key)[0].astype(np.int64)


def item_and_group_codes(table: RatingsTable, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Response mode: item = (image, prompt, response), group = (image, prompt).
    Image mode: item = (image, prompt), group = prompt."""
    image_codes, prompt_codes = table.columns["image"][0], table.columns["prompt"][0]
    if mode == "response":
        group_codes = _combine(image_codes, prompt_codes)
        return _combine(group_codes, table.columns["response"][0]), group_codes
    group_codes = _combine(prompt_codes, np.zeros_like(prompt_codes))
    return _combine(prompt_codes, image_codes), group_codes


# --- rows ---


def check_rows(table: RatingsTable, bounds: tuple[float, float] | None, mode: str,
               allow_outside_images: bool = False) -> RowChecks:
    """Every row's first problem (if any), the scale (inferred from the valid scores when bounds is None);
    an image outside the ratings file's folder refuses the file unless allow_outside_images."""
    reason = np.full(len(table), -1, dtype=np.int8)

    def drop(mask: np.ndarray, name: str) -> None:
        reason[(reason < 0) & mask] = REASONS.index(name)

    def empty(column: str) -> np.ndarray:
        codes, distinct = table.columns[column]
        return np.isin(codes, np.flatnonzero(distinct == ""))

    missing_value = empty("prompt") | empty("rater")
    if mode == "response":
        missing_value |= empty("response")
    drop(missing_value, "missing value")
    score = table.score
    drop(~np.isfinite(score), "bad score")
    if bounds is None:
        numeric = score[reason < 0]
        if len(numeric) == 0:
            raise RatingsError(f"{table.path}: no numeric scores to infer --scale from ({reason_summary(reason)})")
        bounds = (float(numeric.min()), float(numeric.max()))
    lo, hi = bounds
    with np.errstate(invalid="ignore"):
        drop((score < lo) | (score > hi), "out of scale")
    image_codes, image_names = table.columns["image"]
    sources = image_sources(table)
    if not allow_outside_images:
        refuse_outside_images(table, sources)
    missing_img, unreadable_img = _check_images(sources, image_codes, image_names, reason < 0)
    drop(missing_img[image_codes], "missing image")
    drop(unreadable_img[image_codes], "unreadable image")

    item_codes, group_codes = item_and_group_codes(table, mode)
    n_items = int(item_codes.max()) + 1
    fine = np.flatnonzero(reason < 0)
    rater_codes = table.columns["rater"][0]
    repeat = pd.Series(rater_codes[fine] * np.int64(n_items) + item_codes[fine]).duplicated(keep="first").to_numpy()
    reason[fine[repeat]] = REASONS.index("duplicate rater×item")
    return RowChecks(mode, reason, lo, hi, sources, group_codes, item_codes, n_items, reason < 0)


def refuse_strict(table: RatingsTable, checks: RowChecks, item_raters: np.ndarray) -> None:
    """--strict: RatingsError naming the first defective row; an item left with too few raters only if none."""
    codes = [REASONS.index(name) for name in STRICT_REASONS]
    bad = np.flatnonzero(np.isin(checks.reason, codes[:-1]))
    if len(bad) == 0:
        bad = np.flatnonzero(checks.reason == codes[-1])
    if len(bad):
        row = int(bad[0])
        name = REASONS[checks.reason[row]]
        where = locations(table, [row])[row]
        detail = row_detail(table, row, name, item_raters, checks.item_codes)
        raise RatingsError(f"{table.path} {where}: {name} ({detail}); --strict refuses any dropped row")
