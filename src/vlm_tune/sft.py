"""`vlm-tune sft`: recipe → (tiny model / synthetic data on first use) → load → format → train → save.

    vlm-tune sft --config recipes/tiny/sft_chartqa.yaml [--any_field value ...]
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import shlex
import sys
import time
from pathlib import Path

import torch
from trl import SFTConfig, SFTTrainer

from vlm_tune.data import format_chartqa, get_split, load_splits
from vlm_tune.errors import UserError
from vlm_tune.modeling import (
    build_lora_config,
    check_machine,
    count_parameters,
    keep_adapters_fp32,
    load_model,
    load_processor,
)
from vlm_tune.recipes import SYNTHETIC_BUILDERS, parse_recipe, write_resolved_recipe


# --- embedded default assets -----------------------------------------------------------------
def ensure_assets(script_args, model_args) -> None:
    """The tiny recipe builds its model and data on first use, so `make sft` needs no hub."""
    if script_args.build_tiny_model and not os.path.isdir(model_args.model_name_or_path):
        from vlm_tune.tiny_model import make_tiny_model

        print(f"Building the tiny SmolVLM-architecture model at {model_args.model_name_or_path} (first use)")
        make_tiny_model(model_args.model_name_or_path, seed=script_args.tiny_model_seed)
    if script_args.synthetic_dataset:
        # Each synthetic builder module exposes QUESTION_TYPES, build_info, read_build_info, build and save.
        builder = importlib.import_module(SYNTHETIC_BUILDERS[script_args.synthetic_builder])
        n_train, n_val, n_test = script_args.synthetic_sizes
        wanted = builder.build_info(n_train, n_val, n_test, script_args.synthetic_seed, script_args.synthetic_image_size,
                                    script_args.synthetic_types or builder.QUESTION_TYPES)
        if os.path.exists(script_args.dataset_name):
            found = builder.read_build_info(script_args.dataset_name)
            if found != wanted:  # never train on stale data, never delete a folder we may not own
                seen = f"built with {json.dumps(found)}" if found else "it has no synthetic_build.json"
                raise UserError(
                    f"{script_args.dataset_name} exists but was not built with this recipe's synthetic_* settings "
                    f"({seen}); delete it to rebuild, or point dataset_name elsewhere"
                )
            return
        print(f"Building synthetic {script_args.synthetic_builder} ({n_train}/{n_val}/{n_test}) at "
              f"{script_args.dataset_name} (first use)")
        splits = builder.build(
            n_train, n_val, n_test, seed=script_args.synthetic_seed, image_size=script_args.synthetic_image_size,
            num_proc=min(2, os.cpu_count() or 1), question_types=wanted["question_types"],
        )
        builder.save(splits, script_args.dataset_name, info=wanted)


# --- held-out evaluation ---------------------------------------------------------------------
def evaluate_after_training(trainer, processor, splits, script_args, out: Path) -> dict:
    """Base (adapters off), text-only prior and tuned model on the test split, one table."""
    from vlm_tune.evaluation import evaluate_prior, evaluate_split, format_table, text_only_prior, write_results

    test = get_split(splits, script_args.dataset_test_split, script_args.dataset_name, script_args.max_eval_samples)
    train = get_split(splits, script_args.dataset_train_split, script_args.dataset_name, script_args.max_train_samples)
    model = trainer.model
    results = {}
    with model.disable_adapter():
        records, results["base"] = evaluate_split(model, processor, test, script_args.system_prompt, desc="Eval base")
    write_results(out / "eval" / "base", records, results["base"])
    records, results["text-only prior"] = evaluate_prior(text_only_prior(train), test)
    write_results(out / "eval" / "prior", records, results["text-only prior"])
    records, results["tuned"] = evaluate_split(model, processor, test, script_args.system_prompt, desc="Eval tuned")
    write_results(out / "eval" / "tuned", records, results["tuned"])
    table = format_table(results)
    (out / "eval" / "table.md").write_text(table + "\n", encoding="utf-8")
    print("\nHeld-out " + script_args.dataset_test_split + " split\n" + table)
    return {name: metrics["relaxed_accuracy"] for name, metrics in results.items()}


# --- summary ---------------------------------------------------------------------------------
def peak_memory_mb() -> dict[str, float]:
    peak = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # Linux: KiB
    if torch.cuda.is_available():
        peak["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return peak


def print_summary(summary: dict, title: str = "vlm-tune sft — run summary") -> None:
    width = max(len(k) for k in summary)
    print("\n" + "=" * 60 + "\n" + title)
    for key, value in summary.items():
        shown = f"{value:,.1f}" if isinstance(value, float) else (f"{value:,}" if isinstance(value, int) else value)
        print(f"  {key.ljust(width)}  {shown}")
    print("=" * 60)


# --- train + save (shared by sft and dpo) ----------------------------------------------------
def train_and_save(trainer, training_args, model_args, after_training=None) -> dict:
    """Train, save adapter + processor, metrics and trainer state; return the run summary.
    `after_training(trainer)` runs between training and saving (e.g. DPO's 'after' score)."""
    trainable, total = count_parameters(trainer.model)
    started = time.perf_counter()
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    train_seconds = time.perf_counter() - started
    if after_training is not None:
        after_training(trainer)
    trainer.save_model(training_args.output_dir)
    metrics = dict(train_result.metrics)
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()
    world = training_args.world_size
    per_device, accumulation = training_args.per_device_train_batch_size, training_args.gradient_accumulation_steps
    return {
        "output_dir": training_args.output_dir,
        "model": model_args.model_name_or_path,
        "steps": trainer.state.global_step,
        "effective_batch": per_device * accumulation * world,
        "batch_arithmetic": f"{per_device} per device × {accumulation} accumulation × {world} process(es)",
        "trainable_params": trainable,
        "total_params": total,
        "trainable_percent": 100.0 * trainable / max(total, 1),
        "train_loss": float(metrics.get("train_loss", float("nan"))),
        "train_seconds": train_seconds,
        **peak_memory_mb(),
    }


# --- job -------------------------------------------------------------------------------------
def main(argv: list[str] | None = None, callbacks: list | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    script_args, training_args, model_args, resolved = parse_recipe(argv, SFTConfig)
    ensure_assets(script_args, model_args)

    # load (the processor first: a missing model or unreachable hub is the first thing to report)
    processor = load_processor(
        model_args, training_args.trust_remote_code, script_args.image_longest_edge, script_args.do_image_splitting
    )
    splits = load_splits(script_args.dataset_name, script_args.dataset_config)
    train_split = get_split(splits, script_args.dataset_train_split, script_args.dataset_name, script_args.max_train_samples)
    eval_split = None
    if training_args.eval_strategy != "no":
        eval_split = get_split(splits, script_args.dataset_val_split, script_args.dataset_name, script_args.max_eval_samples)
    check_machine(resolved, model_args)
    model = load_model(model_args, training_args.trust_remote_code, script_args.train_vision_tower)

    # format
    where = f"{script_args.dataset_name} [{{}}]"
    train_dataset = format_chartqa(train_split, script_args.system_prompt, where.format(script_args.dataset_train_split))
    eval_dataset = None
    if eval_split is not None:
        eval_dataset = format_chartqa(eval_split, script_args.system_prompt, where.format(script_args.dataset_val_split))

    # train
    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processor,
        peft_config=build_lora_config(model_args, script_args.lora_scope),
        callbacks=callbacks,
    )
    keep_adapters_fp32(trainer.model)
    summary = train_and_save(trainer, training_args, model_args)

    if trainer.is_world_process_zero():
        out = Path(training_args.output_dir)
        write_resolved_recipe(resolved, out / "recipe.yaml", "vlm-tune sft " + shlex.join(argv))
        if script_args.eval_after_train:
            started = time.perf_counter()
            scores = evaluate_after_training(trainer, processor, splits, script_args, out)
            summary.update({f"eval_{name.replace(' ', '_').replace('-', '_')}_pct": 100 * v for name, v in scores.items()})
            summary["eval_seconds"] = time.perf_counter() - started
        (out / "run_summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        print_summary(summary)
    return summary
