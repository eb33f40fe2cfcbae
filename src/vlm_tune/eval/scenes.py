"""`vlm-tune eval` on a scenes split: caption every row with the model and score the captions against
the scenes' known content (attribute recall / precision, see data_builders.scenes.score).

    vlm-tune eval --config recipes/tiny/sft_captioner.yaml [--adapter runs/tiny-sft-captioner] \\
        [--split test] [--limit N] [--max_new_tokens 48] [--output_dir DIR] [--any_recipe_field value ...]

A split is a scenes split when it has the scenes builder's `scene` column (`synthetic_builder: scenes`).
Writes OUTPUT/predictions.jsonl (per row: type, label, prediction, missed and wrong attributes) and
OUTPUT/scores.json ({adapter, split, scores, prior_scores}), OUTPUT defaulting to ADAPTER/captions-SPLIT
(runs/scenes-base/captions-SPLIT without an adapter); prints the text-only prior's and the model's tables.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets

from data_builders.scenes import format_scores, score_predictions
from vlm_tune.core.generation import generate_answers
from vlm_tune.core.io import atomic_write_text
from vlm_tune.data.scoring import text_only_prior

# Scoring answers is text only and lives with the scenes' attributes (data_builders.scenes.score, where the
# merged-model check uses it too); generating them, the files and the tables are here.
__all__ = ["evaluate_captioner", "evaluate_scenes", "is_scenes_split", "score_predictions"]

DEFAULT_MAX_NEW_TOKENS = 48  # the captioner's budget: the longest reference caption is under 40 tokens
BASE_DIR = "runs/scenes-base"  # where a base model's captions go (no adapter folder to write into)


def is_scenes_split(split: datasets.Dataset) -> bool:
    return "scene" in split.column_names and "type" in split.column_names


# --- score ---


def evaluate_captioner(model, processor, split: datasets.Dataset, batch_size: int = 16, max_new_tokens: int = 48,
                       system_prompt: str | None = None) -> tuple[list[dict], dict]:
    """Generate every row's answer (the caption and the tags of each scene, with the rows' prompts)
    and score them per scene. Returns (records, scores)."""
    predictions = generate_answers(model, processor, list(split["image"]), list(split["query"]), system_prompt,
                                   batch_size=batch_size, max_new_tokens=max_new_tokens, desc="Captioning")
    return score_predictions(split, predictions)


# --- run ---


def evaluate_scenes(model, processor, split: datasets.Dataset, train: datasets.Dataset | None, *, adapter: str | None,
                    split_name: str, output_dir: str | None = None, batch_size: int = 16,
                    max_new_tokens: int | None = None, system_prompt: str | None = None) -> dict:
    """Caption and score `split` (and the text-only prior of `train`, when there is one); write
    predictions.jsonl and scores.json, print the tables. Returns what scores.json holds."""
    records, scores = evaluate_captioner(model, processor, split, batch_size, max_new_tokens or DEFAULT_MAX_NEW_TOKENS,
                                         system_prompt)
    result = {"adapter": adapter, "split": split_name, "scores": scores}
    if train is not None:
        prior = text_only_prior(train)
        _, result["prior_scores"] = score_predictions(split, [prior.get(t, "") for t in split["type"]])
    out = Path(output_dir or (Path(adapter or BASE_DIR) / f"captions-{split_name}"))
    atomic_write_text(out / "predictions.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    atomic_write_text(out / "scores.json", json.dumps(result, indent=2) + "\n")
    if "prior_scores" in result:
        print("text-only prior\n" + format_scores(result["prior_scores"]) + "\n")
    print(("tuned" if adapter else "base") + "\n" + format_scores(scores))
    print(f"wrote {out / 'predictions.jsonl'} and {out / 'scores.json'}")
    return result
