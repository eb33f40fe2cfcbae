"""`vlm-tune eval`: greedy answers on a held-out split, scored with ChartQA relaxed accuracy.

    vlm-tune eval --config RECIPE.yaml [--adapter DIR] [--split test] [--limit N] [--output_dir DIR]

Writes `predictions.jsonl` (question, type, labels, prediction, correct) and `metrics.json`
(overall + per question type + n). With no adapter it scores the base model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trl import SFTConfig

from vlm_tune.data.rows import get_split, load_splits
from vlm_tune.data.scoring import evaluate_split, format_table, write_results
from vlm_tune.core.modeling import load_for_inference
from vlm_tune.core.config import parse_recipe


# --- command ---------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="vlm-tune eval", add_help=False)
    parser.add_argument("--adapter", help="LoRA adapter folder (a run's output_dir); none: the base model")
    parser.add_argument("--split", help="split to score (default: the recipe's dataset_test_split)")
    parser.add_argument("--limit", type=int, help="score only the first N rows")
    parser.add_argument("--output_dir", help="where to write (default: ADAPTER/eval-SPLIT or runs/eval-base-SPLIT)")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_new_tokens", type=int, default=16)
    args, recipe_argv = parser.parse_known_args(argv)
    script_args, training_args, model_args, _ = parse_recipe(recipe_argv, SFTConfig)

    split_name = args.split or script_args.dataset_test_split
    splits = load_splits(script_args.dataset_name, script_args.dataset_config)
    split = get_split(splits, split_name, script_args.dataset_name, args.limit)
    model, processor = load_for_inference(model_args, training_args.trust_remote_code, script_args.image_longest_edge,
                                          script_args.do_image_splitting, args.adapter)
    output_dir = Path(args.output_dir or (Path(args.adapter) / f"eval-{split_name}" if args.adapter
                                          else Path("runs") / f"eval-base-{split_name}"))
    records, metrics = evaluate_split(model, processor, split, script_args.system_prompt, args.batch_size,
                                      args.max_new_tokens)
    metrics = {"model": model_args.model_name_or_path, "adapter": args.adapter, "split": split_name, **metrics}
    write_results(output_dir, records, metrics)
    print(format_table({"tuned" if args.adapter else "base": metrics}))
    print(f"wrote {output_dir / 'predictions.jsonl'} and {output_dir / 'metrics.json'}")
    return metrics
