"""The command line of `python -m data_builders.ratings` (flags with underscores; the older dashed
spellings such as --min-raters keep working). main raises RatingsError; __main__ turns it into one
`error: ...` line and exit code 2 (an existing --output without --overwrite too: OutputExistsError)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from data_builders._common import non_negative_int, positive_int, refuse_nonempty
from data_builders.ratings.build import build_pairs
from data_builders.ratings.imports import ImportFields
from data_builders.ratings.report import decimals
from data_builders.ratings.save import save_pairs
from data_builders.ratings.schema import INPUT_FORMATS, PAIR_STRATEGIES
from vlm_tune.core.cli_args import ArgParser

# --- argument types ---


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def _ratio(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def _add_import_flags(parser: ArgParser) -> None:
    group = parser.add_argument_group("annotation-tool exports (Argilla v2, Label Studio; see docs/formats.md)")
    group.add_argument("--format", choices=INPUT_FORMATS, default="auto",
                       help="input format; auto: by extension, and for .json/.jsonl/.parquet by content "
                            "(default %(default)s)")
    group.add_argument("--image_field", default="image", help="export field holding the image (default %(default)s)")
    group.add_argument("--prompt_field", default="prompt", help="export field holding the prompt (default %(default)s)")
    group.add_argument("--response_field", default="response",
                       help="export field holding the rated response; absent from every record: image mode "
                            "(default %(default)s)")
    group.add_argument("--question", default=None,
                       help="the rating question (Argilla) or Rating control name (Label Studio); "
                            "default: the only one with numeric answers")


def parse_args(argv) -> object:
    parser = ArgParser(
        prog="python -m data_builders.ratings",
        description="Turn a team's ratings (CSV/JSONL/Parquet, or an Argilla / Label Studio export) into DPO "
                    "preference pairs with an agreement report.",
    )
    parser.add_argument("--ratings", required=True, type=Path,
                        help="ratings file (.csv, .jsonl, .parquet, or an export .json)")
    parser.add_argument("--output", required=True, type=Path, help="directory to write")
    parser.add_argument("--scale", default="1-5", help="rating scale LO-HI, or 'infer' (default %(default)s)")
    parser.add_argument("--no_zscore", dest="zscore", action="store_false",
                        help="average raw scores instead of per-rater z-scores")
    parser.add_argument("--min_raters", type=positive_int, default=2,
                        help="drop items rated by fewer raters (default %(default)s)")
    parser.add_argument("--margin", type=_non_negative_float, default=0.0,
                        help="minimum chosen - rejected mean score; smaller is a tie (default %(default)s)")
    parser.add_argument("--pairs", choices=PAIR_STRATEGIES, default="best-worst",
                        help="pairs per group (default %(default)s)")
    parser.add_argument("--length_match", type=_ratio, default=None,
                        help="keep pairs whose shorter/longer response length ratio is at least this")
    parser.add_argument("--min_alpha", type=float, default=None,
                        help="refuse if Krippendorff's alpha (interval) is below this")
    parser.add_argument("--strict", action="store_true", help="any bad row or unknown column is an error")
    parser.add_argument("--test_size", type=_fraction, default=0.1,
                        help="fraction of groups in test (default %(default)s)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="split/order seed (default %(default)s)")
    parser.add_argument("--both_orders", action="store_true", help="image mode: emit every pair in both orders")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output")
    parser.add_argument("--allow_outside_images", action="store_true",
                        help="read images outside the ratings file's folder ('../', absolute paths); refused otherwise")
    _add_import_flags(parser)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    refuse_nonempty(args.output, args.overwrite)  # before reading, so a refused run costs nothing
    dataset_dict, report = build_pairs(
        args.ratings,
        scale=args.scale,
        zscore=args.zscore,
        min_raters=args.min_raters,
        margin=args.margin,
        pairs=args.pairs,
        length_match=args.length_match,
        min_alpha=args.min_alpha,
        strict=args.strict,
        test_size=args.test_size,
        seed=args.seed,
        both_orders=args.both_orders,
        input_format=args.format,
        fields=ImportFields(args.image_field, args.prompt_field, args.response_field, args.question),
        allow_outside_images=args.allow_outside_images,
    )
    save_pairs(dataset_dict, report, args.output, overwrite=args.overwrite)
    a = report["agreement"]
    print(
        f"wrote {args.output} (train {report['pairs']['train']}, test {report['pairs']['test']} pairs; "
        f"{report['rows_used']}/{report['rows_read']} rows used; alpha interval {decimals(a['alpha_interval'])}, "
        f"ordinal {decimals(a['alpha_ordinal'])}; see {args.output / 'report.md'})"
    )
    return 0
