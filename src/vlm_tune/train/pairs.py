"""DPO's preference pairs: built from the team's ratings on first use, then loaded and checked.

The pairs dataset (`dataset_name`) is a `datasets.DatasetDict` on disk with `images`, `prompt`,
`chosen`, `rejected` columns; `ratings_file` (with `sample_ratings` to generate a sample set) is where
it comes from when it does not exist yet. `args` is the job's `DpoScriptArguments`.
"""

from __future__ import annotations

import os
from pathlib import Path

from vlm_tune.core.errors import UserError

PREFERENCE_COLUMNS = ("images", "prompt", "chosen", "rejected")


# --- build -----------------------------------------------------------------------------------
def ensure_pairs(args) -> None:
    """The embedded default generates sample ratings and builds pairs on first use."""
    if not args.ratings_file or os.path.exists(args.dataset_name):
        return
    from data_builders.ratings import RatingsError, build_pairs, save_pairs

    if args.sample_ratings and not os.path.exists(args.ratings_file):
        from data_builders.sample_ratings import make_sample_ratings

        print(f"Generating the sample team ratings at {args.ratings_file} (first use)")
        made = make_sample_ratings(Path(args.ratings_file).parent, seed=args.synthetic_seed, n_charts=args.sample_charts)
        if Path(made) != Path(args.ratings_file):
            raise UserError(f"sample ratings were written to {made}, but ratings_file is {args.ratings_file}")
    print(f"Building preference pairs from {args.ratings_file} into {args.dataset_name}")
    try:
        pairs, report = build_pairs(args.ratings_file, zscore=args.zscore, min_raters=args.min_raters,
                                    margin=args.rating_margin, pairs=args.pairs, seed=args.synthetic_seed)
    except RatingsError as exc:
        raise UserError(str(exc)) from None
    save_pairs(pairs, report, args.dataset_name)


# --- load ------------------------------------------------------------------------------------
def load_pairs(args):
    """(train, test or None) with only the preference columns, capped at max_train/eval_samples."""
    import datasets

    path = Path(args.dataset_name)
    if not (path / "dataset_dict.json").is_file():
        raise UserError(f"no preference dataset at {args.dataset_name} (build it: python -m data_builders.ratings)")
    splits = datasets.load_from_disk(str(path))
    for split in splits.values():
        missing = [c for c in PREFERENCE_COLUMNS if c not in split.column_names]
        if missing:
            raise UserError(f"{args.dataset_name} lacks column(s) {', '.join(missing)} (needs {', '.join(PREFERENCE_COLUMNS)})")
    train = splits[args.dataset_train_split]
    test = splits[args.dataset_test_split] if args.dataset_test_split in splits else None
    if args.max_train_samples:
        train = train.select(range(min(args.max_train_samples, len(train))))
    if test is not None and args.max_eval_samples:
        test = test.select(range(min(args.max_eval_samples, len(test))))
    keep = list(PREFERENCE_COLUMNS)
    return train.select_columns(keep), (test.select_columns(keep) if test is not None else None)
