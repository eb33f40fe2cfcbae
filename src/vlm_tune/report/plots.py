"""Curves over training steps as PNGs (loss, learning rate, accuracies) for the run report and compare."""

from __future__ import annotations

from pathlib import Path

from vlm_tune.core.runfiles import ACCURACY_KEY
from vlm_tune.report.run import Run, accuracy_keys, series


# --- one figure ------------------------------------------------------------------------------
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


# --- the curves of one run -------------------------------------------------------------------
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
