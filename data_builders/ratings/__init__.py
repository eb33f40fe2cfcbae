"""Team ratings -> DPO preference pairs (TRL conversational format with images).

A team rates model outputs together and everyone's taste differs; this builder turns the raw
ratings into preference pairs a DPOTrainer can learn the *team's* taste from, and says how much
the team agreed before anyone trains on it. Every input row is accounted for: it is either used
or dropped with a named reason, and report.json / report.md list the counts with examples.

Input: a CSV, JSONL or Parquet file (by extension; CSV with commas — another delimiter is refused in
one line) with columns `image` (path relative to the ratings file's folder; an image outside it, '../'
or absolute, is refused unless --allow_outside_images), `prompt`, `rater`, `score` and optionally
`response`; or an Argilla v2 or
Label Studio export (detected from the file, or --format argilla|labelstudio), mapped to those
columns (imports.py; --image_field / --prompt_field / --response_field / --question).
- with `response` (response mode): a group is one (image, prompt), its items are the responses;
  a pair prefers the response the team scored higher.
- without it (image mode): a group is one prompt, its items are the images made for it; a pair
  is a judge example showing two images ("Which image better matches ...? first/second"), the
  better one put first in half of the pairs (or both orders with --both_orders).

Scores are z-scored per rater (unless --no_zscore), averaged per item, and pairs are taken
best-worst (one per group), all (every C(k,2) pair) or adjacent (k-1 consecutive by score);
pairs whose mean scores differ by no more than --margin are ties and never become pairs.
Agreement is Krippendorff's alpha (interval and ordinal) on the raw scores, with a rater table
(leave-one-out correlation with the others flags a rater who disagrees with everyone);
`team_agreement(items, raters, scores)` gives the same numbers to other code (the team-rating app).

Row buckets: a row is `used` when its item ends up in a pair; otherwise it is dropped for the
first reason that applies (REASONS: missing value, bad score, out of scale, missing image,
unreadable image, duplicate rater x item, too few raters, alone in group, tie, length mismatch,
not selected). --strict refuses the file on the first row with an input problem (the reasons up
to `too few raters`, or an unknown column) and names its line (or export record).

Usage:
    python -m data_builders.ratings --ratings team/ratings.csv --output artifacts/dpo-pairs \\
        [--scale 1-5|LO-HI|infer] [--no_zscore] [--min_raters 2] [--margin 0.0] \\
        [--pairs best-worst|all|adjacent] [--length_match 0.5] [--min_alpha 0.667] \\
        [--strict] [--test_size 0.1] [--seed 0] [--both_orders] [--overwrite] [--allow_outside_images] \\
        [--format auto|csv|jsonl|parquet|argilla|labelstudio] [--image_field image] \\
        [--prompt_field prompt] [--response_field response] [--question NAME]

    from data_builders.ratings import build_pairs, save_pairs
    dataset_dict, report = build_pairs("team/ratings.csv", pairs="all", margin=0.25)
    save_pairs(dataset_dict, report, "artifacts/dpo-pairs")

The output directory holds a DatasetDict (splits train/test, split by group; an empty split is
left out) loadable with datasets.load_from_disk, plus report.json, report.md and
margin_hist.png. Rows: images, prompt, chosen, rejected, group, chosen_score, rejected_score,
margin, n_raters. Bad input is one `error: ...` line on stderr and exit code 2, nothing written.

Modules, in the order a build runs: schema (vocabulary, settings), read (files -> RatingsTable),
imports (Argilla / Label Studio records -> rows), validate (row checks), locate (where a row is,
why it was dropped), agreement (alpha, z-scores, raters, team_agreement), scores (normalise and
measure), pairs (items -> pairs -> split), dataset (Arrow -> DatasetDict), report (report.json,
warnings), save (report.md, histogram, files), build (build_pairs), cli (main).
"""

from data_builders.ratings.agreement import agreement, interval_alpha, rater_table, team_agreement
from data_builders.ratings.build import build_pairs
from data_builders.ratings.cli import main
from data_builders.ratings.dataset import FEATURES, _group_id
from data_builders.ratings.imports import ImportFields
from data_builders.ratings.locate import _csv_record_lines, _nonblank_lines
from data_builders.ratings.pairs import split_groups
from data_builders.ratings.read import RatingsTable, read_ratings
from data_builders.ratings.save import render_report_md, save_pairs
from data_builders.ratings.schema import (
    INPUT_FORMATS,
    PAIR_STRATEGIES,
    REASON_HELP,
    REASONS,
    RatingsError,
    parse_scale,
)

__all__ = [
    "FEATURES",
    "INPUT_FORMATS",
    "PAIR_STRATEGIES",
    "REASONS",
    "REASON_HELP",
    "ImportFields",
    "RatingsError",
    "RatingsTable",
    "_csv_record_lines",
    "_group_id",
    "_nonblank_lines",
    "agreement",
    "build_pairs",
    "interval_alpha",
    "main",
    "parse_scale",
    "rater_table",
    "read_ratings",
    "render_report_md",
    "save_pairs",
    "split_groups",
    "team_agreement",
]
