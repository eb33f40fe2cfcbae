"""`python -m data_builders.chartqa --output DIR ...`: the command line of the ChartQA builder."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from data_builders._common import non_negative_int, positive_int, refuse_nonempty
from data_builders.chartqa.build import build_chartqa, build_info, save_chartqa
from data_builders.chartqa.chart import QUESTION_TYPES
from vlm_tune.core.cli_args import ArgParser

MIN_IMAGE_SIZE = 64  # px; below it the letters and printed values are unreadable

# --- arguments ---


def _image_size(text: str) -> int:
    value = int(text)
    if value < MIN_IMAGE_SIZE:
        raise argparse.ArgumentTypeError(f"must be >= {MIN_IMAGE_SIZE} px for readable text, got {value}")
    return value


def _question_types(text: str) -> tuple[str, ...]:
    types = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = [t for t in types if t not in QUESTION_TYPES]
    if unknown or not types:
        raise argparse.ArgumentTypeError(f"unknown question type(s) {unknown}; choose from {','.join(QUESTION_TYPES)}")
    return types


def _parse_args(argv) -> argparse.Namespace:
    parser = ArgParser(
        prog="python -m data_builders.chartqa",
        description="Build a synthetic ChartQA-like DatasetDict (train/val/test) on disk.",
    )
    parser.add_argument("--output", required=True, type=Path, help="directory to write")
    for split, default in (("train", 600), ("val", 100), ("test", 200)):
        parser.add_argument(f"--{split}", type=non_negative_int, default=default,
                            help=f"{split} rows (default %(default)s)")
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="random seed (default %(default)s)")
    parser.add_argument("--num_proc", type=positive_int, default=min(2, os.cpu_count() or 1),
                        help="render processes (default min(2, cpus) = %(default)s)")
    parser.add_argument("--image_size", type=_image_size, default=160,
                        help="square image side in px (default %(default)s)")
    parser.add_argument("--types", type=_question_types, default=QUESTION_TYPES,
                        help=f"comma-separated question types (default: all of {','.join(QUESTION_TYPES)})")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output")
    args = parser.parse_args(argv)
    if args.train + args.val + args.test == 0:
        parser.error("--train, --val and --test are all 0; ask for at least one row")
    return args


# --- command ---


def main(argv=None) -> int:
    """Build and save; bad input raises UserError (run_command turns it into one `error:` line)."""
    args = _parse_args(argv)
    refuse_nonempty(args.output, args.overwrite)  # before rendering, so a refused run costs nothing
    dataset_dict = build_chartqa(
        args.train, args.val, args.test, args.seed, args.image_size, args.num_proc, args.types
    )
    info = build_info(args.train, args.val, args.test, args.seed, args.image_size, args.types)
    save_chartqa(dataset_dict, args.output, overwrite=args.overwrite, info=info)
    sizes = ", ".join(f"{split} {len(ds)}" for split, ds in dataset_dict.items())
    print(f"wrote {args.output} ({sizes})")
    return 0
