"""What a chart row is: the vocabularies, question templates and the sampled spec (data, question, answer)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data_builders._common import pick

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


def _random_values(rng: np.random.Generator, n: int) -> list[int]:
    return [int(v) for v in rng.choice(VALUES, size=n)]


def _values_with_clear_max(rng: np.random.Generator, n: int) -> list[int]:
    top = int(pick(rng, (60, 70, 80, 90)))
    rest = [v for v in VALUES if v * CLEAR_MARGIN <= top]
    values = [int(v) for v in rng.choice(rest, size=n - 1)]
    values.insert(int(rng.integers(n)), top)  # uniform position -> uniform answer label
    return values


def _values_with_clear_min(rng: np.random.Generator, n: int) -> list[int]:
    bottom = int(pick(rng, (10, 20, 30)))
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
    low_value = int(pick(rng, [v for v in VALUES if v + diff <= VALUES[-1]]))
    values[lo], values[hi] = low_value, low_value + diff
    return values, hi, lo


# --- questions: the data each type needs, and its answer ---


def _color_question(rng: np.random.Generator, kind: str, labels: list[str], colors: list[str]):
    """(values, answer, subjects, reference) of a colour question about one mark."""
    n = len(labels)
    references = COLOR_REFERENCES[kind]
    mode = str(pick(rng, tuple(references)))
    values = _values_with_clear_max(rng, n) if mode == "largest" else _random_values(rng, n)
    if mode == "label":
        asked = int(rng.integers(n))
    elif mode == "first":
        asked = 0
    elif mode == "last":
        asked = n - 1
    else:
        asked = values.index(max(values))
    return values, colors[asked], [labels[asked]], references[mode].format(a=labels[asked])


def _question_data(rng: np.random.Generator, qtype: str, kind: str, labels: list[str], colors: list[str]):
    """(values, answer, subjects, reference): the plotted data for a question of `qtype`, its answer, the
    labels the question names and how a colour question points at its mark."""
    n = len(labels)
    if qtype == "color":
        return _color_question(rng, kind, labels, colors)
    if qtype == "max_label":
        values = _values_with_clear_max(rng, n)
        return values, labels[values.index(max(values))], [], ""
    if qtype == "min_label":
        values = _values_with_clear_min(rng, n)
        return values, labels[values.index(min(values))], [], ""
    if qtype == "count":
        return _random_values(rng, n), str(n), [], ""
    if qtype == "trend":
        answer = str(pick(rng, ("increasing", "decreasing")))
        return _monotone_values(rng, n, answer), answer, [], ""
    if qtype == "value":
        values = _random_values(rng, n)
        asked = int(rng.integers(n))
        return values, str(values[asked]), [labels[asked]], ""
    if qtype == "line_color":  # the easiest pixel question: the one coloured mark on white
        return _random_values(rng, n), colors[0], [], ""
    if qtype == "difference":
        diff = int(pick(rng, DIFFERENCES))
        values, hi, lo = _values_with_difference(rng, n, diff)
        return values, str(diff), [labels[hi], labels[lo]], ""
    raise ValueError(f"unknown question type {qtype!r}")


def sample_chart(rng: np.random.Generator, question_types: tuple[str, ...] = QUESTION_TYPES) -> ChartSpec:
    """Draw a question type (from question_types), a chart kind that supports it, the data and the question."""
    qtype = str(pick(rng, question_types))
    kind = str(pick(rng, KINDS_FOR_TYPE[qtype]))
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
    values, answer, subjects, reference = _question_data(rng, qtype, kind, labels, colors)

    template = str(pick(rng, QUERY_TEMPLATES[qtype]))
    named = dict(zip("ab", subjects))
    query = template.format(noun=MARK_NOUN[kind], ref=reference, **named)
    return ChartSpec(
        kind, tuple(labels), tuple(values), tuple(colors), qtype, tuple(subjects), query, answer
    )
