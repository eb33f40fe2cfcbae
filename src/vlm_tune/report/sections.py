"""The tables of a run report, as (header, rows) or rows of cells that `Page.table` renders:
summary, eval metrics per step, held-out base / prior / tuned, validation samples side by side."""

from __future__ import annotations

from vlm_tune.core.markdown import fmt, pct
from vlm_tune.core.runfiles import VALIDATION_DIR
from vlm_tune.report.page import Img, Mark
from vlm_tune.report.run import Run, eval_keys, last, step_accuracies


# --- summary ---------------------------------------------------------------------------------
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
    accs = step_accuracies(run.validation)
    first, final = min(accs), max(accs)
    n = len(run.validation[final])
    return f"{pct(accs[first])} (step {first}) → {pct(accs[final])} (step {final}), {n} samples"


# --- metrics ---------------------------------------------------------------------------------
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


# --- validation samples ----------------------------------------------------------------------
def gallery_rows(run: Run, steps: list[int]) -> tuple[list[str], list[list]]:
    """The validation samples at `steps` side by side: image, prompt, reference, one prediction per step."""
    per_step = [{r["index"]: r for r in run.validation[s]} for s in steps]
    indices = list(per_step[-1])
    header = ["#", "image", "prompt", "reference"] + [f"step {s}" for s in steps]
    rows = []
    for index in indices:
        row = per_step[-1][index]
        cells = [index, Img(run.path / VALIDATION_DIR / row["image"], f"sample {index}", width=112), row["prompt"],
                 row["reference"]]
        for records in per_step:
            record = records.get(index)
            cells.append(Mark(record["prediction"] or "(empty)", record["correct"]) if record else "–")
        rows.append(cells)
    return header, rows


# --- held-out captions before / after DPO (a `make loop` run) --------------------------------
BEFORE_AFTER = "captions_before_after.jsonl"  # written into the DPO run folder by vlm_tune.runs.loop_measure
SHOWN_BEFORE_AFTER = 12


def before_after_rows(run: Run) -> tuple[list[str], list[list], int] | None:
    """Held-out images with their caption before and after DPO, changed ones first (rows: image, before,
    after, team score before → after), and how many there are; None when the run folder has no such file."""
    import json

    path = run.path / BEFORE_AFTER
    if not path.is_file():
        return None
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    records.sort(key=lambda r: r["before"] == r["after"])  # stable: changed first, in file order
    rows = [[Img(run.path / r["image"], r.get("file_name", ""), width=96), r["before"], r["after"],
             f"{r['team_before']:.1f} → {r['team_after']:.1f}"] for r in records[:SHOWN_BEFORE_AFTER]]
    return ["image", "before DPO", "after DPO", "team score"], rows, len(records)
