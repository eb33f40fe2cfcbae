"""The `vlm-tune` command: one sub-command per job; user errors become one line and exit code 2."""

from __future__ import annotations

import os
import sys
import warnings

USAGE = """usage: vlm-tune COMMAND [options]

commands:
  sft --config RECIPE.yaml [--field value ...]   supervised fine-tuning (QLoRA) with TRL's SFTTrainer
  dpo --config RECIPE.yaml [--field value ...]   DPO on team preference pairs with TRL's DPOTrainer
  eval --config RECIPE.yaml [--adapter DIR] [--split test] [--limit N] [--output_dir DIR]
                                                 ChartQA relaxed accuracy of base or tuned model
  caption IMAGES_DIR --adapter DIR|--model M [--format kohya|diffusers|both] [--mode caption|tags|dual] [--trigger W]
                                                 caption a diffusion-LoRA image folder (kohya sidecars / metadata.jsonl)
  caption-lint DIR [--caption-extension .txt] [--trigger W]
                                                 QA of an existing caption set (loops, empties, duplicates, kohya pitfalls)
  report RUN_DIR...                              report.html + report.md of a run (curves, eval, validation samples)
  sweep --config RECIPE.yaml --grid KEY=V1,V2 ... [--seeds 0,1] [--sweep_dir DIR] [--field value ...]
                                                 train a grid of overrides into one folder (resumable), then compare
  compare RUN_DIR... [--output_dir DIR]          config differences, metrics, overlaid curves, samples side by side
  plan --config RECIPE.yaml [--samples 64] [--json PATH] [--model_config CONFIG] [--measure]
                                                 tokens per sample, parameters and memory of a recipe, before launch
  make-tiny-model --output DIR [--seed N]        build the tiny SmolVLM-architecture model (offline)

Run `vlm-tune COMMAND --help` for a command's options."""


def _run(command: str, argv: list[str]) -> int:
    if command == "sft":
        from vlm_tune import sft

        sft.main(argv)
        return 0
    if command == "dpo":
        from vlm_tune import dpo

        dpo.main(argv)
        return 0
    if command == "eval":
        from vlm_tune import evaluation

        evaluation.main(argv)
        return 0
    if command == "caption":
        from vlm_tune import caption

        return caption.main(argv)
    if command == "caption-lint":
        from vlm_tune import caption_qa

        return caption_qa.main(argv)
    if command in ("report", "sweep", "compare"):
        import importlib

        return importlib.import_module(f"vlm_tune.{command}").main(argv)
    if command == "plan":
        from vlm_tune import plan

        return plan.main(argv)
    if command == "make-tiny-model":
        from vlm_tune import tiny_model

        return tiny_model.main(argv)
    print(f"error: unknown command '{command}' (see vlm-tune --help)", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # TRL sets transformers' deprecated `gradient_checkpointing*` names itself; the warning is noise for users.
    warnings.filterwarnings("ignore", message=".*gradient_checkpointing.* is deprecated", category=FutureWarning)
    from vlm_tune.errors import UserError

    try:
        return _run(argv[0], argv[1:])
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
