"""SFT throughput: plain `trl sft` (TRL's own, unmodified script) vs `vlm-tune sft`, measured in one run.

Every case trains the same model folder on the same formatted rows (ChartQA-style synthetic charts →
TRL's `images` + `prompt`/`completion` rows), with the same seed, optimizer steps, per-device batch,
accumulation, precision, learning-rate schedule, LoRA r/alpha/dropout/target modules (the exact
module names our `lora_scope` selects) and 4-bit setting. Cases:

- `plain`        TRL's script: `python -m trl.scripts.sft --config trl_sft.yaml` (what `trl sft` runs, minus
                 the `accelerate launch` wrapper process) on a parquet export of the rows; everything else
                 at TRL's defaults (the processor's own image budget, QLoRA adapters cast to bf16, no
                 dataloader workers).
- `same-budget`  `vlm-tune sft` with the recipe, but the processor's default image budget (= TRL's):
                 what our other choices buy on their own.
- `ours`         `vlm-tune sft` with the recipe as it is.
- `ours-bf16`    the recipe without 4-bit (bf16 weights + LoRA): the QLoRA vs bf16-LoRA choice (GPU).
- `ours-nogc`    the recipe without gradient checkpointing (GPU, when memory allows).

Measured per case, one subprocess each: samples/s and tokens/s over the Trainer's `train_runtime`
(from the log it prints; model loading is outside it), peak RSS of the process (`os.wait4`), peak GPU
memory in use during the run (nvidia-smi, minus the idle baseline), CPU seconds, and for `vlm-tune`
cases the MFU its throughput callback logs. Tokens are non-pad tokens: every row is trained exactly
`--epochs` times (the row count is a multiple of the batch), so the total is `epochs ×` the sum of the
rows' sequence lengths, computed here with TRL's own collator at each case's image budget, and
checked against SFTTrainer's own `num_tokens` and (vlm-tune) our callback's count. Plain TRL logs no
MFU; its MFU is derived from `same-budget`'s (same model FLOPs per sample) × the samples/s ratio.

Usage:
    python -m bench.bench_sft                                    # tiny model on CPU: the table's CPU rows
    python -m bench.bench_sft --device cuda --arch 256m 500m 2.2b  # SmolVLM architectures, random weights
    [--rows N] [--epochs E] [--cases plain same-budget ours ...] [--workdir DIR] [--json PATH]
    [--ours-args "--dataloader_num_workers 1"] [--threads N] [--dry-run]
"""

from __future__ import annotations

import argparse
import ast
import copy
import datetime
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# --- architectures ---------------------------------------------------------------------------
# tiny: the project's embedded model (vlm_tune.core.tiny_model). The others: SmolVLM architectures at
# their published sizes (vlm_tune.plan.models.KNOWN_MODELS: SmolLM2 text + SigLIP vision, scale factor,
# processor tile sizes), random weights, a stand-in tokenizer (text-token counts approximate, image
# tokens exact), built here because no hub is reachable.
ARCHS = {
    "tiny": {"recipe": "recipes/tiny/sft_chartqa.yaml", "hub": None, "image_size": 160},
    "256m": {"recipe": "recipes/smolvlm-256m/sft_chartqa.yaml", "hub": "HuggingFaceTB/SmolVLM-256M-Instruct",
             "image_size": 512},
    "500m": {"recipe": "recipes/smolvlm-500m/sft_chartqa.yaml", "hub": "HuggingFaceTB/SmolVLM-500M-Instruct",
             "image_size": 512},
    "2.2b": {"recipe": "recipes/smolvlm-2.2b/sft_chartqa.yaml", "hub": "HuggingFaceTB/SmolVLM-Instruct",
             "image_size": 512},
}
CASES = ("plain", "same-budget", "ours", "ours-bf16", "ours-nogc")
DEFAULT_CASES = {"cpu": ("plain", "same-budget", "ours"), "cuda": ("plain", "same-budget", "ours", "ours-bf16")}
DEFAULT_SIZES = {"cpu": (400, 2), "cuda": (320, 1)}  # rows, epochs: ≤ ~4 min on 2 idle cores; GPU: 1 epoch like the recipes


def build_model(arch: str, folder: Path, device: str) -> None:
    if arch == "tiny":
        from vlm_tune.core.tiny_model import make_tiny_model

        make_tiny_model(folder, seed=0, overwrite=True)
        return
    from transformers import GenerationConfig, Idefics3ForConditionalGeneration

    from vlm_tune.plan.models import known_config, stand_in_processor

    config = known_config(ARCHS[arch]["hub"])
    processor = stand_in_processor(config)
    tokenizer = processor.tokenizer
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    for key, value in ids.items():
        setattr(config.text_config, key, value)
    config.pad_token_id = tokenizer.pad_token_id
    config.image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    torch.manual_seed(0)
    with torch.device(device):  # random init of 2.2 B parameters is seconds on a GPU, minutes on a CPU
        model = Idefics3ForConditionalGeneration(config).to(torch.bfloat16)
    model.generation_config = GenerationConfig(**ids, max_new_tokens=16)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()  # the runs need the memory; what stays is in every run's baseline


# --- data ------------------------------------------------------------------------------------
def build_data(folder: Path, rows: int, image_size: int, question_types) -> None:
    from data_builders.chartqa import QUESTION_TYPES, build_chartqa, save_chartqa

    splits = build_chartqa(rows, 0, 0, seed=0, image_size=image_size, num_proc=min(8, os.cpu_count() or 1),
                           question_types=question_types or QUESTION_TYPES)
    save_chartqa(splits, folder, overwrite=True)


def formatted_rows(data_dir: Path, rows: int, system_prompt: str | None):
    """The rows exactly as `vlm-tune sft` formats them (the same function)."""
    from vlm_tune.data.rows import to_prompt_completion, get_split, load_splits

    split = get_split(load_splits(str(data_dir)), "train", str(data_dir), rows)
    return to_prompt_completion(split, system_prompt, f"{data_dir} [train]")


def export_for_trl(formatted, folder: Path) -> None:
    """TRL's script loads `dataset_name` with `load_dataset`: a folder with train.parquet → split 'train'."""
    folder.mkdir(parents=True, exist_ok=True)
    formatted.to_parquet(str(folder / "train.parquet"))


# --- settings of both sides ------------------------------------------------------------------
def parse_our_recipe(recipe: str, overrides: list[str]):
    from trl import SFTConfig

    from vlm_tune.core.config import parse_recipe

    return parse_recipe(["--config", recipe, *overrides], SFTConfig)


def lora_module_names(model_dir: Path, scope: str, names: list[str] | None) -> list[str]:
    """Full names of the Linear layers our `lora_scope` adapts: TRL's script takes a plain list, and
    peft matches a full name only to itself (bare names like q_proj would also hit the vision tower)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForImageTextToText

    from vlm_tune.core.modeling import lora_target_regex

    with init_empty_weights():
        model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(model_dir))
    pattern = re.compile(lora_target_regex(scope, names))
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and pattern.fullmatch(n)]


def trl_config(script_args, training_args, model_args, *, model_dir: Path, data_dir: Path, out: Path,
               steps: int, targets: list[str], dtype: str) -> dict:
    """TRL's script config: our recipe's values for everything that must match, TRL's defaults for the rest."""
    config = {
        "model_name_or_path": str(model_dir),
        "dtype": dtype,
        "load_in_4bit": model_args.load_in_4bit,
        "bnb_4bit_quant_type": model_args.bnb_4bit_quant_type,
        "use_bnb_nested_quant": model_args.use_bnb_nested_quant,
        "use_peft": model_args.use_peft,
        "lora_r": model_args.lora_r,
        "lora_alpha": model_args.lora_alpha,
        "lora_dropout": model_args.lora_dropout,
        "lora_target_modules": targets,
        "dataset_name": str(data_dir),
        "dataset_train_split": "train",
        "output_dir": str(out),
        "max_steps": steps,
        "per_device_train_batch_size": training_args.per_device_train_batch_size,
        "gradient_accumulation_steps": training_args.gradient_accumulation_steps,
        "learning_rate": training_args.learning_rate,
        "lr_scheduler_type": str(getattr(training_args.lr_scheduler_type, "value", training_args.lr_scheduler_type)),
        "warmup_steps": training_args.warmup_steps,
        "weight_decay": training_args.weight_decay,
        "seed": training_args.seed,
        "bf16": training_args.bf16,
        "fp16": training_args.fp16,
        "gradient_checkpointing": training_args.gradient_checkpointing,
        "gradient_checkpointing_kwargs": training_args.gradient_checkpointing_kwargs,
        "max_length": training_args.max_length,
        "logging_steps": training_args.logging_steps,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
    }
    if model_args.attn_implementation:
        config["attn_implementation"] = model_args.attn_implementation
    return config


def our_argv(recipe: str, *, model_dir: Path, data_dir: Path, out: Path, rows: int, steps: int,
             logging_steps: int) -> list[str]:
    """`vlm-tune sft` on the bench's model and data: the recipe, training only (no eval, no saves)."""
    from vlm_tune.core.config import VlmScriptArguments

    argv = ["--config", recipe, "--model_name_or_path", str(model_dir), "--dataset_name", str(data_dir),
            "--build_tiny_model", "false", "--synthetic_dataset", "false", "--max_train_samples", str(rows),
            "--max_steps", str(steps), "--output_dir", str(out), "--overwrite_output_dir", "true",  # a rerun replaces it
            "--eval_strategy", "no", "--eval_after_train",
            "false", "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true",
            "--logging_steps", str(logging_steps)]
    if "num_validation_samples" in VlmScriptArguments.__dataclass_fields__:
        argv += ["--num_validation_samples", "0"]
    return argv


def case_overrides(case: str, default_budget: tuple[bool, int]) -> list[str]:
    splitting, edge = default_budget
    return {
        "same-budget": ["--do_image_splitting", str(splitting).lower(), "--image_longest_edge", str(edge)],
        "ours-bf16": ["--load_in_4bit", "false"],
        "ours-nogc": ["--gradient_checkpointing", "false"],
    }.get(case, [])


def differences(case: str, budget: dict, plain_budget: dict, training_args, model_args) -> list[str]:
    """What this case does differently from plain TRL (the table's 'differs' column)."""
    if case == "plain":
        return ["TRL defaults: processor's image budget, bf16 LoRA adapters, no dataloader workers"]
    found = []
    if (budget["splitting"], budget["longest_edge"]) != (plain_budget["splitting"], plain_budget["longest_edge"]):
        found.append(f"image budget {budget['image_tokens']:.0f} vs {plain_budget['image_tokens']:.0f} tokens/image "
                     f"(splitting {'on' if budget['splitting'] else 'off'}, longest edge {budget['longest_edge']} px)")
    if model_args.load_in_4bit:
        found.append("fp32 LoRA adapters (TRL casts them to bf16)")
    else:
        found.append("no 4-bit: bf16 weights + LoRA")
    if training_args.dataloader_num_workers:
        found.append(f"dataloader_num_workers {training_args.dataloader_num_workers} (TRL: 0)"
                     + (", persistent" if training_args.dataloader_persistent_workers else ""))
    if case == "ours-nogc":
        found.append("gradient checkpointing off")
    return found


# --- work per epoch --------------------------------------------------------------------------
def epoch_work(processor, formatted) -> dict:
    """Non-pad tokens, image tokens and tiles of one pass over the rows, through TRL's collator one row
    at a time (a row's own length is its non-pad length in any batch)."""
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    collator = DataCollatorForVisionLanguageModeling(processor=processor, max_length=None, completion_only_loss=True)
    image_token_id = processor.image_token_id
    tokens = image_tokens = tiles = 0
    for row in formatted:
        out = collator([{"images": list(row["images"]), "prompt": copy.deepcopy(row["prompt"]),
                         "completion": copy.deepcopy(row["completion"])}])
        tokens += int(out["attention_mask"].sum())
        image_tokens += int((out["input_ids"] == image_token_id).sum())
        tiles += int(out["pixel_values"].shape[1])
    n = len(formatted)
    return {"tokens": tokens, "image_tokens_per_row": image_tokens / n, "tiles_per_row": tiles / n,
            "tokens_per_row": tokens / n}


def budget_of(model_dir: Path, script_args, model_args, formatted) -> dict:
    from vlm_tune.core.modeling import load_processor

    model_args = copy.copy(model_args)
    model_args.model_name_or_path = str(model_dir)
    processor = load_processor(model_args, False, script_args.image_longest_edge, script_args.do_image_splitting)
    image_processor = processor.image_processor
    work = epoch_work(processor, formatted)
    return {"splitting": bool(image_processor.do_image_splitting),
            "longest_edge": int(image_processor.size["longest_edge"]),
            "image_tokens": work["image_tokens_per_row"], **work}


# --- running ---------------------------------------------------------------------------------
class GpuMemoryPoller:
    """Peak device memory in use (nvidia-smi, MiB) while a run lasts, minus what was in use before it.
    The same measure for both sides: TRL's script reports no memory of its own."""

    def __init__(self, device_index: int = 0, interval: float = 0.2):
        self.index, self.interval = device_index, interval
        self.baseline = self.peak = self._used()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _used(self) -> float:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                              "-i", str(self.index)], capture_output=True, text=True, check=True).stdout
        return float(out.strip().splitlines()[0])

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._used())
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return self.peak - self.baseline


def run_case(cmd: list[str], log_path: Path, device: str, threads: int | None = None) -> dict:
    """Run one training subprocess; its final Trainer log, peak RSS, CPU time, wall time, GPU memory."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", WANDB_MODE="disabled")
    if threads:  # on a shared machine, torch's spinning OpenMP threads collapse when a core is taken away
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    poller = GpuMemoryPoller() if device == "cuda" else None
    with log_path.open("w", encoding="utf-8") as log:
        if poller:
            poller.__enter__()
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        if poller:
            poller.__exit__()
    wall = time.perf_counter() - started
    text = log_path.read_text(encoding="utf-8", errors="replace")
    if process.returncode != 0:
        tail = "\n".join(text.splitlines()[-25:])
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed (exit {process.returncode}); log {log_path}:\n{tail}")
    logs = [ast.literal_eval(line) for line in text.splitlines() if line.startswith("{'") and line.endswith("}")]
    final = next(log for log in reversed(logs) if "train_runtime" in log)
    steps = [log for log in logs if "loss" in log]
    counted = [log for log in steps if "num_tokens" in log]  # SFTTrainer's own non-pad count, cumulative
    result = {
        "train_runtime_s": float(final["train_runtime"]),
        "train_loss": float(final["train_loss"]),
        "first_logged_loss": float(steps[0]["loss"]) if steps else None,
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": usage.ru_maxrss / 1024,  # Linux: KiB; the largest of the process and its children
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "trainer_num_tokens": float(counted[-1]["num_tokens"]) if counted else None,
    }
    for key in ("train_tokens_per_second", "train_mfu"):  # our callback's whole-run values
        if key in final:
            result[f"logged_{key}"] = float(final[key])
    if poller:
        result["peak_gpu_mb"] = poller.peak_mb
    return result


# --- report ----------------------------------------------------------------------------------
def versions() -> dict:
    import bitsandbytes
    import datasets
    import peft
    import transformers
    import trl

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "trl": trl.__version__, "peft": peft.__version__, "bitsandbytes": bitsandbytes.__version__,
            "datasets": datasets.__version__}


def machine(device: str) -> str:
    cpu = "unknown CPU"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    text = f"{cores} cores ({cpu}), {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB"
    if device == "cuda":
        text += f", {torch.cuda.get_device_name(0)}"
    return text


def print_table(arch: str, rows: list[dict]) -> None:
    for r in rows:
        if "error" in r:
            print(f"\n{arch} {r['case']}: FAILED — {r['error']}")
    rows = [r for r in rows if "error" not in r]
    plain = next((r for r in rows if r["case"] == "plain"), None)
    head = ["case", "img tok", "samples/s", "tokens/s", "× plain", "train s", "CPU s", "peak RSS MB", "peak GPU MB",
            "mem × plain", "MFU", "loss", "load"]
    print(f"\n{arch}\n| " + " | ".join(head) + " |\n|" + "|".join("---" for _ in head) + "|")
    for r in rows:
        speed = r["samples_per_s"] / plain["samples_per_s"] if plain else float("nan")
        mem_key = "peak_gpu_mb" if "peak_gpu_mb" in r else "peak_rss_mb"
        mem = r[mem_key] / plain[mem_key] if plain else float("nan")
        mfu = f"{100 * r['mfu']:.1f} %" + (" (derived)" if r.get("mfu_derived") else "") if r.get("mfu") else "—"
        cells = [r["case"], f"{r['image_tokens_per_row']:.0f}", f"{r['samples_per_s']:.1f}", f"{r['tokens_per_s']:,.0f}",
                 f"{speed:.2f}", f"{r['train_runtime_s']:.1f}", f"{r['cpu_s']:.0f}", f"{r['peak_rss_mb']:,.0f}",
                 f"{r['peak_gpu_mb']:,.0f}" if "peak_gpu_mb" in r else "—", f"{mem:.2f}", mfu,
                 f"{r['train_loss']:.3f}", f"{r['load_before']:.1f}"]
        print("| " + " | ".join(cells) + " |")
    for r in rows:
        print(f"  {r['case']}: " + "; ".join(r["differs"]))
    checks = [r.get(k) for r in rows for k in ("tokens_vs_trainer_count", "tokens_vs_callback_count") if r.get(k)]
    if checks:  # the trainer prints 4 significant digits
        worst = max(abs(c - 1) for c in checks)
        print(f"  token totals vs SFTTrainer's own count and our callback's: worst ratio off by {100 * worst:.2f} %"
              + ("" if worst < 2e-3 else "  <-- MISMATCH"))


def bench_arch(arch: str, args, workdir: Path) -> list[dict]:
    spec = ARCHS[arch]
    model_dir, data_dir = workdir / "models" / arch, workdir / "data" / f"chartqa-{arch}-{args.rows}"
    script_args, training_args, model_args, _ = parse_our_recipe(spec["recipe"], [])
    batch = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
    rows = args.rows - args.rows % batch
    steps = args.epochs * rows // batch
    if not (model_dir / "config.json").is_file():
        print(f"building the {arch} model at {model_dir}")
        build_model(arch, model_dir, args.device)
    if not (data_dir / "dataset_dict.json").is_file():
        print(f"building {rows} synthetic charts at {data_dir}")
        build_data(data_dir, rows, spec["image_size"], script_args.synthetic_types)
    formatted = formatted_rows(data_dir, rows, script_args.system_prompt)
    trl_data = workdir / "data" / f"trl-{arch}-{rows}"
    export_for_trl(formatted, trl_data)

    from vlm_tune.core.modeling import resolve_dtype

    dtype = str(resolve_dtype(model_args)).removeprefix("torch.")
    targets = lora_module_names(model_dir, script_args.lora_scope, model_args.lora_target_modules)
    default = budget_of(model_dir, type(script_args)(), model_args, formatted)  # the processor's own budget
    logging_steps = max(1, steps // 10)
    results, failures = [], []
    for case in args.cases:
        out = workdir / "runs" / f"{arch}-{case}"
        log_path = workdir / "runs" / f"{arch}-{case}.log"
        out.mkdir(parents=True, exist_ok=True)
        if case == "plain":
            config = trl_config(script_args, training_args, model_args, model_dir=model_dir, data_dir=trl_data,
                                out=out, steps=steps, targets=targets, dtype=dtype)
            config["logging_steps"] = logging_steps
            config_path = workdir / "runs" / f"{arch}-trl_sft.yaml"
            config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
            cmd = [str(BIN / "python"), "-m", "trl.scripts.sft", "--config", str(config_path)]
            budget, case_training, case_model = default, training_args, model_args
        else:
            overrides = case_overrides(case, (default["splitting"], default["longest_edge"]))
            case_script, case_training, case_model, _ = parse_our_recipe(spec["recipe"], overrides + args.ours_args)
            budget = budget_of(model_dir, case_script, case_model, formatted)
            overrides += args.ours_args
            argv = our_argv(spec["recipe"], model_dir=model_dir, data_dir=data_dir, out=out, rows=rows, steps=steps,
                            logging_steps=logging_steps) + overrides
            cmd = [str(BIN / "vlm-tune"), "sft", *argv]
        print(f"[{arch}] {case}: {' '.join(cmd[1:3])} ... ({steps} steps × {batch} samples, "
              f"{budget['image_tokens']:.0f} image tokens per row)", flush=True)
        if args.dry_run:
            print("  " + shlex.join(cmd))
            continue
        try:
            result = run_case(cmd, log_path, args.device, args.threads)
        except RuntimeError as exc:  # e.g. out of memory: report it and go on with the other cases
            print(exc, flush=True)
            failures.append({"arch": arch, "case": case, "command": cmd, "error": str(exc).splitlines()[0]})
            continue
        tokens = args.epochs * budget["tokens"]
        result.update({
            "arch": arch, "case": case, "command": cmd, "steps": steps, "samples": steps * batch,
            "samples_per_s": steps * batch / result["train_runtime_s"],
            "tokens_per_s": tokens / result["train_runtime_s"],
            "image_tokens_per_row": budget["image_tokens"], "tiles_per_row": budget["tiles_per_row"],
            "tokens_per_row": budget["tokens_per_row"],
            "differs": differences(case, budget, default, case_training, case_model),
        })
        if case != "plain" and args.ours_args:
            result["differs"].append("flags " + " ".join(args.ours_args))
        # Cross-checks of the token total: SFTTrainer's own count (every case) and our callback's.
        if result["trainer_num_tokens"]:
            result["tokens_vs_trainer_count"] = tokens / result["trainer_num_tokens"]
        if "logged_train_tokens_per_second" in result:
            result["tokens_vs_callback_count"] = tokens / (result["logged_train_tokens_per_second"]
                                                           * result["train_runtime_s"])
        if "logged_train_mfu" in result:
            result["mfu"] = result["logged_train_mfu"]
        results.append(result)
    same = next((r for r in results if r["case"] == "same-budget" and r.get("mfu")), None)
    for r in results:
        if r["case"] == "plain" and same:
            r["mfu"], r["mfu_derived"] = same["mfu"] * r["samples_per_s"] / same["samples_per_s"], True
    return results + failures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_sft", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--arch", nargs="+", choices=list(ARCHS), help="default: tiny on cpu, 256m 500m 2.2b on cuda")
    parser.add_argument("--cases", nargs="+", choices=CASES, help="default: plain same-budget ours (+ ours-bf16 on cuda)")
    parser.add_argument("--rows", type=int, help="training rows (rounded down to a multiple of the batch)")
    parser.add_argument("--epochs", type=int, help="passes over the rows: steps = epochs × rows / batch")
    parser.add_argument("--ours-args", default="", help="extra `vlm-tune sft` flags for every vlm-tune case, e.g. "
                        "'--dataloader_num_workers 1' (to try a lever; the table lists it)")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS of the runs (default: torch's, all cores)")
    parser.add_argument("--workdir", type=Path, default=REPO / "runs" / "bench-sft")
    parser.add_argument("--json", type=Path, help="default: WORKDIR/results-DEVICE.json")
    parser.add_argument("--dry-run", action="store_true", help="build model and data, print the commands, train nothing")
    args = parser.parse_args(argv)
    args.ours_args = shlex.split(args.ours_args)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no CUDA GPU")
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the subprocesses too
    args.arch = args.arch or (["tiny"] if args.device == "cpu" else ["256m", "500m", "2.2b"])
    args.cases = args.cases or list(DEFAULT_CASES[args.device])
    default_rows, default_epochs = DEFAULT_SIZES[args.device]
    args.rows, args.epochs = args.rows or default_rows, args.epochs or default_epochs
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    info = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "machine": machine(args.device),
            "versions": versions(), "device": args.device, "rows": args.rows, "epochs": args.epochs,
            "threads": args.threads or torch.get_num_threads(),
            "command": "python -m bench.bench_sft " + " ".join(argv if argv is not None else sys.argv[1:])}
    print(f"date: {info['date']}\nmachine: {info['machine']}\nversions: {info['versions']}\n"
          f"load average before: {os.getloadavg()[0]:.2f}")
    results = []
    for arch in args.arch:
        arch_results = bench_arch(arch, args, args.workdir)
        if not args.dry_run:
            print_table(arch, arch_results)
        results += arch_results
    if args.dry_run:
        return 0
    path = args.json or args.workdir / f"results-{args.device}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**info, "results": results}, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"\nloss = final train loss (same data, seed and steps: the cases should train alike); load = 1-min load "
          f"average when the case started (cores: {os.cpu_count()}).\nJSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
