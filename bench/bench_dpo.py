"""DPO throughput: plain `trl dpo` (TRL's own, unmodified script) vs `vlm-tune dpo`, measured in one run.

Both sides train the same model folder on the same preference pairs (the sample team ratings → pairs,
as `make dpo` builds them; TRL reads a parquet export of exactly the rows we load), in the same order
(seed 42), with the same optimizer steps, per-device batch, accumulation, learning-rate schedule, beta,
loss, LoRA r/alpha/dropout/target modules (the exact module names our `lora_scope` selects), 4-bit
setting, precision (fp32 on CPU) and gradient checkpointing. The image budget is the recipe's, saved
into the model folder's processor so TRL's script uses it too. Rows:

- `tiny`  the project's embedded model with `recipes/tiny/dpo_ratings.yaml`.
- `256m`  the SmolVLM-256M architecture (random weights, stand-in tokenizer; built like
          `bench/bench_sft.py`'s GPU rows) with `recipes/smolvlm-256m/dpo_ratings.yaml`: 1024-px longest
          edge with splitting = 4 + 1 tiles of 512 px, 320 image tokens per image.
- `500m`  the SmolVLM-500M architecture with `recipes/smolvlm-500m/dpo_ratings.yaml` (the same settings).

Sides: `plain` = `python -m trl.scripts.dpo --config trl_dpo.yaml` (what `trl dpo` runs, minus the
`accelerate launch` wrapper process), TRL's defaults for everything not listed above (its adapters in
bf16); `ours` = `vlm-tune dpo` with the recipe. Measured per side, one subprocess each: samples/s
(pairs/s) and tokens/s over the Trainer's `train_runtime` (model loading is outside it; tokens = the
non-pad tokens of both rows of every pair, DPOTrainer's own `num_tokens`), peak RSS (`os.wait4`).

Where the time goes (`probe`, on by default, `--no-probe` to skip): each side runs under
`python -m bench.bench_dpo probe OUT.json -- ...`, which runs the command unmodified (runpy) with two
global module hooks timing the vision tower's forward calls and counting the images it encodes, and
tensor hooks timing the backward through it (gradient arriving at its output → at its patch
embeddings). The overhead is a few Python calls per module call.

Proof both sides train the same thing: the first logged step's loss, `logps/chosen` and
`logps/rejected` (TRL's own metrics) must agree; the table flags a mismatch.

Usage (the machine is shared: the runs use OMP_NUM_THREADS=1 unless --threads says otherwise):
    python -m bench.bench_dpo --rows tiny,256m,500m --steps 3
    [--batch N] [--accumulation N] [--charts N] [--workdir DIR] [--json PATH] [--no-probe] [--dry-run]
"""

from __future__ import annotations

import argparse
import ast
import datetime
import json
import os
import runpy
import shlex
import shutil
import sys
import time
from pathlib import Path

import yaml

from bench.bench_sft import BIN, REPO, build_model, lora_module_names, machine, run_case, versions

ROWS = {
    "tiny": {"recipe": "recipes/tiny/dpo_ratings.yaml", "steps": 10},
    "256m": {"recipe": "recipes/smolvlm-256m/dpo_ratings.yaml", "steps": 3},
    "500m": {"recipe": "recipes/smolvlm-500m/dpo_ratings.yaml", "steps": 3},
}
CPU_OVERRIDES = ["--bf16", "false", "--dtype", "float32"]  # the recipes' bf16 needs a GPU: fp32 on CPU, both sides
FIRST_STEP_KEYS = ("loss", "logps/chosen", "logps/rejected")


# --- model, pairs ----------------------------------------------------------------------------
def parse_dpo_recipe(recipe: str, overrides: list[str]):
    from trl import DPOConfig

    from vlm_tune.core.config import parse_recipe
    from vlm_tune.train.dpo import DpoScriptArguments

    return parse_recipe(["--config", recipe, *overrides], DPOConfig, DpoScriptArguments)


def prepare_model(row: str, folder: Path, script_args) -> None:
    """The row's model folder, its processor carrying the recipe's image budget (TRL's script reads it)."""
    from transformers import AutoProcessor

    from vlm_tune.core.modeling import set_image_budget

    if not (folder / "config.json").is_file():
        print(f"building the {row} model at {folder}", flush=True)
        build_model(row, folder, "cpu")
    processor = AutoProcessor.from_pretrained(folder)
    set_image_budget(processor, script_args.image_longest_edge, script_args.do_image_splitting)
    processor.save_pretrained(folder)


def prepare_pairs(workdir: Path, charts: int) -> tuple[Path, Path]:
    """(pairs folder for `vlm-tune dpo`, parquet folder of the same train rows for TRL's script)."""
    from datasets import load_from_disk

    from vlm_tune.train.pairs import PREFERENCE_COLUMNS, ensure_pairs

    pairs = workdir / "data" / f"pairs-{charts}"
    script_args, *_ = parse_dpo_recipe(ROWS["tiny"]["recipe"], [
        "--ratings_file", str(workdir / "data" / f"ratings-{charts}" / "ratings.csv"), "--sample_ratings", "true",
        "--sample_charts", str(charts), "--dataset_name", str(pairs)])
    ensure_pairs(script_args)
    parquet = workdir / "data" / f"pairs-{charts}-parquet"
    if not (parquet / "train.parquet").is_file():
        parquet.mkdir(parents=True, exist_ok=True)
        load_from_disk(str(pairs))["train"].select_columns(list(PREFERENCE_COLUMNS)).to_parquet(
            str(parquet / "train.parquet"))
    return pairs, parquet


# --- the two sides ---------------------------------------------------------------------------
def settings(args) -> list[str]:
    """Our recipe overrides, the same for both sides (TRL's config is derived from the parsed result)."""
    batch = ["--per_device_train_batch_size", str(args.batch)] if args.batch else []
    return [*CPU_OVERRIDES, *batch, "--gradient_accumulation_steps", str(args.accumulation)]


def trl_config(training_args, model_args, *, model_dir, parquet, out, steps, targets) -> dict:
    """TRL's script config: our resolved recipe for everything that must match, TRL's defaults for the rest."""
    return {
        "model_name_or_path": str(model_dir), "dtype": "float32",
        "load_in_4bit": model_args.load_in_4bit, "bnb_4bit_quant_type": model_args.bnb_4bit_quant_type,
        "use_bnb_nested_quant": model_args.use_bnb_nested_quant,
        "use_peft": model_args.use_peft, "lora_r": model_args.lora_r, "lora_alpha": model_args.lora_alpha,
        "lora_dropout": model_args.lora_dropout, "lora_target_modules": targets,
        "dataset_name": str(parquet), "dataset_train_split": "train", "output_dir": str(out), "max_steps": steps,
        "per_device_train_batch_size": training_args.per_device_train_batch_size,
        "gradient_accumulation_steps": training_args.gradient_accumulation_steps,
        "learning_rate": training_args.learning_rate,
        "lr_scheduler_type": str(getattr(training_args.lr_scheduler_type, "value", training_args.lr_scheduler_type)),
        "warmup_steps": training_args.warmup_steps, "seed": training_args.seed,
        "beta": training_args.beta, "loss_type": list(training_args.loss_type),
        "label_smoothing": training_args.label_smoothing, "bf16": False, "fp16": False,
        "gradient_checkpointing": training_args.gradient_checkpointing, "max_length": training_args.max_length,
        "attn_implementation": model_args.attn_implementation,
        "logging_steps": 1, "save_strategy": "no", "eval_strategy": "no", "report_to": "none", "disable_tqdm": True,
    }


def our_argv(recipe: str, overrides: list[str], *, model_dir, pairs, out, steps) -> list[str]:
    return ["dpo", "--config", recipe, "--model_name_or_path", str(model_dir), "--build_tiny_model", "false",
            "--ratings_file", "", "--dataset_name", str(pairs), "--dataset_test_split", "none", "--output_dir",
            str(out), "--overwrite_output_dir", "true", "--max_steps", str(steps), "--logging_steps", "1",
            "--save_strategy", "no", "--eval_strategy",
            "no", "--report_to", "none", "--disable_tqdm", "true", *overrides]


def first_logged_step(log_path: Path) -> dict:
    for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("{'") and line.endswith("}") and "'loss'" in line:
            logged = ast.literal_eval(line)
            return {k: float(logged[k]) for k in FIRST_STEP_KEYS if k in logged}
    return {}


def bench_row(row: str, args, workdir: Path, pairs: Path, parquet: Path) -> list[dict]:
    recipe = ROWS[row]["recipe"]
    steps = args.steps or ROWS[row]["steps"]
    overrides = settings(args)
    script_args, training_args, model_args, _ = parse_dpo_recipe(recipe, overrides)
    model_dir = workdir / "models" / row
    prepare_model(row, model_dir, script_args)
    targets = lora_module_names(model_dir, script_args.lora_scope, model_args.lora_target_modules)
    pairs_per_step = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
    results = []
    for side in ("plain", "ours"):
        out, log_path = workdir / "runs" / f"{row}-{side}", workdir / "runs" / f"{row}-{side}.log"
        shutil.rmtree(out, ignore_errors=True)  # one run per folder
        out.parent.mkdir(parents=True, exist_ok=True)
        if side == "plain":
            config = trl_config(training_args, model_args, model_dir=model_dir, parquet=parquet, out=out, steps=steps,
                                targets=targets)
            config_path = workdir / "runs" / f"{row}-trl_dpo.yaml"
            config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
            command = ["-m", "trl.scripts.dpo", "--config", str(config_path)]
        else:
            command = ["-m", "vlm_tune", *our_argv(recipe, overrides, model_dir=model_dir, pairs=pairs, out=out,
                                                   steps=steps)]
        probe = workdir / "runs" / f"{row}-{side}-probe.json"
        cmd = [str(BIN / "python"), *(["-m", "bench.bench_dpo", "probe", str(probe), "--"] if args.probe else []),
               *command]
        print(f"[{row}] {side}: {steps} steps × {pairs_per_step} pairs", flush=True)
        if args.dry_run:
            print("  " + shlex.join(cmd))
            continue
        try:
            result = run_case(cmd, log_path, "cpu", args.threads)
        except RuntimeError as exc:  # e.g. out of memory: report it and go on
            print(exc, flush=True)
            results.append({"row": row, "side": side, "command": cmd, "error": str(exc).splitlines()[0]})
            continue
        pairs_done = steps * pairs_per_step
        result.update({"row": row, "side": side, "command": cmd, "steps": steps, "pairs": pairs_done,
                       "samples_per_s": pairs_done / result["train_runtime_s"],
                       "tokens_per_s": (result["trainer_num_tokens"] or 0) / result["train_runtime_s"],
                       "first_step": first_logged_step(log_path)})
        if args.probe and probe.is_file():
            result["probe"] = json.loads(probe.read_text(encoding="utf-8"))
        results.append(result)
    return results




# --- probe: where the time goes --------------------------------------------------------------
class VisionProbe:
    """Global module hooks: seconds in the vision tower's forward calls, images its patch embeddings
    encode, and seconds of backward through it (gradient at the tower's output → gradient at its first
    encoder layer's input). Global hooks run before a module's own, so the backward's end is watched on
    the first layer's input: transformers' input-grad hook has run on the embeddings' output by then."""

    def __init__(self):
        self.calls = self.images = self.backward_passes = 0
        self.forward_s = self.backward_s = 0.0
        self._started: list[float] = []
        self._backward_started: list[float] = []
        self._first_layer = False

    @staticmethod
    def _kind(module) -> str:
        name = type(module).__name__
        for suffix, kind in (("VisionTransformer", "tower"), ("VisionEmbeddings", "embeddings"),
                             ("EncoderLayer", "layer")):
            if name.endswith(suffix):
                return kind
        return ""

    def pre(self, module, inputs):
        kind = self._kind(module)
        if kind == "tower":
            self._started.append(time.perf_counter())
            self._first_layer = True
        elif kind == "layer" and self._first_layer:
            self._first_layer = False
            if inputs and getattr(inputs[0], "requires_grad", False):
                inputs[0].register_hook(self._backward_out)

    def post(self, module, inputs, output):
        kind = self._kind(module)
        if kind == "tower":
            self.calls += 1
            self.forward_s += time.perf_counter() - self._started.pop()
            hidden = output.last_hidden_state
            if hidden.requires_grad:
                hidden.register_hook(self._backward_in)
        elif kind == "embeddings":
            self.images += output.shape[0]

    def _backward_in(self, grad):
        self._backward_started.append(time.perf_counter())

    def _backward_out(self, grad):
        if self._backward_started:
            self.backward_s += time.perf_counter() - self._backward_started.pop()
            self.backward_passes += 1

    def summary(self) -> dict:
        return {"tower_calls": self.calls, "images_encoded": self.images, "vision_forward_s": self.forward_s,
                "vision_backward_s": self.backward_s, "backward_passes_through_tower": self.backward_passes}


def peak_rss_mb() -> float:
    """This process's peak resident set so far (VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def watch_train_peak(memory: dict) -> None:
    """Peak RSS of `Trainer.train` alone (an observer around it; the kernel's peak is reset as it starts,
    so model loading — and the pages of the weight files it maps — do not count), and the RSS it
    started from."""
    from transformers import Trainer

    train = Trainer.train

    def observed_train(self, *args, **kwargs):
        memory["peak_rss_before_train_mb"] = peak_rss_mb()
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        except OSError:
            pass
        memory["rss_at_train_start_mb"] = rss_mb()
        try:
            return train(self, *args, **kwargs)
        finally:
            memory["peak_rss_in_train_mb"] = peak_rss_mb()

    Trainer.train = observed_train


def probe(out: Path, command: list[str]) -> int:
    """Run `command` (`-m module args...`) unmodified in this interpreter, with the probe's hooks."""
    import torch

    if command[:1] != ["-m"] or len(command) < 2:
        raise SystemExit("probe: the command must be -m MODULE [ARGS...]")
    vision, memory = VisionProbe(), {}
    watch_train_peak(memory)
    torch.nn.modules.module.register_module_forward_pre_hook(vision.pre)
    torch.nn.modules.module.register_module_forward_hook(vision.post)
    sys.argv = [command[1], *command[2:]]
    code = 0
    try:
        runpy.run_module(command[1], run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        summary = {**vision.summary(), **memory}
        out.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return code


# --- report ----------------------------------------------------------------------------------
def print_table(row: str, results: list[dict], tiles_per_pair: float | None) -> None:
    for r in results:
        if "error" in r:
            print(f"\n{row} {r['side']}: FAILED — {r['error']}")
    done = {r["side"]: r for r in results if "error" not in r}
    plain = done.get("plain")
    head = ["side", "pairs/s", "tokens/s", "× plain", "train s", "peak RSS MB", "in train MB", "mem × plain",
            "vision fwd s", "vision bwd s", "vision share", "tower passes/pair", "load"]
    print(f"\n{row}\n| " + " | ".join(head) + " |\n|" + "|".join("---" for _ in head) + "|")
    for side, r in done.items():
        p = r.get("probe") or {}
        memory = p.get("peak_rss_in_train_mb", r["peak_rss_mb"])  # training's own peak when probed
        plain_memory = (plain.get("probe") or {}).get("peak_rss_in_train_mb", plain["peak_rss_mb"]) if plain else None
        vision_s = p.get("vision_forward_s", 0) + p.get("vision_backward_s", 0)
        passes = p["images_encoded"] / (r["pairs"] * tiles_per_pair) if p and tiles_per_pair else None
        cells = [side, f"{r['samples_per_s']:.3f}", f"{r['tokens_per_s']:,.0f}",
                 f"{r['samples_per_s'] / plain['samples_per_s']:.2f}" if plain else "—", f"{r['train_runtime_s']:.1f}",
                 f"{r['peak_rss_mb']:,.0f}", f"{p['peak_rss_in_train_mb']:,.0f}" if p else "—",
                 f"{memory / plain_memory:.2f}" if plain_memory else "—",
                 f"{p['vision_forward_s']:.1f}" if p else "—", f"{p['vision_backward_s']:.1f}" if p else "—",
                 f"{100 * vision_s / r['train_runtime_s']:.0f} %" if p else "—",
                 f"{passes:.2f}" if passes is not None else "—", f"{r['load_before']:.1f}"]
        print("| " + " | ".join(cells) + " |")
    if plain and "ours" in done:
        a, b = plain["first_step"], done["ours"]["first_step"]
        agree = a.keys() == b.keys() and all(abs(a[k] - b[k]) <= 1e-3 * max(1.0, abs(a[k])) for k in a)
        print(f"  first logged step: plain {a}, ours {b} — {'agree' if agree else 'MISMATCH'}")


def tiles_per_pair(model_dir: Path, pairs: Path, n: int = 8) -> float:
    """Tiles (vision-encoder images) per pair at the folder's image budget, over the first `n` pairs."""
    from datasets import load_from_disk
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(model_dir)
    rows = load_from_disk(str(pairs))["train"].select(range(n))
    tiles = 0
    for row in rows:
        out = processor.image_processor([image.convert("RGB") for image in row["images"]], return_tensors="pt")
        tiles += int(out["pixel_values"].shape[1]) * len(row["images"])
    return tiles / n


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["probe"]:  # python -m bench.bench_dpo probe OUT.json -- -m MODULE ARGS...
        return probe(Path(argv[1]), argv[3:] if argv[2:3] == ["--"] else argv[2:])
    parser = argparse.ArgumentParser(prog="python -m bench.bench_dpo", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="tiny,256m,500m", help="comma-separated: " + ",".join(ROWS))
    parser.add_argument("--steps", type=int, help="optimizer steps per side (default: tiny 10, others 3)")
    parser.add_argument("--batch", type=int, help="per-device pairs (default: the recipe's)")
    parser.add_argument("--accumulation", type=int, default=1, help="gradient accumulation (default 1 on CPU)")
    parser.add_argument("--charts", type=int, default=60, help="sample-rating charts the pairs come from")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the runs (default 1)")
    parser.add_argument("--no-probe", dest="probe", action="store_false", help="skip the vision-time probe")
    parser.add_argument("--workdir", type=Path, default=REPO / "runs" / "bench-dpo")
    parser.add_argument("--json", type=Path, help="default: WORKDIR/results-cpu.json")
    parser.add_argument("--dry-run", action="store_true", help="build model and pairs, print the commands")
    args = parser.parse_args(argv)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        parser.error(f"unknown row(s) {', '.join(unknown)}; choose from {', '.join(ROWS)}")
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # CPU rows (the subprocesses too)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    info = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "machine": machine("cpu"),
            "versions": versions(), "threads": args.threads, "load_average": os.getloadavg(),
            "command": "python -m bench.bench_dpo " + shlex.join(argv)}
    print(f"date: {info['date']}\nmachine: {info['machine']}\nversions: {info['versions']}\n"
          f"load average (1, 5, 15 min): {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    pairs, parquet = prepare_pairs(args.workdir, args.charts)
    results = []
    for row in rows:
        row_results = bench_row(row, args, args.workdir, pairs, parquet)
        if not args.dry_run:
            print_table(row, row_results, tiles_per_pair(args.workdir / "models" / row, pairs))
        results += row_results
    if args.dry_run:
        return 0
    path = args.json or args.workdir / "results-cpu.json"
    path.write_text(json.dumps({**info, "results": results}, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"\npeak RSS = the process's; in train = Trainer.train's own peak (probe; mem × plain compares it); "
          f"vision share = (vision forward + backward through the tower) / train_runtime; tower passes/pair = "
          f"images encoded / (pairs × tiles per pair); load = 1-min load average when the side started "
          f"({os.cpu_count()} cores).\nJSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
