"""Drawing a chart spec with matplotlib (headless Agg) as an image_size² RGB image."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless; set before anything can pull in pyplot
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from data_builders.chartqa.chart import COLOR_HEX, QUESTION_TYPES, ChartSpec, sample_chart

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


def make_chart(rng: np.random.Generator, image_size: int = 160, question_types: tuple[str, ...] = QUESTION_TYPES):
    """One example: (image, query, answer, question type)."""
    spec = sample_chart(rng, question_types)
    return render_chart(spec, image_size), spec.query, spec.answer, spec.qtype
