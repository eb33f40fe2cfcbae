"""`make loop`: the captioner learns a team's taste, end to end and measured — offline, on a CPU.

    python -m vlm_tune.runs.loop [--run_dir runs/tiny-loop] [--rate_images 400] [--samples 4] [--overwrite]

captioner (trained if missing) → candidates for scenes it never saw → the simulated team rates them through
a real `vlm-tune rate serve` (HTTP API, nothing written behind the server's back) → `vlm-tune rate export`
→ `python -m data_builders.ratings` (z-scores, α, pairs) → `vlm-tune dpo` from the captioner's adapter →
`vlm-tune caption` of held-out scenes nobody rated, before and after → RUN_DIR/loop_summary.json and a
table. Every step is a command a real team would type (docs/loop.md lists them); the simulated team and
its taste are vlm_tune.runs.simulated_team, the measuring is vlm_tune.runs.loop_measure.

A rerun continues where a run stopped (each finished step is kept); after a finished loop, --overwrite
starts over. Commands run as subprocesses (`--in_process`: in this process, as the test does); the
rating server is always its own process.
"""

from __future__ import annotations

import json
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

import data_builders.ratings
import data_builders.scenes
from vlm_tune.core.cli_args import ArgParser
from vlm_tune.core.errors import UserError, run_command
from vlm_tune.runs.commands import run as run_command_in_process
from vlm_tune.runs.loop_measure import finish
from vlm_tune.runs.simulated_team import image_scenes, rate_together

SERVER_START_TIMEOUT_S = 180  # a loaded 2-core machine imports fastapi slowly


# --- arguments and paths ---------------------------------------------------------------------
def parse_args(argv: list[str]):
    p = ArgParser(prog="python -m vlm_tune.runs.loop", description="Candidates → team ratings → DPO → re-caption.")
    p.add_argument("--run_dir", type=Path, default=Path("runs/tiny-loop"))
    p.add_argument("--captioner", type=Path, default=Path("runs/tiny-sft-captioner-loop"),
                   help="the SFT captioner's run folder (trained with --captioner_recipe if it has no adapter)")
    p.add_argument("--captioner_recipe", default="recipes/tiny/sft_captioner_loop.yaml")
    p.add_argument("--dpo_recipe", default="recipes/tiny/dpo_captioner.yaml")
    p.add_argument("--rate_images", type=int, default=400, help="scenes the team rates (new ones, never trained on)")
    p.add_argument("--rate_seed", type=int, default=1, help="seed of the rated scenes (the captioner's data is seed 0)")
    p.add_argument("--heldout", type=int, default=None, help="held-out scenes re-captioned (default: the whole test split)")
    p.add_argument("--samples", type=int, default=4, help="sampled candidates per image (plus the greedy one)")
    p.add_argument("--temperature", type=float, default=0.7,
                   help="sampling temperature of the candidates (hotter: more of them wrong, pairs about mistakes)")
    p.add_argument("--top_p", type=float, default=0.95)
    p.add_argument("--max_new_tokens", type=int, default=64, help="the wordiest phrasing is ~50 tokens")
    p.add_argument("--pairs", default="best-worst", help="pair strategy of data_builders.ratings")
    p.add_argument("--test_size", type=float, default=0.2, help="share of rated images whose pairs are held out")
    p.add_argument("--captions_on_disk", action="store_true",
                   help="give every rated image its reference caption as a kohya .txt, as captions a team already "
                        "has (candidates include them)")
    p.add_argument("--sft_args", default="", help="extra flags for the captioner's `vlm-tune sft` (one string)")
    p.add_argument("--dpo_args", default="", help="extra flags for `vlm-tune dpo` (one string)")
    p.add_argument("--in_process", action="store_true", help="run the vlm-tune commands in this process")
    p.add_argument("--overwrite", action="store_true", help="start a finished run over (deletes --run_dir)")
    args = p.parse_args(argv)
    if args.rate_images < 10:
        raise UserError(f"--rate_images must be >= 10 (pairs are split into train and test), got {args.rate_images}")
    return args


class LoopPaths:
    """Every file and folder of one loop run, in one place."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.rate_data = run_dir / "rate-scenes-data"  # the rated scenes' dataset (deleted once exported)
        self.rate_scenes = run_dir / "rate-scenes"  # images/ + truth.jsonl of the scenes the team rates
        self.rating = run_dir / "rating"
        self.tasks = self.rating / "tasks.jsonl"  # + tasks.sources.jsonl (how each candidate was drawn)
        self.db = self.rating / "team.db"
        self.ratings_csv = run_dir / "ratings.csv"  # beside the images it names (the builder reads no others)
        self.progress = self.rating / "progress.json"  # the status page's numbers after rating
        self.server_log = self.rating / "server.log"
        self.pairs = run_dir / "pairs"
        self.dpo = run_dir / "dpo"
        self.before = run_dir / "heldout-before"  # held-out images captioned by the SFT captioner
        self.after = run_dir / "heldout-after"  # the same images captioned after DPO
        self.summary = run_dir / "loop_summary.json"


# --- launching commands ----------------------------------------------------------------------
def vlm_tune(args, name: str, argv: list[str]) -> None:
    """`vlm-tune NAME ARGV`, as a subprocess (default) or in this process; a failure stops the loop."""
    shown = " ".join(shlex.quote(a) for a in ["vlm-tune", name, *argv])
    print(f"\n$ {shown}", flush=True)
    if args.in_process:
        code = run_command(lambda a: run_command_in_process(name, a), argv)
    else:
        code = subprocess.call([sys.executable, "-m", "vlm_tune", name, *argv])
    if code != 0:
        raise UserError(f"`{shown}` failed (exit code {code}); fix it and rerun the loop to continue")


def builder(module, name: str, argv: list[str]) -> None:
    """`python -m data_builders.NAME ARGV` (light: always in this process)."""
    print(f"\n$ python -m data_builders.{name} {' '.join(shlex.quote(a) for a in argv)}", flush=True)
    if run_command(module.main, argv) != 0:
        raise UserError(f"python -m data_builders.{name} failed; fix it and rerun the loop to continue")


# --- steps -----------------------------------------------------------------------------------
def train_captioner(args) -> dict:
    """The SFT captioner (trained only if its adapter is missing); its recipe.yaml."""
    if not (args.captioner / "adapter_config.json").is_file():
        vlm_tune(args, "sft", ["--config", args.captioner_recipe, "--output_dir", str(args.captioner),
                               *shlex.split(args.sft_args)])
    recipe = args.captioner / "recipe.yaml"
    settings = yaml.safe_load(recipe.read_text(encoding="utf-8")) if recipe.is_file() else None
    if not isinstance(settings, dict) or "dataset_name" not in settings:
        raise UserError(f"{recipe}: missing or without dataset_name; the loop needs the captioner's scenes dataset")
    return settings


def export_scenes(args, paths: LoopPaths, captioner: dict) -> None:
    """Scenes to rate (a new seed: images the captioner never saw) and the held-out test split, twice
    (before / after folders, so each keeps its own captions)."""
    size = str(captioner.get("synthetic_image_size") or 128)
    if not (paths.rate_scenes / "truth.jsonl").is_file():
        builder(data_builders.scenes, "scenes", [
            "build", "--output", str(paths.rate_data), "--train", str(args.rate_images), "--val", "0", "--test", "0",
            "--seed", str(args.rate_seed), "--image_size", size, "--question_types", "caption", "--num_proc", "1",
            "--overwrite"])
        builder(data_builders.scenes, "scenes", ["export", "--dataset", str(paths.rate_data), "--split", "train",
                                                 "--output", str(paths.rate_scenes), "--overwrite"])
        shutil.rmtree(paths.rate_data)
        if args.captions_on_disk:
            for row in map(json.loads, (paths.rate_scenes / "truth.jsonl").read_text(encoding="utf-8").splitlines()):
                (paths.rate_scenes / "images" / row["file_name"]).with_suffix(".txt").write_text(
                    row["caption"] + "\n", encoding="utf-8")
    for folder in (paths.before, paths.after):
        if not (folder / "truth.jsonl").is_file():
            builder(data_builders.scenes, "scenes", ["export", "--dataset", str(captioner["dataset_name"]),
                                                     "--split", str(captioner.get("dataset_test_split") or "test"),
                                                     "--output", str(folder), "--overwrite"])


def draw_candidates(args, paths: LoopPaths) -> None:
    if paths.tasks.is_file():
        return
    vlm_tune(args, "candidates", [str(paths.rate_scenes / "images"), "--adapter", str(args.captioner),
                                  "--tasks_output", str(paths.tasks), "--samples", str(args.samples),
                                  "--temperature", str(args.temperature), "--top_p", str(args.top_p),
                                  "--max_new_tokens", str(args.max_new_tokens), "--overwrite"])


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def _wait_for_server(server: subprocess.Popen, base_url: str, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise UserError(f"the rating server exited (code {server.returncode}): {log.read_text()[-800:]}")
        try:
            _get_json(base_url + "/api/config")
            return
        except OSError:
            time.sleep(0.5)
    raise UserError(f"the rating server did not answer within {SERVER_START_TIMEOUT_S} s (see {log})")


def team_rates(paths: LoopPaths) -> dict:
    """Serve the task file with a real `vlm-tune rate serve`, let the team rate through its HTTP API, keep
    the status page's numbers (/api/progress: α, flagged raters), stop the server."""
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "vlm_tune", "rate", "serve", str(paths.tasks), "--db", str(paths.db),
               "--port", str(port)]
    print(f"\n$ vlm-tune rate serve {paths.tasks} --db {paths.db} --port {port}   (the team rates at {base_url})",
          flush=True)
    truth = [json.loads(line) for line in (paths.rate_scenes / "truth.jsonl").read_text(encoding="utf-8").splitlines()]
    scenes = image_scenes(truth, lambda name: (paths.rate_scenes / "images" / name).read_bytes())
    with open(paths.server_log, "w", encoding="utf-8") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_for_server(server, base_url, paths.server_log)
            started = time.perf_counter()
            counts = rate_together(base_url, scenes)
            progress = _get_json(base_url + "/api/progress")
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    progress["rated_this_run"] = counts
    paths.progress.write_text(json.dumps(progress, indent=2) + "\n", encoding="utf-8")
    print(f"rated through the API in {time.perf_counter() - started:.1f} s: "
          + ", ".join(f"{name} {n}" for name, n in counts.items()) + f" item(s); status: {paths.progress}")
    return progress


def build_pairs(args, paths: LoopPaths) -> dict:
    vlm_tune(args, "rate", ["export", "--db", str(paths.db), "--output", str(paths.ratings_csv), "--overwrite"])
    builder(data_builders.ratings, "ratings", ["--ratings", str(paths.ratings_csv), "--output", str(paths.pairs),
                                               "--pairs", args.pairs, "--test_size", str(args.test_size),
                                               "--overwrite"])
    return json.loads((paths.pairs / "report.json").read_text(encoding="utf-8"))


def train_dpo(args, paths: LoopPaths) -> None:
    if (paths.dpo / "adapter_config.json").is_file():
        return
    if paths.dpo.exists():  # a DPO run of this loop that stopped half-way: ours to start again
        shutil.rmtree(paths.dpo)
    vlm_tune(args, "dpo", ["--config", args.dpo_recipe, "--dataset_name", str(paths.pairs), "--sft_adapter",
                           str(args.captioner), "--output_dir", str(paths.dpo), *shlex.split(args.dpo_args)])


def recaption(args, paths: LoopPaths) -> None:
    """Greedy captions of the held-out scenes by the SFT captioner (before) and the DPO one (after)."""
    limit = ["--limit", str(args.heldout)] if args.heldout else []
    for folder, adapter in ((paths.before, args.captioner), (paths.after, paths.dpo)):
        vlm_tune(args, "caption", [str(folder / "images"), "--adapter", str(adapter), "--format", "diffusers",
                                   "--mode", "caption", "--max_new_tokens", str(args.max_new_tokens), *limit])


# --- the loop --------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else list(argv))
    paths = LoopPaths(args.run_dir)
    if paths.summary.is_file():
        if not args.overwrite:
            raise UserError(f"{args.run_dir} holds a finished loop ({paths.summary}); pass --overwrite to start over")
        shutil.rmtree(args.run_dir)
    paths.rating.mkdir(parents=True, exist_ok=True)
    clock, started = {}, time.perf_counter()

    def step(name: str, work, *work_args):
        begun = time.perf_counter()
        result = work(*work_args)
        clock[name] = round(time.perf_counter() - begun, 1)
        return result

    captioner = step("captioner", train_captioner, args)
    step("export scenes", export_scenes, args, paths, captioner)
    step("candidates", draw_candidates, args, paths)
    progress = step("team rating", team_rates, paths)
    pairs_report = step("pairs", build_pairs, args, paths)
    step("dpo", train_dpo, args, paths)
    step("re-caption", recaption, args, paths)
    clock["total"] = round(time.perf_counter() - started, 1)
    finish(args, paths, progress, pairs_report, clock)
    vlm_tune(args, "report", [str(paths.dpo)])  # the DPO run's report, now with the held-out captions before/after
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
