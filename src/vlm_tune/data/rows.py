"""ChartQA-style data: load (saved dataset, parquet, or hub name) → validate → TRL prompt/completion rows.

Rows become TRL's conversational prompt-completion format with an `images` list, so TRL's vision
collator puts loss on the answer only (with `messages` rows the question and image tokens would
carry loss too).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import datasets
from PIL import Image

from vlm_tune.core.errors import UserError
from vlm_tune.core.hub import hub_error, is_hub_id, offline_unless_reachable
from vlm_tune.core.prompts import prompt_messages

REQUIRED_COLUMNS = ("image", "query", "label")


# --- load ------------------------------------------------------------------------------------
def load_splits(dataset_name: str, dataset_config: str | None = None) -> datasets.DatasetDict:
    """A `save_to_disk` folder, a parquet file/folder (e.g. ChartQA's hub files), or a hub dataset name."""
    if not dataset_name:
        raise UserError("dataset_name is not set in the recipe")
    path = Path(os.path.expanduser(dataset_name))
    try:
        if (path / "dataset_dict.json").is_file():
            return datasets.load_from_disk(str(path))
        if path.is_file() and path.suffix == ".parquet":
            return datasets.load_dataset("parquet", data_files={"train": str(path)})
        if path.is_dir():
            return datasets.load_dataset(str(path), dataset_config)
    except (OSError, ValueError, datasets.exceptions.DatasetGenerationError) as exc:
        raise UserError(f"cannot read dataset {dataset_name}: {str(exc).splitlines()[0]}") from None
    if not is_hub_id(dataset_name):
        raise UserError(f"dataset not found: {dataset_name}")
    offline_unless_reachable()
    try:
        return datasets.load_dataset(dataset_name, dataset_config)
    except Exception as exc:  # hub errors come in many types (connection, auth, not found)
        raise hub_error(f"dataset '{dataset_name}'", exc, "path",
                        f"save it with `datasets.load_dataset('{dataset_name}').save_to_disk(DIR)` "
                        f"and set dataset_name: DIR") from None


def get_split(splits: datasets.DatasetDict, split: str, dataset_name: str, limit: int | None = None) -> datasets.Dataset:
    if split not in splits:
        raise UserError(f"dataset {dataset_name} has no split '{split}' (it has: {', '.join(splits)})")
    dataset = splits[split]
    missing = [c for c in REQUIRED_COLUMNS if c not in dataset.column_names]
    if missing:
        raise UserError(
            f"dataset {dataset_name} [{split}] lacks column(s) {', '.join(missing)} "
            f"(needs ChartQA's image, query, label; has {', '.join(dataset.column_names)})"
        )
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    return dataset


# --- format ----------------------------------------------------------------------------------
def _decode_image(value) -> Image.Image:
    """Image cells arrive undecoded ({'bytes', 'path'}) so a bad one can be reported by row."""
    if isinstance(value, Image.Image):
        image = value
    elif isinstance(value, dict) and value.get("bytes") is not None:
        image = Image.open(io.BytesIO(value["bytes"]))
    elif isinstance(value, dict) and value.get("path"):
        image = Image.open(value["path"])
    else:
        raise ValueError("no image data")
    image.load()
    return image.convert("RGB")


def answer_of(label) -> str:
    """ChartQA's `label` is a list of accepted answers (usually one); train on the first."""
    answers = [label] if isinstance(label, str) else list(label or [])
    if not answers or not str(answers[0]).strip():
        raise ValueError("empty label")
    return str(answers[0]).strip()


def undecoded_images(dataset: datasets.Dataset) -> datasets.Dataset:
    """The dataset with its image column left as stored bytes/paths: `format_row` decodes each one itself."""
    if isinstance(dataset.features.get("image"), datasets.Image):
        dataset = dataset.cast_column("image", datasets.Image(decode=False))
    return dataset


def format_row(row: dict, system_prompt: str | None, where: str, index: int) -> dict:
    """One ChartQA row → {'images': [img], 'prompt': [...], 'completion': [...]}; a bad image or label is
    a UserError naming `where` and the row's `index`."""
    try:
        image = _decode_image(row["image"])
    except Exception as exc:
        raise UserError(f"{where} row {index}: unreadable image ({type(exc).__name__}: {exc})") from None
    try:
        answer = answer_of(row["label"])
    except (ValueError, TypeError) as exc:  # TypeError: a label neither text nor a list (e.g. a number)
        raise UserError(f"{where} row {index}: bad label {row['label']!r} ({exc})") from None
    return {
        "images": [image],
        "prompt": prompt_messages(str(row["query"]), system_prompt),
        "completion": [{"role": "assistant", "content": answer}],
    }


def to_prompt_completion(dataset: datasets.Dataset, system_prompt: str | None, where: str) -> datasets.Dataset:
    """ChartQA rows → {'images': [img], 'prompt': [...], 'completion': [...]}, nothing else."""
    dataset = undecoded_images(dataset)

    def to_conversation(row, index):
        return format_row(row, system_prompt, where, index)

    formatted = dataset.map(
        to_conversation, with_indices=True, remove_columns=dataset.column_names, desc=f"Formatting {where}"
    )
    return formatted.cast_column("images", datasets.List(datasets.Image()))
