"""build_pairs: a ratings file -> (DatasetDict of preference pairs, report dict), in named steps:
read -> row checks -> normalise (z-scores, --min-raters) -> agreement -> items and candidate pairs ->
split by group -> datasets -> report. Every input row ends in exactly one bucket (used, or its drop reason)."""

from __future__ import annotations

import time
from pathlib import Path

import datasets

from data_builders.ratings.dataset import pair_datasets
from data_builders.ratings.imports import ImportFields
from data_builders.ratings.locate import drop_examples, reason_summary
from data_builders.ratings.pairs import choose_pairs, item_means, split_pairs
from data_builders.ratings.read import RatingsTable, read_ratings
from data_builders.ratings.report import build_report, print_warnings
from data_builders.ratings.schema import RatingsError, Settings
from data_builders.ratings.scores import measure, normalise
from data_builders.ratings.validate import check_rows, refuse_strict


class _Clock:
    """Seconds spent per step, for report.json's timings_s."""

    def __init__(self) -> None:
        self.last, self.laps = time.perf_counter(), {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self.last, 3)
        self.last = now


def _mode(table: RatingsTable, settings: Settings) -> str:
    """response mode (a response column: responses to one image + prompt are compared) or image mode."""
    if settings.strict and table.unknown_columns:
        raise RatingsError(f"{table.path}: unknown column(s) {', '.join(table.unknown_columns)} (--strict)")
    mode = "response" if "response" in table.columns else "image"
    if settings.length_match is not None and mode == "image":
        raise RatingsError(f"{table.path}: --length-match needs a response column (this file has none: image mode)")
    return mode


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
    input_format: str = "auto",
    fields: ImportFields | None = None,
    allow_outside_images: bool = False,
) -> tuple[datasets.DatasetDict, dict]:
    """Ratings file -> (DatasetDict of preference pairs, report dict). Raises RatingsError.

    input_format: auto (by extension and content), csv, jsonl, parquet, argilla or labelstudio;
    fields: which export fields hold image / prompt / response and the rating question (imports only);
    allow_outside_images: read image paths that leave the ratings file's folder ('..', absolute) too.
    """
    settings = Settings(scale, zscore, min_raters, margin, pairs, length_match, min_alpha, strict, test_size, seed,
                        both_orders)
    bounds = settings.check()
    clock = _Clock()
    table = read_ratings(Path(ratings_path), input_format, fields)
    clock.lap("read")
    checks = check_rows(table, bounds, _mode(table, settings), allow_outside_images)
    scores = normalise(table, checks, settings)
    clock.lap("validate")
    if strict:
        refuse_strict(table, checks, scores.item_raters)
    if not checks.valid.any():
        raise RatingsError(f"{table.path}: no valid rating rows ({reason_summary(checks.reason)})")
    measured = measure(table, checks, scores, settings)
    clock.lap("agreement")

    items = item_means(table, checks, scores.unit_values, min_raters)
    chosen = choose_pairs(table, checks, items, settings)
    clock.lap("pairs")
    split = split_pairs(items, chosen, test_size, seed)
    built = pair_datasets(table, checks.image_sources, items, split, scores.item_raters, checks.mode, seed,
                          both_orders)
    clock.lap("dataset")

    margins = items.score[split.better] - items.score[split.worse]
    examples = drop_examples(table, checks.reason, scores.item_raters, checks.item_codes)
    clock.lap("report")
    report = build_report(table, settings, checks, scores, measured, chosen, split, built, margins, examples,
                          clock.laps)
    print_warnings(report)
    return built[0], report
