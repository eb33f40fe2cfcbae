"""The run summary: what a finished training run prints and writes to `run_summary.json` — steps, the
batch arithmetic, parameters, loss and memory — told for the whole run even after a resume."""

from __future__ import annotations

import json
import resource
from pathlib import Path

import torch

from vlm_tune.core.io import atomic_write_text


# --- summary ---------------------------------------------------------------------------------
def run_summary(trainer, training_args, model_args, metrics: dict, parameters: tuple[int, int],
                train_seconds: float, resumed_from: int | None) -> dict:
    """The summary of a trained and saved run; `parameters` is (trainable, total) before training."""
    trainable, total = parameters
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


def peak_memory_mb() -> dict[str, float]:
    peak = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # Linux: KiB
    if torch.cuda.is_available():
        peak["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return peak


# --- resume ----------------------------------------------------------------------------------
def run_train_loss(trainer, metrics: dict, resumed_from: int | None) -> float:
    """Mean training loss of the whole run. After a resume the Trainer's train_loss averages only
    the steps of this process (0 when nothing was left to do); the restored log history has them all."""
    if resumed_from is None:
        return float(metrics.get("train_loss", float("nan")))
    losses = [entry["loss"] for entry in trainer.state.log_history if isinstance(entry.get("loss"), (int, float))]
    return float(sum(losses) / len(losses)) if losses else float("nan")


# --- out -------------------------------------------------------------------------------------
def write_summary(out: Path, summary: dict) -> None:
    atomic_write_text(out / "run_summary.json", json.dumps(summary, indent=2) + "\n")


def print_summary(summary: dict, title: str = "vlm-tune sft — run summary") -> None:
    width = max(len(k) for k in summary)
    print("\n" + "=" * 60 + "\n" + title)
    for key, value in summary.items():
        shown = f"{value:,.1f}" if isinstance(value, float) else (f"{value:,}" if isinstance(value, int) else value)
        print(f"  {key.ljust(width)}  {shown}")
    print("=" * 60)
