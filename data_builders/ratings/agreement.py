"""How much a team agrees: Krippendorff's alpha (interval and ordinal, exactly as the krippendorff
package computes it, on any number of ratings), per-rater z-scores, and the rater table (leave-one-out
correlation with the others flags a rater who disagrees with everyone).

`team_agreement(items, raters, scores)` is the one entry point for code outside the builder (the
team-rating app); the builder's report goes through the same `team_summary`, so both show the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import krippendorff
import numpy as np
import pandas as pd

from data_builders.ratings.schema import ALPHA_RELIABLE, LIBRARY_ALPHA_CELLS, LOW_CORRELATION, RatingsError

# --- Krippendorff's alpha ---


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


# --- raters ---


def zscore_per_rater(rater_codes: np.ndarray, values: np.ndarray, n_raters: int) -> tuple[np.ndarray, np.ndarray]:
    """Each rating as a z-score within its rater (population sd); a rater who gave every item the
    same score (`flat`, per rater code) gets z = 0 for all their ratings."""
    count = np.bincount(rater_codes, minlength=n_raters)
    mean = np.bincount(rater_codes, values, n_raters) / np.maximum(count, 1)
    sd = np.sqrt(np.bincount(rater_codes, (values - mean[rater_codes]) ** 2, n_raters) / np.maximum(count, 1))
    flat = sd < 1e-12
    z = np.where(flat[rater_codes], 0.0, (values - mean[rater_codes]) / np.where(flat, 1.0, sd)[rater_codes])
    return z, flat


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


# --- the team ---


@dataclass
class TeamSummary:
    agreement: dict  # agreement() of the raw scores
    alpha_z: float | None  # interval alpha of the per-rater z-scores
    raters: list[dict]  # rater_table() of the raw scores
    z: np.ndarray  # per rating: its z-score within its rater
    flat: np.ndarray  # per rater code: gave every item the same score


def team_summary(item_codes, rater_codes, rater_names, scores, domain) -> TeamSummary:
    """Agreement, z-scored agreement and rater table of ratings (one per rater x item), given as codes.

    Items are renumbered in order of first appearance, so callers that name the same items
    differently (the builder's codes, the app's ids) get the very same numbers.
    """
    items = pd.factorize(np.asarray(item_codes))[0].astype(np.int64)
    rater_codes = np.asarray(rater_codes, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    z, flat = zscore_per_rater(rater_codes, scores, len(rater_names))
    return TeamSummary(
        agreement(items, scores, np.asarray(domain, dtype=np.float64)),
        interval_alpha(items, z),
        rater_table(rater_codes, rater_names, items, scores),
        z,
        flat,
    )


def _finite_scores(scores) -> np.ndarray:
    try:
        values = np.asarray(scores, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        bad = next(i for i, s in enumerate(scores) if not _is_number(s))
        raise RatingsError(f"score {bad} ({scores[bad]!r}) is not a number") from None
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        raise RatingsError(f"score {int(bad[0])} ({scores[int(bad[0])]!r}) is not a finite number")
    return values


def _is_number(value) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def team_agreement(items, raters, scores, *, domain=None) -> dict:
    """How much a team agrees, from three equal-length sequences: item ids, rater names, numeric scores.

    Returns {"alpha_raw", "alpha_z", "alpha_ordinal", "n_items", "n_raters", "n_ratings",
    "duplicates_ignored", "alpha_items_used", "alpha_note", "reliable_above", "raters": [{"rater",
    "count", "mean", "sd", "loo_r", "shared_items", "zero_variance", "disagrees_with_everyone"}]}:
    Krippendorff's interval alpha of the raw scores and of the per-rater z-scores (None when not
    computable, e.g. no item has two raters), computed exactly as the ratings builder's report does.
    A rater's second rating of the same item is ignored (the first counts, as in the builder).
    `domain`: the scale's values for the ordinal alpha (default: the values seen). RatingsError for
    unequal lengths or a score that is not a finite number.
    """
    items, raters = [str(i) for i in items], [str(r) for r in raters]
    if not len(items) == len(raters) == len(scores):
        raise RatingsError(f"items, raters and scores differ in length ({len(items)}, {len(raters)}, {len(scores)})")
    values = _finite_scores(scores)
    item_codes, _ = pd.factorize(np.asarray(items, dtype=object))
    rater_codes, rater_names = pd.factorize(np.asarray(raters, dtype=object))
    repeat = pd.Series(rater_codes.astype(np.int64) * (len(items) + 1) + item_codes).duplicated(keep="first").to_numpy()
    keep = ~repeat
    # unobserved values carry no weight; the values seen must be in the domain (they index into it)
    domain = np.unique(values[keep]) if domain is None else np.union1d(np.asarray(domain, np.float64), values[keep])
    summary = team_summary(item_codes[keep], rater_codes[keep], rater_names, values[keep], domain)
    agree = summary.agreement
    return {
        "alpha_raw": agree["alpha_interval"],
        "alpha_z": summary.alpha_z,
        "alpha_ordinal": agree["alpha_ordinal"],
        "n_items": int(len(np.unique(item_codes))),
        "n_raters": int(len(rater_names)),
        "n_ratings": int(keep.sum()),
        "duplicates_ignored": int(repeat.sum()),
        "alpha_items_used": agree["alpha_items_used"],
        "alpha_note": agree["alpha_note"],
        "reliable_above": ALPHA_RELIABLE,
        "raters": summary.raters,
    }
