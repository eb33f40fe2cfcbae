"""report.json of a build: every row's bucket with examples, the settings, agreement and the rater
table, the pairs and their margins; the warnings it carries, and the loud stderr banner when the
team disagrees (pairs built on a consensus the team does not share teach noise)."""

from __future__ import annotations

import sys

import datasets
import numpy as np

from data_builders.ratings.pairs import Pairs, Split
from data_builders.ratings.read import RatingsTable
from data_builders.ratings.schema import ALPHA_RELIABLE, REASON_HELP, REASONS, Settings, parse_scale
from data_builders.ratings.scores import Measured, Normalised
from data_builders.ratings.validate import RowChecks


def decimals(value, digits: int = 3) -> str:
    """A fixed-decimals number (alpha, r) as reports and messages show it; 'n/a' when not computable."""
    return "n/a" if value is None else f"{value:.{digits}f}"


# --- warnings ---


def build_warnings(table: RatingsTable, settings: Settings, mode: str, measured: Measured, zero_variance: list[str],
                   splits: datasets.DatasetDict, n_groups_with_pairs: int) -> list[str]:
    agree, warnings = measured.agreement, []
    alpha_i = agree["alpha_interval"]
    if alpha_i is not None and alpha_i < ALPHA_RELIABLE:
        warnings.append(
            f"low agreement: Krippendorff's alpha (interval) = {alpha_i:.3f} < {ALPHA_RELIABLE}; "
            "the team's consensus is not reliable and the pairs may teach noise"
        )
    elif alpha_i is None:
        warnings.append(f"agreement {agree['alpha_note']}")
    for row in measured.raters:
        if row["disagrees_with_everyone"]:
            warnings.append(
                f"rater {row['rater']!r} disagrees with everyone (r = {row['loo_r']:.2f} with the other raters' mean)"
            )
    if zero_variance:
        names = ", ".join(repr(name) for name in zero_variance)
        warnings.append(
            f"rater(s) {names} gave every item the same score" + (": z = 0 for all their ratings" if settings.zscore else "")
        )
    if "test" not in splits:
        warnings.append(
            "the test split is empty: only one group has pairs" if n_groups_with_pairs == 1
            else "the test split is empty: --test-size 0"
        )
    if table.unknown_columns:
        warnings.append(f"unknown column(s) ignored: {', '.join(table.unknown_columns)}")
    if settings.both_orders and mode == "response":
        warnings.append("--both-orders only applies to image mode (no response column); ignored")
    return warnings


def print_warnings(report: dict) -> None:
    alpha_i = report["agreement"]["alpha_interval"]
    if alpha_i is not None and alpha_i < ALPHA_RELIABLE:
        bar = "WARNING " + "=" * 72
        z = report["agreement"]["alpha_interval_zscored"]
        lines = [
            bar,
            f"WARNING: the raters disagree: Krippendorff's alpha (interval) = {alpha_i:.3f} "
            f"(ordinal {decimals(report['agreement']['alpha_ordinal'])}), below {ALPHA_RELIABLE}.",
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


# --- report.json ---


def _rows_section(table: RatingsTable, checks: RowChecks, examples: dict) -> dict:
    reason = checks.reason
    dropped = {name: int((reason == i).sum()) for i, name in enumerate(REASONS)}
    rows_used = int((reason < 0).sum())
    assert len(table) == rows_used + sum(dropped.values()), "row accounting is broken"
    return {
        "ratings_file": str(table.path),
        "format": table.format,
        **({"import": table.import_summary} if table.import_summary else {}),
        "mode": checks.mode,
        "rows_read": len(table),
        "rows_used": rows_used,
        "dropped": dropped,
        "dropped_examples": examples,
        "reasons_explained": dict(REASON_HELP),
        "unknown_columns": {"count": len(table.unknown_columns), "names": table.unknown_columns},
        "blank_rows_skipped": table.blank_rows,
    }


def _settings_section(settings: Settings, checks: RowChecks, zero_variance: list[str]) -> dict:
    zscore = settings.zscore
    return {
        "scale": {"low": checks.lo, "high": checks.hi, "inferred": parse_scale(settings.scale) is None},
        "zscore": bool(zscore),
        "score_units": "z" if zscore else "raw",
        "score_units_explained": (
            "chosen_score, rejected_score and margin are means over raters of per-rater z-scores"
            if zscore else "chosen_score, rejected_score and margin are means over raters of raw scores"
        ),
        "zero_variance_raters": zero_variance,
        "min_raters": int(settings.min_raters),
        "margin": float(settings.margin),
        "pairs_strategy": settings.pairs,
        "length_match": settings.length_match,
        "both_orders": bool(settings.both_orders) if checks.mode == "image" else None,
        "strict": bool(settings.strict),
    }


def _agreement_section(measured: Measured) -> dict:
    return {
        "agreement": {
            **measured.agreement,
            "value_domain": [float(v) for v in measured.domain],
            "reliable_above": ALPHA_RELIABLE,
            "scores": "raw scores of every valid rating (before the --min-raters filter)",
            "alpha_interval_zscored_explained": (
                "interval alpha of the per-rater z-scores: agreement once each rater's leniency and spread are removed"
            ),
        },
        "raters": measured.raters,
        "rater_correlation": (
            "Pearson r of the rater's raw scores with the mean of the other raters on the items they share"
        ),
    }


def _pairs_section(pairs: Pairs, split: Split, splits: datasets.DatasetDict, margins: np.ndarray,
                   zscore: bool) -> dict:
    return {
        "pairs": {
            "train": len(splits["train"]) if "train" in splits else 0,
            "test": len(splits["test"]) if "test" in splits else 0,
            "distinct_pairs": int(len(split.better)),
            "candidates": int(pairs.n_candidates),
            "removed_as_ties": pairs.n_ties_removed,
            "removed_by_length_match": pairs.n_length_removed,
            "train_groups": int((~split.test_group).sum()),
            "test_groups": int(split.test_group.sum()),
        },
        "margin_stats": {
            "units": "z" if zscore else "raw",
            "min": float(margins.min()),
            "mean": float(margins.mean()),
            "median": float(np.median(margins)),
            "max": float(margins.max()),
        },
    }


def build_report(table: RatingsTable, settings: Settings, checks: RowChecks, scores: Normalised, measured: Measured,
                 pairs: Pairs, split: Split, built: tuple, margins: np.ndarray, examples: dict, timings: dict) -> dict:
    """report.json; built: pair_datasets' (DatasetDict, position balance, images used); margins: per distinct pair."""
    splits, balance, n_images = built
    rater_names = table.columns["rater"][1]
    zero_variance = [str(rater_names[r]) for r in scores.zero_variance]
    counts = {
        "raters": len(measured.raters),
        "items_rated": int((scores.item_raters > 0).sum()),
        "items_in_pairs": int(pairs.paired.sum()),
        "groups": int(np.count_nonzero(pairs.group_size)),
        "groups_with_pairs": int(len(split.groups_with_pairs)),
        "images_in_pairs": int(n_images),
    }
    pairs_part = _pairs_section(pairs, split, splits, margins, settings.zscore)
    return {
        **_rows_section(table, checks, examples),
        **_settings_section(settings, checks, zero_variance),
        "counts": counts,
        **_agreement_section(measured),
        "pairs": pairs_part["pairs"],
        "position_balance": balance or None,
        "margin_stats": pairs_part["margin_stats"],
        "split": {"by": "group", "test_size": float(settings.test_size), "seed": int(settings.seed)},
        "warnings": build_warnings(table, settings, checks.mode, measured, zero_variance, splits,
                                   len(split.groups_with_pairs)),
        "timings_s": timings,
    }
