"""Reading a run folder: what sft/dpo leave there, as one `Run`, and the logged series in it.

`vlm-tune report` and `vlm-tune compare` both start here. Missing pieces stay empty, so a crashed
run still reports what it has.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from vlm_tune.core.errors import UserError
from vlm_tune.core.runfiles import ACCURACY_KEY, read_steps

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


# --- logged series ---------------------------------------------------------------------------
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


def step_accuracies(validation: dict[int, list[dict]]) -> dict[int, float]:
    """{step: fraction of the validation samples answered right} of a run's validation steps."""
    return {step: sum(r["correct"] for r in rows) / max(len(rows), 1) for step, rows in validation.items()}
