"""ChartQA-style data: load (saved dataset, parquet, or hub name) → validate → TRL prompt/completion rows.

Validation happens before training, split by split, and names the split and row: `get_split` checks
columns, their types and that the split is not empty; `check_rows` reads every row a run will use
(labels present, images decodable) without keeping the pixels.

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
            try:
                return datasets.load_from_disk(str(path))
            except IndexError:  # datasets cannot concatenate the zero shards of a split saved empty
                raise UserError(f"dataset {dataset_name} [{_empty_saved_split(path)}] is empty (0 rows)") from None
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


def _empty_saved_split(path: Path) -> str:
    """The name of a `save_to_disk` split that has no data files ('?' if none is found)."""
    import json

    try:
        names = json.loads((path / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
        for name in names:
            state = json.loads((path / name / "state.json").read_text(encoding="utf-8"))
            if not state.get("_data_files"):
                return name
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return "?"


def get_split(splits: datasets.DatasetDict, split: str, dataset_name: str, limit: int | None = None) -> datasets.Dataset:
    """One split, its first `limit` rows; refused in one line when it is missing, empty, or lacks a
    column or has one of the wrong type."""
    if split not in splits:
        raise UserError(f"dataset {dataset_name} has no split '{split}' (it has: {', '.join(splits)})")
    dataset = splits[split]
    missing = [c for c in REQUIRED_COLUMNS if c not in dataset.column_names]
    if missing:
        raise UserError(
            f"dataset {dataset_name} [{split}] lacks column(s) {', '.join(missing)} "
            f"(needs ChartQA's image, query, label; has {', '.join(dataset.column_names)})"
        )
    check_column_types(dataset, f"dataset {dataset_name} [{split}]")
    if len(dataset) == 0:
        raise UserError(f"dataset {dataset_name} [{split}] is empty (0 rows)")
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    return dataset


# --- validate --------------------------------------------------------------------------------
def _is_text(feature) -> bool:
    return isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")


def _is_text_list(feature) -> bool:
    inner = getattr(feature, "feature", None)  # datasets.List / Sequence / LargeList
    return isinstance(feature, (datasets.List, datasets.Sequence, datasets.LargeList)) and _is_text(inner)


def _describe(feature) -> str:
    if isinstance(feature, datasets.Value):
        return feature.dtype
    inner = getattr(feature, "feature", None)
    return f"a list of {_describe(inner)}" if inner is not None else type(feature).__name__


def check_column_types(dataset: datasets.Dataset, where: str) -> None:
    """query must be text; label text or a list of texts (ChartQA's accepted answers); image an image
    (datasets' Image, or a {bytes, path} struct as other tools write parquet)."""
    features = dataset.features
    if not _is_text(features["query"]):
        raise UserError(f"{where}: column 'query' holds {_describe(features['query'])}, expected text")
    if not (_is_text(features["label"]) or _is_text_list(features["label"])):
        raise UserError(f"{where}: column 'label' holds {_describe(features['label'])}, expected text or a list "
                        f"of texts (ChartQA's accepted answers, e.g. [\"42\"])")
    image = features["image"]
    if not (isinstance(image, datasets.Image) or (isinstance(image, dict) and {"bytes", "path"} & set(image))):
        raise UserError(f"{where}: column 'image' holds {_describe(image)}, expected images "
                        f"(datasets.Image, or {{bytes, path}} structs)")


def verify_image(value) -> None:
    """Raise if an image cell cannot be decoded: PNG is checked chunk by chunk (CRCs, no pixels kept),
    other formats are decoded at reduced size (JPEG draft mode) — much cheaper than a full decode."""
    if isinstance(value, Image.Image):
        return
    if isinstance(value, dict) and value.get("bytes") is not None:
        opened = lambda: Image.open(io.BytesIO(value["bytes"]))  # noqa: E731
    elif isinstance(value, dict) and value.get("path"):
        opened = lambda: Image.open(value["path"])  # noqa: E731
    else:
        raise ValueError("no image data")
    with opened() as image:
        image.verify()
    if image.format != "PNG":  # verify() checks little beyond the header for most other formats
        with opened() as image:
            image.draft("RGB", (64, 64))
            image.load()


def check_rows(dataset: datasets.Dataset, where: str, indices: list[int] | None = None) -> None:
    """Every row a run will use (all, or `indices`): a usable label, a text query and an image that
    decodes; the first bad one is a UserError naming `where` and the row. Run before training, so a
    bad test or validation row cannot surface after hours of training."""
    dataset = undecoded_images(dataset).select_columns(list(REQUIRED_COLUMNS))
    numbers = range(len(dataset)) if indices is None else indices
    for index, row in zip(numbers, dataset if indices is None else dataset.select(indices)):
        try:
            answer_of(row["label"])
        except (ValueError, TypeError) as exc:
            raise UserError(f"{where} row {index}: bad label {row['label']!r} ({exc})") from None
        if not isinstance(row["query"], str) or not row["query"].strip():
            raise UserError(f"{where} row {index}: empty query")
        try:
            verify_image(row["image"])
        except Image.UnidentifiedImageError:
            raise UserError(f"{where} row {index}: unreadable image (not an image format PIL can read)") from None
        except Exception as exc:  # PIL raises many types for broken files (OSError, SyntaxError, ValueError, …)
            raise UserError(f"{where} row {index}: unreadable image ({type(exc).__name__}: {exc})") from None


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
