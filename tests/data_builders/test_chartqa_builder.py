"""Tests for data_builders.chartqa: determinism, schema, answer correctness, CLI, balance."""

import collections
import io
import re
import subprocess
import sys

import datasets
import numpy as np
import pytest
from PIL import Image

from data_builders.chartqa import (
    CHART_KINDS,
    CLEAR_MARGIN,
    COLOR_NAMES,
    KINDS_FOR_TYPE,
    QUESTION_TYPES,
    SPLITS,
    build_chartqa,
    encode_png,
    main,
    make_chart,
    render_chart,
    row_rng,
    sample_chart,
)
from vlm_tune.core.errors import run_command

from helpers import REPO

SIZES = (6, 3, 3)


# --- helpers ---


def _rows(dataset_dict):
    """split -> list of (query, label, type, png bytes), images left undecoded."""
    out = {}
    for split, ds in dataset_dict.items():
        raw = ds.cast_column("image", datasets.Image(decode=False))
        out[split] = [(r["query"], r["label"], r["type"], r["image"]["bytes"]) for r in raw]
    return out


@pytest.fixture(scope="module")
def built():
    return build_chartqa(*SIZES, seed=0, image_size=160, num_proc=1)


# --- determinism ---


def test_same_seed_same_bytes_for_any_num_proc(built):
    again = build_chartqa(*SIZES, seed=0, image_size=160, num_proc=2)
    assert _rows(again) == _rows(built)


def test_seed_and_split_change_the_rows(built):
    rows = _rows(built)
    other = _rows(build_chartqa(*SIZES, seed=1, image_size=160, num_proc=2))
    assert other["train"] != rows["train"]
    assert rows["test"] != rows["train"][: len(rows["test"])]
    assert {r[3] for r in rows["test"]}.isdisjoint(r[3] for r in rows["train"])


# --- schema ---


def test_schema_and_images(built):
    assert list(built) == list(SPLITS)
    assert [len(built[s]) for s in SPLITS] == list(SIZES)
    for ds in built.values():
        assert list(ds.features) == ["image", "query", "label", "human_or_machine", "type"]
        assert isinstance(ds.features["image"], datasets.Image)
        assert ds.features["query"] == datasets.Value("string")
        assert ds.features["label"] == datasets.List(datasets.Value("string"))
        assert ds.features["human_or_machine"].names == ["human", "machine"]
        assert ds.features["type"] == datasets.Value("string")
        for row in ds:
            assert row["image"].size == (160, 160) and row["image"].mode == "RGB"
            assert row["query"].endswith("?")
            assert row["label"] and all(isinstance(a, str) and a for a in row["label"])
            assert row["human_or_machine"] == 1
            assert row["type"] in QUESTION_TYPES


@pytest.mark.parametrize("image_size", [96, 224])
def test_every_kind_renders_at_the_asked_size(image_size):
    specs = [sample_chart(row_rng(0, "train", i)) for i in range(200)]
    for kind in CHART_KINDS:
        spec = next(s for s in specs if s.kind == kind)
        image = render_chart(spec, image_size)
        assert image.size == (image_size, image_size) and image.mode == "RGB"
        decoded = Image.open(io.BytesIO(encode_png(image)))
        assert np.array_equal(np.asarray(decoded), np.asarray(image))


# --- answers ---


def _expected_answer(spec):
    """Recompute the answer from the chart data alone."""
    values = np.array(spec.values)
    position = {label: i for i, label in enumerate(spec.labels)}
    if spec.qtype == "max_label":
        top, second = np.sort(values)[::-1][:2]
        assert top >= CLEAR_MARGIN * second
        return spec.labels[int(values.argmax())]
    if spec.qtype == "min_label":
        bottom, second = np.sort(values)[:2]
        assert second >= CLEAR_MARGIN * bottom
        return spec.labels[int(values.argmin())]
    if spec.qtype == "color":
        asked = position[spec.subjects[0]]
        if re.search(r"leftmost|top bar", spec.query):
            assert asked == 0
        elif re.search(r"rightmost|bottom bar", spec.query):
            assert asked == len(values) - 1
        elif re.search(r"tallest|longest|largest", spec.query):
            top, second = np.sort(values)[::-1][:2]
            assert asked == values.argmax() and top >= CLEAR_MARGIN * second
        else:
            assert re.search(rf"\b{spec.subjects[0]}\?$", spec.query)
        return spec.colors[asked]
    if spec.qtype == "count":
        return str(len(spec.labels))
    if spec.qtype == "trend":
        steps = np.diff(values)
        assert (steps > 0).all() or (steps < 0).all()
        return "increasing" if steps[0] > 0 else "decreasing"
    if spec.qtype == "value":
        return str(values[position[spec.subjects[0]]])
    if spec.qtype == "difference":
        a, b = (values[position[s]] for s in spec.subjects)
        return str(a - b)
    if spec.qtype == "line_color":
        assert spec.kind == "line"
        return spec.colors[0]
    raise AssertionError(spec.qtype)


def test_answers_follow_from_the_data():
    specs = [sample_chart(row_rng(3, "val", i)) for i in range(700)]
    assert {s.qtype for s in specs} == set(QUESTION_TYPES)
    for spec in specs:
        assert spec.kind in KINDS_FOR_TYPE[spec.qtype]
        assert len(set(spec.labels)) == len(spec.labels) == len(spec.values) == len(spec.colors)
        assert set(spec.values) <= set(range(10, 100, 10))
        if spec.qtype in ("value", "difference"):
            assert all(re.search(rf"\b{s}\b", spec.query) for s in spec.subjects)
        assert "{" not in spec.query
        assert spec.answer == _expected_answer(spec)


def test_built_rows_are_the_sampled_charts(built):
    for split, rows in _rows(built).items():
        for index, (query, label, qtype, png) in enumerate(rows):
            spec = sample_chart(row_rng(0, split, index))
            assert (query, label, qtype) == (spec.query, [spec.answer], spec.qtype)
            assert png == encode_png(render_chart(spec, 160))


def test_make_chart_matches_sample_chart():
    image, query, answer, qtype = make_chart(row_rng(5, "train", 0), 128)
    spec = sample_chart(row_rng(5, "train", 0))
    assert (query, answer, qtype) == (spec.query, spec.answer, spec.qtype)
    assert image.size == (128, 128)
    if qtype == "color":
        assert answer in COLOR_NAMES


# --- balance ---


def test_text_only_prior_is_weak():
    # Sampling is cheap without rendering, so check many rows for a stable estimate.
    specs = [sample_chart(row_rng(0, "train", i)) for i in range(2000)]
    answers = collections.defaultdict(collections.Counter)
    for spec in specs:
        answers[spec.qtype][spec.answer] += 1
    for qtype in QUESTION_TYPES:
        counts = answers[qtype]
        share = sum(counts.values()) / len(specs)
        assert 0.08 < share < 0.22, (qtype, share)  # roughly uniform mix of types
        assert len(counts) >= 2
        assert max(counts.values()) / sum(counts.values()) <= 0.6, (qtype, counts)


# --- command line ---


def test_cli_writes_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "chartqa"
    sizes = ["--train", "4", "--val", "2", "--test", "3"]
    args = ["--output", str(out), *sizes, "--seed", "7", "--num-proc", "1"]
    assert main(args) == 0
    loaded = datasets.load_from_disk(str(out))
    assert {s: len(loaded[s]) for s in loaded} == {"train": 4, "val": 2, "test": 3}
    first = _rows(loaded)
    assert [p.name for p in tmp_path.iterdir()] == ["chartqa"]  # no staging dir left behind

    capsys.readouterr()
    assert run_command(main, args[:-4] + ["--seed", "8"]) == 2
    error = capsys.readouterr().err.strip()
    assert error == f"error: {out} exists and is not empty; pass --overwrite"
    assert _rows(datasets.load_from_disk(str(out))) == first

    assert main(args[:-4] + ["--seed", "8", "--overwrite"]) == 0
    assert _rows(datasets.load_from_disk(str(out))) != first
    assert [p.name for p in tmp_path.iterdir()] == ["chartqa"]


@pytest.mark.parametrize(
    "bad",
    [
        ["--train", "-1"],
        ["--train", "0", "--val", "0", "--test", "0"],
        ["--num-proc", "0"],
        ["--image-size", "8"],
    ],
)
def test_cli_rejects_bad_arguments(tmp_path, capsys, bad):
    assert run_command(main, ["--output", str(tmp_path / "x")] + bad) == 2
    assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_module_entry_point_runs_main_through_run_command(tmp_path):
    """`python -m data_builders.chartqa`: a user error is one `error:` line and exit code 2."""
    charts = subprocess.run([sys.executable, "-m", "data_builders.chartqa", "--output", str(tmp_path / "x"),
                             "--train", "0", "--val", "0", "--test", "0"], cwd=REPO, capture_output=True, text=True)
    assert charts.returncode == 2 and charts.stderr.startswith("error:") and not (tmp_path / "x").exists()
    assert len(charts.stderr.strip().splitlines()) == 1
