"""Files of a run folder that several layers read or write (validation samples per step)."""

from __future__ import annotations

import json
from pathlib import Path

VALIDATION_DIR = "validation"
ACCURACY_KEY = "eval_samples_relaxed_accuracy"



def step_file(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / VALIDATION_DIR / f"step-{step:06d}.jsonl"


def read_steps(run_dir: str | Path) -> dict[int, list[dict]]:
    """{step: rows} of a run's validation samples, in step order (empty when it has none)."""
    steps = {}
    for path in sorted((Path(run_dir) / VALIDATION_DIR).glob("step-*.jsonl")):
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        steps[int(path.stem.split("-")[1])] = rows
    return dict(sorted(steps.items()))
