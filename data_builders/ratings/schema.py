"""The ratings builder's vocabulary: its error, the input columns and formats, the settings, the row
drop reasons and the agreement thresholds. No heavy imports: every other module of the package reads it."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from vlm_tune.core.errors import UserError


class RatingsError(UserError):
    """Bad ratings input or settings; the message is one line naming the file (and row or record)."""


# --- input ---

REQUIRED_COLUMNS = ("image", "prompt", "rater", "score")
OPTIONAL_COLUMNS = ("response",)
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
IMPORT_FORMATS = ("argilla", "labelstudio")  # annotation-tool exports, mapped to the columns above
INPUT_FORMATS = ("auto", "csv", "jsonl", "parquet", *IMPORT_FORMATS)
PAIR_STRATEGIES = ("best-worst", "all", "adjacent")

# --- row buckets ---

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
# Reasons that belong to an item (all its rows share them): examples show distinct items.
ITEM_REASONS = ("too few raters", "alone in group", "tie", "length mismatch", "not selected")
EXAMPLES_PER_REASON = 5

# --- agreement ---

ALPHA_RELIABLE = 0.667  # Krippendorff's lowest acceptable alpha for tentative conclusions
LOW_CORRELATION = 0.2  # a rater below this leave-one-out correlation disagrees with everyone
EPS = 1e-9  # float slack when comparing mean scores: equal means must never look different
LIBRARY_ALPHA_CELLS = 20_000_000  # units x values^2 the krippendorff package may materialise

IMAGE_MODE_QUESTION = "Which image better matches: \"{prompt}\"? Answer 'first' or 'second'."


# --- settings ---


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


@dataclass
class Settings:
    """How build_pairs turns ratings into pairs (the command's flags)."""

    scale: object = "1-5"
    zscore: bool = True
    min_raters: int = 2
    margin: float = 0.0
    pairs: str = "best-worst"
    length_match: float | None = None
    min_alpha: float | None = None
    strict: bool = False
    test_size: float = 0.1
    seed: int = 0
    both_orders: bool = False

    def check(self) -> tuple[float, float] | None:
        """RatingsError for a setting out of range; the scale's (lo, hi), or None to infer it."""
        bounds = parse_scale(self.scale)
        if self.pairs not in PAIR_STRATEGIES:
            raise RatingsError(f"bad pairs strategy {self.pairs!r}: choose {', '.join(PAIR_STRATEGIES)}")
        if self.min_raters < 1:
            raise RatingsError(f"min_raters must be >= 1, got {self.min_raters}")
        if not (self.margin >= 0 and math.isfinite(self.margin)):
            raise RatingsError(f"margin must be a finite number >= 0, got {self.margin}")
        if self.length_match is not None and not 0 < self.length_match <= 1:
            raise RatingsError(f"length_match must be in (0, 1], got {self.length_match}")
        if not 0 <= self.test_size < 1:
            raise RatingsError(f"test_size must be in [0, 1), got {self.test_size}")
        if self.seed < 0:
            raise RatingsError(f"seed must be >= 0, got {self.seed}")
        return bounds
