"""ChartQA relaxed accuracy: pix2struct's `relaxed_correctness`, loaded offline with evaluate.load()."""

from __future__ import annotations

import evaluate
import pytest

from vlm_tune.metrics import RELAXED_ACCURACY


@pytest.fixture(scope="module")
def metric():
    return evaluate.load(RELAXED_ACCURACY)


def _score(metric, prediction, labels, **kwargs):
    return metric.compute(predictions=[prediction], references=[labels], **kwargs)["relaxed_accuracy"]


@pytest.mark.parametrize(
    "prediction, labels, expected",
    [
        ("40", ["40"], 1.0),
        ("41.9", ["40"], 1.0),  # 4.75 % off
        ("42", ["40"], 1.0),  # exactly 5 %: inclusive
        ("42.1", ["40"], 0.0),
        ("95", ["100"], 1.0),
        ("94.9", ["100"], 0.0),
        ("-10.4", ["-10"], 1.0),  # relative to |target|
        ("40%", ["0.4"], 1.0),  # trailing % divides by 100
        ("0.41", ["40%"], 1.0),
        ("40%", ["40"], 0.0),  # 0.4 vs 40
        ("0", ["0"], 1.0),  # zero target: exact string match only
        ("0.0", ["0"], 0.0),
        ("0.01", ["0"], 0.0),
        ("Yes", ["yes"], 1.0),  # case-insensitive
        ("yes ", ["yes"], 0.0),  # no whitespace stripping by default
        ("forty", ["40"], 0.0),
        ("1,000", ["1000"], 0.0),  # commas are not parsed by default
        ("blue", ["red", "Blue"], 1.0),  # best over the row's labels
        ("7", ["6", "8"], 0.0),
    ],
)
def test_pix2struct_definition(metric, prediction, labels, expected):
    assert _score(metric, prediction, labels) == expected


@pytest.mark.parametrize(
    "prediction, labels", [("yes ", ["yes"]), ("1,000", ["1000"]), ("$12.", ["12"]), (" Red.", ["red"])]
)
def test_normalisation_is_opt_in(metric, prediction, labels):
    assert _score(metric, prediction, labels) == 0.0
    assert _score(metric, prediction, labels, normalize=True) == 1.0


def test_mean_over_rows_and_tolerance_option(metric):
    result = metric.compute(predictions=["40", "x", "10.8"], references=[["40"], ["y"], ["10"]])
    assert result == {"relaxed_accuracy": pytest.approx(1 / 3)}
    assert _score(metric, "10.8", ["10"], max_relative_change=0.1) == 1.0
