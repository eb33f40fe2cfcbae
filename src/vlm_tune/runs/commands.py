"""The command table: every `vlm-tune` sub-command, the module whose `main(argv)` runs it, and its usage.

`vlm-tune --help`, the CLI's dispatch and `vlm-tune sweep` (which runs jobs through it) all read this one
table; tests check it against the README's command list. Modules are named as strings so `vlm-tune
--help` imports nothing heavy; the import-rule test reads these strings as imports of this layer.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    module: str  # its `main(argv)` runs the command; returns an exit code (int) or a result (success)
    usage: str  # arguments, as shown by `vlm-tune --help`
    summary: str


COMMANDS: dict[str, Command] = {
    "sft": Command("vlm_tune.train.sft", "--config RECIPE.yaml [--field value ...]",
                   "supervised fine-tuning (QLoRA) with TRL's SFTTrainer"),
    "dpo": Command("vlm_tune.train.dpo", "--config RECIPE.yaml [--field value ...]",
                   "DPO on team preference pairs with TRL's DPOTrainer"),
    "eval": Command("vlm_tune.eval.chartqa", "--config RECIPE.yaml [--adapter DIR] [--split test] [--limit N] [--output_dir DIR]",
                    "ChartQA relaxed accuracy (or captioner attribute recall) of base or tuned model"),
    "caption": Command("vlm_tune.caption.captioner",
                       "IMAGES_DIR --adapter DIR|--model M [--format kohya|diffusers|both] [--mode caption|tags|dual] [--trigger W]",
                       "caption a diffusion-LoRA image folder (kohya sidecars / metadata.jsonl)"),
    "caption-lint": Command("vlm_tune.caption.lint", "DIR [--caption_extension .txt] [--trigger W]",
                            "QA of an existing caption set (loops, empties, duplicates, kohya pitfalls)"),
    "candidates": Command("vlm_tune.caption.candidates",
                          "IMAGES_DIR --adapter DIR|--model M --tasks_output TASKS.jsonl [--samples K] [--temperature T]",
                          "distinct captions per image as a rating task file (for vlm-tune rate serve)"),
    "report": Command("vlm_tune.report.run_report", "RUN_DIR...",
                      "report.html + report.md of a run (curves, eval, validation samples)"),
    "sweep": Command("vlm_tune.runs.sweep", "--config RECIPE.yaml --grid KEY=V1,V2 ... [--seeds 0,1] [--sweep_dir DIR] [--field value ...]",
                     "train a grid of overrides into one folder (resumable), then compare"),
    "compare": Command("vlm_tune.runs.compare", "RUN_DIR... [--output_dir DIR]",
                       "config differences, metrics, overlaid curves, samples side by side"),
    "plan": Command("vlm_tune.plan.command", "--config RECIPE.yaml [--samples 64] [--json PATH] [--model_config CONFIG] [--measure]",
                    "tokens per sample, parameters and memory of a recipe, before launch"),
    "export": Command("vlm_tune.export.command",
                      "--adapter RUN --output DIR [--base PATH] [--dtype bfloat16|float32] [--overwrite] [--rows N]",
                      "merge a LoRA adapter into its base: a plain HF model folder, verified"),
    "rate": Command("vlm_tune.rate.command", "serve TASKS.jsonl --db DB [--host H --port P --password PW] | export --db DB --output CSV | report --db DB",
                    "team rating in the browser; export the ratings CSV; rank configs by the team's scores"),
    "make-tiny-model": Command("vlm_tune.core.tiny_model", "--output DIR [--arch idefics3|smolvlm2] [--seed N]",
                               "build the tiny SmolVLM-architecture model (offline)"),
}
JOBS = ("sft", "dpo")  # the commands that train a run folder (what `vlm-tune sweep` can launch)


def usage() -> str:
    lines = ["usage: vlm-tune COMMAND [options]", "", "commands:"]
    for name, command in COMMANDS.items():
        head = f"  {name} {command.usage}"
        lines += [f"{head:49}{command.summary}"] if len(head) < 48 else [head, f"{'':49}{command.summary}"]
    lines += ["", "Run `vlm-tune COMMAND --help` for a command's options."]
    return "\n".join(lines)


def entry_point(name: str):
    """The `main(argv)` of a command (imports its module)."""
    return importlib.import_module(COMMANDS[name].module).main


def run(name: str, argv: list[str]) -> int:
    """Run a command; its result becomes an exit code (a job's summary dict means success)."""
    result = entry_point(name)(argv)
    return result if isinstance(result, int) else 0
