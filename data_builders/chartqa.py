"""Synthetic ChartQA-like dataset: small rendered charts with questions whose answers are known.

Every row is a matplotlib chart (vertical bar, horizontal bar, line or pie) drawn from random
data that the generator keeps, plus one question about it. Vocabularies are small and answers
are balanced per question type, so a model answering from the text alone (one fixed answer per
type) scores poorly and a model has to read the pixels to do better.

Usage:
    python -m data_builders.chartqa --output artifacts/chartqa-synth \\
        --train 600 --val 100 --test 200 --seed 0 [--num-proc 2] [--image-size 160] [--overwrite]

    from data_builders.chartqa import build_chartqa, save_chartqa
    dataset_dict = build_chartqa(600, 100, 200, seed=0)
    save_chartqa(dataset_dict, "artifacts/chartqa-synth")

The saved DatasetDict (splits train/val/test) uses the HuggingFaceM4/ChartQA hub columns
(image, query, label, human_or_machine) plus `type`, the question type. Rows are deterministic:
row i of a split depends only on (seed, split, i) and image_size, never on --num-proc.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless; set before anything can pull in pyplot
import datasets
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from data_builders._common import (  # noqa: F401 (BUILD_INFO, read_build_info: ensure_assets reads them per builder)
    BUILD_INFO,
    build_splits,
    check_build_args,
    is_nonempty,
    non_negative_int,
    positive_int,
    read_build_info,
    save_dataset,
)
from data_builders._common import build_info as common_build_info

# --- vocabularies ---

# Single letters can be drawn big enough to survive the model's downscale (a 64 px tile turns
# 160 px text into a third of its size); words would have to be small to fit six of them.
CATEGORY_LABELS = ("A", "B", "C", "D", "E", "F")
# Named colours far apart in hue/lightness, so the name is recoverable from a few pixels.
COLOR_HEX = {
    "red": "#e41a1c",
    "blue": "#1f5fd6",
    "green": "#2ca02c",
    "orange": "#ff8c00",
    "purple": "#8e44ad",
    "black": "#222222",
}
COLOR_NAMES = tuple(COLOR_HEX)
VALUES = tuple(range(10, 100, 10))  # every plotted value is one of 10, 20, ..., 90
CLEAR_MARGIN = 1.3  # the extreme value of a max/min question beats the runner-up by this factor
COUNT_RANGE = (2, 6)  # inclusive; count answers are uniform over it
DIFFERENCES = (10, 20, 30, 40, 50)  # difference answers are uniform over these

CHART_KINDS = ("vbar", "hbar", "line", "pie")
QUESTION_TYPES = ("max_label", "min_label", "color", "count", "trend", "value", "difference", "line_color")
# A type is only asked where the chart shows what it needs (trend needs an ordered line, colour
# needs one colour per category, printed values are on bars and line points but not pie slices).
KINDS_FOR_TYPE = {
    "max_label": ("vbar", "hbar", "pie"),
    "min_label": ("vbar", "hbar", "pie"),
    "color": ("vbar", "hbar", "pie"),
    "count": ("vbar", "hbar", "line", "pie"),
    "trend": ("line",),
    "value": ("vbar", "hbar", "line"),
    "difference": ("vbar", "hbar"),
    "line_color": ("line",),
}
MARK_NOUN = {"vbar": "bar", "hbar": "bar", "line": "point", "pie": "slice"}
# How a colour question points at one mark: by its label (needs reading the letter) or by
# position/size (needs only layout), so part of the type is learnable from coarse pixels.
COLOR_REFERENCES = {
    "vbar": {"label": "the bar for {a}", "first": "the leftmost bar", "last": "the rightmost bar",
             "largest": "the tallest bar"},
    "hbar": {"label": "the bar for {a}", "first": "the top bar", "last": "the bottom bar",
             "largest": "the longest bar"},
    "pie": {"label": "the slice for {a}", "largest": "the largest slice"},
}

QUERY_TEMPLATES = {
    "max_label": (
        "Which category has the highest value?",
        "Which label has the largest value?",
        "Which {noun} is the largest?",
    ),
    "min_label": (
        "Which category has the lowest value?",
        "Which label has the smallest value?",
        "Which {noun} is the smallest?",
    ),
    "color": (
        "What is the colour of {ref}?",
        "What color is {ref}?",
        "Which colour is used for {ref}?",
    ),
    "count": (
        "How many {noun}s are there in the chart?",
        "How many {noun}s does the chart show?",
        "What is the number of categories in the chart?",
    ),
    "trend": (
        "Is the line increasing or decreasing overall?",
        "What is the overall trend of the line, increasing or decreasing?",
        "From left to right, is the line increasing or decreasing?",
    ),
    "value": (
        "What is the value of {a}?",
        "What value does {a} have?",
        "What is the value shown for {a}?",
    ),
    "line_color": (
        "What colour is the line?",
        "What is the color of the line?",
        "Which colour is the line drawn in?",
    ),
    "difference": (
        "What is the difference between {a} and {b}?",
        "How much larger is {a} than {b}?",
        "By how much does {a} exceed {b}?",
    ),
}

SPLITS = ("train", "val", "test")
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


# --- chart data ---


@dataclass(frozen=True)
class ChartSpec:
    """Everything needed to draw one chart and to check its answer."""

    kind: str
    labels: tuple[str, ...]
    values: tuple[int, ...]
    colors: tuple[str, ...]  # colour names, one per label; a line chart uses colors[0]
    qtype: str
    subjects: tuple[str, ...]  # labels of the marks the question is about, in question order
    query: str
    answer: str


def row_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Independent stream per (seed, split, row), so rows do not depend on worker scheduling."""
    return np.random.default_rng([seed, SPLITS.index(split), index])


def _pick(rng: np.random.Generator, options) -> object:
    return options[int(rng.integers(len(options)))]


def _random_values(rng: np.random.Generator, n: int) -> list[int]:
    return [int(v) for v in rng.choice(VALUES, size=n)]


def _values_with_clear_max(rng: np.random.Generator, n: int) -> list[int]:
    top = int(_pick(rng, (60, 70, 80, 90)))
    rest = [v for v in VALUES if v * CLEAR_MARGIN <= top]
    values = [int(v) for v in rng.choice(rest, size=n - 1)]
    values.insert(int(rng.integers(n)), top)  # uniform position -> uniform answer label
    return values


def _values_with_clear_min(rng: np.random.Generator, n: int) -> list[int]:
    bottom = int(_pick(rng, (10, 20, 30)))
    rest = [v for v in VALUES if v >= bottom * CLEAR_MARGIN]
    values = [int(v) for v in rng.choice(rest, size=n - 1)]
    values.insert(int(rng.integers(n)), bottom)
    return values


def _monotone_values(rng: np.random.Generator, n: int, direction: str) -> list[int]:
    # Strictly monotone, so the overall slope is at least (n - 1) * 10 and never ambiguous.
    values = sorted(int(v) for v in rng.choice(VALUES, size=n, replace=False))
    return values if direction == "increasing" else values[::-1]


def _values_with_difference(rng: np.random.Generator, n: int, diff: int):
    """Random values where values[hi] - values[lo] == diff; returns (values, hi, lo)."""
    values = _random_values(rng, n)
    hi, lo = (int(i) for i in rng.choice(n, size=2, replace=False))
    low_value = int(_pick(rng, [v for v in VALUES if v + diff <= VALUES[-1]]))
    values[lo], values[hi] = low_value, low_value + diff
    return values, hi, lo


def sample_chart(rng: np.random.Generator, question_types: tuple[str, ...] = QUESTION_TYPES) -> ChartSpec:
    """Draw a question type (from question_types), a chart kind that supports it, the data and the question."""
    qtype = str(_pick(rng, question_types))
    kind = str(_pick(rng, KINDS_FOR_TYPE[qtype]))
    if qtype == "count":
        n = int(rng.integers(COUNT_RANGE[0], COUNT_RANGE[1] + 1))
    elif qtype == "trend":
        n = int(rng.integers(4, 7))
    else:
        n = int(rng.integers(3, 6))
    # Categories in reading order (A, B, C, ... left to right / top to bottom / clockwise), as
    # most real charts do: a label question is then answerable from where the mark is, which a
    # small model at 64 px can see, while the letters themselves are only ~3 px tall.
    labels = list(CATEGORY_LABELS[:n])
    colors = [str(c) for c in rng.choice(COLOR_NAMES, size=n, replace=False)]

    subjects: list[str] = []
    reference = ""
    if qtype == "max_label":
        values = _values_with_clear_max(rng, n)
        answer = labels[values.index(max(values))]
    elif qtype == "min_label":
        values = _values_with_clear_min(rng, n)
        answer = labels[values.index(min(values))]
    elif qtype == "color":
        references = COLOR_REFERENCES[kind]
        mode = str(_pick(rng, tuple(references)))
        values = _values_with_clear_max(rng, n) if mode == "largest" else _random_values(rng, n)
        if mode == "label":
            asked = int(rng.integers(n))
        elif mode == "first":
            asked = 0
        elif mode == "last":
            asked = n - 1
        else:
            asked = values.index(max(values))
        subjects = [labels[asked]]
        reference = references[mode].format(a=labels[asked])
        answer = colors[asked]
    elif qtype == "count":
        values = _random_values(rng, n)
        answer = str(n)
    elif qtype == "trend":
        answer = str(_pick(rng, ("increasing", "decreasing")))
        values = _monotone_values(rng, n, answer)
    elif qtype == "value":
        values = _random_values(rng, n)
        asked = int(rng.integers(n))
        subjects = [labels[asked]]
        answer = str(values[asked])
    elif qtype == "line_color":  # the easiest pixel question: the one coloured mark on white
        values = _random_values(rng, n)
        answer = colors[0]
    elif qtype == "difference":
        diff = int(_pick(rng, DIFFERENCES))
        values, hi, lo = _values_with_difference(rng, n, diff)
        subjects = [labels[hi], labels[lo]]
        answer = str(diff)
    else:
        raise ValueError(f"unknown question type {qtype!r}")

    template = str(_pick(rng, QUERY_TEMPLATES[qtype]))
    named = dict(zip("ab", subjects))
    query = template.format(noun=MARK_NOUN[kind], ref=reference, **named)
    return ChartSpec(
        kind, tuple(labels), tuple(values), tuple(colors), qtype, tuple(subjects), query, answer
    )


# --- render ---

# The figure is 1 inch square at dpi=image_size, so sizes in points scale with the image and
# every chart looks the same at any resolution (1 pt = image_size / 72 px; 9 pt = 20 px at 160).
VALUE_AXIS_MAX = 118  # fixed value scale: bar length alone encodes the value, with room for text
LABEL_PT = 9.0  # category letters
VALUE_PT = 6.5  # printed values: two digits must fit over one bar of a six-bar chart
LINE_PT = 2.5


def _new_axes(image_size: int):
    fig = Figure(figsize=(1, 1), dpi=image_size, facecolor="white")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_facecolor("white")
    return fig, ax


def _hide_spines(ax, *sides: str) -> None:
    for side in sides:
        ax.spines[side].set_visible(False)


def _draw_vbar(ax, spec: ChartSpec) -> None:
    n = len(spec.labels)
    ax.bar(range(n), spec.values, width=0.7, color=[COLOR_HEX[c] for c in spec.colors])
    for i, v in enumerate(spec.values):
        ax.text(i, v + 2, str(v), ha="center", va="bottom", fontsize=VALUE_PT, fontweight="bold")
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_ylim(0, VALUE_AXIS_MAX)
    ax.set_xticks(range(n), spec.labels, fontsize=LABEL_PT, fontweight="bold")
    ax.set_yticks([])
    ax.tick_params(axis="x", length=0, pad=1)
    _hide_spines(ax, "top", "right", "left")


def _draw_hbar(ax, spec: ChartSpec) -> None:
    n = len(spec.labels)
    ax.barh(range(n), spec.values, height=0.7, color=[COLOR_HEX[c] for c in spec.colors])
    for i, v in enumerate(spec.values):
        ax.text(v + 2, i, str(v), ha="left", va="center", fontsize=VALUE_PT, fontweight="bold")
    ax.set_ylim(n - 0.5, -0.5)  # first label on top, reading order
    ax.set_xlim(0, VALUE_AXIS_MAX + 6)
    ax.set_yticks(range(n), spec.labels, fontsize=LABEL_PT, fontweight="bold")
    ax.set_xticks([])
    ax.tick_params(axis="y", length=0, pad=1)
    _hide_spines(ax, "top", "right", "bottom")


def _draw_line(ax, spec: ChartSpec) -> None:
    n = len(spec.labels)
    color = COLOR_HEX[spec.colors[0]]
    ax.plot(range(n), spec.values, color=color, linewidth=LINE_PT, marker="o", markersize=4.5)
    for i, v in enumerate(spec.values):
        ax.annotate(str(v), (i, v), xytext=(0, 2.5), textcoords="offset points",
                    ha="center", va="bottom", fontsize=VALUE_PT, fontweight="bold")
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_ylim(0, VALUE_AXIS_MAX)
    ax.set_xticks(range(n), spec.labels, fontsize=LABEL_PT, fontweight="bold")
    ax.set_yticks([])
    ax.tick_params(axis="x", length=0, pad=1)
    _hide_spines(ax, "top", "right", "left")


def _draw_pie(ax, spec: ChartSpec) -> None:
    ax.pie(
        spec.values,
        labels=spec.labels,
        colors=[COLOR_HEX[c] for c in spec.colors],
        startangle=90,
        counterclock=False,
        labeldistance=1.12,
        textprops={"fontsize": LABEL_PT, "fontweight": "bold"},
        wedgeprops={"edgecolor": "white", "linewidth": 0.6},
    )
    ax.set_aspect("equal")


DRAWERS = {"vbar": _draw_vbar, "hbar": _draw_hbar, "line": _draw_line, "pie": _draw_pie}


def render_chart(spec: ChartSpec, image_size: int = 160) -> Image.Image:
    """Draw the chart as an image_size x image_size RGB image (consumes no randomness)."""
    fig, ax = _new_axes(image_size)
    DRAWERS[spec.kind](ax, spec)
    fig.tight_layout(pad=0.15)
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    if rgb.shape != (image_size, image_size, 3):
        raise RuntimeError(f"rendered {rgb.shape}, expected {(image_size, image_size, 3)}")
    return Image.fromarray(rgb)  # uint8 H x W x 3 -> RGB


def encode_png(image: Image.Image) -> bytes:
    # PIL writes no timestamps or metadata unless asked, so equal pixels give equal bytes.
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def make_chart(rng: np.random.Generator, image_size: int = 160, question_types: tuple[str, ...] = QUESTION_TYPES):
    """One example: (image, query, answer, question type)."""
    spec = sample_chart(rng, question_types)
    return render_chart(spec, image_size), spec.query, spec.answer, spec.qtype


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


# --- command line ---


def _image_size(text: str) -> int:
    value = int(text)
    if value < 64:
        raise argparse.ArgumentTypeError(f"must be >= 64 px for readable text, got {value}")
    return value


def _question_types(text: str) -> tuple[str, ...]:
    types = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = [t for t in types if t not in QUESTION_TYPES]
    if unknown or not types:
        raise argparse.ArgumentTypeError(f"unknown question type(s) {unknown}; choose from {','.join(QUESTION_TYPES)}")
    return types


def _parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m data_builders.chartqa",
        description="Build a synthetic ChartQA-like DatasetDict (train/val/test) on disk.",
    )
    parser.add_argument("--output", required=True, type=Path, help="directory to write")
    for split, default in (("train", 600), ("val", 100), ("test", 200)):
        parser.add_argument(f"--{split}", type=non_negative_int, default=default,
                            help=f"{split} rows (default %(default)s)")
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="random seed (default %(default)s)")
    parser.add_argument("--num-proc", type=positive_int, default=min(2, os.cpu_count() or 1),
                        help="render processes (default min(2, cpus) = %(default)s)")
    parser.add_argument("--image-size", type=_image_size, default=160,
                        help="square image side in px (default %(default)s)")
    parser.add_argument("--types", type=_question_types, default=QUESTION_TYPES,
                        help=f"comma-separated question types (default: all of {','.join(QUESTION_TYPES)})")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output")
    args = parser.parse_args(argv)
    if args.train + args.val + args.test == 0:
        parser.error("--train, --val and --test are all 0; ask for at least one row")
    return args


# The names vlm_tune.data.assets.ensure_assets looks for in every synthetic builder.
build, save = build_chartqa, save_chartqa


def main(argv=None) -> int:
    args = _parse_args(argv)
    # Check before rendering so a refused run costs nothing.
    if is_nonempty(args.output) and not args.overwrite:
        print(f"error: {args.output} exists and is not empty; pass --overwrite", file=sys.stderr)
        return 2
    dataset_dict = build_chartqa(
        args.train, args.val, args.test, args.seed, args.image_size, args.num_proc, args.types
    )
    info = build_info(args.train, args.val, args.test, args.seed, args.image_size, args.types)
    save_chartqa(dataset_dict, args.output, overwrite=args.overwrite, info=info)
    sizes = ", ".join(f"{split} {len(ds)}" for split, ds in dataset_dict.items())
    print(f"wrote {args.output} ({sizes})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
