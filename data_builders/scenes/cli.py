"""`python -m data_builders.scenes build|export|score`: the command line of the scenes builder."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from data_builders._common import non_negative_int, positive_int, refuse_nonempty
from data_builders.scenes.build import (
    KNOWN_QUESTION_TYPES,
    MIN_IMAGE_SIZE,
    QUESTION_TYPES,
    build_info,
    build_scenes,
    save_scenes,
)
from data_builders.scenes.export import export_images
from data_builders.scenes.score import format_scores, read_diffusers_captions, score_captions
from vlm_tune.core.cli_args import ArgParser
from vlm_tune.core.errors import UserError

# The model-scoring sub-command moved to the eval layer (data builders never load a model).
EVALUATE_MOVED = ("`python -m data_builders.scenes evaluate` moved: run `vlm-tune eval --config RECIPE.yaml "
                  "[--adapter DIR] [--split test] [--limit N] [--max_new_tokens 48] [--field value ...]` "
                  "(same predictions.jsonl, scores.json and tables)")

# --- arguments ---


def _image_size(text: str) -> int:
    value = int(text)
    if value < MIN_IMAGE_SIZE:
        raise argparse.ArgumentTypeError(f"must be >= {MIN_IMAGE_SIZE} px, got {value}")
    return value


def _add_build(sub) -> ArgParser:
    b = sub.add_parser("build", help="render a DatasetDict (train/val/test) of scenes")
    b.add_argument("--output", required=True, type=Path, help="directory to write")
    for split, default in (("train", 2000), ("val", 20), ("test", 200)):
        b.add_argument(f"--{split}", type=non_negative_int, default=default, help=f"{split} scenes (default %(default)s)")
    b.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default %(default)s)")
    b.add_argument("--image_size", type=_image_size, default=128, help="square image side in px (default %(default)s)")
    b.add_argument("--num_proc", type=positive_int, default=min(2, os.cpu_count() or 1),
                   help="render processes (default min(2, cpus) = %(default)s)")
    b.add_argument("--question_types", nargs="+", choices=KNOWN_QUESTION_TYPES, default=list(QUESTION_TYPES),
                   help="rows per scene (default: %(default)s; caption_phrasings: the caption in one of several "
                        "phrasings, see data_builders.scenes.phrasing)")
    b.add_argument("--overwrite", action="store_true", help="replace a non-empty --output")
    return b


def _parse_args(argv) -> argparse.Namespace:
    parser = ArgParser(prog="python -m data_builders.scenes",
                       description="Synthetic scenes for training and scoring an image captioner.")
    sub = parser.add_subparsers(parser_class=ArgParser, dest="command", required=True)
    b = _add_build(sub)

    e = sub.add_parser("export", help="write a split's images + truth.jsonl as a captioner test folder")
    e.add_argument("--dataset", required=True, type=Path, help="a saved scenes dataset")
    e.add_argument("--split", default="test")
    e.add_argument("--output", required=True, type=Path)
    e.add_argument("--overwrite", action="store_true", help="replace a non-empty --output")

    s = sub.add_parser("score", help="score DIR/images/metadata.jsonl against DIR/truth.jsonl")
    s.add_argument("--heldout", required=True, type=Path, help="a folder written by export")
    s.add_argument("--column", default="text", help="caption column of metadata.jsonl (default %(default)s)")
    s.add_argument("--json", type=Path, help="where to write the scores (default HELDOUT/scores.json)")

    sub.add_parser("evaluate", help="moved: use `vlm-tune eval --config RECIPE.yaml --adapter DIR`")

    args, extra = parser.parse_known_args(argv)
    if args.command == "evaluate":  # whatever its flags: point to the new command
        raise UserError(EVALUATE_MOVED)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "build" and args.train + args.val + args.test == 0:
        b.error("--train, --val and --test are all 0; ask for at least one scene")
    return args


# --- sub-commands ---


def _build_main(args) -> int:
    refuse_nonempty(args.output, args.overwrite)  # before rendering, so a refused run costs nothing
    dataset_dict = build_scenes(args.train, args.val, args.test, args.seed, args.image_size, args.num_proc,
                                args.question_types)
    info = build_info(args.train, args.val, args.test, args.seed, args.image_size, args.question_types)
    save_scenes(dataset_dict, args.output, overwrite=args.overwrite, info=info)
    sizes = ", ".join(f"{split} {len(ds)}" for split, ds in dataset_dict.items())
    print(f"wrote {args.output} (rows: {sizes})")
    return 0


def _export_main(args) -> int:
    refuse_nonempty(args.output, args.overwrite)
    export_images(args.dataset, args.split, args.output, overwrite=args.overwrite)
    n = len((args.output / "truth.jsonl").read_text(encoding="utf-8").splitlines())
    print(f"wrote {n} images to {args.output / 'images'} and {args.output / 'truth.jsonl'}")
    return 0


def _score_main(args) -> int:
    captions = read_diffusers_captions(args.heldout / "images", args.column)
    scores = score_captions(captions, args.heldout / "truth.jsonl")
    out = args.json or args.heldout / "scores.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(scores, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(format_scores(scores))
    if scores["missing"]:
        print(f"{len(scores['missing'])} image(s) have no caption (counted as saying nothing in 'combined')")
    if scores["unknown"]:
        print(f"{len(scores['unknown'])} caption row(s) name files not in truth.jsonl (ignored)")
    print(f"wrote {out}")
    return 0


COMMANDS = {"build": _build_main, "export": _export_main, "score": _score_main}


def main(argv=None) -> int:
    """Run one sub-command; bad input raises UserError (run_command turns it into one `error:` line)."""
    args = _parse_args(argv)
    return COMMANDS[args.command](args)
