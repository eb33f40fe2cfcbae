"""Synthetic ChartQA-like dataset: small rendered charts with questions whose answers are known.

Every row is a matplotlib chart (vertical bar, horizontal bar, line or pie) drawn from random
data that the generator keeps, plus one question about it. Vocabularies are small and answers
are balanced per question type, so a model answering from the text alone (one fixed answer per
type) scores poorly and a model has to read the pixels to do better.

Usage:
    python -m data_builders.chartqa --output artifacts/chartqa-synth \\
        --train 600 --val 100 --test 200 --seed 0 [--num_proc 2] [--image_size 160] [--overwrite]

    from data_builders.chartqa import build_chartqa, save_chartqa
    dataset_dict = build_chartqa(600, 100, 200, seed=0)
    save_chartqa(dataset_dict, "artifacts/chartqa-synth")

The saved DatasetDict (splits train/val/test) uses the HuggingFaceM4/ChartQA hub columns
(image, query, label, human_or_machine) plus `type`, the question type. Rows are deterministic:
row i of a split depends only on (seed, split, i) and image_size, never on --num_proc.

Modules: chart (vocabularies, questions, the sampled spec), render (matplotlib), build (DatasetDict,
save), cli (the command line).
"""

from data_builders._common import BUILD_INFO, SPLITS, encode_png, read_build_info, row_rng
from data_builders.chartqa.build import FEATURES, MACHINE, build, build_chartqa, build_info, save, save_chartqa
from data_builders.chartqa.chart import (
    CATEGORY_LABELS,
    CHART_KINDS,
    CLEAR_MARGIN,
    COLOR_HEX,
    COLOR_NAMES,
    COLOR_REFERENCES,
    COUNT_RANGE,
    DIFFERENCES,
    KINDS_FOR_TYPE,
    MARK_NOUN,
    QUERY_TEMPLATES,
    QUESTION_TYPES,
    VALUES,
    ChartSpec,
    sample_chart,
)
from data_builders.chartqa.cli import main
from data_builders.chartqa.render import DRAWERS, make_chart, render_chart

# The names vlm_tune.data.assets.ensure_assets reads per builder: QUESTION_TYPES, build_info,
# read_build_info, build, save (and BUILD_INFO, the settings file they compare); sample_ratings
# reads COLOR_NAMES, COUNT_RANGE, MARK_NOUN, encode_png, render_chart and sample_chart.
__all__ = [
    "BUILD_INFO", "CATEGORY_LABELS", "CHART_KINDS", "CLEAR_MARGIN", "COLOR_HEX", "COLOR_NAMES", "COLOR_REFERENCES",
    "COUNT_RANGE", "DIFFERENCES", "DRAWERS", "FEATURES", "KINDS_FOR_TYPE", "MACHINE", "MARK_NOUN", "QUERY_TEMPLATES",
    "QUESTION_TYPES", "SPLITS", "VALUES", "ChartSpec", "build", "build_chartqa", "build_info", "encode_png", "main",
    "make_chart", "read_build_info", "render_chart", "row_rng", "sample_chart", "save", "save_chartqa",
]
