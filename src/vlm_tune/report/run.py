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


def _broken(path: Path, what: str) -> UserError:
    return UserError(f"{path}: {what}; fix or delete it (a crashed run still reports without it)")


def _json(path: Path, default=None, kind: type = dict):
    """A JSON file of the run (`default` when absent); unreadable or of the wrong shape: one line naming it."""
    if not path.is_file():
        return default
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise _broken(path, f"not valid JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(value, kind):
        raise _broken(path, f"expected a JSON {'object' if kind is dict else kind.__name__}, found {type(value).__name__}")
    return value


def _recipe(path: Path) -> tuple[dict, str]:
    """(resolved recipe, the command that ran it) from recipe.yaml."""
    try:
        text = path.read_text(encoding="utf-8")
        recipe = yaml.safe_load(text) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise _broken(path, f"not valid YAML{where}") from None
    if not isinstance(recipe, dict):
        raise _broken(path, f"expected a mapping of key: value, found {type(recipe).__name__}")
    commands = [line[1:].strip() for line in text.splitlines()[:3] if line.startswith("#   ")]
    return recipe, commands[0] if commands else ""


def _log_history(path: Path) -> list[dict]:
    history = (_json(path, {}) or {}).get("log_history", [])
    if not isinstance(history, list) or not all(isinstance(entry, dict) for entry in history):
        raise _broken(path, "its log_history is not a list of objects")
    return history


def load_run(run_dir: str | Path) -> Run:
    """Everything sft/dpo leave in a run folder; missing pieces stay empty (a crashed run still reports).
    A piece that is there but unreadable is one UserError line naming the file."""
    path = Path(run_dir)
    if not path.is_dir():
        raise UserError(f"run folder not found: {run_dir}")
    if not (path / "recipe.yaml").is_file() and not (path / "trainer_state.json").is_file():
        raise UserError(f"{run_dir} is not a run folder (no recipe.yaml or trainer_state.json)")
    run = Run(path=path, name=path.resolve().name)
    if (path / "recipe.yaml").is_file():
        run.recipe, run.command = _recipe(path / "recipe.yaml")
    run.summary = _json(path / "run_summary.json", {})
    run.train_results = _json(path / "train_results.json", {})
    run.log_history = _log_history(path / "trainer_state.json")
    for name in HELD_OUT_ORDER:
        metrics = _json(path / "eval" / name / "metrics.json")
        if metrics:
            run.held_out[name] = metrics
    run.preference = _json(path / "preference_eval.json")
    try:
        run.validation = read_steps(path)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _broken(path / "validation", f"a step file is not valid JSON lines ({exc})") from None
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
