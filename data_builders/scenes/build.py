"""Building and saving the scenes DatasetDict: one row per scene and question type, rendered by a pool."""

from __future__ import annotations

import json
from pathlib import Path

import datasets

from data_builders._common import SPLITS, build_splits, check_build_args, encode_png, row_rng, save_dataset
from data_builders._common import build_info as common_build_info
from data_builders.scenes.phrasing import phrase, phrasing_settings, pick_phrasing
from data_builders.scenes.render import render_scene
from data_builders.scenes.scene import REFERENCE_TEXT, sample_scene
from vlm_tune.core.errors import UserError
from vlm_tune.core.prompts import DEFAULT_PROMPTS

QUESTION_TYPES = ("caption", "tags")  # the default build (make caption)
# caption_phrasings: the caption question answered in one of several phrasings per scene
# (data_builders.scenes.phrasing; the `make loop` captioner); its rows are of type "caption".
PHRASINGS_TYPE = "caption_phrasings"
KNOWN_QUESTION_TYPES = (*QUESTION_TYPES, PHRASINGS_TYPE)
MIN_IMAGE_SIZE = 32  # px; below it the style strokes vanish
FEATURES = datasets.Features(
    {
        "image": datasets.Image(),
        "query": datasets.Value("string"),
        "label": datasets.List(datasets.Value("string")),
        "type": datasets.Value("string"),
        "scene": datasets.Value("string"),  # JSON of what was drawn: background, style, objects
    }
)


# --- build ---


def _render_rows(task: tuple[int, str, int, int, tuple[str, ...]]) -> list[dict]:
    """Pool worker: the rows of one scene from (seed, split, index, image_size, question_types)."""
    seed, split, index, image_size, question_types = task
    spec = sample_scene(row_rng(seed, split, index))
    scene = spec.content()
    image = {"bytes": encode_png(render_scene(spec, image_size)), "path": None}
    scene_json = json.dumps(scene, sort_keys=True)
    rows = []
    for qtype in question_types:
        if qtype == PHRASINGS_TYPE:
            label = phrase(scene, pick_phrasing(seed, SPLITS.index(split), index))
            rows.append({"image": image, "query": DEFAULT_PROMPTS["caption"], "label": [label], "type": "caption",
                         "scene": scene_json})
        else:
            rows.append({"image": image, "query": DEFAULT_PROMPTS[qtype], "label": [REFERENCE_TEXT[qtype](scene)],
                         "type": qtype, "scene": scene_json})
    return rows


def build_scenes(
    n_train: int,
    n_val: int,
    n_test: int,
    seed: int = 0,
    image_size: int = 128,
    num_proc: int = 1,
    question_types: tuple[str, ...] | list[str] = QUESTION_TYPES,
) -> datasets.DatasetDict:
    """Render the three splits (sizes in scenes; one row per scene and question type); same output for any num_proc."""
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    question_types = check_build_args(sizes, seed, question_types, KNOWN_QUESTION_TYPES)
    if image_size < MIN_IMAGE_SIZE:
        raise UserError(f"image_size must be >= {MIN_IMAGE_SIZE} px, got {image_size}")
    return build_splits(sizes, seed, (image_size, question_types), _render_rows, num_proc, "scenes", "scene", FEATURES,
                        chunksize=16)


# --- save ---


# Bumped whenever the rendered images or reference texts change for the same settings, so a dataset
# saved by an older design is reported as stale instead of silently trained on.
BUILD_VERSION = 2


def build_info(n_train, n_val, n_test, seed, image_size, question_types=QUESTION_TYPES) -> dict:
    info = common_build_info("data_builders.scenes", (n_train, n_val, n_test), seed, image_size, question_types,
                             version=BUILD_VERSION)
    if PHRASINGS_TYPE in question_types:  # only then: the default build's info stays as it was
        info["phrasings"] = phrasing_settings()
    return info


def save_scenes(dataset_dict: datasets.DatasetDict, output_dir, overwrite: bool = False, info: dict | None = None) -> Path:
    """save_to_disk atomically (an interrupted run leaves output_dir as it was), build settings beside it."""
    return save_dataset(dataset_dict, output_dir, overwrite, info)


# The names vlm_tune.data.assets.ensure_assets looks for in every synthetic builder.
build, save = build_scenes, save_scenes
