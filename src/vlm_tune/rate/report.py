"""`vlm-tune rate report`: which group (checkpoint, config) the team likes best, by their eyes, with numbers.

Image mode: every score is z-scored per rater (a harsh and a lenient rater count the same), each image
gets the mean z over its raters, and each group the mean over its images with a 95 % Student-t interval
(images are the sampled unit). Groups are ranked by that mean. Also: Krippendorff's alpha (raw and
z-scored, the ratings builder's code), the per-rater table, and each group's best and worst images.
Response mode gets the agreement and rater parts (there are no groups of images to rank).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from vlm_tune.rate.progress import agreement
from vlm_tune.rate.store import Rating, RatingsStore
from vlm_tune.rate.tasks import TaskItem

NO_GROUP = "(no group)"
STRIP = 3  # best and worst images shown per group
# Two-sided 95 % Student-t quantiles by degrees of freedom; between listed values the smaller df's
# (larger, conservative) quantile is used; 1.96 beyond 120.
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
         20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048,
         29: 2.045, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}


def t_quantile(df: int) -> float:
    if df > 120:
        return 1.96
    return T_975[max(k for k in T_975 if k <= df)]


@dataclass
class ImageScore:
    item: TaskItem
    mean_z: float
    mean_raw: float
    n_raters: int


@dataclass
class GroupRank:
    group: str
    images: list[ImageScore] = field(default_factory=list)
    mean_z: float = 0.0
    low: float | None = None  # 95 % interval of mean_z; None with one image
    high: float | None = None
    mean_raw: float = 0.0
    n_ratings: int = 0

    def best(self) -> list[ImageScore]:
        return self.images[: min(STRIP, math.ceil(len(self.images) / 2))]

    def worst(self) -> list[ImageScore]:
        shown = len(self.best())
        return self.images[max(shown, len(self.images) - STRIP):]


def z_scores(ratings: list[Rating]) -> list[float]:
    """Each score as (score - rater mean) / rater sd (population sd, as the ratings builder); 0 for a rater
    who gave every item the same score."""
    by_rater: dict[str, list[int]] = {}
    for rating in ratings:
        by_rater.setdefault(rating.rater, []).append(rating.score)
    stats = {}
    for rater, scores in by_rater.items():
        mean = sum(scores) / len(scores)
        sd = math.sqrt(sum((s - mean) ** 2 for s in scores) / len(scores))
        stats[rater] = (mean, sd)
    return [0.0 if stats[r.rater][1] < 1e-12 else (r.score - stats[r.rater][0]) / stats[r.rater][1] for r in ratings]


def _mean_interval(values: list[float]) -> tuple[float, float | None, float | None]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None, None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def rank_groups(items: list[TaskItem], ratings: list[Rating]) -> list[GroupRank]:
    """Groups by mean image z-score, best first; each group's images best first."""
    by_id = {item.item_id: item for item in items}
    per_image: dict[str, list[tuple[float, int]]] = {}
    for rating, z in zip(ratings, z_scores(ratings)):
        if rating.item_id in by_id:
            per_image.setdefault(rating.item_id, []).append((z, rating.score))
    groups: dict[str, GroupRank] = {}
    for item_id, pairs in per_image.items():
        item = by_id[item_id]
        score = ImageScore(item, sum(z for z, _ in pairs) / len(pairs), sum(s for _, s in pairs) / len(pairs), len(pairs))
        rank = groups.setdefault(item.group or NO_GROUP, GroupRank(item.group or NO_GROUP))
        rank.images.append(score)
        rank.n_ratings += len(pairs)
    for rank in groups.values():
        rank.images.sort(key=lambda s: (-s.mean_z, s.item.line))
        rank.mean_z, rank.low, rank.high = _mean_interval([s.mean_z for s in rank.images])
        rank.mean_raw = sum(s.mean_raw for s in rank.images) / len(rank.images)
    return sorted(groups.values(), key=lambda g: (-g.mean_z, g.group))


def build_report(store: RatingsStore) -> dict:
    """Everything the report shows, as data (rendered by report_render)."""
    items = store.items()
    ratings = store.ratings()
    mode = store.meta("mode") or "response"
    return {
        "mode": mode,
        "database": str(store.path),
        "items": len(items),
        "items_rated": len({r.item_id for r in ratings}),
        "removed_items": len(store.items(removed=True)),
        "ratings": len(ratings),
        "agreement": agreement(ratings),
        "groups": rank_groups(items, ratings) if mode == "image" else [],
    }
