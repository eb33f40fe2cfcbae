"""From scored items to preference pairs: each item's mean score over its raters, candidate pairs
per group by strategy (best-worst, all, adjacent), ties and length mismatches removed, the drop reason
of every item left out, and the split of the pairs into train/test by group."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data_builders.ratings.locate import reason_summary
from data_builders.ratings.read import RatingsTable
from data_builders.ratings.schema import EPS, REASONS, RatingsError, Settings
from data_builders.ratings.validate import RowChecks


@dataclass
class Items:
    """Per item code: its mean score (NaN when no row is left) and the codes of what it is made of."""

    score: np.ndarray
    live: np.ndarray  # item codes with at least one row left after --min-raters
    group: np.ndarray
    image: np.ndarray
    prompt: np.ndarray
    response: np.ndarray | None  # response mode only


@dataclass
class Pairs:
    better: np.ndarray  # item codes, after ties and --length-match are removed
    worse: np.ndarray
    n_candidates: int
    n_ties_removed: int
    n_length_removed: int
    paired: np.ndarray  # per item: in at least one pair
    group_size: np.ndarray  # per group code: live items in it


@dataclass
class Split:
    better: np.ndarray  # pairs ordered by group first appearance, then chosen rank
    worse: np.ndarray
    pair_group: np.ndarray
    groups_with_pairs: np.ndarray
    test_group: np.ndarray  # per group with pairs: in the test split
    pair_test: np.ndarray  # per pair: in the test split


# --- items ---


def item_means(table: RatingsTable, checks: RowChecks, unit_values: np.ndarray, min_raters: int) -> Items:
    """Mean over raters of each item's rows still in (unit_values: z-scores or raw, aligned to valid rows)."""
    kept = checks.reason < 0
    n_items = checks.n_items
    k_item = checks.item_codes[kept]
    counts = np.bincount(k_item, minlength=n_items)
    sums = np.bincount(k_item, unit_values[kept[checks.valid]], n_items)
    live = np.flatnonzero(counts > 0)
    if len(live) == 0:
        raise RatingsError(
            f"{table.path}: no item was rated by at least {min_raters} raters ({reason_summary(checks.reason)})"
        )
    score = np.full(n_items, np.nan)
    score[live] = sums[live] / counts[live]

    def per_item(codes: np.ndarray) -> np.ndarray:
        out = np.zeros(n_items, dtype=np.int64)
        out[checks.item_codes] = codes
        return out

    response = per_item(table.columns["response"][0]) if checks.mode == "response" else None
    return Items(score, live, per_item(checks.group_codes), per_item(table.columns["image"][0]),
                 per_item(table.columns["prompt"][0]), response)


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


def _length_fits(table: RatingsTable, items: Items, better, worse, length_match: float) -> np.ndarray:
    """Pairs whose shorter/longer response length ratio is at least length_match."""
    names = table.columns["response"][1]
    length = np.fromiter((len(s) for s in names), dtype=np.int64, count=len(names))
    la, lb = length[items.response[better]], length[items.response[worse]]
    return np.minimum(la, lb) / np.maximum(np.maximum(la, lb), 1) >= length_match - 1e-12


def choose_pairs(table: RatingsTable, checks: RowChecks, items: Items, settings: Settings) -> Pairs:
    """Pairs of the --pairs strategy, ties (difference <= margin) and length mismatches removed;
    the rows of every live item left out get its reason. RatingsError when no pair is left."""
    live, score, margin = items.live, items.score, settings.margin
    order = live[np.lexsort((live, -score[live], items.group[live]))]  # by group, score descending, first seen
    better, worse = _candidate_pairs(order, items.group[order], settings.pairs)
    n_candidates = len(better)
    wide = score[better] - score[worse] > margin + EPS
    better, worse = better[wide], worse[wide]
    selected = np.zeros(checks.n_items, dtype=bool)
    selected[better] = selected[worse] = True
    n_length_removed = 0
    if settings.length_match is not None:
        fits = _length_fits(table, items, better, worse, settings.length_match)
        n_length_removed = int((~fits).sum())
        better, worse = better[fits], worse[fits]
    paired = np.zeros(checks.n_items, dtype=bool)
    paired[better] = paired[worse] = True
    group_size = _mark_outcomes(checks, items, selected, paired, margin)
    if len(better) == 0:
        raise RatingsError(f"{table.path}: no preference pairs ({reason_summary(checks.reason)})")
    return Pairs(better, worse, n_candidates, int(n_candidates - wide.sum()), n_length_removed, paired, group_size)


def _mark_outcomes(checks: RowChecks, items: Items, selected, paired, margin: float) -> np.ndarray:
    """What happened to each live item -> the bucket of its rows; the live items per group code."""
    live, score, group = items.live, items.score, items.group
    n_group_codes = int(group.max()) + 1
    group_size = np.bincount(group[live], minlength=n_group_codes)
    g_max, g_min = np.full(n_group_codes, -np.inf), np.full(n_group_codes, np.inf)
    np.maximum.at(g_max, group[live], score[live])
    np.minimum.at(g_min, group[live], score[live])
    with np.errstate(invalid="ignore"):
        comparable = (g_max[group] - score > margin + EPS) | (score - g_min[group] > margin + EPS)
    outcome = np.full(checks.n_items, -1, dtype=np.int8)
    outcome[~comparable] = REASONS.index("tie")
    outcome[comparable & selected] = REASONS.index("length mismatch")
    outcome[comparable & ~selected] = REASONS.index("not selected")
    outcome[group_size[group] < 2] = REASONS.index("alone in group")
    outcome[paired] = -1
    kept = checks.reason < 0
    checks.reason[kept] = outcome[checks.item_codes[kept]]
    return group_size


# --- split ---


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


def split_pairs(items: Items, pairs: Pairs, test_size: float, seed: int) -> Split:
    """Split by group (a group's pairs all go one way), pairs ordered by group first appearance, chosen rank."""
    pair_order = np.lexsort((np.arange(len(pairs.better)), items.group[pairs.better]))
    better, worse = pairs.better[pair_order], pairs.worse[pair_order]
    pair_group = items.group[better]
    groups_with_pairs = np.unique(pair_group)
    test_group = split_groups(len(groups_with_pairs), test_size, seed)
    pair_test = test_group[np.searchsorted(groups_with_pairs, pair_group)]
    return Split(better, worse, pair_group, groups_with_pairs, test_group, pair_test)
