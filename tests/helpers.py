"""Shared test helpers (plain functions and constants; fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY_RECIPE = REPO / "recipes" / "tiny" / "sft_chartqa.yaml"


def sft_argv(model_dir, data_dir, output_dir, *extra: str) -> list[str]:
    """The tiny default recipe pointed at the session fixtures, made short."""
    return [
        "--config", str(TINY_RECIPE),
        "--model_name_or_path", str(model_dir),
        "--dataset_name", str(data_dir),
        "--output_dir", str(output_dir),
        "--build_tiny_model", "false",
        "--synthetic_dataset", "false",
        "--logging_steps", "1",
        "--disable_tqdm", "true",
        "--num_validation_samples", "0",  # tests that check validation samples ask for them
        *extra,
    ]
