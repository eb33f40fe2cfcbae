"""Local `evaluate` metric modules; pass these paths to `evaluate.load()` (works offline)."""

from pathlib import Path

RELAXED_ACCURACY = str(Path(__file__).parent / "relaxed_accuracy" / "relaxed_accuracy.py")
