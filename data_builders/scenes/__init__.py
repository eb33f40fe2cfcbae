"""Synthetic "scenes": simple rendered pictures whose content is known, for training and judging a captioner.

A scene is a coloured background with one or two big shapes (each with a colour and a place) drawn
in one of a few styles that show in the pixels (flat fill, outline only, striped, grainy). Every
scene becomes two rows with the same image: a one-sentence caption and a comma-separated tag list,
asked with the captioner's own default prompts (`vlm_tune.core.prompts.DEFAULT_PROMPTS`), so the tiny
model trained on them is exactly what `vlm-tune caption` runs by default.

Because the builder knows what it drew, captions can be scored without a human: a caption (either
layout, with or without a trigger word) is parsed back into atomic attributes with the same small
vocabulary and compared with the scene's (recall: what it got right of what is there; precision:
how much of what it said is true). Vocabularies are small and far apart, objects big: the tiny
model sees one 64-px tile.

Usage:
    python -m data_builders.scenes build --output artifacts/scenes-synth --train 2000 --val 20 --test 200 \\
        --seed 0 [--image_size 128] [--num_proc 2] [--question_types caption tags] [--overwrite]
    python -m data_builders.scenes export --dataset artifacts/scenes-synth --split test --output heldout [--overwrite]
    vlm-tune caption heldout/images ...                  # writes heldout/images/metadata.jsonl
    python -m data_builders.scenes score --heldout heldout [--json OUT]
    vlm-tune eval --config recipes/tiny/sft_captioner.yaml --adapter runs/tiny-sft-captioner \\
        [--split test] [--limit N] [--max_new_tokens 48] [--any_recipe_field value ...]

(`vlm-tune eval` captions a split with the model and scores it here; see vlm_tune.eval.scenes.)

Design for a tiny model (one 64-px tile, 16 image tokens, a random vision tower): three shapes with
distinct silhouettes, five object and four background colours (disjoint), 1 object in the center or
2 side by side / one above the other at nearly fixed places, and styles that change every patch in
the same way (hollow outline, fixed-phase stripes, coarse grain). Trained with
recipes/tiny/sft_captioner.yaml it reaches ~95 % attribute recall on held-out scenes.

Sizes count scenes; each scene gives one row per question type (caption, tags), so a split holds
scenes × 2 rows. Rows are deterministic: scene i of a split depends only on (seed, split, i) and
image_size, never on --num_proc.

Question type `caption_phrasings` (not in the default build) writes each scene's caption in one of
several phrasings (data_builders.scenes.phrasing) — the `make loop` captioner, whose sampled candidates
must differ in how they say things for a team's taste to show up in its ratings.

Modules: scene (vocabularies, spec, reference texts), phrasing (caption phrasings), render (pixels), build (DatasetDict, save),
export (held-out folder), score (caption attributes, recall / precision), cli (the command line).
"""

from data_builders._common import BUILD_INFO, SPLITS, encode_png, read_build_info, row_rng
from data_builders.scenes.build import (
    BUILD_VERSION,
    FEATURES,
    KNOWN_QUESTION_TYPES,
    PHRASINGS_TYPE,
    QUESTION_TYPES,
    build,
    build_info,
    build_scenes,
    save,
    save_scenes,
)
from data_builders.scenes.cli import main
from data_builders.scenes.export import EXPORT_FOLDERS, export_images, export_name, unique_scenes
from data_builders.scenes.phrasing import PHRASING_WEIGHTS, PHRASINGS, phrase, phrasing_settings, pick_phrasing
from data_builders.scenes.render import render_scene
from data_builders.scenes.scene import (
    BACKGROUND_COLORS,
    LAYOUTS,
    OBJECT_COLORS,
    OBJECT_COUNTS,
    POSITIONS,
    REFERENCE_TEXT,
    SHAPES,
    STYLES,
    SceneObject,
    SceneSpec,
    caption_text,
    sample_scene,
    tags_text,
)
from data_builders.scenes.score import (
    ATTRIBUTE_KINDS,
    COLOR_WORDS,
    GROUPS,
    POSITION_WORDS,
    SHAPE_WORDS,
    STYLE_WORDS,
    caption_attributes,
    caption_layout,
    format_scores,
    read_diffusers_captions,
    read_truth,
    scene_attributes,
    score_captions,
    score_predictions,
    score_scenes,
)

# The names vlm_tune.data.assets.ensure_assets reads per builder: QUESTION_TYPES, build_info,
# read_build_info, build, save (and BUILD_INFO, the settings file they compare).
__all__ = [
    "ATTRIBUTE_KINDS", "BACKGROUND_COLORS", "BUILD_INFO", "BUILD_VERSION", "COLOR_WORDS", "EXPORT_FOLDERS", "FEATURES",
    "GROUPS", "KNOWN_QUESTION_TYPES", "LAYOUTS", "OBJECT_COLORS", "OBJECT_COUNTS", "PHRASINGS", "PHRASINGS_TYPE",
    "PHRASING_WEIGHTS", "POSITIONS", "POSITION_WORDS", "QUESTION_TYPES",
    "REFERENCE_TEXT", "SHAPES", "SHAPE_WORDS", "SPLITS", "STYLES", "STYLE_WORDS", "SceneObject", "SceneSpec",
    "build", "build_info", "build_scenes", "caption_attributes", "caption_layout", "caption_text", "encode_png",
    "export_images", "export_name", "format_scores", "main", "phrase", "phrasing_settings", "pick_phrasing",
    "read_build_info", "read_diffusers_captions",
    "read_truth", "render_scene", "row_rng", "sample_scene", "save", "save_scenes", "scene_attributes",
    "score_captions", "score_predictions", "score_scenes", "tags_text", "unique_scenes",
]
