"""`vlm-tune report RUN_DIR`: one readable page per run, written automatically at the end of sft/dpo.

    vlm-tune report runs/tiny-sft-chartqa        → report.html, report.md, report_files/*.png

What a person needs to judge a run without a tracker: the recipe and effective batch, loss and
learning-rate curves, eval metrics over steps, the held-out base / prior / tuned table, the
validation samples at the first and last checkpoint side by side (answers, not only loss), peak
memory and throughput. `report.html` is self-contained (inline CSS, images as base64 data URIs: it
opens offline and can be mailed); `report.md` references the PNGs in `report_files/` and the
validation images, for a repository or a pull request. `vlm-tune compare` reuses these pieces.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from vlm_tune.core.io import atomic_write_text
from vlm_tune.core.cli_args import ArgParser
from vlm_tune.core.errors import UserError
from vlm_tune.core.secrets import scrub, scrub_text
from vlm_tune.core.runfiles import ACCURACY_KEY, read_steps

FILES_DIR = "report_files"
HELD_OUT_ORDER = ("base", "prior", "tuned")
# eval_* keys that are bookkeeping, not quality
EVAL_NOISE = ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second", "eval_num_tokens")


# --- read a run ------------------------------------------------------------------------------
@dataclass
class Run:
    path: Path
    name: str
    recipe: dict = field(default_factory=dict)
    command: str = ""
    summary: dict = field(default_factory=dict)
    train_results: dict = field(default_factory=dict)
    log_history: list[dict] = field(default_factory=list)
    held_out: dict[str, dict] = field(default_factory=dict)
    preference: dict | None = None
    validation: dict[int, list[dict]] = field(default_factory=dict)


def _json(path: Path, default=None):
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else default


def load_run(run_dir: str | Path) -> Run:
    """Everything sft/dpo leave in a run folder; missing pieces stay empty (a crashed run still reports)."""
    path = Path(run_dir)
    if not (path / "recipe.yaml").is_file() and not (path / "trainer_state.json").is_file():
        raise UserError(f"{run_dir} is not a run folder (no recipe.yaml or trainer_state.json)")
    run = Run(path=path, name=path.resolve().name)
    if (path / "recipe.yaml").is_file():
        text = (path / "recipe.yaml").read_text(encoding="utf-8")
        run.recipe = yaml.safe_load(text) or {}
        commands = [line[1:].strip() for line in text.splitlines()[:3] if line.startswith("#   ")]
        run.command = commands[0] if commands else ""
    run.summary = _json(path / "run_summary.json", {})
    run.train_results = _json(path / "train_results.json", {})
    run.log_history = (_json(path / "trainer_state.json", {}) or {}).get("log_history", [])
    for name in HELD_OUT_ORDER:
        metrics = _json(path / "eval" / name / "metrics.json")
        if metrics:
            run.held_out[name] = metrics
    run.preference = _json(path / "preference_eval.json")
    run.validation = read_steps(path)
    return run


def series(log_history: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one logged key, e.g. 'loss', 'learning_rate', 'eval_loss'."""
    points = [(e["step"], float(e[key])) for e in log_history if isinstance(e.get(key), (int, float)) and "step" in e]
    return [s for s, _ in points], [v for _, v in points]


def last(log_history: list[dict], key: str) -> float | None:
    _, values = series(log_history, key)
    return values[-1] if values else None


def accuracy_keys(log_history: list[dict]) -> list[str]:
    """Logged accuracies (validation samples, token accuracy, DPO reward accuracy), our key first."""
    keys = sorted({k for e in log_history for k, v in e.items() if "accurac" in k and isinstance(v, (int, float))})
    return sorted(keys, key=lambda k: k != ACCURACY_KEY)


def eval_keys(log_history: list[dict]) -> list[str]:
    keys = sorted({k for e in log_history for k in e if k.startswith("eval_") and k not in EVAL_NOISE})
    return sorted(keys, key=lambda k: (k != "eval_loss", k != ACCURACY_KEY, k))


# --- plots -----------------------------------------------------------------------------------
def plot_curves(curves: list[tuple[str, list[int], list[float], str]], title: str, ylabel: str, path: Path,
                logy: bool = False, unit_range: bool = False) -> Path | None:
    """One PNG of (label, steps, values, linestyle) curves; None when there is nothing to draw.
    Uses matplotlib's object API (no pyplot): no GUI backend, no global state between runs."""
    curves = [c for c in curves if c[1]]
    if not curves:
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.6), dpi=110, layout="constrained")
    ax = fig.subplots()
    bases = list(dict.fromkeys(label.rsplit(" (", 1)[0] for label, *_ in curves))  # 'run (eval)' goes with 'run'
    for label, steps, values, style in curves:
        k = bases.index(label.rsplit(" (", 1)[0])
        # Earlier runs drawn wider, later ones narrower on top: runs whose curves coincide (same learning
        # rate, say) stay visible as a coloured line inside a coloured band instead of hiding each other.
        width = 1.4 + 2.4 * (len(bases) - 1 - k) / max(len(bases) - 1, 1)
        ax.plot(steps, values, style, label=label, color=f"C{k % 10}", linewidth=width, markersize=3.5 + width / 2)
    if logy and all(v > 0 for _, _, values, _ in curves for v in values):
        ax.set_yscale("log")
    if unit_range:  # accuracies: a flat 0 % line must not look like a flat 90 % one
        ax.set_ylim(-0.03, 1.03)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(curves) > 1 or curves[0][0] not in (title.lower(), ylabel):  # a lone curve still names itself
        ax.legend(fontsize=8, loc="best")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def run_plots(run: Run, folder: Path) -> dict[str, Path]:
    """loss (train + eval), learning rate, accuracies over steps."""
    history = run.log_history
    plots = {
        "loss": plot_curves([("train", *series(history, "loss"), ".-"), ("eval", *series(history, "eval_loss"), "s--")],
                            "Loss", "loss", folder / "loss.png"),
        "learning_rate": plot_curves([("learning rate", *series(history, "learning_rate"), "-")],
                                     "Learning rate", "learning rate", folder / "learning_rate.png"),
        "accuracy": plot_curves([(k, *series(history, k), "o-" if k == ACCURACY_KEY else ".-")
                                 for k in accuracy_keys(history)], "Accuracy over steps", "accuracy",
                                folder / "accuracy.png", unit_range=True),
    }
    return {name: path for name, path in plots.items() if path is not None}


# --- page building (HTML + Markdown from the same calls) -------------------------------------
@dataclass
class Img:
    """An image cell or block: embedded in HTML, linked (relative) in Markdown."""

    path: Path
    alt: str = ""
    width: int | None = None


@dataclass
class Mark:
    """A prediction cell coloured by correctness (an untrained model's 32-token babble is cut short)."""

    text: str
    correct: float | None
    max_chars: int = 80

    def __post_init__(self):
        if len(self.text) > self.max_chars:
            self.text = self.text[: self.max_chars - 1] + "…"


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;padding:0 1rem;color:#222}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.9rem}th,td{border:1px solid #ddd;padding:.3rem .55rem;vertical-align:top;text-align:left}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
td.ok{background:#e6f4ea}td.bad{background:#fce8e6}.muted{color:#666;font-size:.9rem}
code{background:#f4f4f4;padding:.1rem .3rem;border-radius:3px;font-size:.85rem}
img.plot{max-width:100%;border:1px solid #eee}details{margin:.5rem 0}.plots{display:flex;flex-wrap:wrap;gap:.6rem}
.plots img{width:560px;max-width:100%}td:first-child{white-space:nowrap}
"""


class Page:
    """Collects a report once and renders it as self-contained HTML and as Markdown."""

    def __init__(self, title: str, md_dir: Path):
        self.title, self.md_dir = title, md_dir
        self.html: list[str] = []
        self.md: list[str] = [f"# {title}", ""]

    def heading(self, text: str) -> None:
        self.html.append(f"<h2>{html.escape(text)}</h2>")
        self.md += [f"## {text}", ""]

    def text(self, text: str, muted: bool = False) -> None:
        cls = ' class="muted"' if muted else ""
        self.html.append(f"<p{cls}>{html.escape(text)}</p>")
        self.md += [text, ""]

    def code(self, text: str) -> None:
        self.html.append(f"<p><code>{html.escape(text)}</code></p>")
        self.md += [f"`{text}`", ""]

    def images(self, images: list[Img]) -> None:
        self.html.append('<div class="plots">' + "".join(self._img_html(i, "plot") for i in images) + "</div>")
        self.md += [" ".join(self._img_md(i) for i in images), ""]

    def table(self, header: list[str], rows: list[list], collapsed: str | None = None) -> None:
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        body = "".join("<tr>" + "".join(self._cell_html(c) for c in row) + "</tr>" for row in rows)
        table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        self.html.append(f"<details><summary>{html.escape(collapsed)}</summary>{table}</details>" if collapsed else table)
        md = ["| " + " | ".join(_md_escape(str(h)) for h in header) + " |", "|" + "---|" * len(header)]
        md += ["| " + " | ".join(self._cell_md(c) for c in row) + " |" for row in rows]
        self.md += ([f"<details><summary>{collapsed}</summary>", ""] if collapsed else []) + md + [""]
        if collapsed:
            self.md += ["</details>", ""]

    def _img_html(self, img: Img, cls: str = "") -> str:
        width = f' width="{img.width}"' if img.width else ""
        return (f'<img class="{cls}" src="{data_uri(img.path)}" alt="{html.escape(img.alt)}"{width} '
                f'title="{html.escape(img.alt)}">')

    def _img_md(self, img: Img) -> str:
        rel = _relative(img.path, self.md_dir)
        return f'<img src="{rel}" alt="{img.alt}" width="{img.width}">' if img.width else f"![{img.alt}]({rel})"

    def _cell_html(self, cell) -> str:
        if cell is None:
            return '<td class="num">–</td>'
        if isinstance(cell, Img):
            return f"<td>{self._img_html(cell)}</td>"
        if isinstance(cell, Mark):
            cls = "" if cell.correct is None else (' class="ok"' if cell.correct else ' class="bad"')
            return f"<td{cls}>{html.escape(cell.text)}</td>"
        if isinstance(cell, (int, float)) and not isinstance(cell, bool):
            return f'<td class="num">{html.escape(fmt(cell))}</td>'
        return f"<td>{html.escape(str(cell))}</td>"

    def _cell_md(self, cell) -> str:
        if cell is None:
            return "–"
        if isinstance(cell, Img):
            return self._img_md(cell)
        if isinstance(cell, Mark):
            mark = "" if cell.correct is None else (" ✓" if cell.correct else " ✗")
            return _md_escape(cell.text) + mark
        return _md_escape(fmt(cell) if isinstance(cell, (int, float)) and not isinstance(cell, bool) else str(cell))

    def write(self, html_path: Path, md_path: Path, subtitle: str = "") -> None:
        sub = f'<p class="muted">{html.escape(subtitle)}</p>' if subtitle else ""
        page = (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(self.title)}</title>'
                f"<style>{CSS}</style></head><body><h1>{html.escape(self.title)}</h1>{sub}\n"
                + "\n".join(self.html) + "\n</body></html>\n")
        md = self.md[:2] + ([subtitle, ""] if subtitle else []) + self.md[2:]
        atomic_write_text(html_path, scrub_text(page))
        atomic_write_text(md_path, scrub_text("\n".join(md)))


def data_uri(path: Path) -> str:
    mime = "image/png" if path.suffix.lower() == ".png" else "image/jpeg"
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _relative(path: Path, start: Path) -> str:
    import os

    return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def fmt(value) -> str:
    """Numbers as a person reads them: 4 significant digits, thousands separators, '–' for missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6):
            return f"{value:.3g}"
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


# --- sections --------------------------------------------------------------------------------
def summary_rows(run: Run) -> list[list]:
    """Recipe essentials, effective batch, losses, time, throughput, memory."""
    r, s, t = run.recipe, run.summary, run.train_results
    val = validation_accuracy(run)
    rows = [
        ["model", r.get("model_name_or_path", s.get("model", "–"))],
        ["dataset", r.get("dataset_name", "–")],
        ["steps", s.get("steps", "–")],
        ["epochs", t.get("epoch", "–")],
        ["effective batch", f"{s.get('effective_batch', '–')} ({s.get('batch_arithmetic', '?')})"],
        ["learning rate", (f"{fmt(r.get('learning_rate'))} ({r.get('lr_scheduler_type', 'default')} schedule, "
                           f"warmup {r.get('warmup_steps', r.get('warmup_ratio', 0))})")],
        ["LoRA", f"r={r.get('lora_r', '–')}, alpha={r.get('lora_alpha', '–')}, scope={r.get('lora_scope', 'lm')}"
         if r.get("use_peft", True) else "off (full fine-tuning)"],
        ["4-bit", r.get("load_in_4bit", False)],
        ["seed", r.get("seed", 42)],
        ["trainable params", (f"{fmt(s.get('trainable_params'))} of {fmt(s.get('total_params'))} "
                              f"({fmt(s.get('trainable_percent'))} %)")],
        ["final train loss (last log)", last(run.log_history, "loss")],
        ["mean train loss", s.get("train_loss", t.get("train_loss"))],
        ["final eval loss", last(run.log_history, "eval_loss")],
        ["validation samples (first → last)", val],
        ["train time (s)", s.get("train_seconds", t.get("train_runtime"))],
        ["throughput", f"{fmt(t.get('train_samples_per_second'))} samples/s, {fmt(t.get('train_steps_per_second'))} steps/s"],
        ["peak RAM (MB)", s.get("peak_rss_mb")],
    ]
    if s.get("peak_gpu_mb") is not None:
        rows.append(["peak GPU memory (MB)", s["peak_gpu_mb"]])
    return rows


def validation_accuracy(run: Run) -> str:
    if not run.validation:
        return "–"
    accs = {step: sum(r["correct"] for r in rows) / max(len(rows), 1) for step, rows in run.validation.items()}
    first, final = min(accs), max(accs)
    n = len(run.validation[final])
    return f"{pct(accs[first])} (step {first}) → {pct(accs[final])} (step {final}), {n} samples"


def eval_table(run: Run) -> tuple[list[str], list[list]]:
    """One row per step that logged eval_* metrics (eval loss, token accuracy, validation samples)."""
    keys = eval_keys(run.log_history)
    by_step: dict[int, dict] = {}
    for entry in run.log_history:
        values = {k: entry[k] for k in keys if k in entry}
        if values and "step" in entry:
            by_step.setdefault(entry["step"], {}).update(values)
    header = ["step"] + [k.removeprefix("eval_") for k in keys]
    return header, [[step] + [vals.get(k) for k in keys] for step, vals in sorted(by_step.items())]


def held_out_table(run: Run) -> tuple[list[str], list[list]]:
    """Relaxed accuracy (%) of base / text-only prior / tuned on the held-out split, per question type."""
    types = sorted({t for m in run.held_out.values() for t in m.get("per_type", {})})
    names = {"base": "base", "prior": "text-only prior", "tuned": "tuned"}
    rows = [[names[name], f"{100 * m['relaxed_accuracy']:.1f}"] + [
        f"{100 * m['per_type'][t]['relaxed_accuracy']:.1f}" if t in m.get("per_type", {}) else None for t in types]
        for name, m in run.held_out.items()]
    return ["model", "overall %"] + [f"{t} %" for t in types], rows


def gallery_rows(run: Run, steps: list[int]) -> tuple[list[str], list[list]]:
    """The validation samples at `steps` side by side: image, prompt, reference, one prediction per step."""
    per_step = [{r["index"]: r for r in run.validation[s]} for s in steps]
    indices = list(per_step[-1])
    header = ["#", "image", "prompt", "reference"] + [f"step {s}" for s in steps]
    rows = []
    for index in indices:
        row = per_step[-1][index]
        cells = [index, Img(run.path / "validation" / row["image"], f"sample {index}", width=112), row["prompt"],
                 row["reference"]]
        for records in per_step:
            record = records.get(index)
            cells.append(Mark(record["prediction"] or "(empty)", record["correct"]) if record else "–")
        rows.append(cells)
    return header, rows


# --- report ----------------------------------------------------------------------------------
def write_report(run_dir: str | Path) -> Path:
    """Write RUN_DIR/report.html + report.md (+ report_files/*.png); return the HTML path."""
    run = load_run(run_dir)
    out = run.path
    plots = run_plots(run, out / FILES_DIR)
    page = Page(f"vlm-tune run report — {run.name}", out)

    page.heading("Summary")
    page.table(["", "value"], summary_rows(run))
    if run.command:
        page.code(run.command)
    recipe = scrub(run.recipe)
    page.table(["key", "value"], [[k, json.dumps(v) if isinstance(v, (list, dict)) else v] for k, v in recipe.items()],
               collapsed=f"Resolved recipe ({len(recipe)} keys)")

    page.heading("Curves")
    if plots:
        page.images([Img(path, name.replace("_", " ")) for name, path in plots.items()])
    else:
        page.text("No logged steps (trainer_state.json missing or empty).", muted=True)

    header, rows = eval_table(run)
    page.heading("Eval metrics over steps")
    if rows:
        page.table(header, rows)
    else:
        page.text("No evaluation during training (set eval_strategy: steps and eval_steps).", muted=True)

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

    if run.validation or not run.preference:  # DPO trains on pairs: no validation samples to show
        page.heading("Validation samples: first vs last checkpoint")
    if run.validation:
        steps = sorted(run.validation)
        shown = [steps[0], steps[-1]] if len(steps) > 1 else steps
        page.table(*gallery_rows(run, shown))
        page.text("Validation accuracy per logged step: " + ", ".join(
            f"{s}: {pct(sum(r['correct'] for r in rows) / max(len(rows), 1))}" for s, rows in run.validation.items()),
            muted=True)
    elif not run.preference:
        page.text("No validation samples (num_validation_samples: 0, or the run predates them).", muted=True)

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
