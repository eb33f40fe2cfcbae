"""`vlm-tune sweep`: a grid of recipe overrides, trained one after another into one folder, resumable.

    vlm-tune sweep --config recipes/tiny/sft_chartqa.yaml --grid learning_rate=2e-4,1e-3 lora_r=8,32 \\
        [--seeds 0,1] [--sweep_dir runs/sweep-tiny] [--job sft|dpo] [--in_process] [--dry_run] \\
        [--any_recipe_field value ...]          (applied to every run, e.g. --max_steps 150)

Layout: `SWEEP_DIR/<short name from the grid values>[-seedN]/` is an ordinary run folder (adapter,
recipe.yaml, report.html, …) and `SWEEP_DIR/sweep.json` records the grid, every run's parameters,
seed, status, exit code, time and command. A run is finished when its `run_summary.json` exists: a
re-launched sweep skips it, continues an unfinished run from its last checkpoint, and starts a run that
was killed before its first checkpoint over (`--overwrite`: its folder holds nothing to continue). At the end,
`SWEEP_DIR/compare/` holds `vlm-tune compare` of the finished runs.

Each run is a subprocess by default: a fresh interpreter per run returns all memory (CUDA caches,
datasets, leaked references) to the system, one run's crash or OOM kill does not end the sweep, and
process-wide state (the W&B run, environment from a recipe's `env:`, RNG) cannot leak from one run
into the next. Its output goes to the console and to `RUN/sweep.log`. `--in_process` calls
`vlm_tune.train.sft.main` directly instead (no ~10 s interpreter start per run; used by the tests).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from vlm_tune.core.cli_args import ArgParser
from vlm_tune.core.errors import UserError
from vlm_tune.core.io import atomic_write_text
from vlm_tune.core.markdown import fmt
from vlm_tune.core.secrets import scrub_argv, scrub_text, secret_values
from vlm_tune.runs.commands import JOBS, entry_point
from vlm_tune.train.run_folder import run_entries

# short names for the usual sweep keys (others keep their full name)
ABBREVIATIONS = {
    "learning_rate": "lr", "lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "drop", "lora_scope": "scope",
    "per_device_train_batch_size": "bs", "gradient_accumulation_steps": "ga", "num_train_epochs": "ep",
    "max_steps": "steps", "lr_scheduler_type": "sched", "warmup_steps": "wu", "warmup_ratio": "wur",
    "weight_decay": "wd", "max_train_samples": "n", "image_longest_edge": "px", "beta": "beta",
}
RESERVED_FLAGS = ("output_dir", "config")


# --- grid ------------------------------------------------------------------------------------
@dataclass
class Point:
    name: str
    params: dict[str, str]
    seed: int | None  # the --seeds value of this run; None: the recipe's seed


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """['learning_rate=1e-4,2e-4', 'lora_r=8,32'] → {'learning_rate': ['1e-4', '2e-4'], 'lora_r': ['8', '32']}."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip().removeprefix("--")
        choices = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key or not choices:
            raise UserError(f"--grid: '{item}' is not KEY=VALUE[,VALUE...] (e.g. learning_rate=1e-4,2e-4)")
        if key in grid:
            raise UserError(f"--grid: '{key}' is given twice")
        if key in RESERVED_FLAGS:
            raise UserError(f"--grid: '{key}' cannot be swept (the sweep sets it per run)")
        grid[key] = choices
    return grid


def point_name(params: dict[str, str], seed: int | None) -> str:
    """'lr1e-4_r8' (+ '-seed1'): readable in a file browser and unique within the grid."""
    parts = [f"{ABBREVIATIONS.get(k, k)}{v}" for k, v in params.items()]
    name = re.sub(r"[^A-Za-z0-9.+\-_]", "_", "_".join(parts) or "run")
    return f"{name}-seed{seed}" if seed is not None else name


def expand(grid: dict[str, list[str]], seeds: list[int] | None) -> list[Point]:
    """Every combination of the grid values (first key slowest), times every seed."""
    points = []
    for values in itertools.product(*grid.values()) if grid else [()]:
        params = dict(zip(grid, values))
        for seed in seeds or [None]:
            points.append(Point(point_name(params, seed), params, seed))
    return points


def run_argv(config: str, point: Point, run_dir: Path, overrides: list[str], sweep_name: str) -> list[str]:
    """The job's command line for one point: recipe, common overrides, the point's values, its folder."""
    argv = ["--config", config, *overrides]
    for key, value in point.params.items():
        argv += [f"--{key}", value]
    if point.seed is not None:
        argv += ["--seed", str(point.seed)]
    argv += ["--output_dir", str(run_dir), "--run_name", f"{sweep_name}-{point.name}"]
    if "--run_tags" not in overrides:
        argv += ["--run_tags", f"sweep:{sweep_name}"]
    return argv + relaunch_flags(run_dir, overrides)


def relaunch_flags(run_dir: Path, overrides: list[str]) -> list[str]:
    """How a point's folder left by an earlier launch continues: a checkpoint (or a run that got to its end
    and was killed during the after-training work) is resumed; a run killed before its first checkpoint has
    nothing to continue from and starts over (the job refuses a folder holding a run without --overwrite)."""
    if is_finished(run_dir) or not run_dir.is_dir():
        return []
    if any(run_dir.glob("checkpoint-*")) or (run_dir / "trainer_state.json").is_file():
        return ["--resume_from_checkpoint", "true"]  # killed earlier: continue, don't start over
    own, _ = run_entries(run_dir)
    if own and "--overwrite" not in overrides:
        return ["--overwrite"]
    return []


def is_finished(run_dir: Path) -> bool:
    return (run_dir / "run_summary.json").is_file()


def check_points(job: str, points: list[Point], argvs: list[list[str]]) -> list[int]:
    """Parse every point's recipe before training anything (a typo must not surface after hours);
    return each run's seed as the recipe resolves it."""
    from vlm_tune.core.config import parse_recipe

    if job == "dpo":
        from trl import DPOConfig

        from vlm_tune.train.dpo import DpoScriptArguments

        config_cls, script_cls = DPOConfig, DpoScriptArguments
    else:
        from trl import SFTConfig

        from vlm_tune.core.config import VlmScriptArguments

        config_cls, script_cls = SFTConfig, VlmScriptArguments
    seeds = []
    for point, argv in zip(points, argvs):
        try:
            _, training_args, _, _ = parse_recipe(argv, config_cls, script_cls)
        except UserError as exc:
            raise UserError(f"sweep point {point.name}: {exc}") from None
        seeds.append(training_args.seed)
    return seeds


# --- launch ----------------------------------------------------------------------------------
def launch_subprocess(command: list[str], log_path: Path) -> int:
    """Run `command`, echo its output live and append it (secrets scrubbed) to `log_path`; return its exit code."""
    secrets = secret_values()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"$ {' '.join(scrub_argv(command))}\n")
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        pending = b""
        try:
            while chunk := process.stdout.read1(65536):
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
                pending += chunk
                cut = max(pending.rfind(b"\n"), pending.rfind(b"\r")) + 1  # scrub whole lines only
                if cut:
                    log.write(scrub_text(pending[:cut].decode("utf-8", "replace"), secrets))
                    log.flush()
                    pending = pending[cut:]
            log.write(scrub_text(pending.decode("utf-8", "replace"), secrets))
            return process.wait()
        except KeyboardInterrupt:
            process.wait()  # the child got the same Ctrl-C and saves nothing half-written
            raise


def launch_in_process(job: str, argv: list[str]) -> int:
    """Call the job's main() here; failures become an exit code so the sweep goes on."""
    try:
        entry_point(job)(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception:  # noqa: BLE001 — one failed point must not end the sweep
        traceback.print_exc()
        return 1
    finally:
        from vlm_tune.train.tracking import finish

        finish()  # a run that died mid-training must not leave its W&B run open for the next one
    return 0


def run_point(job: str, argv: list[str], run: dict, run_dir: Path, in_process: bool, save) -> int:
    """Train one point, keeping its record in sweep.json current (`save`) from start to exit code; a Ctrl-C
    marks it interrupted and ends the sweep. Return the job's exit code."""
    run.update(status="running", started=time.strftime("%Y-%m-%d %H:%M:%S"))
    save()
    started = time.perf_counter()
    try:
        if in_process:
            code = launch_in_process(job, argv)
        else:
            code = launch_subprocess([sys.executable, "-m", "vlm_tune", job, *argv], run_dir / "sweep.log")
    except KeyboardInterrupt:
        run.update(status="interrupted", seconds=round(time.perf_counter() - started, 1))
        save()
        raise
    run.update(returncode=code, seconds=round(time.perf_counter() - started, 1),
               status="finished" if code == 0 and is_finished(run_dir) else "failed")
    save()
    return code


# --- sweep -----------------------------------------------------------------------------------
def _read_state(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _summary_line(run_dir: Path) -> str:
    if not is_finished(run_dir):
        return ""
    summary = json.loads((run_dir / "run_summary.json").read_text(encoding="utf-8"))
    scores = [f"{k.removesuffix('_pct')} {v:.1f} %" for k, v in summary.items() if k.endswith("_pct")]
    return f"loss {fmt(summary.get('train_loss'))}, {summary.get('train_seconds', 0):.0f} s" + (
        ", " + ", ".join(scores) if scores else "")


def run_sweep(config: str, grid: dict[str, list[str]], sweep_dir: str | Path, overrides: list[str] | None = None,
              seeds: list[int] | None = None, job: str = "sft", in_process: bool = False,
              dry_run: bool = False, compare: bool = True) -> dict:
    """Run every grid point not finished yet, sequentially; return the sweep state (also in sweep.json)."""
    overrides = list(overrides or [])
    for flag in (*RESERVED_FLAGS, *grid, *(["seed"] if seeds else [])):
        if f"--{flag}" in overrides or any(o.startswith(f"--{flag}=") for o in overrides):
            raise UserError(f"--{flag} is set by the sweep (grid, --seeds or the run folder); remove it")
    if job not in JOBS:
        raise UserError(f"--job must be one of {', '.join(JOBS)}")
    sweep_dir = Path(sweep_dir)
    points = expand(grid, seeds)
    if len({p.name for p in points}) != len(points):
        raise UserError("two grid points get the same folder name; use distinct values")
    argvs = [run_argv(config, p, sweep_dir / p.name, overrides, sweep_dir.name) for p in points]
    resolved_seeds = check_points(job, points, argvs)

    state_path = sweep_dir / "sweep.json"
    previous = {r["name"]: r for r in _read_state(state_path).get("runs", [])}
    runs = {p.name: {**previous.get(p.name, {}), "name": p.name, "params": p.params, "seed": seed,
                     "command": scrub_argv([f"vlm-tune {job}", *argv])}
            for p, seed, argv in zip(points, resolved_seeds, argvs)}
    for name, run in runs.items():  # the run folder decides; sweep.json may be stale (a folder deleted to redo it)
        earlier = run.get("status")
        run["status"] = ("finished" if is_finished(sweep_dir / name)
                         else earlier if earlier in ("failed", "interrupted") else "pending")
    others = {n: r for n, r in previous.items() if n not in runs}  # runs of earlier grids in this folder
    state = {"recipe": config, "job": job, "grid": grid, "seeds": seeds, "overrides": scrub_argv(overrides),
             "launcher": "in_process" if in_process else "subprocess", "runs": [*runs.values(), *others.values()]}

    def save() -> None:
        atomic_write_text(state_path, json.dumps(state, indent=2) + "\n")

    todo = [p for p in points if runs[p.name]["status"] != "finished"]
    print(f"sweep {sweep_dir}: {len(points)} run(s), {len(points) - len(todo)} finished, {len(todo)} to run")
    for point in points:
        print(f"  {'done' if point not in todo else 'todo'}  {point.name}")
    if dry_run:
        for point, argv in zip(points, argvs):
            print("  $ " + " ".join(scrub_argv([f"vlm-tune {job}", *argv])))
        return state
    sweep_dir.mkdir(parents=True, exist_ok=True)
    save()

    for number, (point, argv) in enumerate(zip(points, argvs), 1):
        run, run_dir = runs[point.name], sweep_dir / point.name
        if run["status"] == "finished":
            continue
        print(f"\n=== sweep run {number}/{len(points)}: {point.name} ({', '.join(f'{k}={v}' for k, v in point.params.items())}"
              f"{', seed ' + str(run['seed']) if run['seed'] is not None else ''}) ===", flush=True)
        code = run_point(job, argv, run, run_dir, in_process, save)
        if run["status"] == "failed":
            print(f"sweep run {point.name} failed (exit code {code}); going on with the next one", file=sys.stderr)

    print(f"\nsweep {sweep_dir}:")
    for point in points:
        run = runs[point.name]
        print(f"  {run['status']:<9} {point.name:<28} seed {run['seed']}  {_summary_line(sweep_dir / point.name)}")
    finished = [sweep_dir / p.name for p in points if runs[p.name]["status"] == "finished"]
    if compare and len(finished) >= 2:
        from vlm_tune.runs.compare import compare_runs

        path = compare_runs(finished, sweep_dir / "compare")
        state["compare"] = str(path)
        save()
        print(f"comparison: {path}")
    return state


# --- command ---------------------------------------------------------------------------------
def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds: '{text}' is not a comma-separated list of integers") from None


def main(argv: list[str] | None = None) -> int:
    parser = ArgParser(prog="vlm-tune sweep", description="Train a grid of recipe overrides into one folder.",
                       epilog="Any other --field value (e.g. --max_steps 150) is applied to every run. See docs/tracking.md.")
    parser.add_argument("--config", required=True, help="the recipe every run starts from")
    parser.add_argument("--grid", nargs="+", default=[], metavar="KEY=V1,V2",
                        help="recipe keys and the values to try (every combination runs)")
    parser.add_argument("--seeds", help="comma-separated seeds: each grid point runs once per seed (noise)")
    parser.add_argument("--sweep_dir", help="the sweep folder (default: runs/sweep-<recipe name>)")
    parser.add_argument("--job", default="sft", choices=JOBS)
    parser.add_argument("--in_process", action="store_true", help="run in this process (no subprocess per run)")
    parser.add_argument("--dry_run", action="store_true", help="print the runs and commands, train nothing")
    parser.add_argument("--no_compare", action="store_true", help="skip the comparison at the end")
    args, overrides = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if not Path(args.config).is_file():
        raise UserError(f"recipe file not found: {args.config}")
    sweep_dir = args.sweep_dir or f"runs/sweep-{Path(args.config).stem}"
    state = run_sweep(args.config, parse_grid(args.grid), sweep_dir, overrides, _seeds(args.seeds) if args.seeds else None,
                      args.job, args.in_process, args.dry_run, not args.no_compare)
    failed = [r["name"] for r in state["runs"] if r.get("status") == "failed"]
    return 1 if failed else 0
