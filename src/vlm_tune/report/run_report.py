"""`vlm-tune report RUN_DIR`: one readable page per run, written automatically at the end of sft/dpo.

    vlm-tune report runs/tiny-sft-chartqa        → report.html, report.md, report_files/*.png

What a person needs to judge a run without a tracker: the recipe and effective batch, loss and
learning-rate curves, eval metrics over steps, the held-out base / prior / tuned table, the
validation samples at the first and last checkpoint side by side (answers, not only loss), peak
memory and throughput. `report.html` is self-contained (inline CSS, images as base64 data URIs: it
opens offline and can be mailed); `report.md` references the PNGs in `report_files/` and the
validation images, for a repository or a pull request.

The pieces live beside this module, one job each: `run` reads a run folder, `plots` draws the
curves, `sections` builds the tables, `page` renders HTML + Markdown. `vlm-tune compare` reuses them.
Training calls `write_report_safely` from here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from vlm_tune.core.cli_args import ArgParser
from vlm_tune.core.markdown import pct
from vlm_tune.core.secrets import scrub
from vlm_tune.report.page import Img, Page
from vlm_tune.report.plots import run_plots
from vlm_tune.report.run import Run, load_run, step_accuracies
from vlm_tune.report.sections import before_after_rows, eval_table, gallery_rows, held_out_table, summary_rows

FILES_DIR = "report_files"


# --- sections of the page --------------------------------------------------------------------
def add_summary(page: Page, run: Run) -> None:
    page.heading("Summary")
    page.table(["", "value"], summary_rows(run))
    if run.command:
        page.code(run.command)
    recipe = scrub(run.recipe)
    page.table(["key", "value"], [[k, json.dumps(v) if isinstance(v, (list, dict)) else v] for k, v in recipe.items()],
               collapsed=f"Resolved recipe ({len(recipe)} keys)")


def add_curves(page: Page, plots: dict[str, Path]) -> None:
    page.heading("Curves")
    if plots:
        page.images([Img(path, name.replace("_", " ")) for name, path in plots.items()])
    else:
        page.text("No logged steps (trainer_state.json missing or empty).", muted=True)


def add_eval_metrics(page: Page, run: Run) -> None:
    header, rows = eval_table(run)
    page.heading("Eval metrics over steps")
    if rows:
        page.table(header, rows)
    else:
        page.text("No evaluation during training (set eval_strategy: steps and eval_steps).", muted=True)


def add_held_out(page: Page, run: Run) -> None:
    """The held-out base / prior / tuned table (sft) and the preference accuracy (dpo), when present."""
    if run.held_out:
        page.heading("Held-out evaluation: base vs tuned")
        page.table(*held_out_table(run))
        n = next(iter(run.held_out.values())).get("n")
        page.text(f"Relaxed accuracy (%) on {n} held-out questions; the text-only prior answers each question type "
                  "with its most common training answer (what is learnable without the image).", muted=True)
    if run.preference:
        page.heading("Held-out preference accuracy (DPO)")
        page.table(["", "preference accuracy %", "mean margin", "pairs"],
                   [[name, 100 * m["preference_accuracy"], m["mean_margin"], m["n"]]
                    for name, m in run.preference.items()])


def add_validation_samples(page: Page, run: Run) -> None:
    if run.validation or not run.preference:  # DPO trains on pairs: no validation samples to show
        page.heading("Validation samples: first vs last checkpoint")
    if run.validation:
        steps = sorted(run.validation)
        shown = [steps[0], steps[-1]] if len(steps) > 1 else steps
        page.table(*gallery_rows(run, shown))
        page.text("Validation accuracy per logged step: " + ", ".join(
            f"{step}: {pct(accuracy)}" for step, accuracy in step_accuracies(run.validation).items()), muted=True)
    elif not run.preference:
        page.text("No validation samples (num_validation_samples: 0, or the run predates them).", muted=True)


def add_captions_before_after(page: Page, run: Run) -> None:
    """Held-out captions before vs after DPO, when the run folder has them (`make loop` writes them)."""
    table = before_after_rows(run)
    if table:
        header, rows, total = table
        page.heading("Held-out captions: before vs after DPO")
        page.table(header, rows)
        page.text(f"{len(rows)} of {total} held-out images, changed captions first: greedy captions of the starting "
                  "adapter and of this run; team score: the team's mean rating (1–5).", muted=True)


# --- report ----------------------------------------------------------------------------------
def write_report(run_dir: str | Path) -> Path:
    """Write RUN_DIR/report.html + report.md (+ report_files/*.png); return the HTML path."""
    run = load_run(run_dir)
    out = run.path
    plots = run_plots(run, out / FILES_DIR)
    page = Page(f"vlm-tune run report — {run.name}", out)
    add_summary(page, run)
    add_curves(page, plots)
    add_eval_metrics(page, run)
    add_held_out(page, run)
    add_validation_samples(page, run)
    add_captions_before_after(page, run)
    subtitle = f"{run.path} · {run.summary.get('steps', '?')} steps · effective batch {run.summary.get('effective_batch', '?')}"
    page.write(out / "report.html", out / "report.md", subtitle)
    return out / "report.html"


def write_report_safely(run_dir: str | Path) -> Path | None:
    """The end-of-training report must never turn a finished run into a failed one."""
    try:
        path = write_report(run_dir)
    except Exception as exc:  # noqa: BLE001 — report a broken report, keep the trained adapter
        print(f"warning: could not write the run report ({type(exc).__name__}: {exc}); "
              f"retry with: vlm-tune report {run_dir}", file=sys.stderr)
        return None
    print(f"report: {path} (and report.md)")
    return path


# --- command ---------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = ArgParser(prog="vlm-tune report", description="Write report.html + report.md of a run.")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folder(s) written by vlm-tune sft/dpo")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    for run_dir in args.run_dirs:
        print(f"wrote {write_report(run_dir)} and report.md")
    return 0
