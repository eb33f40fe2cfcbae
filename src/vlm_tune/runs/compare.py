"""`vlm-tune compare RUN_DIR...`: judge configs side by side — what differs, how each did, what each answered.

    vlm-tune compare runs/sweep-tiny/*/ [--output_dir runs/sweep-tiny/compare]

Writes into the output folder (default: `compare/` beside the runs):
- `compare.html` (self-contained) and `compare.md`: a table with only the recipe keys whose values
  differ across the runs' `recipe.yaml` (run identity — output_dir, run_name, run_tags,
  resume_from_checkpoint — is the row label, not a difference), final loss, eval metrics, time and
  memory; a mean ± sd table when runs repeat a config over several seeds; the overlaid curves; the
  same validation samples as answered by every run that has them (last checkpoint);
- `loss.png`, `learning_rate.png`, `accuracy.png`, `gallery.png` and `compare.json` (the table as data).

Runs of different jobs (an SFT run beside a DPO run) compare too: a `job` column, each run's own
metrics side by side (a metric a run does not have is `–`). Everything is written into a staging
folder first and moved in at the end: a failure leaves the output folder as it was.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path

from vlm_tune.core.cli_args import ArgParser
from vlm_tune.core.errors import UserError
from vlm_tune.core.io import atomic_write_text, check_output_path, staged_folder
from vlm_tune.core.markdown import fmt, pct
from vlm_tune.core.runfiles import ACCURACY_KEY, VALIDATION_DIR
from vlm_tune.report.page import Img, Mark, Page
from vlm_tune.report.plots import plot_curves
from vlm_tune.report.run import Run, last, load_run, series

IDENTITY_KEYS = {"output_dir", "run_name", "run_tags", "logging_dir", "resume_from_checkpoint"}
MISSING = "–"  # a key one recipe sets and another leaves at its default


# --- what differs ----------------------------------------------------------------------------
def config_differences(recipes: list[dict]) -> list[str]:
    """Recipe keys whose values are not the same in every run, in first-seen order."""
    keys: list[str] = []
    for recipe in recipes:
        keys += [k for k in recipe if k not in keys and k not in IDENTITY_KEYS and k != "env"]
    return [k for k in keys if len({json.dumps(r.get(k, MISSING), sort_keys=True, default=str) for r in recipes}) > 1]


def job_kind(run: Run) -> str:
    """sft / dpo, from the command recipe.yaml records (else what the run folder holds)."""
    words = run.command.split()
    if len(words) > 1 and words[0] == "vlm-tune":
        return words[1]
    return "dpo" if run.preference else "sft" if run.held_out or run.validation else "?"


def run_labels(runs: list[Run]) -> list[str]:
    """Folder names, made unique with the parent folder when two runs share a name."""
    names = [r.name for r in runs]
    return [f"{r.path.resolve().parent.name}/{r.name}" if names.count(r.name) > 1 else r.name for r in runs]


# --- metrics per run -------------------------------------------------------------------------
def outcome(run: Run) -> dict:
    """The numbers a run is judged by (None where the run has no such number)."""
    s = run.summary
    _, accs = series(run.log_history, ACCURACY_KEY)
    metrics = {
        "final loss": last(run.log_history, "loss"),
        "mean train loss": s.get("train_loss"),
        "final eval loss": last(run.log_history, "eval_loss"),
        "val. samples acc (first)": accs[0] if accs else None,
        "val. samples acc (last)": accs[-1] if accs else None,
    }
    for key, value in s.items():  # held-out eval (sft) and preference accuracy (dpo), in %
        if key.endswith("_pct") and isinstance(value, (int, float)):
            name = key.removesuffix("_pct")
            name = "held-out " + name.removeprefix("eval_") if name.startswith("eval_") else name
            metrics[name.replace("_", " ") + " %"] = value
    metrics.update({"steps": s.get("steps"), "train s": s.get("train_seconds"), "peak RAM MB": s.get("peak_rss_mb")})
    if s.get("peak_gpu_mb") is not None:
        metrics["peak GPU MB"] = s["peak_gpu_mb"]
    return metrics


def _cell(key: str, value):
    if value is None:
        return None
    if key.startswith("val. samples"):
        return pct(value)
    return round(value, 1) if key.endswith(" %") else value


def seed_groups(runs: list[Run], differing: list[str]) -> dict[str, list[int]]:
    """Runs that differ only in `seed`, grouped by their config (label → run indices)."""
    config_keys = [k for k in differing if k != "seed"]
    groups: dict[str, list[int]] = {}
    for i, run in enumerate(runs):
        label = ", ".join(f"{k}={_show(run.recipe.get(k, MISSING))}" for k in config_keys) or "(same config)"
        groups.setdefault(label, []).append(i)
    return groups


def _show(value) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else fmt(value) if isinstance(value, float) else str(value)


def _mean_sd(key: str, values: list[float | None]) -> str:
    scale, unit = (100, " %") if key.startswith("val. samples") else (1, "")
    values = [scale * v for v in values if v is not None]
    if not values:
        return MISSING
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{fmt(statistics.mean(values))} ± {fmt(sd)}{unit}"


# --- gallery ---------------------------------------------------------------------------------
def last_validation(run: Run) -> dict[int, dict]:
    """{row index: record} of the run's last validation step."""
    return {r["index"]: r for r in run.validation[max(run.validation)]} if run.validation else {}


def with_validation(runs: list[Run], labels: list[str]) -> tuple[list[Run], list[str]]:
    """The runs that have validation samples (a DPO run trains on pairs and has none), with their labels."""
    kept = [(run, label) for run, label in zip(runs, labels) if run.validation]
    return [run for run, _ in kept], [label for _, label in kept]


def gallery_png(runs: list[Run], labels: list[str], path: Path, max_rows: int = 10) -> Path | None:
    """One picture of the same validation samples as answered by every run (green right, red wrong)."""
    runs, labels = with_validation(runs, labels)
    samples = [last_validation(run) for run in runs]
    indices = [i for i in samples[0] if all(i in s for s in samples)][:max_rows] if samples else []
    if not indices:
        return None
    from matplotlib.figure import Figure
    from PIL import Image

    run0 = next(run for run, s in zip(runs, samples) if s)
    height = 1.0 + 0.35 * len(runs)
    fig = Figure(figsize=(10, max(1.6, height) * len(indices)), dpi=90)
    grid = fig.add_gridspec(len(indices), 2, width_ratios=[1, 5], hspace=0.35, wspace=0.05)
    for row, index in enumerate(indices):
        record = samples[0][index]
        ax = fig.add_subplot(grid[row, 0])
        ax.imshow(Image.open(run0.path / VALIDATION_DIR / record["image"]))
        ax.set_axis_off()
        text = fig.add_subplot(grid[row, 1])
        text.set_axis_off()
        text.text(0, 1, f"#{index}  {record['prompt']}\nreference: {record['reference']}", va="top", fontsize=10,
                  fontweight="bold", transform=text.transAxes, wrap=True)
        for k, (label, sample) in enumerate(zip(labels, samples)):
            answer = sample[index]
            color = "#137333" if answer["correct"] else "#c5221f"
            mark = "✓" if answer["correct"] else "✗"
            text.text(0, 0.62 - k * (0.6 / max(len(runs), 1)), f"{mark} {label}: {answer['prediction'][:90]}",
                      va="top", fontsize=9, color=color, transform=text.transAxes)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    return path


def gallery_rows(runs: list[Run], labels: list[str]) -> tuple[list[str], list[list]]:
    runs, labels = with_validation(runs, labels)
    if not runs:
        return [], []
    samples = [last_validation(run) for run in runs]
    indices = [i for i in samples[0] if all(i in s for s in samples)]
    run0 = runs[0]
    rows = []
    for index in indices:
        record = samples[0][index]
        rows.append([index, Img(run0.path / VALIDATION_DIR / record["image"], f"sample {index}", width=112),
                     record["prompt"], record["reference"]]
                    + [Mark(s[index]["prediction"] or "(empty)", s[index]["correct"]) for s in samples])
    steps = [f"{label} (step {max(run.validation)})" for run, label in zip(runs, labels)]
    return ["#", "image", "prompt", "reference"] + steps, rows


# --- compare ---------------------------------------------------------------------------------
def default_output_dir(run_dirs: list[str | Path]) -> Path:
    parents = {str(Path(d).resolve().parent) for d in run_dirs}
    common = Path(os.path.commonpath(sorted(parents)))
    return common / "compare"


def expand_run_dirs(paths: list[str | Path]) -> list[Path]:
    """Run folders from the arguments: a sweep folder stands for its runs; folders that are not runs
    (a `compare/` output caught by `SWEEP/*/`) are skipped with a note."""
    runs: list[Path] = []
    for path in map(Path, paths):
        if (path / "sweep.json").is_file():
            runs += sweep_runs(path / "sweep.json")
        elif (path / "recipe.yaml").is_file() or (path / "trainer_state.json").is_file():
            runs.append(path)
        elif path.is_dir():
            print(f"note: skipping {path} (not a run folder)", file=sys.stderr)
        else:
            raise UserError(f"run folder not found: {path}")
    return runs


def sweep_runs(sweep_file: Path) -> list[Path]:
    """The finished runs a sweep.json lists."""
    try:
        sweep = json.loads(sweep_file.read_text(encoding="utf-8"))
        names = [r["name"] for r in sweep.get("runs", [])]
    except (ValueError, UnicodeDecodeError, AttributeError, TypeError, KeyError) as exc:
        raise UserError(f"{sweep_file}: not a readable sweep file ({type(exc).__name__}: {exc})") from None
    return [sweep_file.parent / name for name in names if (sweep_file.parent / name / "run_summary.json").is_file()]


def compare_runs(run_dirs: list[str | Path], output_dir: str | Path | None = None) -> Path:
    """Write the comparison of `run_dirs` (run or sweep folders); return the HTML path."""
    run_dirs = expand_run_dirs(run_dirs)
    if len(run_dirs) < 2:
        raise UserError("compare needs at least two run folders")
    runs = [load_run(d) for d in run_dirs]  # a broken file in any run: one line, before anything is written
    out = Path(output_dir) if output_dir else default_output_dir(run_dirs)
    check_output_path(out, "output folder", folder=True)
    with staged_folder(out) as staging:
        write_comparison(runs, staging)
    return out / "compare.html"


def write_comparison(runs: list[Run], out: Path) -> None:
    """compare.json, the plots and the page of `runs` into `out`."""
    labels = run_labels(runs)
    differing = config_differences([r.recipe for r in runs])
    kinds = [job_kind(r) for r in runs]
    if len(set(kinds)) > 1:  # an SFT run beside a DPO run: say which is which
        differing = ["job"] + differing
        runs = [_with_job(r, k) for r, k in zip(runs, kinds)]
    outcomes = [outcome(r) for r in runs]
    metric_keys = [k for k in dict.fromkeys(k for o in outcomes for k in o) if any(o.get(k) is not None for o in outcomes)]

    # table
    header = ["run"] + differing + metric_keys
    rows = [[label] + [_show(r.recipe.get(k, MISSING)) for k in differing] + [_cell(k, o.get(k)) for k in metric_keys]
            for label, r, o in zip(labels, runs, outcomes)]
    atomic_write_text(out / "compare.json", json.dumps({
        "runs": [str(r.path) for r in runs], "labels": labels, "differing_keys": differing,
        "rows": [{"run": label, "config": {k: r.recipe.get(k) for k in differing}, "metrics": o}
                 for label, r, o in zip(labels, runs, outcomes)],
    }, indent=2, default=str) + "\n")

    # curves
    plots = {
        "loss": plot_curves([(label, *series(r.log_history, "loss"), "-") for label, r in zip(labels, runs)]
                            + [(f"{label} (eval)", *series(r.log_history, "eval_loss"), "s--")
                               for label, r in zip(labels, runs)], "Training loss (eval: dashed)", "loss",
                            out / "loss.png"),
        "learning rate": plot_curves([(label, *series(r.log_history, "learning_rate"), "-")
                                      for label, r in zip(labels, runs)], "Learning rate", "learning rate",
                                     out / "learning_rate.png"),
        "validation samples accuracy": plot_curves(
            [(label, *series(r.log_history, ACCURACY_KEY), "o-") for label, r in zip(labels, runs)],
            "Validation samples: relaxed accuracy", "accuracy", out / "accuracy.png", unit_range=True),
    }
    gallery = gallery_png(runs, labels, out / "gallery.png")

    # page
    page = Page(f"vlm-tune comparison — {len(runs)} runs", out)
    page.heading("Runs")
    if differing:
        page.text("Config columns: only the recipe keys whose values differ between these runs.", muted=True)
    else:
        page.text("The runs' recipes are identical (apart from output folder / run name).", muted=True)
    page.table(header, rows)
    groups = seed_groups(runs, differing)
    if "seed" in differing and any(len(g) > 1 for g in groups.values()):
        page.heading("Noise across seeds (mean ± sd)")
        keys = [k for k in metric_keys if k not in ("steps",)]
        page.table(["config", "seeds"] + keys,
                   [[label, len(idx)] + [_mean_sd(k, [outcomes[i].get(k) for i in idx]) for k in keys]
                    for label, idx in groups.items()])
    page.heading("Curves")
    images = [Img(path, name) for name, path in plots.items() if path is not None]
    if images:
        page.images(images)
    page.heading("Validation samples, last checkpoint of each run")
    header_g, rows_g = gallery_rows(runs, labels)
    if rows_g:
        page.table(header_g, rows_g)
    else:
        page.text("No validation samples shared by all runs (num_validation_samples: 0 or different data).",
                  muted=True)
    if gallery is not None:
        page.text("The same gallery as one picture: gallery.png", muted=True)
    page.write(out / "compare.html", out / "compare.md", " · ".join(str(r.path) for r in runs))


def _with_job(run: Run, kind: str) -> Run:
    """A copy of `run` whose recipe also says its job (the `job` column)."""
    from dataclasses import replace

    return replace(run, recipe={"job": kind, **run.recipe})


# --- command ---------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = ArgParser(prog="vlm-tune compare", description="Compare runs: config differences, metrics, curves, samples.")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders, or a sweep folder for all its runs")
    parser.add_argument("--output_dir", help="where to write (default: compare/ beside the runs)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    path = compare_runs(args.run_dirs, args.output_dir)
    print(f"wrote {path}, {path.with_suffix('.md').name}, the PNGs and compare.json in {path.parent}")
    return 0
