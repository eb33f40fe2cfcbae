"""The pairs as a datasets.DatasetDict in TRL's conversational preference format with images, built
column by column in Arrow (no Python loop over pairs). Response mode: the image, the prompt, the
chosen and rejected responses. Image mode: both images and a "first or second?" judge question, the
better image first in exactly half of the pairs (seeded), or every pair in both orders."""

from __future__ import annotations

import hashlib

import datasets
import numpy as np
import pyarrow as pa
from datasets.table import InMemoryTable

from data_builders.ratings.pairs import Items, Split
from data_builders.ratings.read import RatingsTable
from data_builders.ratings.schema import IMAGE_MODE_QUESTION

MESSAGES = datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")})
FEATURES = datasets.Features(
    {
        "images": datasets.List(datasets.Image()),
        "prompt": MESSAGES,
        "chosen": MESSAGES,
        "rejected": MESSAGES,
        "group": datasets.Value("string"),
        "chosen_score": datasets.Value("float64"),
        "rejected_score": datasets.Value("float64"),
        "margin": datasets.Value("float64"),
        "n_raters": datasets.Value("int64"),
    }
)


# --- Arrow pieces ---


def _group_id(*parts: str) -> str:
    """Stable short id of a group: the same (image, prompt) always gets the same id."""
    return hashlib.sha1("\x1f".join(parts).encode("utf-8")).hexdigest()[:12]


def _messages(role: str, texts, index: np.ndarray) -> pa.Array:
    """One single-message conversation per row: content texts[index[row]]."""
    texts = texts if isinstance(texts, pa.Array) else pa.array(list(texts), type=pa.string())
    contents = texts.take(pa.array(index))
    roles = pa.array([role], type=pa.string()).take(pa.array(np.zeros(len(index), dtype=np.int64)))
    struct = pa.StructArray.from_arrays([roles, contents], names=["role", "content"])
    return pa.ListArray.from_arrays(pa.array(np.arange(len(contents) + 1, dtype=np.int32)), struct)


def _image_lists(cells: pa.Array, per_row: np.ndarray) -> pa.Array:
    """Rows of images: per_row is (rows x k) indices into the distinct image cells."""
    values = cells.take(pa.array(per_row.ravel()))
    offsets = np.arange(0, per_row.size + 1, per_row.shape[1], dtype=np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), values)


def _to_dataset(columns: dict) -> datasets.Dataset:
    table = pa.table(columns).cast(FEATURES.arrow_schema)
    return datasets.Dataset(InMemoryTable(table), info=datasets.DatasetInfo(features=FEATURES))


# --- the pieces every split shares ---


def _image_cells(table: RatingsTable, image_sources: list, used_images: np.ndarray) -> tuple[pa.Array, np.ndarray]:
    """The used images, each read once, as datasets Image cells; the cell index of each image code."""
    image_names = table.columns["image"][1]
    cell_of_image = np.full(len(image_names), -1, dtype=np.int64)
    cell_of_image[used_images] = np.arange(len(used_images))
    data = [s if isinstance(s, bytes) else s.read_bytes() for s in (image_sources[c] for c in used_images)]
    cells = pa.StructArray.from_arrays(
        [
            pa.array(data, type=pa.binary()),
            pa.array([str(image_names[c]) for c in used_images], type=pa.string()),
        ],
        names=["bytes", "path"],
    )
    return cells, cell_of_image


def _group_ids(table: RatingsTable, items: Items, split: Split, mode: str) -> np.ndarray:
    """Per group code with pairs: the stable id of its (image, prompt) (response mode) or prompt (image mode)."""
    image_names, prompt_names = table.columns["image"][1], table.columns["prompt"][1]
    group_ids = np.empty(int(items.group.max()) + 1, dtype=object)
    firsts = split.better[np.searchsorted(split.pair_group, split.groups_with_pairs)]
    for g, item in zip(split.groups_with_pairs, firsts):
        prompt = str(prompt_names[items.prompt[item]])
        parts = (str(image_names[items.image[item]]), prompt) if mode == "response" else (prompt,)
        group_ids[g] = _group_id(*parts)
    return group_ids


# --- splits ---


def _image_mode_order(n: int, seed: int, split_index: int, both_orders: bool) -> np.ndarray:
    """Per shown pair: the better image first? Both orders, or exactly half (rounded down), seeded."""
    if both_orders:
        return np.tile([True, False], n)
    first = np.zeros(n, dtype=bool)
    first[: n // 2] = True
    return first[np.random.default_rng([seed, 1 + split_index]).permutation(n)]


def pair_datasets(table: RatingsTable, image_sources: list, items: Items, split: Split, item_raters: np.ndarray,
                  mode: str, seed: int, both_orders: bool) -> tuple[datasets.DatasetDict, dict, int]:
    """(DatasetDict train/test, position balance per split (image mode), images used); an empty split is left out."""
    used_images = np.unique(np.concatenate([items.image[split.better], items.image[split.worse]]))
    cells, cell_of_image = _image_cells(table, image_sources, used_images)
    group_ids = _group_ids(table, items, split, mode)
    prompt_names = table.columns["prompt"][1]
    if mode == "response":
        prompt_texts = pa.array(list(prompt_names), type=pa.string())
        response_texts = pa.array(list(table.columns["response"][1]), type=pa.string())
    else:
        prompt_texts = pa.array([IMAGE_MODE_QUESTION.format(prompt=p) for p in prompt_names], type=pa.string())
    splits, balance = {}, {}
    for split_index, (name, mask) in enumerate((("train", ~split.pair_test), ("test", split.pair_test))):
        idx = np.flatnonzero(mask)
        if len(idx) == 0:
            continue  # datasets saves a 0-row split but cannot load it back
        b, w = split.better[idx], split.worse[idx]
        if mode == "response":
            images = _image_lists(cells, cell_of_image[items.image[b]][:, None])
            chosen = _messages("assistant", response_texts, items.response[b])
            rejected = _messages("assistant", response_texts, items.response[w])
        else:
            if both_orders:
                b, w = np.repeat(b, 2), np.repeat(w, 2)
            first = _image_mode_order(len(idx), seed, split_index, both_orders)
            shown = np.where(first[:, None], np.c_[items.image[b], items.image[w]], np.c_[items.image[w], items.image[b]])
            images = _image_lists(cells, cell_of_image[shown])
            chosen = _messages("assistant", ("first", "second"), np.where(first, 0, 1))
            rejected = _messages("assistant", ("first", "second"), np.where(first, 1, 0))
            balance[name] = {"better_first": int(first.sum()), "better_second": int((~first).sum())}
        splits[name] = _to_dataset({
            "images": images,
            "prompt": _messages("user", prompt_texts, items.prompt[b]),
            "chosen": chosen,
            "rejected": rejected,
            "group": pa.array(group_ids[items.group[b]], type=pa.string()),
            "chosen_score": items.score[b],
            "rejected_score": items.score[w],
            "margin": items.score[b] - items.score[w],
            "n_raters": np.minimum(item_raters[b], item_raters[w]).astype(np.int64),
        })
    return datasets.DatasetDict(splits), balance, len(used_images)
