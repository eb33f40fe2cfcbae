"""The training lifecycle shared by `vlm-tune sft` and `vlm-tune dpo`.

A job module (sft.py, dpo.py) reads parse → load → format → trainer → run, and calls these shared steps:

    setup              recipe → dataclasses, tracker checks, the output folder (one run per folder: refused
                       unless --overwrite or --resume_from_checkpoint), first-use assets (tiny model,
                       synthetic data)
    load_processor     the processor of the recipe's model (loaded first: a missing model is the first error)
    wire_trainer       (--overwrite: the old run's files go now, once the data and model have loaded)
                       fp32 adapters, no backward through the frozen vision tower, trackers on, and the
                       job's measurements (validation samples, throughput, batch trace)
    train_and_report   train → save → summary → recipe.yaml, base_fingerprint.json → the job's own results
                       → run_summary.json → report → trackers off. Resuming a run that already reached
                       its last step trains nothing: its weights and state are loaded and the
                       after-training work is redone.

Only the main process (rank 0) writes recipe.yaml, the job's results, run_summary.json and the report,
and prints the summary.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from vlm_tune.core.config import VlmScriptArguments, parse_recipe, write_resolved_recipe
from vlm_tune.core import modeling
from vlm_tune.core.fingerprint import write_fingerprint
from vlm_tune.core.modeling import count_parameters, keep_adapters_fp32
from vlm_tune.data.assets import ensure_assets
from vlm_tune.report.run_report import write_report_safely
from vlm_tune.train import tracking, validation
from vlm_tune.train.frozen_vision import keep_vision_frozen
from vlm_tune.train.multiprocess import trace_batches_if_asked, use_gloo_without_gpu
from vlm_tune.train.run_folder import ResumePlan, check_output_dir, clear_run, plan_resume
from vlm_tune.train.summary import print_summary, run_summary, write_summary
from vlm_tune.train.throughput import attach_throughput


# --- what a job is ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    """What differs between the jobs in the shared steps."""

    name: str  # the command (`vlm-tune NAME`): recipe.yaml's re-run line, the summary title, the W&B job type
    config_class: type  # TRL's SFTConfig / DPOConfig
    script_class: type = VlmScriptArguments
    # Ready for `accelerate launch --num_processes N`: gloo on CPU, no DDP unused-parameter walk,
    # first-use assets built by rank 0 while the others wait, and the opt-in batch trace.
    multi_process: bool = False
    throughput: bool = False  # train_tokens_per_second (+ train_mfu on a known GPU) in every training log


@dataclass
class TrainingRun:
    """One run: its job, its command line and the recipe it resolved to."""

    job: Job
    argv: list[str]
    script_args: Any
    training_args: Any
    model_args: Any
    resolved: dict  # what the recipe and the command line asked for (recipe.yaml, trackers)
    resume: ResumePlan | None = None  # what resume_from_checkpoint continues from

    @property
    def output_dir(self) -> Path:
        return Path(self.training_args.output_dir)

    @property
    def command_line(self) -> str:
        return f"vlm-tune {self.job.name} " + shlex.join(self.argv)


# --- setup -----------------------------------------------------------------------------------
def setup(job: Job, argv: list[str] | None) -> TrainingRun:
    """Parse the recipe, check the tracker settings, build the first-use assets."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if job.multi_process:
        use_gloo_without_gpu()  # before the TrainingArguments set up the distributed state
    script_args, training_args, model_args, resolved = parse_recipe(argv, job.config_class, job.script_class)
    check_output_dir(training_args, script_args.overwrite_output_dir)  # one run per folder, before any write
    resume = plan_resume(training_args, model_args)  # nothing to resume: one line now, not after loading
    # no token as a recipe key, no secret in run_name/run_tags; run_name; tracker packages
    tracking.prepare(training_args, resolved, script_args)
    if job.multi_process and "ddp_find_unused_parameters" not in resolved:
        # LoRA uses every trainable parameter each step: skip DDP's extra graph walk (and its
        # failure with gradient checkpointing).
        training_args.ddp_find_unused_parameters = False
    one_builder = nullcontext()
    if job.multi_process:  # one builder, the others wait
        one_builder = training_args.main_process_first(desc="building first-use assets")
    with one_builder:
        ensure_assets(script_args, model_args)
    return TrainingRun(job, argv, script_args, training_args, model_args, resolved, resume)


def load_processor(run: TrainingRun):
    """The recipe's processor, with its image size and splitting."""
    script_args = run.script_args
    return modeling.load_processor(run.model_args, run.training_args.trust_remote_code,
                                   script_args.image_longest_edge, script_args.do_image_splitting)


# --- trainer wiring --------------------------------------------------------------------------
def wire_trainer(trainer, run: TrainingRun, processor=None, splits=None) -> None:
    """What every job adds to its TRL trainer; `splits` (with `processor`): validation samples from them."""
    if run.script_args.overwrite_output_dir:  # the old run goes only now that data and model have loaded
        with run.training_args.main_process_first(desc="clearing the previous run"):
            if trainer.is_world_process_zero():
                clear_run(run.output_dir)
    keep_adapters_fp32(trainer.model)
    keep_vision_frozen(trainer.model)  # no backward through the frozen vision tower, at any step
    # W&B offline unless a key is set; TensorBoard in the run folder
    tracking.start(trainer, run.resolved, run.script_args.run_tags, job_type=run.job.name)
    if splits is not None:
        validation.attach(trainer, processor, splits, run.script_args)  # answers on fixed held-out rows at each eval
    if run.job.throughput:
        attach_throughput(trainer)
    if run.job.multi_process:
        trace_batches_if_asked(trainer)


# --- train → save → summary → recipe.yaml → report → trackers off ----------------------------
def train_and_report(
    run: TrainingRun,
    trainer,
    after_training: Callable[[Any], None] | None = None,
    after_saving: Callable[[Any, Path], dict] | None = None,
) -> dict:
    """The rest of the run; returns the run summary.

    `after_training(trainer)` runs on every process between training and saving (e.g. DPO's 'after'
    score); `after_saving(trainer, out)` runs on the main process once the adapter and recipe.yaml are
    saved, writes the job's own results and returns entries for the summary (e.g. SFT's held-out eval)."""
    summary = train_and_save(run, trainer, after_training)
    if trainer.is_world_process_zero():
        out = run.output_dir
        write_resolved_recipe(run.resolved, out / "recipe.yaml", run.command_line)
        # which base the adapter was trained on: eval, caption, export refuse another one (core.fingerprint)
        write_fingerprint(out, run.model_args.model_name_or_path, run.model_args.model_revision)
        if after_saving is not None:
            summary.update(after_saving(trainer, out))
        write_summary(out, summary)
        print_summary(summary, title=f"vlm-tune {run.job.name} — run summary")
        write_report_safely(out)
    tracking.finish(summary)
    return summary


def train_and_save(run: TrainingRun, trainer, after_training: Callable[[Any], None] | None = None) -> dict:
    """Train, save adapter + processor, metrics and trainer state; return the run summary."""
    training_args = run.training_args
    parameters = count_parameters(trainer.model)
    resumed_from = run.resume.step if run.resume else None
    started = time.perf_counter()
    if run.resume and run.resume.complete:
        metrics = restore_complete_run(trainer, run)
    else:
        checkpoint = run.resume.checkpoint if run.resume else None
        metrics = dict(trainer.train(resume_from_checkpoint=checkpoint).metrics)
    train_seconds = time.perf_counter() - started
    if after_training is not None:
        after_training(trainer)
    trainer.save_model(training_args.output_dir)
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()
    return run_summary(trainer, training_args, run.model_args, metrics, parameters, train_seconds, resumed_from)


def restore_complete_run(trainer, run: TrainingRun) -> dict:
    """A resumed run that already reached its planned last step (killed during the after-training work,
    or finished and resumed again): load its weights and trainer state instead of training — Trainer
    would otherwise take one step past the end. Returns the train metrics (the saved ones if any)."""
    from transformers import TrainerState

    saved = run.resume.complete
    print(f"resume: {saved.folder} is already at step {saved.step}, the end of this run: nothing left to train; "
          f"finishing the after-training work")
    trainer._load_from_checkpoint(str(saved.folder))  # Trainer's own loader (adapters, full weights, sharded)
    trainer.state = TrainerState.load_from_json(str(saved.folder / "trainer_state.json"))
    best = trainer.state.best_model_checkpoint
    if run.training_args.load_best_model_at_end and best and Path(best).is_dir():
        trainer._load_best_model()
    saved_metrics = run.output_dir / "train_results.json"
    try:
        metrics = json.loads(saved_metrics.read_text(encoding="utf-8")) if saved_metrics.is_file() else {}
    except ValueError:
        metrics = {}
    metrics = metrics if isinstance(metrics, dict) else {}
    metrics.setdefault("epoch", trainer.state.epoch)
    return metrics
