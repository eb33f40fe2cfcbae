"""Scoring answers on a held-out split: ChartQA relaxed accuracy per question type, the text-only prior,
results files and the base / prior / tuned table. Shared by `vlm-tune eval` (the prior also by its
captioner scoring), the after-training eval and the validation samples."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import datasets
import evaluate

from vlm_tune.core.generation import generate_answers
from vlm_tune.core.markdown import md_table
from vlm_tune.data.rows import answer_of
from vlm_tune.metrics import RELAXED_ACCURACY
from vlm_tune.metrics.relaxed_accuracy.relaxed_accuracy import best_correctness


# --- score -----------------------------------------------------------------------------------
def question_types(split: datasets.Dataset) -> list[str]:
    """Our rows carry `type`; ChartQA's carry human_or_machine (its human / augmented halves, reported
    apart in papers); anything else counts as 'all'."""
    if "type" in split.column_names:
        return list(split["type"])
    if "human_or_machine" in split.column_names:
        feature = split.features["human_or_machine"]
        values = split["human_or_machine"]
        return [feature.int2str(v) if isinstance(feature, datasets.ClassLabel) else str(v) for v in values]
    return ["all"] * len(split)


def score(predictions: list[str], labels: list[list[str]], types: list[str]) -> tuple[list[float], dict]:
    """Per-row correctness and {'relaxed_accuracy', 'n', 'per_type': {type: {...}}} via the evaluate module."""
    metric = evaluate.load(RELAXED_ACCURACY)
    correct = [best_correctness(label, prediction) for prediction, label in zip(predictions, labels)]
    by_type: dict[str, list[int]] = defaultdict(list)
    for i, qtype in enumerate(types):
        by_type[qtype].append(i)
    per_type = {
        qtype: {
            "relaxed_accuracy": metric.compute(
                predictions=[predictions[i] for i in rows], references=[labels[i] for i in rows]
            )["relaxed_accuracy"],
            "n": len(rows),
        }
        for qtype, rows in sorted(by_type.items())
    }
    overall = metric.compute(predictions=predictions, references=labels)["relaxed_accuracy"]
    return correct, {"relaxed_accuracy": overall, "n": len(predictions), "per_type": per_type}


def text_only_prior(train_split: datasets.Dataset) -> dict[str, str]:
    """Each question type's most common training answer: what is learnable without the image (for a
    captioner's scenes split: each row type's most common caption, what a captioner ignoring the
    pixels would say)."""
    answers: dict[str, Counter] = defaultdict(Counter)
    for qtype, label in zip(question_types(train_split), train_split["label"]):
        answers[qtype][answer_of(label)] += 1
    return {qtype: counts.most_common(1)[0][0] for qtype, counts in answers.items()}


# --- run -------------------------------------------------------------------------------------
def evaluate_split(model, processor, split: datasets.Dataset, system_prompt=None, batch_size=16,
                   max_new_tokens=16, desc="Evaluating") -> tuple[list[dict], dict]:
    labels = [[label] if isinstance(label, str) else list(label) for label in split["label"]]
    predictions = generate_answers(model, processor, list(split["image"]), list(split["query"]), system_prompt,
                                   batch_size=batch_size, max_new_tokens=max_new_tokens, desc=desc)
    return _records(split, labels, predictions)


def evaluate_prior(prior: dict[str, str], split: datasets.Dataset) -> tuple[list[dict], dict]:
    labels = [[label] if isinstance(label, str) else list(label) for label in split["label"]]
    predictions = [prior.get(qtype, "") for qtype in question_types(split)]
    return _records(split, labels, predictions)


def _records(split, labels, predictions) -> tuple[list[dict], dict]:
    types = question_types(split)
    correct, metrics = score(predictions, labels, types)
    records = [
        {"question": q, "type": t, "labels": l, "prediction": p, "correct": c}
        for q, t, l, p, c in zip(split["query"], types, labels, predictions, correct)
    ]
    return records, metrics


def write_results(output_dir: str | Path, records: list[dict], metrics: dict) -> None:
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / "predictions.jsonl", "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")


def format_table(results: dict[str, dict]) -> str:
    """Markdown table: one row per model, columns overall + each question type (relaxed accuracy, %)."""
    types = sorted({t for metrics in results.values() for t in metrics["per_type"]})
    rows = []
    for name, metrics in results.items():
        cells = [name, f"{100 * metrics['relaxed_accuracy']:.1f}"]
        cells += [f"{100 * metrics['per_type'][t]['relaxed_accuracy']:.1f}" if t in metrics["per_type"] else "–"
                  for t in types]
        rows.append(cells)
    n = next(iter(results.values()))["n"]
    return "\n".join(md_table(["model", "overall"] + types, rows)) + f"\n\nRelaxed accuracy (%) on {n} held-out questions."
