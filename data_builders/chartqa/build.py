"""Building and saving the synthetic ChartQA DatasetDict: one row per chart, rendered by a pool."""

from __future__ import annotations

from pathlib import Path

import datasets

from data_builders._common import build_splits, check_build_args, encode_png, row_rng, save_dataset
from data_builders._common import build_info as common_build_info
from data_builders.chartqa.chart import QUESTION_TYPES, sample_chart
from data_builders.chartqa.render import render_chart

FEATURES = datasets.Features(
    {
        "image": datasets.Image(),
        "query": datasets.Value("string"),
        "label": datasets.List(datasets.Value("string")),
        "human_or_machine": datasets.ClassLabel(names=["human", "machine"]),
        "type": datasets.Value("string"),
    }
)
MACHINE = 1  # human_or_machine class id for every synthetic row


# --- build ---


def _render_row(task: tuple[int, str, int, int, tuple[str, ...]]) -> list[dict]:
    """Pool worker: the (one) dataset row of (seed, split, index, image_size, question_types)."""
    seed, split, index, image_size, question_types = task
    spec = sample_chart(row_rng(seed, split, index), question_types)
    return [{
        "image": {"bytes": encode_png(render_chart(spec, image_size)), "path": None},
        "query": spec.query,
        "label": [spec.answer],
        "human_or_machine": MACHINE,
        "type": spec.qtype,
    }]


def build_chartqa(
    n_train: int,
    n_val: int,
    n_test: int,
    seed: int = 0,
    image_size: int = 160,
    num_proc: int = 1,
    question_types: tuple[str, ...] | list[str] = QUESTION_TYPES,
) -> datasets.DatasetDict:
    """Render the three splits (all drawn from the same question mix); identical output for any num_proc."""
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    question_types = check_build_args(sizes, seed, question_types, QUESTION_TYPES)
    return build_splits(sizes, seed, (image_size, question_types), _render_row, num_proc, "chartqa", "img", FEATURES)


# --- save ---


def build_info(n_train, n_val, n_test, seed, image_size, question_types=QUESTION_TYPES) -> dict:
    return common_build_info("data_builders.chartqa", (n_train, n_val, n_test), seed, image_size, question_types)


def save_chartqa(dataset_dict: datasets.DatasetDict, output_dir, overwrite: bool = False, info: dict | None = None) -> Path:
    """save_to_disk into a staging dir beside output_dir, then rename it into place.

    An interrupted run leaves output_dir as it was; an existing non-empty output_dir is only
    replaced with overwrite=True (FileExistsError otherwise).
    """
    return save_dataset(dataset_dict, output_dir, overwrite, info)


# The names vlm_tune.data.assets.ensure_assets looks for in every synthetic builder.
build, save = build_chartqa, save_chartqa
