"""DPO's preference pairs: built from the team's ratings on first use, then loaded and checked.

The pairs dataset (`dataset_name`) is a `datasets.DatasetDict` on disk with `images`, `prompt`,
`chosen`, `rejected` columns; `ratings_file` (with `sample_ratings` to generate a sample set) is where
it comes from when it does not exist yet. `args` is the job's `DpoScriptArguments`. Every pair a run
uses is checked before the model loads (images decode, conversations hold text).
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
        hint = (f" (here: build the pairs first, python -m data_builders.ratings --ratings {args.ratings_file} "
                f"--output {args.dataset_name} --allow_outside_images)") if "--allow_outside_images" in str(exc) else ""
        raise UserError(str(exc) + hint) from None
    save_pairs(pairs, report, args.dataset_name)


# --- load ------------------------------------------------------------------------------------
def load_pairs(args):
    """(train, test or None) with only the preference columns, capped at max_train/eval_samples; every
    pair checked before the model loads (a bad one is one line naming split and row)."""
    import datasets

    path = Path(args.dataset_name)
    if not (path / "dataset_dict.json").is_file():
        raise UserError(f"no preference dataset at {args.dataset_name} (build it: python -m data_builders.ratings)")
    splits = datasets.load_from_disk(str(path))
    for split in splits.values():
        missing = [c for c in PREFERENCE_COLUMNS if c not in split.column_names]
        if missing:
            raise UserError(f"{args.dataset_name} lacks column(s) {', '.join(missing)} (needs {', '.join(PREFERENCE_COLUMNS)})")
    if args.dataset_train_split not in splits:
        raise UserError(f"{args.dataset_name} has no split '{args.dataset_train_split}' (it has: {', '.join(splits)})")
    train = splits[args.dataset_train_split]
    test = splits[args.dataset_test_split] if args.dataset_test_split in splits else None
    if args.max_train_samples:
        train = train.select(range(min(args.max_train_samples, len(train))))
    if test is not None and args.max_eval_samples:
        test = test.select(range(min(args.max_eval_samples, len(test))))
    keep = list(PREFERENCE_COLUMNS)
    train, test = train.select_columns(keep), (test.select_columns(keep) if test is not None else None)
    if len(train) == 0:
        raise UserError(f"{args.dataset_name} [{args.dataset_train_split}] is empty: no pairs to train on")
    for name, split in ((args.dataset_train_split, train), (args.dataset_test_split, test)):
        if split is not None:
            check_pair_rows(split, f"{args.dataset_name} [{name}]")
    return train, test


# --- row checks ------------------------------------------------------------------------------
def _conversation_problem(value, needs_text: bool) -> str | None:
    """Why a prompt/chosen/rejected cell is not a conversation TRL can use (None: it is)."""
    if not isinstance(value, list) or not value:
        return f"expected a non-empty list of messages, got {type(value).__name__}"
    texts = []
    for message in value:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            return "a message without a role"
        content = message.get("content")
        parts = content if isinstance(content, list) else [content]
        texts += [p if isinstance(p, str) else (p or {}).get("text") for p in parts if isinstance(p, (str, dict))]
    if needs_text and not any(isinstance(t, str) and t.strip() for t in texts):
        return "no text"
    return None


def check_pair_rows(split, where: str) -> None:
    """Every pair: at least one image, each decodable; prompt, chosen and rejected conversations with text.
    The first bad row is a UserError naming `where` and the row — before the model loads, not mid-training."""
    import datasets

    from vlm_tune.data.rows import verify_image  # the cheap check sft's rows get (PNG CRCs, JPEG draft)

    feature = split.features["images"]
    if not isinstance(getattr(feature, "feature", None), datasets.Image):
        raise UserError(f"{where}: column 'images' holds {feature}, expected a list of images")
    # Arrow batches: images stay stored {bytes, path} cells (a cast to decode=False would write a cache
    # file into the dataset's folder)
    rows = (row for batch in split.with_format("arrow").iter(batch_size=256) for row in batch.to_pylist())
    for index, row in enumerate(rows):
        for column in ("prompt", "chosen", "rejected"):
            problem = _conversation_problem(row[column], needs_text=column != "prompt")
            if problem:
                raise UserError(f"{where} row {index}: {column}: {problem}")
        if not row["images"]:
            raise UserError(f"{where} row {index}: no image")
        for number, image in enumerate(row["images"]):
            try:
                verify_image(image)
            except Exception as exc:  # PIL raises many types for broken files (OSError, SyntaxError, ValueError, …)
                raise UserError(f"{where} row {index}: image {number + 1} is unreadable ({type(exc).__name__}: "
                                f"{' '.join(str(exc).split())[:120]})") from None
