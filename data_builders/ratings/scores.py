"""The valid ratings as numbers to pair on and to judge the team by: per-rater z-scores (or raw
scores), the raters per item (items below --min-raters drop out), and the team's agreement on the
raw scores, through the same team_summary that `team_agreement` (the team-rating app) uses."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data_builders.ratings.agreement import team_summary, zscore_per_rater
from data_builders.ratings.read import RatingsTable
from data_builders.ratings.schema import RatingsError, Settings
from data_builders.ratings.validate import RowChecks


@dataclass
class Normalised:
    """The valid rows' rater and item codes and scores, and the values items are averaged on."""

    rater: np.ndarray
    item: np.ndarray
    score: np.ndarray  # raw
    unit_values: np.ndarray  # per-rater z-scores (or the raw scores with --no-zscore)
    zero_variance: np.ndarray  # rater codes of raters who gave every item the same score
    item_raters: np.ndarray  # per item code: valid ratings (= raters, duplicates are gone)


@dataclass
class Measured:
    agreement: dict  # agreement() keys plus alpha_interval_zscored
    domain: np.ndarray  # the value domain alpha was computed on
    raters: list[dict]  # rater_table()


def normalise(table: RatingsTable, checks: RowChecks, settings: Settings) -> Normalised:
    """Per-rater z-scores over all valid ratings; rows of items rated by too few raters drop out."""
    valid = checks.valid
    rater_codes, rater_names = table.columns["rater"]
    v_rater, v_item, v_score = rater_codes[valid], checks.item_codes[valid], table.score[valid]
    z, flat = zscore_per_rater(v_rater, v_score, len(rater_names))
    zero_variance = np.flatnonzero((np.bincount(v_rater, minlength=len(rater_names)) > 0) & flat)
    item_raters = np.bincount(v_item, minlength=checks.n_items)
    too_few = np.zeros(len(table), dtype=bool)
    too_few[valid] = item_raters[v_item] < settings.min_raters
    checks.drop(too_few, "too few raters")
    return Normalised(v_rater, v_item, v_score, z if settings.zscore else v_score, zero_variance, item_raters)


def measure(table: RatingsTable, checks: RowChecks, scores: Normalised, settings: Settings) -> Measured:
    """Agreement on raw scores of every valid rating (before the --min-raters filter); RatingsError
    when alpha is below --min-alpha."""
    # Value domain: the scale's integers, or the observed values for a float scale (or an integer
    # one too wide to list). Unobserved values carry no weight, so alpha is the same either way.
    lo, hi = checks.lo, checks.hi
    observed = np.unique(scores.score)
    integer_scale = float(lo).is_integer() and float(hi).is_integer() and bool(np.all(observed == np.rint(observed)))
    domain = np.arange(lo, hi + 1.0) if integer_scale and hi - lo < 1000 else observed
    summary = team_summary(scores.item, scores.rater, table.columns["rater"][1], scores.score, domain)
    agree = dict(summary.agreement)
    agree["alpha_interval_zscored"] = summary.alpha_z if settings.zscore else None
    alpha_i = agree["alpha_interval"]
    if settings.min_alpha is not None and (alpha_i is None or alpha_i < settings.min_alpha):
        shown = agree["alpha_note"] if alpha_i is None else f"{alpha_i:.3f}"
        raise RatingsError(
            f"{table.path}: Krippendorff's alpha (interval) {shown} is below --min-alpha {settings.min_alpha:g}"
        )
    return Measured(agree, domain, summary.raters)
