"""`vlm-tune sft`: recipe → (tiny model / synthetic data on first use) → load → format → train → save.

    vlm-tune sft --config recipes/tiny/sft_chartqa.yaml [--any_field value ...]
"""

from __future__ import annotations

import hashlib
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

from vlm_tune.train import tracking

from vlm_tune.train import validation
from vlm_tune.data.rows import to_prompt_completion, get_split, load_splits
from vlm_tune.core.errors import UserError
from vlm_tune.core.modeling import (
    FrozenVisionNoGrad,
    build_lora_config,
    check_machine,
    count_parameters,
    keep_adapters_fp32,
    load_model,
    load_processor,
)
from vlm_tune.core.config import parse_recipe, write_resolved_recipe
from vlm_tune.data.assets import ensure_assets
from vlm_tune.report.run_report import write_report_safely
from vlm_tune.train.throughput import attach_throughput


# --- multi-process (accelerate launch) --------------------------------------------------------
def use_gloo_without_gpu() -> None:
    """`accelerate launch --num_processes N` starts N processes through torchrun even without CUDA, but
    accelerate picks its CPU/gloo backend only when told the run is a CPU run (its `--cpu` flag starts a
    single process); otherwise every process would train alone on all the data. Must run before the
    TrainingArguments set up the distributed state."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")


def row_fingerprint(example: dict) -> str:
    """Identity of a training row from its prompt, answer and pixels (rows carry no id column)."""
    digest = hashlib.sha1(json.dumps([example.get("prompt"), example.get("completion")], default=str).encode())
    for image in example.get("images") or []:
        digest.update(image.tobytes() if hasattr(image, "tobytes") else repr(image).encode())
    return digest.hexdigest()[:16]


class BatchTrace:
    """Opt-in evidence of which rows each rank trained on (VLM_TUNE_TRACE_BATCHES=DIR): wraps the data
    collator and appends one JSON line per collated batch to DIR/rank-K.jsonl. Used by the multi-process
    test to check that ranks see different, disjoint data; off by default (it hashes every image)."""

    def __init__(self, collator, directory: str, rank: int):
        self.collator, self.rank, self.calls = collator, rank, 0
        self.path = Path(directory) / f"rank-{rank}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, examples: list[dict]):
        ids = [row_fingerprint(example) for example in examples]  # before the collator rewrites the rows
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"rank": self.rank, "batch": self.calls, "ids": ids}) + "\n")
        self.calls += 1
        return self.collator(examples)


# --- held-out evaluation ---------------------------------------------------------------------
def evaluate_after_training(trainer, processor, splits, script_args, out: Path) -> dict:
    """Base (adapters off), text-only prior and tuned model on the test split, one table."""
    from vlm_tune.data.scoring import evaluate_prior, evaluate_split, format_table, text_only_prior, write_results

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
    resumed_from = checkpoint_step(training_args)
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
        "train_loss": run_train_loss(trainer, metrics, resumed_from),
        "train_seconds": train_seconds,  # this process only (a resumed run: the steps after resumed_from_step)
        **({"resumed_from_step": resumed_from} if resumed_from is not None else {}),
        **peak_memory_mb(),
    }


def checkpoint_step(training_args) -> int | None:
    """The step a resumed run starts from (None: not resuming)."""
    from transformers.trainer_utils import get_last_checkpoint

    resume = training_args.resume_from_checkpoint
    if not resume:
        return None
    checkpoint = get_last_checkpoint(training_args.output_dir) if resume is True else resume
    state = Path(checkpoint or "") / "trainer_state.json"
    return json.loads(state.read_text(encoding="utf-8"))["global_step"] if state.is_file() else None


def run_train_loss(trainer, metrics: dict, resumed_from: int | None) -> float:
    """Mean training loss of the whole run. After a resume the Trainer's train_loss averages only
    the steps of this process (0 when nothing was left to do); the restored log history has them all."""
    if resumed_from is None:
        return float(metrics.get("train_loss", float("nan")))
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return float(sum(losses) / len(losses)) if losses else float("nan")


# --- job -------------------------------------------------------------------------------------
def main(argv: list[str] | None = None, callbacks: list | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    use_gloo_without_gpu()
    script_args, training_args, model_args, resolved = parse_recipe(argv, SFTConfig)
    tracking.prepare(training_args, resolved)  # no token as a recipe key; run_name; tracker packages
    if "ddp_find_unused_parameters" not in resolved:
        # LoRA uses every trainable parameter each step: skip DDP's extra graph walk (and its
        # failure with gradient checkpointing).
        training_args.ddp_find_unused_parameters = False
    with training_args.main_process_first(desc="building first-use assets"):  # one builder, the others wait
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
    train_dataset = to_prompt_completion(train_split, script_args.system_prompt, where.format(script_args.dataset_train_split))
    eval_dataset = None
    if eval_split is not None:
        eval_dataset = to_prompt_completion(eval_split, script_args.system_prompt, where.format(script_args.dataset_val_split))

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
    trainer.add_callback(FrozenVisionNoGrad())  # no backward through the frozen vision tower
    tracking.start(trainer, resolved, script_args.run_tags)  # W&B offline unless a key is set; TensorBoard in the run
    validation.attach(trainer, processor, splits, script_args)  # answers on fixed held-out rows at each eval
    attach_throughput(trainer)  # train_tokens_per_second (+ train_mfu on a known GPU) in every training log
    if os.environ.get("VLM_TUNE_TRACE_BATCHES"):
        trainer.data_collator = BatchTrace(trainer.data_collator, os.environ["VLM_TUNE_TRACE_BATCHES"],
                                           training_args.process_index)
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
        write_report_safely(out)
    tracking.finish(summary)
    return summary
