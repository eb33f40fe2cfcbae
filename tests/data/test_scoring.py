"""Relaxed-accuracy scoring, the text-only prior and the base / text-only prior / tuned table
(the `vlm-tune eval` command itself: tests/eval)."""

from __future__ import annotations

import datasets

from vlm_tune.data.scoring import evaluate_prior, format_table, score, text_only_prior


def _split(rows):
    return datasets.Dataset.from_dict(
        {"query": [r[0] for r in rows], "label": [[r[1]] for r in rows], "type": [r[2] for r in rows]}
    )


def test_text_only_prior_is_each_types_most_common_answer():
    train = _split([("q", "red", "color"), ("q", "red", "color"), ("q", "blue", "color"), ("q", "3", "count")])
    assert text_only_prior(train) == {"color": "red", "count": "3"}
    test = _split([("q", "red", "color"), ("q", "blue", "color"), ("q", "4", "count"), ("q", "x", "trend")])
    records, metrics = evaluate_prior(text_only_prior(train), test)
    assert [r["prediction"] for r in records] == ["red", "red", "3", ""]
    assert metrics["relaxed_accuracy"] == 0.25 and metrics["n"] == 4
    assert metrics["per_type"]["color"] == {"relaxed_accuracy": 0.5, "n": 2}


def test_chartqa_rows_are_grouped_human_vs_machine():
    features = datasets.Features({"query": datasets.Value("string"), "label": datasets.List(datasets.Value("string")),
                                  "human_or_machine": datasets.ClassLabel(names=["human", "machine"])})
    split = datasets.Dataset.from_dict({"query": ["a", "b"], "label": [["1"], ["2"]], "human_or_machine": [0, 1]},
                                       features=features)
    _, metrics = evaluate_prior({"human": "1", "machine": "3"}, split)
    assert metrics["per_type"] == {"human": {"relaxed_accuracy": 1.0, "n": 1}, "machine": {"relaxed_accuracy": 0.0, "n": 1}}


def test_score_uses_relaxed_accuracy_per_type():
    correct, metrics = score(["41", "A", "10"], [["40"], ["B"], ["12"]], ["value", "max_label", "value"])
    assert correct == [1.0, 0.0, 0.0]
    assert metrics["per_type"]["value"]["relaxed_accuracy"] == 0.5
    table = format_table({"base": metrics, "tuned": metrics})
    assert table.splitlines()[0] == "| model | overall | max_label | value |"
    assert "| tuned | 33.3 | 0.0 | 50.0 |" in table
