"""Architecture-sized runs: every real recipe on the published SmolVLM / SmolVLM2 architectures, measured
next to what `vlm-tune plan` predicts for it.

Each architecture (SmolVLM-256M, -500M, -2.2B; SmolVLM2-256M, -500M, -2.2B) is built with random weights
from `vlm_tune.plan.models.KNOWN_MODELS` (the sizes `plan` knows) and the stand-in processor (SmolVLM's
image processing at the architecture's tile size + the tiny model's tokenizer: image tokens exact, text
tokens approximate), saved to a work folder (config and processor first; the weights only once a row
runs). Every recipe of that model (`recipes/<arch>/sft_chartqa.yaml`, `dpo_ratings.yaml`,
`sft_captioner.yaml`, `dpo_captioner.yaml` where it exists; dpo_captioner refines the bench's own captioner
adapter) then runs through the real command — `vlm-tune sft` / `vlm-tune dpo` as a subprocess, so peak RSS
is the run's own — for `--steps` optimizer steps at the recipe's own image budget, followed by `vlm-tune
caption` of `--captions` images with the captioner recipe's adapter. Random weights caption garbage or
nothing; `caption` says so.

Overrides, only what the machine requires (listed in the JSON):
- cpu:  bf16 → fp32 (`--bf16 false --dtype float32`), batch 1, accumulation 1, no dataloader workers;
- both: small synthetic data pointed at by `--dataset_name` (ChartQA-style charts at 800 px, scenes at the
        captioner recipe's 512 px, sample-rating pairs at 800 px), `--max_steps`, and eval, validation
        samples, checkpoints and trackers off. On cuda the recipe's own dtype, batch and accumulation run.

Measured per run: seconds per optimizer step (train_runtime / steps, and step 2 alone from the time
between the first two logged losses), peak RSS of the process (`os.wait4`) and an RSS timeline
(anonymous vs file-backed, once a second: a peak while the checkpoint is mapped is a loading peak), peak
GPU memory allocated (cuda, from run_summary.json), image and text tokens per sample (TRL's collator / the
processor on the trained rows; SFTTrainer's own token count as a check), trainable parameters
(run_summary.json). Next to each: `vlm-tune plan --json` on the same recipe, overrides, model folder and
data. `plan` reads SFT recipes only, so the DPO rows have no prediction.

Rows that cannot run here are skipped with the reason: `plan`'s total × 1.5 over the memory available now,
or (cpu) a forecast over `--timeout` — the same recipe measured on a smaller architecture (this run's or
`--references` JSONs), scaled by the step's work and, for loading, the parameter count.

Usage (one run at a time; the machine is shared, so OMP_NUM_THREADS=--threads in the runs):
    python -m bench.bench_arch [--arch 256m,500m,2.2b | smolvlm2-256m,...] [--recipes sft_chartqa,...]
        [--steps 2] [--captions 4] [--device cpu|cuda] [--threads 2] [--timeout 900] [--workdir DIR] [--json OUT]
        [--references EARLIER.json ...] [--resume] [--clean-models] [--dry-run]
    python -m bench.bench_arch --replan OUT.json ...   # re-predict with the current `vlm-tune plan`
    python -m bench.bench_arch --table OUT.json ...    # print the Markdown tables of saved runs
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MB = 2**20

# --- what runs -------------------------------------------------------------------------------
FAMILIES = ("smolvlm", "smolvlm2")
SIZES = ("256m", "500m", "2.2b")
ARCHS = [f"{family}-{size}" for size in SIZES for family in FAMILIES]  # 256M rows first, 2.2B last
RECIPES = ("sft_chartqa", "dpo_ratings", "sft_captioner", "dpo_captioner")  # dpo_captioner refines sft_captioner
CHART_PX, SCENE_PX = 800, 512  # ChartQA's typical width; the captioner recipe's synthetic_image_size
RATING_CHARTS = 12  # sample-rating charts → ~10 best-worst training pairs

# What the machine requires, nothing else (the recipe's image budget, LoRA, 4-bit, checkpointing stay).
CPU_OVERRIDES = ["--bf16", "false", "--dtype", "float32", "--per_device_train_batch_size", "1",
                 "--gradient_accumulation_steps", "1", "--dataloader_num_workers", "0"]
EXTRAS_OFF = ["--eval_strategy", "no", "--save_strategy", "no", "--report_to", "none", "--logging_steps", "1",
              "--disable_tqdm", "true"]
SFT_EXTRAS_OFF = ["--synthetic_dataset", "false", "--eval_after_train", "false", "--num_validation_samples", "0"]
DPO_EXTRAS_OFF = ["--ratings_file", "", "--dataset_test_split", "none"]  # no before/after preference score


def selected_archs(text: str) -> list[str]:
    """`256m` means both families at that size; `smolvlm2-256m` one architecture."""
    picked = []
    for word in (w.strip().lower() for w in text.split(",") if w.strip()):
        names = [a for a in ARCHS if a == word or a.endswith("-" + word)]
        if not names:
            raise SystemExit(f"--arch: unknown '{word}'; choose from {', '.join(SIZES)} or {', '.join(ARCHS)}")
        picked += [n for n in names if n not in picked]
    return [a for a in ARCHS if a in picked]  # always smallest first


def recipe_path(arch: str, recipe: str) -> Path:
    """Relative to the repository (the runs' working directory), as a user types it."""
    return Path("recipes") / arch / f"{recipe}.yaml"


def hub_id(arch: str) -> str:
    """The published checkpoint the arch's recipes name (any of them; they agree)."""
    for recipe in RECIPES:
        path = REPO / recipe_path(arch, recipe)
        if path.is_file():
            return yaml.safe_load(path.read_text(encoding="utf-8"))["model_name_or_path"]
    raise SystemExit(f"no recipe in recipes/{arch}/")


# --- model ---------------------------------------------------------------------------------
# The folder is made in two steps: config + processor first (all `plan` and the token counts need, and
# what the time forecast uses to skip a row), the random weights only when a run will use them.
def prepare_config(arch: str, folder: Path):
    """The published sizes (`KNOWN_MODELS`) with the stand-in tokenizer's token ids, and the stand-in
    processor; returns the config."""
    from vlm_tune.plan.models import known_config, stand_in_processor

    config = known_config(hub_id(arch))
    processor = stand_in_processor(config)
    tokenizer = processor.tokenizer
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(config.text_config, key, getattr(tokenizer, key))
    config.pad_token_id = tokenizer.pad_token_id
    config.image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    if config.model_type == "smolvlm":
        processor = with_video_settings(processor, config.vision_config.image_size)
    if not (folder / "config.json").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        config.save_pretrained(folder)
        processor.save_pretrained(folder)
    return config


def with_video_settings(processor, tile: int):
    """SmolVLM2's processor as its published folders have it: with video settings (the tiny model's, at this
    tile size). Saved with none, the folder fails `AutoProcessor` without torchvision with a ValueError
    that the project's no-torchvision route does not catch (it expects the ImportError of a real folder)."""
    import copy

    from vlm_tune.core.smolvlm2 import build_processor
    from vlm_tune.core.tiny_model import TILE_SIZE, VIDEO_PROCESSING

    video = json.loads(json.dumps(VIDEO_PROCESSING).replace(f'"longest_edge": {TILE_SIZE}', f'"longest_edge": {tile}'))
    return build_processor(copy.deepcopy(processor.image_processor), processor.tokenizer, video,
                           processor.image_seq_len, processor.chat_template)


def has_weights(folder: Path) -> bool:
    return any(folder.glob("model*.safetensors"))


def build_weights(config, folder: Path) -> None:
    """Random weights (bf16 on disk: half the bytes to write and map; the runs load them as fp32)."""
    import torch
    from transformers import AutoModelForImageTextToText, GenerationConfig

    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16)  # no fp32 copy of 2.2 B
    ids = {k: getattr(config.text_config, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    model.generation_config = GenerationConfig(**ids, max_new_tokens=32)
    staging = folder.with_name(folder.name + ".weights-tmp")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    del model
    gc.collect()
    for file in staging.iterdir():  # the weights land last: a killed build leaves a folder without them
        if not file.name.startswith("model"):
            file.replace(folder / file.name)
    for file in staging.iterdir():
        file.replace(folder / file.name)
    staging.rmdir()


def parameter_split(config) -> dict:
    """Vision and text (+ head) parameters, counted on the meta device: the time forecast's sizes."""
    from vlm_tune.plan.models import meta_model

    model = meta_model(config)
    vision = sum(p.numel() for n, p in model.named_parameters() if ".vision_model." in f".{n}")
    return {"vision": vision, "text": sum(p.numel() for p in model.parameters()) - vision}


# --- data ------------------------------------------------------------------------------------
def build_data(kind: str, folder: Path, rows: int) -> Path:
    """Small synthetic data of the recipe's kind (built once per size; a bigger request rebuilds)."""
    marker = folder / "bench_rows.json"
    if marker.is_file() and json.loads(marker.read_text())["rows"] >= rows:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    if kind == "chartqa":
        from data_builders.chartqa import build_chartqa, save_chartqa

        save_chartqa(build_chartqa(rows, 1, 1, seed=0, image_size=CHART_PX, num_proc=1), folder)
    elif kind == "scenes":
        from data_builders.scenes import build_scenes, save_scenes

        save_scenes(build_scenes((rows + 1) // 2, 1, 1, seed=0, image_size=SCENE_PX, num_proc=1), folder)
    else:  # preference pairs from the sample team ratings, as `make dpo` builds them
        from data_builders.ratings import build_pairs, save_pairs
        from data_builders.sample_ratings import make_sample_ratings

        charts = max(RATING_CHARTS, 2 * rows)
        ratings = make_sample_ratings(folder.with_name(folder.name + "-ratings"), seed=0, n_charts=charts,
                                      overwrite=True, image_size=CHART_PX)
        pairs, report = build_pairs(ratings, seed=0)
        save_pairs(pairs, report, folder, overwrite=True)
    marker.write_text(json.dumps({"rows": rows}), encoding="utf-8")
    return folder


# dpo_captioner's own pairs are the team's ratings of generated captions (`vlm-tune candidates` → `rate`);
# the sample-rating pairs stand in (same columns; tokens at the captioner recipe's image budget).
DATA_KIND = {"sft_chartqa": "chartqa", "sft_captioner": "scenes", "dpo_ratings": "pairs", "dpo_captioner": "pairs"}


# --- tokens of the trained rows --------------------------------------------------------------
def sft_tokens(model_dir: Path, recipe: str, data_dir: Path, rows: int) -> dict:
    """Image and text tokens per row through TRL's vision collator (what SFTTrainer trains on)."""
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from vlm_tune.data.rows import get_split, load_splits, to_prompt_completion

    script_args = yaml.safe_load((REPO / recipe).read_text(encoding="utf-8"))
    processor = recipe_processor(model_dir, script_args)
    split = get_split(load_splits(str(data_dir)), "train", str(data_dir), rows)
    formatted = to_prompt_completion(split, script_args.get("system_prompt"), f"{data_dir} [train]")
    collator = DataCollatorForVisionLanguageModeling(processor=processor, max_length=None, completion_only_loss=True)
    image, total = [], []
    for row in formatted:
        out = collator([{"images": list(row["images"]), "prompt": list(row["prompt"]),
                         "completion": list(row["completion"])}])
        total.append(int(out["attention_mask"].sum()))
        image.append(int((out["input_ids"] == processor.image_token_id).sum()))
    return {"image_tokens": _mean(image), "text_tokens": _mean([t - i for t, i in zip(total, image)]),
            "sequence_tokens": _mean(total)}


def dpo_tokens(model_dir: Path, recipe: str, data_dir: Path, rows: int) -> dict:
    """Per sequence (a pair is two: prompt + chosen, prompt + rejected), formatted as DPOTrainer formats
    them (image placeholders before the first user turn), through the processor."""
    import datasets
    from trl.data_utils import prepare_multimodal_messages

    script_args = yaml.safe_load((REPO / recipe).read_text(encoding="utf-8"))
    processor = recipe_processor(model_dir, script_args)
    pairs = datasets.load_from_disk(str(data_dir))["train"].select(range(rows))
    image, total = [], []
    for pair in pairs:
        images = [im.convert("RGB") for im in pair["images"]]
        prompt = prepare_multimodal_messages(list(pair["prompt"]), images=images)
        for answer in (pair["chosen"], pair["rejected"]):
            text = processor.apply_chat_template(prompt + prepare_multimodal_messages(list(answer)), tokenize=False)
            out = processor(text=[text], images=[images], return_tensors="pt")
            total.append(int(out["attention_mask"].sum()))
            image.append(int((out["input_ids"] == processor.image_token_id).sum()))
    return {"image_tokens": _mean(image), "text_tokens": _mean([t - i for t, i in zip(total, image)]),
            "sequence_tokens": _mean(total)}


def recipe_processor(model_dir: Path, recipe: dict):
    from trl import ModelConfig

    from vlm_tune.core.modeling import load_processor

    return load_processor(ModelConfig(model_name_or_path=str(model_dir)), False, recipe.get("image_longest_edge"),
                          recipe.get("do_image_splitting"))


def _mean(values: list[int]) -> float | None:
    return round(sum(values) / len(values), 1) if values else None


# --- running one command ---------------------------------------------------------------------
RUNNING: dict = {}  # the command running now: its own process group, so a timeout kills its whole tree


def stop_running(signum, frame) -> None:
    """SIGTERM/SIGINT (e.g. gpu_check.sh's `timeout`): take the running command's process group down too."""
    process = RUNNING.get("process")
    if process and process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    raise SystemExit(128 + signum)


def run_command(cmd: list[str], log_path: Path, threads: int, timeout: float) -> dict:
    """Run a command; its exit code, wall time, peak RSS (wait4: the largest process of its tree), the
    time each `{'loss': ...}` line appeared (per-step timing with logging_steps 1), its last lines."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", WANDB_MODE="disabled",
               OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    started = time.perf_counter()
    loss_times: list[float] = []
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO, env=env,
                               start_new_session=True)
    RUNNING["process"] = process

    def copy_output():
        with log_path.open("wb") as log:
            for line in process.stdout:
                if line.startswith(b"{'loss'"):
                    loss_times.append(time.perf_counter() - started)
                log.write(line)
                log.flush()

    reader = threading.Thread(target=copy_output, daemon=True)
    reader.start()
    memory = MemorySampler(process.pid, started)
    timer = threading.Timer(timeout, lambda: os.killpg(process.pid, signal.SIGKILL))
    timer.start()
    _, status, usage = os.wait4(process.pid, 0)
    timer.cancel()
    memory.stop()
    reader.join(timeout=10)
    code = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
    return {"exit": code, "timed_out": code == -signal.SIGKILL and wall >= timeout - 1, "wall_s": round(wall, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024), "loss_times_s": [round(t, 2) for t in loss_times],
            **memory.summary(), "tail": tail}


class MemorySampler:
    """The process's resident memory once a second, anonymous (tensors, heap) apart from file-backed
    (mapped safetensors, libraries): where the peak RSS comes from, and when."""

    def __init__(self, pid: int, started: float):
        self.pid, self.started, self.samples = pid, started, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            try:
                fields = dict(line.split(":", 1) for line in Path(f"/proc/{self.pid}/status").read_text().splitlines())
            except (OSError, ValueError):
                return
            if "RssAnon" in fields:
                mb = [int(fields[k].split()[0]) // 1024 for k in ("RssAnon", "RssFile")]
                self.samples.append([round(time.perf_counter() - self.started, 1), *mb])

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def summary(self) -> dict:
        if not self.samples:
            return {}
        peak = max(self.samples, key=lambda s: s[1] + s[2])
        return {"peak_anon_mb": max(s[1] for s in self.samples), "peak_file_mb": max(s[2] for s in self.samples),
                "at_peak_rss": {"t_s": peak[0], "anon_mb": peak[1], "file_mb": peak[2]},
                "rss_timeline": self.samples[:: max(1, len(self.samples) // 300)]}  # [s, anon MB, file MB]


def trainer_logs(log_path: Path) -> list[dict]:
    import ast

    logs = []
    for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("{'") and line.endswith("}"):
            try:
                logs.append(ast.literal_eval(line))
            except (ValueError, SyntaxError):
                pass
    return logs


# --- plan ------------------------------------------------------------------------------------
def plan_prediction(recipe_argv: list[str], json_path: Path, device: str, threads: int) -> dict:
    """`vlm-tune plan` on the same recipe and overrides: its tokens, parameters and memory, or why not."""
    cmd = [str(BIN / "vlm-tune"), "plan", *recipe_argv, "--samples", "64", "--json", str(json_path),
           "--target", "gpu" if device == "cuda" else "cpu"]
    json_path.unlink(missing_ok=True)
    ran = run_command(cmd, json_path.with_suffix(".log"), threads, timeout=600)
    if ran["exit"] != 0 or not json_path.is_file():
        reason = next((line for line in reversed(ran["tail"]) if line.startswith("error:")), f"exit {ran['exit']}")
        return {"error": reason}
    plan = json.loads(json_path.read_text(encoding="utf-8"))
    tokens, memory = plan["tokens"], plan["memory_mb"]
    return {"image_tokens": tokens["image_tokens"]["mean"], "text_tokens": tokens["text_tokens"]["mean"],
            "sequence_tokens": tokens["sequence_length"]["mean"], "trainable": plan["parameters"]["trainable"],
            "total_mb": memory["total"], "tensors_mb": memory["tensors_total"], "memory_mb": memory}


# --- one recipe ------------------------------------------------------------------------------
def recipe_argv(recipe: Path, model_dir: Path, data_dir: Path, out: Path, args) -> list[str]:
    job_extras = DPO_EXTRAS_OFF if recipe.stem.startswith("dpo") else SFT_EXTRAS_OFF
    machine = CPU_OVERRIDES if args.device == "cpu" else []
    if recipe.stem == "dpo_captioner":  # refines the captioner run of this bench (a fresh LoRA if there is none)
        captioner = out.with_name(out.name.replace("dpo_captioner", "sft_captioner"))
        job_extras = [*job_extras, "--sft_adapter", str(captioner) if (captioner / "adapter_config.json").is_file()
                      else ""]
    return ["--config", str(recipe), "--model_name_or_path", str(model_dir), "--dataset_name", str(data_dir),
            "--output_dir", str(out), "--overwrite_output_dir", "true", "--max_steps", str(args.steps),
            *machine, *EXTRAS_OFF, *job_extras]


def rows_needed(recipe: Path, args) -> int:
    """Training rows for --steps optimizer steps at the batch that runs (+1 spare)."""
    if args.device == "cpu":
        return args.steps + 1
    values = yaml.safe_load((REPO / recipe).read_text(encoding="utf-8"))
    return args.steps * values.get("per_device_train_batch_size", 8) * values.get("gradient_accumulation_steps", 1) + 1


def bench_recipe(arch: str, recipe_name: str, model_dir: Path, config, params: dict, args) -> dict:
    recipe = recipe_path(arch, recipe_name)
    rows = rows_needed(recipe, args)
    kind = DATA_KIND[recipe_name]
    data_dir = build_data(kind, args.workdir / "data" / f"{kind}-{rows}", rows)
    out = args.workdir / "runs" / f"{arch}-{recipe_name}"
    argv = recipe_argv(recipe, model_dir, data_dir, out, args)
    job = "dpo" if recipe_name.startswith("dpo") else "sft"
    result = {"arch": arch, "recipe": str(recipe), "job": job, "steps": args.steps,
              "command": shlex.join([f"vlm-tune {job}", *argv]), "output_dir": str(out)}
    print(f"[{arch}] {recipe_name}: vlm-tune {job} ... ({args.steps} steps)", flush=True)
    if args.dry_run:
        print("  vlm-tune " + job + " " + shlex.join(argv))
        return result
    result["plan"] = plan_prediction(argv, args.workdir / "runs" / f"{arch}-{recipe_name}-plan.json", args.device,
                                     args.threads) if job == "sft" else {"error": "plan reads SFT recipes only"}
    tokens = sft_tokens if job == "sft" else dpo_tokens
    result["measured_tokens"] = tokens(model_dir, str(recipe), data_dir, rows)
    result["work"] = step_work(params, result["measured_tokens"], config.scale_factor)
    result["total_params"] = params["vision"] + params["text"]
    skip = memory_guard(result["plan"], args) or time_guard(recipe_name, result, args)
    if skip:
        result["skipped"] = skip
        print(f"  skipped: {skip}", flush=True)
        return result
    if not has_weights(model_dir):
        print(f"  building {hub_id(arch)} with random weights at {model_dir}", flush=True)
        started = time.perf_counter()
        build_weights(config, model_dir)
        print(f"  built in {time.perf_counter() - started:.0f} s", flush=True)
    load_before = os.getloadavg()
    ran = run_command([str(BIN / "vlm-tune"), job, *argv], out.with_name(out.name + ".log"), args.threads, args.timeout)
    result.update(load_before=[round(x, 2) for x in load_before], **{k: v for k, v in ran.items() if k != "tail"})
    if ran["exit"] != 0:
        last = (ran["tail"] or ["(no output)"])[-1]
        result["error"] = (f"timed out after {args.timeout:.0f} s" if ran["timed_out"] else
                           next((line for line in reversed(ran["tail"]) if "Error" in line or line.startswith("error:")),
                                last))
        print(f"  FAILED: {result['error']}", flush=True)
        return result
    summary = json.loads((out / "run_summary.json").read_text(encoding="utf-8"))
    logs = trainer_logs(out.with_name(out.name + ".log"))
    final = next((log for log in reversed(logs) if "train_runtime" in log), {})
    counted = [float(log["num_tokens"]) for log in logs if "num_tokens" in log]  # printed as strings
    times = ran["loss_times_s"]
    result.update({
        "train_runtime_s": float(final["train_runtime"]) if "train_runtime" in final else None,
        "s_per_step": round(float(final["train_runtime"]) / args.steps, 1) if "train_runtime" in final else None,
        "step2_s": round(times[1] - times[0], 1) if len(times) >= 2 else None,
        "trainable": summary.get("trainable_params"),
        "peak_gpu_mb": summary.get("peak_gpu_mb"),
        "trainer_tokens_per_sample": round(counted[-1] / summary["steps"] / summary["effective_batch"], 1)
        if counted and summary.get("steps") else None,
        "train_loss": summary.get("train_loss"),
    })
    args.finished.append(result)
    print(f"  {result['s_per_step']} s/step, peak RSS {result['peak_rss_mb']:,} MB"
          + (f" (plan {result['plan']['total_mb']:,.0f})" if "total_mb" in result["plan"] else ""), flush=True)
    return result


# --- rows that cannot run here ---------------------------------------------------------------
def step_work(params: dict, tokens: dict, scale_factor: int) -> float:
    """FLOPs of one sample's step, roughly: the frozen vision tower's forward over every patch (image tokens ×
    scale² patches) + the language model's forward, backward and checkpoint recompute (≈ 3 forwards) over
    the sequence. Only ratios between rows of the same recipe are used."""
    return (2 * params["vision"] * tokens["image_tokens"] * scale_factor**2
            + 6 * params["text"] * tokens["sequence_tokens"])


def time_guard(recipe_name: str, result: dict, args) -> str | None:
    """Skip a row whose forecast exceeds --timeout: the same recipe measured on a smaller architecture,
    scaled by the step's work (steps) and by the parameter count (loading)."""
    done = [r for r in args.finished if Path(r["recipe"]).stem == recipe_name and r.get("s_per_step")]
    if not done or args.device != "cpu":
        return None
    ref = max(done, key=lambda r: r["work"])
    load = (ref["wall_s"] - ref["train_runtime_s"]) * result["total_params"] / ref["total_params"]
    forecast = load + args.steps * ref["s_per_step"] * result["work"] / ref["work"]
    result["forecast_s"] = round(forecast)
    if forecast > args.timeout:
        return (f"forecast {forecast / 60:.0f} min > {args.timeout / 60:.0f} min limit ({ref['arch']} took "
                f"{ref['s_per_step']:.0f} s/step; this step is {result['work'] / ref['work']:.1f}× its work)")
    return None


def memory_guard(plan: dict, args) -> str | None:
    """Skip a run `plan` says would not fit in the memory this machine has free now (cpu only)."""
    if args.device != "cpu" or "total_mb" not in plan:
        return None
    available = available_mb()
    if plan["total_mb"] * 1.5 > available:  # 1.5: plan's CPU estimates ran low by up to that (docs/benchmarks.md)
        return f"plan predicts {plan['total_mb']:,.0f} MB × 1.5 margin > {available:,.0f} MB available"
    return None


def available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("inf")


# --- captions --------------------------------------------------------------------------------
def bench_caption(arch: str, adapter_run: dict, args) -> dict:
    """`vlm-tune caption` of --captions images (of the adapter's own data kind) with the run's adapter."""
    recipe_name = Path(adapter_run["recipe"]).stem
    kind = DATA_KIND[recipe_name]
    images = args.workdir / "captions" / f"{arch}-{recipe_name}"
    shutil.rmtree(images, ignore_errors=True)
    images.mkdir(parents=True)
    data = build_data(kind, args.workdir / "data" / f"{kind}-{args.captions}", args.captions)
    import datasets

    for i, row in enumerate(datasets.load_from_disk(str(data))["train"].select(range(args.captions))):
        row["image"].convert("RGB").save(images / f"{i:02d}.png")
    cmd = [str(BIN / "vlm-tune"), "caption", str(images), "--adapter", adapter_run["output_dir"], "--format", "kohya",
           "--batch_size", str(args.captions)]
    result = {"arch": arch, "adapter": adapter_run["recipe"], "images": args.captions, "command": shlex.join(cmd)}
    print(f"[{arch}] caption {args.captions} images with the {recipe_name} adapter", flush=True)
    if args.dry_run:
        print("  " + shlex.join(cmd))
        return result
    ran = run_command(cmd, images.with_name(images.name + ".log"), args.threads, args.timeout)
    result.update({k: v for k, v in ran.items() if k not in ("tail", "loss_times_s")})
    report = images / "caption_report.json"
    if ran["exit"] != 0 or not report.is_file():
        result["error"] = (f"timed out after {args.timeout:.0f} s" if ran["timed_out"]
                           else (ran["tail"] or ["(no output)"])[-1])
        return result
    counts = json.loads(report.read_text(encoding="utf-8")).get("counts", {})
    result.update({"written": counts.get("written"), "failed": counts.get("failed"),
                   "caption_seconds": counts.get("seconds"),
                   "s_per_caption": round(counts["seconds"] / args.captions, 1) if counts.get("seconds") else None,
                   "reasons": sorted({f["reason"] for f in counts.get("failed_files", [])})})
    print(f"  written {result['written']}, failed {result['failed']}, peak RSS {result['peak_rss_mb']:,} MB",
          flush=True)
    return result


# --- one architecture ------------------------------------------------------------------------
def bench_arch(arch: str, args, save) -> list[dict]:
    model_dir = args.workdir / "models" / arch
    recipes = [r for r in args.recipes if (REPO / recipe_path(arch, r)).is_file()]
    if not recipes:
        return []
    config = prepare_config(arch, model_dir)
    params = parameter_split(config)
    results = []
    for recipe_name in recipes:
        earlier = next((r for r in args.earlier if row_key(r) == (arch, "run", recipe_name)
                        and r.get("exit") == 0), None)  # a skipped row is tried again (the machine may differ)
        if earlier:
            print(f"[{arch}] {recipe_name}: kept from {args.json_path} (--resume)", flush=True)
        results.append(earlier or bench_recipe(arch, recipe_name, model_dir, config, params, args))
        save(results)
    # Captions come from the captioner recipe's adapter (a ChartQA adapter at 10 tiles per image is not what
    # a user captions with, and costs minutes per image).
    captioner = next((r for r in results if r.get("exit") == 0 and r["recipe"].endswith("sft_captioner.yaml")), None)
    if args.captions and captioner:
        earlier = next((r for r in args.earlier if r.get("kind") == "caption" and r["arch"] == arch), None)
        kept = earlier and captioner in args.earlier  # the same adapter as last time: its captions stand
        results.append(earlier if kept else {"kind": "caption", **bench_caption(arch, captioner, args)})
        save(results)
    if args.clean_models and not args.dry_run:
        shutil.rmtree(model_dir, ignore_errors=True)  # 2.2B: 4.5 GB of disk
    return results


# --- tables ----------------------------------------------------------------------------------
def _ratio(measured, predicted) -> str:
    if not measured or not predicted:
        return "–"
    return f"{predicted / measured:.2f}"


def failed_cell(r: dict) -> str:
    if r.get("skipped"):
        forecast = f"forecast {r['forecast_s'] / 60:.0f} min" if r.get("forecast_s") else str(r["skipped"])[:60]
        return f"skipped ({forecast})"
    return "FAILED: " + str(r.get("error"))[:80]


def peak_phase(r: dict) -> str:
    """'loading' when the checkpoint file was still mapped at the RSS peak (file-backed pages near their
    maximum: from_pretrained reads the safetensors through mmap), else 'training'."""
    at = r.get("at_peak_rss")
    if not at or not r.get("peak_file_mb"):
        return "–"
    return "loading" if at["file_mb"] > 0.5 * r["peak_file_mb"] and r["peak_file_mb"] > 300 else "training"


def tables(data: dict) -> list[str]:
    from vlm_tune.core.markdown import fmt, md_table

    runs = [r for r in data["results"] if r.get("kind") != "caption"]
    captions = [r for r in data["results"] if r.get("kind") == "caption"]
    memory_key = "peak_gpu_mb" if data["device"] == "cuda" else "peak_rss_mb"
    plan_key = "tensors_mb" if data["device"] == "cuda" else "total_mb"
    head = ["arch", "recipe", "image tok (plan)", "text tok (plan)", "trainable (plan)", "s/step", "step 2 s",
            "peak GPU MB" if data["device"] == "cuda" else "peak RSS MB", "peak in", "plan MB", "plan ÷ measured",
            "load"]
    rows = []
    for r in runs:
        tok, plan = r.get("measured_tokens", {}), r.get("plan", {})
        failed = r.get("error") or r.get("skipped")
        rows.append([
            r["arch"], Path(r["recipe"]).stem,
            f"{fmt(tok.get('image_tokens'))} ({fmt(plan.get('image_tokens'))})",
            f"{fmt(tok.get('text_tokens'))} ({fmt(plan.get('text_tokens'))})",
            f"{fmt(r.get('trainable'))} ({fmt(plan.get('trainable'))})",
            fmt(r.get("s_per_step")) if not failed else failed_cell(r),
            fmt(r.get("step2_s")), fmt(r.get(memory_key)), peak_phase(r) if data["device"] == "cpu" else "–",
            fmt(plan.get(plan_key)),
            _ratio(r.get(memory_key), plan.get(plan_key)) if not failed else "–",
            fmt((r.get("load_before") or [None])[0]),
        ])
    lines = md_table(head, rows, align=["l", "l"] + ["r"] * (len(head) - 2))
    if captions:
        head = ["arch", "adapter", "images", "written", "empty/failed", "s/caption", "peak RSS MB", "note"]
        rows = [[c["arch"], Path(c["adapter"]).stem, c["images"], fmt(c.get("written")), fmt(c.get("failed")),
                 fmt(c.get("s_per_caption")), fmt(c.get("peak_rss_mb")),
                 "; ".join(c.get("reasons") or []) or str(c.get("error") or "")] for c in captions]
        lines += [""] + md_table(head, rows, align=["l", "l", "r", "r", "r", "r", "r", "l"])
    return lines


def row_key(r: dict) -> tuple[str, str, str]:
    return r["arch"], r.get("kind", "run"), Path(r.get("recipe") or r.get("adapter")).stem


def replan(path: Path, threads: int) -> None:
    """Predictions of the current `vlm-tune plan` for the runs of a saved JSON (same recipe, overrides,
    model folder and data, which must still be there)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    for r in data["results"]:
        if r.get("job") != "sft" or "command" not in r:
            continue
        argv = shlex.split(r["command"])[1:]  # after 'vlm-tune sft'
        out = path.with_name(f"replan-{r['arch']}-{Path(r['recipe']).stem}.json")
        r.setdefault("plan_at_run", r.get("plan"))
        r["plan"] = plan_prediction(argv, out, data["device"], threads)
        print(f"{r['arch']} {Path(r['recipe']).stem}: plan {r['plan'].get('total_mb')} MB (at run: "
              f"{(r['plan_at_run'] or {}).get('total_mb')}), measured {r.get('peak_rss_mb')}", flush=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")


# --- main ------------------------------------------------------------------------------------
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_arch", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default=",".join(SIZES), help="comma-separated sizes (both families) or names: "
                        + ", ".join(ARCHS))
    parser.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated: " + ", ".join(RECIPES))
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps per run (default 2)")
    parser.add_argument("--captions", type=int, default=4, help="images captioned per architecture (0: none)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of the runs (default 2)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per command before it is killed")
    parser.add_argument("--workdir", type=Path, default=REPO / "runs" / "bench-arch")
    parser.add_argument("--json", type=Path, help="default: WORKDIR/results-DEVICE.json (written after every run)")
    parser.add_argument("--resume", action="store_true", help="keep the finished runs already in --json")
    parser.add_argument("--clean-models", action="store_true", help="delete each model folder after its rows")
    parser.add_argument("--dry-run", action="store_true",
                        help="build the small data and each model's config + processor, print the commands; "
                        "train nothing")
    parser.add_argument("--references", type=Path, nargs="*", default=[],
                        help="JSON of earlier runs (e.g. the 256m rows) whose timings forecast this run's rows")
    parser.add_argument("--table", type=Path, nargs="+", help="print the tables of saved JSON(s) and exit")
    parser.add_argument("--replan", type=Path, nargs="+",
                        help="re-run `vlm-tune plan` for the SFT rows of saved JSON(s) (after a change to plan), "
                        "keeping the earlier prediction as plan_at_run, and exit")
    args = parser.parse_args(argv)
    if args.replan:
        for saved in args.replan:
            replan(saved, args.threads)
        return 0
    if args.table:
        saved = [json.loads(p.read_text(encoding="utf-8")) for p in args.table]
        print("\n".join(tables({**saved[0], "results": [r for data in saved for r in data["results"]]})))
        return 0
    archs = selected_archs(args.arch)
    args.recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    unknown = [r for r in args.recipes if r not in RECIPES]
    if unknown:
        parser.error(f"--recipes: unknown {', '.join(unknown)}; choose from {', '.join(RECIPES)}")
    signal.signal(signal.SIGTERM, stop_running)
    signal.signal(signal.SIGINT, stop_running)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the subprocesses too
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.workdir.mkdir(parents=True, exist_ok=True)
    path = args.json or args.workdir / f"results-{args.device}.json"
    args.json_path = path
    args.earlier = json.loads(path.read_text(encoding="utf-8"))["results"] if args.resume and path.is_file() else []
    # completed runs: the time forecast's references
    args.finished = [r for p in args.references for r in json.loads(p.read_text(encoding="utf-8"))["results"]
                     if r.get("s_per_step") and r.get("work")] + [r for r in args.earlier if r.get("s_per_step")]

    from bench.bench_sft import machine, versions

    info = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "machine": machine(args.device),
            "versions": versions(), "device": args.device, "threads": args.threads, "steps": args.steps,
            "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
            "command": "python -m bench.bench_arch " + shlex.join(argv if argv is not None else sys.argv[1:]),
            "overrides": {"machine": CPU_OVERRIDES if args.device == "cpu" else [], "all": EXTRAS_OFF,
                          "sft": SFT_EXTRAS_OFF, "dpo": DPO_EXTRAS_OFF}}
    print(f"date: {info['date']}\nmachine: {info['machine']}\nversions: {info['versions']}\nuptime: {info['uptime']}",
          flush=True)
    results: list[dict] = []
    # --resume: rows of the saved JSON that this invocation does not select stay in it as they are
    selected = {(a, "run", r) for a in archs for r in args.recipes}
    selected |= {(a, "caption", "sft_captioner") for a in archs if args.captions and "sft_captioner" in args.recipes}
    untouched = [r for r in args.earlier if row_key(r) not in selected]

    def save(arch_results: list[dict]) -> None:  # after every run: a long bench killed later keeps what it measured
        if not args.dry_run:
            rows = untouched + results + arch_results
            path.write_text(json.dumps({**info, "results": rows}, indent=2, default=str) + "\n", encoding="utf-8")

    for arch in archs:
        results += bench_arch(arch, args, save)
        save([])
    if args.dry_run:
        return 0
    print("\n" + "\n".join(tables({**info, "results": untouched + results})) + f"\n\nJSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
