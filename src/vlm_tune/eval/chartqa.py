"""`vlm-tune eval`: greedy answers on a held-out split, scored with ChartQA relaxed accuracy, or, on a
scenes split (a captioner's data, e.g. recipes/tiny/sft_captioner.yaml), with attribute recall /
precision (vlm_tune.eval.scenes).

    vlm-tune eval --config RECIPE.yaml [--adapter DIR] [--split test] [--limit N] [--output_dir DIR]
        [--batch_size 16] [--max_new_tokens N] [--force_base] [--any_recipe_field value ...]

ChartQA: writes `predictions.jsonl` (question, type, labels, prediction, correct) and `metrics.json`
(overall + per question type + n) to ADAPTER/eval-SPLIT (runs/eval-base-SPLIT). Scenes: writes
`predictions.jsonl` and `scores.json` to ADAPTER/captions-SPLIT (runs/scenes-base/captions-SPLIT).
With no adapter it scores the base model. Before the model loads: every row to score is checked (a
corrupt image is one line naming split and row), and an adapter's recorded base must be the recipe's
`model_name_or_path` (`core.fingerprint`; `--force_base` scores it on other weights anyway, with a warning).
"""

from __future__ import annotations

import sys
from pathlib import Path

from trl import SFTConfig

from vlm_tune.core.cli_args import ArgParser
from vlm_tune.core.config import parse_recipe
from vlm_tune.core.errors import UserError
from vlm_tune.core.io import check_output_path
from vlm_tune.core.modeling import load_for_inference
from vlm_tune.data.rows import check_rows, get_split, load_splits
from vlm_tune.data.scoring import evaluate_split, format_table, write_results
from vlm_tune.eval.scenes import evaluate_scenes, is_scenes_split

DEFAULT_MAX_NEW_TOKENS = 16  # ChartQA answers are a word or a number


# --- arguments -------------------------------------------------------------------------------
def _parse_args(argv: list[str]):
    """(eval's own flags, the rest: --config RECIPE.yaml and recipe overrides)."""
    parser = ArgParser(prog="vlm-tune eval", add_help=False)
    parser.add_argument("--adapter", help="LoRA adapter folder (a run's output_dir); none: the base model")
    parser.add_argument("--split", help="split to score (default: the recipe's dataset_test_split)")
    parser.add_argument("--limit", type=int, help="score only the first N rows")
    parser.add_argument("--output_dir", help="where to write (default: ADAPTER/eval-SPLIT or runs/eval-base-SPLIT; "
                                             "scenes: ADAPTER/captions-SPLIT or runs/scenes-base/captions-SPLIT)")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_new_tokens", type=int, help="default: 16 (ChartQA answers), 48 (scenes captions)")
    parser.add_argument("--force_base", action="store_true",
                        help="score the adapter on model_name_or_path even if it was trained on other weights")
    args, recipe_argv = parser.parse_known_args(argv)
    for flag in ("limit", "batch_size", "max_new_tokens"):  # 0 or less: nothing to score, or a crash later
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UserError(f"vlm-tune eval: --{flag} must be at least 1, not {value}")
    if args.output_dir:
        check_output_path(args.output_dir, "--output_dir", folder=True)
    if args.adapter and not Path(args.adapter).is_dir():
        raise UserError(f"vlm-tune eval: --adapter {args.adapter}: no such folder")
    return args, recipe_argv


# --- command ---------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args, recipe_argv = _parse_args(argv)
    script_args, training_args, model_args, _ = parse_recipe(recipe_argv, SFTConfig)

    split_name = args.split or script_args.dataset_test_split
    splits = load_splits(script_args.dataset_name, script_args.dataset_config)
    split = get_split(splits, split_name, script_args.dataset_name, args.limit)
    check_rows(split, f"{script_args.dataset_name} [{split_name}]")  # a bad row: one line now, not a traceback later
    model, processor = load_for_inference(model_args, training_args.trust_remote_code, script_args.image_longest_edge,
                                          script_args.do_image_splitting, args.adapter, force_base=args.force_base)
    if is_scenes_split(split):  # a captioner's data: attribute recall / precision, not relaxed accuracy
        train = splits.get(script_args.dataset_train_split)
        return evaluate_scenes(model, processor, split, train, adapter=args.adapter, split_name=split_name,
                               output_dir=args.output_dir, batch_size=args.batch_size,
                               max_new_tokens=args.max_new_tokens, system_prompt=script_args.system_prompt)

    output_dir = Path(args.output_dir or (Path(args.adapter) / f"eval-{split_name}" if args.adapter
                                          else Path("runs") / f"eval-base-{split_name}"))
    records, metrics = evaluate_split(model, processor, split, script_args.system_prompt, args.batch_size,
                                      args.max_new_tokens or DEFAULT_MAX_NEW_TOKENS)
    metrics = {"model": model_args.model_name_or_path, "adapter": args.adapter, "split": split_name, **metrics}
    write_results(output_dir, records, metrics)
    print(format_table({"tuned" if args.adapter else "base": metrics}))
    print(f"wrote {output_dir / 'predictions.jsonl'} and {output_dir / 'metrics.json'}")
    return metrics
