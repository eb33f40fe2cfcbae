"""The ChartQA relaxed-accuracy `evaluate` module (see relaxed_accuracy.py)."""
