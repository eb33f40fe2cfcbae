"""Synthetic "scenes": simple rendered pictures whose content is known, for training and judging a captioner.

A scene is a coloured background with one or two big shapes (each with a colour and a place) drawn
in one of a few styles that show in the pixels (flat fill, outline only, striped, grainy). Every
scene becomes two rows with the same image: a one-sentence caption and a comma-separated tag list,
asked with the captioner's own default prompts (`vlm_tune.caption.captioner.DEFAULT_PROMPTS`), so the tiny
model trained on them is exactly what `vlm-tune caption` runs by default.

Because the builder knows what it drew, captions can be scored without a human: a caption (either
layout, with or without a trigger word) is parsed back into atomic attributes with the same small
vocabulary and compared with the scene's (recall: what it got right of what is there; precision:
how much of what it said is true). Vocabularies are small and far apart, objects big: the tiny
model sees one 64-px tile.

Usage:
    python -m data_builders.scenes build --output artifacts/scenes-synth --train 2000 --val 20 --test 200 \\
        --seed 0 [--image-size 128] [--num-proc 2] [--overwrite]
    python -m data_builders.scenes export --dataset artifacts/scenes-synth --split test --output heldout [--overwrite]
    vlm-tune caption heldout/images ...                  # writes heldout/images/metadata.jsonl
    python -m data_builders.scenes score --heldout heldout [--json OUT]
    python -m data_builders.scenes evaluate --config recipes/tiny/sft_captioner.yaml --adapter runs/tiny-sft-captioner \\
        [--split test] [--limit N] [--max-new-tokens 48] [--any_recipe_field value ...]

Design for a tiny model (one 64-px tile, 16 image tokens, a random vision tower): three shapes with
distinct silhouettes, five object and four background colours (disjoint), 1 object in the center or
2 side by side / one above the other at nearly fixed places, and styles that change every patch in
the same way (hollow outline, fixed-phase stripes, coarse grain). Trained with
recipes/tiny/sft_captioner.yaml it reaches ~95 % attribute recall on held-out scenes.

Sizes count scenes; each scene gives one row per question type (caption, tags), so a split holds
scenes × 2 rows. Rows are deterministic: scene i of a split depends only on (seed, split, i) and
image_size, never on --num-proc.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
from PIL import Image, ImageDraw

from data_builders._common import (  # noqa: F401 (BUILD_INFO, read_build_info: ensure_assets reads them per builder)
    BUILD_INFO,
    build_splits,
    check_build_args,
    is_nonempty,
    non_negative_int,
    positive_int,
    read_build_info,
    save_dataset,
    staged_replace,
)
from data_builders._common import build_info as common_build_info
from vlm_tune.core.prompts import DEFAULT_PROMPTS
from vlm_tune.core.errors import UserError

# --- vocabularies ---

# Colours far apart in hue and lightness, and object colours disjoint from background colours, so a
# colour name is recoverable from a few pixels and never ambiguous between an object and the ground.
OBJECT_COLORS = {
    "red": (220, 30, 30),
    "blue": (30, 80, 225),
    "green": (30, 165, 50),
    "yellow": (250, 205, 0),
    "purple": (145, 45, 185),
}
BACKGROUND_COLORS = {
    "white": (255, 255, 255),
    "black": (25, 25, 25),
    "gray": (130, 130, 130),
    "pink": (255, 175, 205),
}
# Three silhouettes that differ in every 8-px patch of a 2×2-token object (corners full, empty, top empty);
# a star was confused with the triangle and is left out.
SHAPES = ("circle", "square", "triangle")
# How the shapes are drawn; each is a pixel property of the whole picture, not a mood.
STYLES = ("flat", "outline", "striped", "grainy")
# Two objects sit side by side or one above the other; one object sits in the center.
LAYOUTS = {1: (("center",),), 2: (("left", "right"), ("top", "bottom"))}
OBJECT_COUNTS = (1, 2, 2)  # two objects twice as often: they carry the harder (binding) attributes
POSITIONS = ("left", "right", "top", "bottom", "center")

# Wording. The tiny model's 1024-token BPE spends ~2 tokens a word ("illustration" is 12), so the
# sentence says "picture" and the longest caption stays under 40 tokens (the captioner's 48 budget).
SENTENCE_POSITION = {"left": "on the left", "right": "on the right", "top": "at the top",
                     "bottom": "at the bottom", "center": "in the center"}
TAG_POSITION = {"left": "on left", "right": "on right", "top": "on top", "bottom": "on bottom", "center": "in center"}

# Words a caption may use for each value (other captioners say "grey", "noisy", "middle", ...).
COLOR_WORDS = {**{c: c for c in (*OBJECT_COLORS, *BACKGROUND_COLORS)}, "grey": "gray"}
STYLE_WORDS = {"flat": "flat", "solid": "flat", "outline": "outline", "outlined": "outline",
               "striped": "striped", "stripes": "striped", "stripy": "striped",
               "grainy": "grainy", "noisy": "grainy", "grain": "grainy", "noise": "grainy"}
SHAPE_WORDS = {**{s: s for s in SHAPES}, "star": "star"}  # never drawn, but a shape word a caption may wrongly use
POSITION_WORDS = {**{p: p for p in POSITIONS}, "middle": "center", "centre": "center"}

# Attribute kinds scored (see scene_attributes): global ones, unbound object ones, and the two
# bindings (colour↔shape, shape↔place) that a bag-of-words captioner cannot fake.
ATTRIBUTE_KINDS = ("background", "style", "shape", "color", "object", "position")

QUESTION_TYPES = ("caption", "tags")
SPLITS = ("train", "val", "test")
FEATURES = datasets.Features(
    {
        "image": datasets.Image(),
        "query": datasets.Value("string"),
        "label": datasets.List(datasets.Value("string")),
        "type": datasets.Value("string"),
        "scene": datasets.Value("string"),  # JSON of what was drawn: background, style, objects
    }
)


# --- scene data ---


@dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    position: str
    cx: float  # centre and bounding-box side, as fractions of the image side
    cy: float
    side: float


@dataclass(frozen=True)
class SceneSpec:
    """Everything needed to draw one scene (geometry, noise seed) and to describe it (content)."""

    background: str
    style: str
    objects: tuple[SceneObject, ...]  # in reading order: left before right, top before bottom
    noise_seed: int

    def content(self) -> dict:
        """The known content, as stored in the `scene` column and truth.jsonl."""
        return {
            "background": self.background,
            "style": self.style,
            "objects": [{"shape": o.shape, "color": o.color, "position": o.position} for o in self.objects],
        }


def row_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Independent stream per (seed, split, scene), so rows do not depend on worker scheduling."""
    return np.random.default_rng([seed, SPLITS.index(split), index])


def _pick(rng: np.random.Generator, options) -> object:
    return options[int(rng.integers(len(options)))]


def _place(rng: np.random.Generator, position: str, n_objects: int) -> tuple[float, float, float]:
    """Centre and side: big objects at nearly fixed places. The tiny model reads 16×16-px image tokens
    from a random encoder; a shape that wanders by a token looks different every time, so the jitter
    stays under ~2 px at the 64-px tile (with ±8 px, shape recall was ~50 %)."""
    if n_objects == 1:
        return 0.5 + rng.uniform(-0.03, 0.03), 0.5 + rng.uniform(-0.03, 0.03), rng.uniform(0.58, 0.64)
    main = {"left": 0.25, "right": 0.75, "top": 0.25, "bottom": 0.75}[position] + rng.uniform(-0.02, 0.02)
    across = 0.5 + rng.uniform(-0.03, 0.03)
    side = rng.uniform(0.42, 0.46)
    return (main, across, side) if position in ("left", "right") else (across, main, side)


def sample_scene(rng: np.random.Generator) -> SceneSpec:
    n = int(_pick(rng, OBJECT_COUNTS))
    positions = _pick(rng, LAYOUTS[n])
    shapes = [str(s) for s in rng.choice(SHAPES, size=n, replace=False)]
    colors = [str(c) for c in rng.choice(tuple(OBJECT_COLORS), size=n, replace=False)]
    background = str(_pick(rng, tuple(BACKGROUND_COLORS)))
    style = str(_pick(rng, STYLES))
    objects = tuple(SceneObject(s, c, p, *(float(v) for v in _place(rng, p, n)))
                    for s, c, p in zip(shapes, colors, positions))
    return SceneSpec(background, style, objects, int(rng.integers(2**31)))


# --- describe ---


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption_text(scene: dict) -> str:
    """One sentence: 'a flat picture of a red circle on the left and a blue square on the right on a white background'."""
    objects = " and ".join(f"a {o['color']} {o['shape']} {SENTENCE_POSITION[o['position']]}" for o in scene["objects"])
    style = scene["style"]
    return f"{_article(style)} {style} picture of {objects} on a {scene['background']} background"


def tags_text(scene: dict) -> str:
    """Comma-separated: style, one tag per object (colour shape place, reading order), background."""
    tags = [f"{scene['style']} style"]
    tags += [f"{o['color']} {o['shape']} {TAG_POSITION[o['position']]}" for o in scene["objects"]]
    tags.append(f"{scene['background']} background")
    return ", ".join(tags)


REFERENCE_TEXT = {"caption": caption_text, "tags": tags_text}


# --- render ---


def _shape_mask(obj: SceneObject, size: int) -> np.ndarray:
    """Boolean size×size mask of one object's silhouette."""
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    cx, cy, r = obj.cx * size, obj.cy * size, obj.side * size / 2
    if obj.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif obj.shape == "square":
        h = r  # corners filled where the circle's are empty: the cue the model reads
        draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=255)
    elif obj.shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + 0.8 * r), (cx - r, cy + 0.8 * r)], fill=255)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}")
    return np.asarray(mask) > 127


def _ring(mask: np.ndarray, width: int) -> np.ndarray:
    """The band of the mask within `width` px of its edge: an outline that follows any shape (erosion
    by a disc, so a circle's ring stays round)."""
    size = mask.shape[0]
    padded = np.pad(mask, width, constant_values=False)
    eroded = mask.copy()
    for dy in range(-width, width + 1):
        for dx in range(-width, width + 1):
            if dx * dx + dy * dy <= width * width:
                eroded &= padded[width + dy : width + dy + size, width + dx : width + dx + size]
    return mask & ~eroded


def render_scene(spec: SceneSpec, image_size: int = 128) -> Image.Image:
    """Draw the scene as an image_size² RGB image. Style strokes scale with the image: at the model's
    64-px tile an outline is ~4 px, a stripe period 8 px (fixed phase: the same in every patch), a grain 4 px."""
    size = image_size
    canvas = np.empty((size, size, 3), dtype=np.float32)
    canvas[:] = BACKGROUND_COLORS[spec.background]
    line = max(2, round(size / 16))
    period = max(4, round(size / 8))
    yy, xx = np.mgrid[0:size, 0:size]
    stripes = ((xx + yy) // (period // 2)) % 2 == 0  # diagonal bands, half colour half ground
    for obj in spec.objects:
        mask = _shape_mask(obj, size)
        color = OBJECT_COLORS[obj.color]
        if spec.style in ("flat", "grainy"):
            paint = mask
        elif spec.style == "outline":
            paint = _ring(mask, line)
        elif spec.style == "striped":
            paint = (mask & stripes) | _ring(mask, max(1, line // 2))
        else:
            raise ValueError(f"unknown style {spec.style!r}")
        canvas[paint] = color
    if spec.style == "grainy":
        grain = max(1, size // 16)  # coarse: 2-px grain was told from flat only half of the time
        cells = -(-size // grain)
        noise = np.random.default_rng(spec.noise_seed).uniform(-70, 70, size=(cells, cells)).astype(np.float32)
        noise = np.kron(noise, np.ones((grain, grain), dtype=np.float32))[:size, :size]
        canvas += noise[..., None]
    return Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))


def encode_png(image: Image.Image) -> bytes:
    # PIL writes no timestamps or metadata unless asked, so equal pixels give equal bytes.
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# --- build ---


def _render_rows(task: tuple[int, str, int, int, tuple[str, ...]]) -> list[dict]:
    """Pool worker: the rows of one scene from (seed, split, index, image_size, question_types)."""
    seed, split, index, image_size, question_types = task
    spec = sample_scene(row_rng(seed, split, index))
    scene = spec.content()
    image = {"bytes": encode_png(render_scene(spec, image_size)), "path": None}
    scene_json = json.dumps(scene, sort_keys=True)
    return [
        {"image": image, "query": DEFAULT_PROMPTS[qtype], "label": [REFERENCE_TEXT[qtype](scene)], "type": qtype,
         "scene": scene_json}
        for qtype in question_types
    ]


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
    question_types = check_build_args(sizes, seed, question_types, QUESTION_TYPES)
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32 px, got {image_size}")
    return build_splits(sizes, seed, (image_size, question_types), _render_rows, num_proc, "scenes", "scene", FEATURES,
                        chunksize=16)


# --- save ---


# Bumped whenever the rendered images or reference texts change for the same settings, so a dataset
# saved by an older design is reported as stale instead of silently trained on.
BUILD_VERSION = 2


def build_info(n_train, n_val, n_test, seed, image_size, question_types=QUESTION_TYPES) -> dict:
    return common_build_info("data_builders.scenes", (n_train, n_val, n_test), seed, image_size, question_types,
                             version=BUILD_VERSION)


def save_scenes(dataset_dict: datasets.DatasetDict, output_dir, overwrite: bool = False, info: dict | None = None) -> Path:
    """save_to_disk atomically (an interrupted run leaves output_dir as it was), build settings beside it."""
    return save_dataset(dataset_dict, output_dir, overwrite, info)


# The names vlm_tune.data.assets.ensure_assets looks for in every synthetic builder.
build, save = build_scenes, save_scenes


# --- held-out export ---

# A held-out folder looks like a real diffusion dataset: nested folders, spaces and accents in
# names, so the captioner's walking, naming and metadata.jsonl are exercised too.
EXPORT_FOLDERS = ("", "set 1", "set 1/close ups", "ciel bleu é")


def export_name(index: int) -> str:
    """Relative POSIX path of held-out scene `index` under images/."""
    folder = EXPORT_FOLDERS[index % len(EXPORT_FOLDERS)]
    stem = f"scène {index:04d}" if index % 5 == 0 else f"scene_{index:04d}"
    return f"{folder}/{stem}.png" if folder else f"{stem}.png"


def _load_split(dataset, split: str) -> datasets.Dataset:
    if isinstance(dataset, (str, os.PathLike)):
        path = Path(dataset)
        if not (path / "dataset_dict.json").is_file():
            raise FileNotFoundError(f"no saved dataset at {path} (dataset_dict.json missing)")
        dataset = datasets.load_from_disk(str(path))
    if split not in dataset:
        raise ValueError(f"dataset has no split '{split}' (it has: {', '.join(dataset)})")
    ds = dataset[split]
    missing = [c for c in ("image", "scene") if c not in ds.column_names]
    if missing:
        raise ValueError(f"split '{split}' lacks column(s) {', '.join(missing)}: not a scenes dataset")
    return ds


def unique_scenes(split: datasets.Dataset) -> list[tuple[list[int], bytes, dict]]:
    """[(row indices, png bytes, scene)] one per scene: a scene's rows share one image."""
    raw = split.cast_column("image", datasets.Image(decode=False))
    groups: dict[str, tuple[list[int], bytes, dict]] = {}
    for i, (image, scene) in enumerate(zip(raw["image"], raw["scene"])):
        key = hashlib.sha1(image["bytes"] + scene.encode()).hexdigest()
        if key not in groups:
            groups[key] = ([], image["bytes"], json.loads(scene))
        groups[key][0].append(i)
    return list(groups.values())


def export_images(dataset_dir_or_dict, split: str, output_dir, overwrite: bool = False) -> Path:
    """Write a split's scenes as PNGs under output_dir/images/ and their truth to output_dir/truth.jsonl.

    A captioner then writes images/metadata.jsonl and `score` compares the two."""
    scenes = unique_scenes(_load_split(dataset_dir_or_dict, split))

    def write(folder: Path) -> None:
        lines = []
        for index, (_, png, scene) in enumerate(scenes):
            name = export_name(index)
            (folder / "images" / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / "images" / name).write_bytes(png)
            lines.append(json.dumps({"file_name": name, "scene": scene, "caption": caption_text(scene),
                                     "tags": tags_text(scene)}, ensure_ascii=False))
        (folder / "images").mkdir(parents=True, exist_ok=True)
        (folder / "truth.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")

    return staged_replace(Path(output_dir), overwrite, write)


# --- attributes ---


def scene_attributes(scene: dict) -> set[str]:
    """The atomic facts of a scene, as 'kind:value' strings:

    background:<colour>      the ground colour            style:<style>           flat/outline/striped/grainy
    shape:<shape>            each object's shape           color:<colour>          each object's colour
    object:<colour> <shape>  colour bound to shape         position:<shape> <place> shape bound to its place
    """
    attrs = {f"background:{scene['background']}", f"style:{scene['style']}"}
    for o in scene["objects"]:
        attrs |= {f"shape:{o['shape']}", f"color:{o['color']}", f"object:{o['color']} {o['shape']}",
                  f"position:{o['shape']} {o['position']}"}
    return attrs


def _alternation(words: dict) -> str:
    return "|".join(sorted(map(re.escape, words), key=len, reverse=True))


_COLOR_RE = _alternation(COLOR_WORDS)
_BACKGROUND_RE = re.compile(rf"\b({_COLOR_RE})\s+(?:back)?ground\b")
_OBJECT_RE = re.compile(
    rf"\b(?:({_COLOR_RE})\s+)?({_alternation(SHAPE_WORDS)})s?\b"
    rf"(?:\s+(?:is\s+|are\s+)?(?:on|at|in)(?:\s+the)?\s+({_alternation(POSITION_WORDS)})\b)?"
)
_STYLE_RE = re.compile(rf"\b({_alternation(STYLE_WORDS)})\b")
_WORD_RE = re.compile(r"[a-z]+")
_VOCAB = {*COLOR_WORDS, *STYLE_WORDS, *SHAPE_WORDS, *POSITION_WORDS, "background"}


def caption_attributes(text: str) -> set[str]:
    """Attributes a caption states, parsed with the scene vocabulary (same kinds as scene_attributes).

    Works on sentences and tag lists alike; words outside the vocabulary (a trigger word such as
    'sks', articles, 'picture') are ignored. A colour counts for an object only right before its
    shape, a place only right after it ('red circle on the left', 'red circle on left')."""
    text = text.lower()
    attrs = {f"background:{COLOR_WORDS[m.group(1)]}" for m in _BACKGROUND_RE.finditer(text)}
    attrs |= {f"style:{STYLE_WORDS[m.group(1)]}" for m in _STYLE_RE.finditer(text)}
    for m in _OBJECT_RE.finditer(text):
        color, shape, place = m.group(1), SHAPE_WORDS[m.group(2)], m.group(3)
        attrs.add(f"shape:{shape}")
        if color:
            attrs |= {f"color:{COLOR_WORDS[color]}", f"object:{COLOR_WORDS[color]} {shape}"}
        if place:
            attrs.add(f"position:{shape} {POSITION_WORDS[place]}")
    return attrs


def caption_layout(text: str) -> str:
    """'tags' when the text is a comma list (after dropping leading parts with no scene word, such as
    a trigger 'sks, '), else 'sentence'."""
    parts = [p for p in text.lower().split(",") if p.strip()]
    while parts and not _VOCAB & set(_WORD_RE.findall(parts[0])):
        parts.pop(0)
    return "tags" if len(parts) >= 2 else "sentence"


# --- score ---

GROUPS = ("sentence", "tags", "combined")


def _kind(attr: str) -> str:
    return attr.split(":", 1)[0]


def _tally(pairs: list[tuple[set[str], set[str]]]) -> dict:
    """Micro-averaged recall and precision over (truth, predicted) attribute sets, overall and per kind."""

    def ratio(a: int, b: int) -> float | None:
        return a / b if b else None

    per_kind = {}
    for kind in ATTRIBUTE_KINDS:
        hit = sum(len({a for a in t & p if _kind(a) == kind}) for t, p in pairs)
        n_truth = sum(len({a for a in t if _kind(a) == kind}) for t, _ in pairs)
        n_pred = sum(len({a for a in p if _kind(a) == kind}) for _, p in pairs)
        per_kind[kind] = {"recall": ratio(hit, n_truth), "precision": ratio(hit, n_pred), "n_truth": n_truth,
                          "n_predicted": n_pred}
    hit = sum(len(t & p) for t, p in pairs)
    n_truth = sum(len(t) for t, _ in pairs)
    n_pred = sum(len(p) for _, p in pairs)
    return {"n_images": len(pairs), "recall": ratio(hit, n_truth), "precision": ratio(hit, n_pred),
            "n_truth": n_truth, "n_predicted": n_pred, "per_kind": per_kind}


def score_scenes(captions: dict[str, list[str]], truths: dict[str, dict]) -> dict:
    """Score captions (key → caption strings) against scenes (key → scene dict).

    'sentence' and 'tags' score each image's captions of that layout (images without one are left
    out of that group); 'combined' scores the union of all of an image's captions (a dual caption)
    over every truth image, an image with no caption counting as saying nothing."""
    pairs: dict[str, list[tuple[set[str], set[str]]]] = {g: [] for g in GROUPS}
    for key, scene in truths.items():
        truth = scene_attributes(scene)
        texts = [t for t in captions.get(key, []) if isinstance(t, str)]
        by_layout: dict[str, set[str]] = {}
        for text in texts:
            by_layout.setdefault(caption_layout(text), set()).update(caption_attributes(text))
        for layout, attrs in by_layout.items():
            pairs[layout].append((truth, attrs))
        pairs["combined"].append((truth, set().union(*by_layout.values())))
    result = {g: _tally(pairs[g]) for g in GROUPS}
    result["missing"] = sorted(k for k in truths if not captions.get(k))
    result["unknown"] = sorted(k for k in captions if k not in truths)
    return result


def read_truth(truth_path) -> dict[str, dict]:
    """truth.jsonl → {file_name: scene}."""
    path = Path(truth_path)
    if not path.is_file():
        raise FileNotFoundError(f"truth file not found: {path}")
    truths = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            truths[str(row["file_name"])] = row["scene"]
            scene_attributes(row["scene"])  # a malformed scene fails here, by line
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path} line {n}: bad truth row ({type(exc).__name__}: {exc})") from None
    return truths


def score_captions(captions: dict[str, list[str]], truth_path) -> dict:
    """Captions (file_name relative to images/ → list of captions; a dual caption is [sentence, tags])
    scored against truth.jsonl: recall/precision overall and per attribute kind, for sentence
    captions, tag captions and both combined (see score_scenes)."""
    return score_scenes(captions, read_truth(truth_path))


def read_diffusers_captions(images_dir, column: str = "text") -> dict[str, list[str]]:
    """images_dir/metadata.jsonl rows {"file_name", column: str | [str, ...]} → {file_name: [captions]}."""
    path = Path(images_dir) / "metadata.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no captions: {path} not found (caption the folder first)")
    captions: dict[str, list[str]] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            name, value = row["file_name"], row[column]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path} line {n}: bad row, need file_name and {column} "
                             f"({type(exc).__name__}: {exc})") from None
        texts = [value] if isinstance(value, str) else value
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"{path} line {n}: {column} must be a string or a list of strings")
        captions.setdefault(str(name), []).extend(texts)
    return captions


def format_scores(scores: dict) -> str:
    """A small table: recall / precision (%) per attribute kind, one row per caption group."""

    def pct(value) -> str:
        return "–" if value is None else f"{100 * value:.1f}"

    header = ["captions", "n", "recall", "precision"] + list(ATTRIBUTE_KINDS)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for group in GROUPS:
        s = scores[group]
        cells = [group, str(s["n_images"]), pct(s["recall"]), pct(s["precision"])]
        cells += [f"{pct(s['per_kind'][k]['recall'])} / {pct(s['per_kind'][k]['precision'])}" for k in ATTRIBUTE_KINDS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nAttribute recall / precision (%); kind columns show recall / precision."


# --- evaluate a captioner on a split ---


def evaluate_captioner(model, processor, split: datasets.Dataset, batch_size: int = 16, max_new_tokens: int = 48,
                       system_prompt: str | None = None) -> tuple[list[dict], dict]:
    """Generate every row's answer (the caption and the tags of each scene, with the rows' prompts)
    and score them per scene. Returns (records, scores)."""
    from vlm_tune.core.generation import generate_answers

    predictions = generate_answers(model, processor, list(split["image"]), list(split["query"]), system_prompt,
                                   batch_size=batch_size, max_new_tokens=max_new_tokens, desc="Captioning")
    return score_predictions(split, predictions)


def score_predictions(split: datasets.Dataset, predictions: list[str]) -> tuple[list[dict], dict]:
    """Per-row predictions of a scenes split → (records, scores), scenes keyed by their first row."""
    captions, truths, records = {}, {}, []
    for rows, _, scene in unique_scenes(split):
        key = str(rows[0])
        truths[key] = scene
        captions[key] = [predictions[i] for i in rows]
    for i, (qtype, label, scene) in enumerate(zip(split["type"], split["label"], split["scene"])):
        truth = scene_attributes(json.loads(scene))
        said = caption_attributes(predictions[i])
        records.append({"row": i, "type": qtype, "label": label[0], "prediction": predictions[i],
                        "missed": sorted(truth - said), "wrong": sorted(said - truth)})
    return records, score_scenes(captions, truths)


def text_only_prior(train: datasets.Dataset) -> dict[str, str]:
    """Each row type's most common training text: what a captioner ignoring the pixels would say."""
    counts: dict[str, Counter] = {}
    for qtype, label in zip(train["type"], train["label"]):
        counts.setdefault(qtype, Counter())[label[0]] += 1
    return {qtype: c.most_common(1)[0][0] for qtype, c in counts.items()}


def _evaluate_main(args) -> int:
    from trl import SFTConfig

    from vlm_tune.data.rows import load_splits
    from vlm_tune.core.modeling import load_for_inference
    from vlm_tune.core.config import parse_recipe

    script_args, training_args, model_args, _ = parse_recipe(["--config", args.config, *args.recipe_overrides], SFTConfig)
    splits = load_splits(script_args.dataset_name)
    if args.split not in splits:
        raise ValueError(f"{script_args.dataset_name} has no split '{args.split}'")
    split = splits[args.split]
    if args.limit:
        split = split.select(range(min(args.limit, len(split))))
    model, processor = load_for_inference(model_args, training_args.trust_remote_code, script_args.image_longest_edge,
                                          script_args.do_image_splitting, args.adapter)
    records, scores = evaluate_captioner(model, processor, split, args.batch_size, args.max_new_tokens,
                                         script_args.system_prompt)
    result = {"adapter": args.adapter, "split": args.split, "scores": scores}
    if "train" in splits:
        prior = text_only_prior(splits["train"])
        _, result["prior_scores"] = score_predictions(split, [prior.get(t, "") for t in split["type"]])
    out = Path(args.output or (Path(args.adapter or "runs/scenes-base") / f"captions-{args.split}"))
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "predictions.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    (out / "scores.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if "prior_scores" in result:
        print("text-only prior\n" + format_scores(result["prior_scores"]) + "\n")
    print(("tuned" if args.adapter else "base") + "\n" + format_scores(scores))
    print(f"wrote {out / 'predictions.jsonl'} and {out / 'scores.json'}")
    return 0


# --- command line ---


def _image_size(text: str) -> int:
    value = int(text)
    if value < 32:
        raise argparse.ArgumentTypeError(f"must be >= 32 px, got {value}")
    return value


def _parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m data_builders.scenes",
                                     description="Synthetic scenes for training and scoring an image captioner.")
    sub = parser.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="render a DatasetDict (train/val/test) of scenes")
    b.add_argument("--output", required=True, type=Path, help="directory to write")
    for split, default in (("train", 2000), ("val", 20), ("test", 200)):
        b.add_argument(f"--{split}", type=non_negative_int, default=default, help=f"{split} scenes (default %(default)s)")
    b.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default %(default)s)")
    b.add_argument("--image-size", type=_image_size, default=128, help="square image side in px (default %(default)s)")
    b.add_argument("--num-proc", type=positive_int, default=min(2, os.cpu_count() or 1),
                   help="render processes (default min(2, cpus) = %(default)s)")
    b.add_argument("--overwrite", action="store_true", help="replace a non-empty --output")

    e = sub.add_parser("export", help="write a split's images + truth.jsonl as a captioner test folder")
    e.add_argument("--dataset", required=True, type=Path, help="a saved scenes dataset")
    e.add_argument("--split", default="test")
    e.add_argument("--output", required=True, type=Path)
    e.add_argument("--overwrite", action="store_true", help="replace a non-empty --output")

    s = sub.add_parser("score", help="score DIR/images/metadata.jsonl against DIR/truth.jsonl")
    s.add_argument("--heldout", required=True, type=Path, help="a folder written by export")
    s.add_argument("--column", default="text", help="caption column of metadata.jsonl (default %(default)s)")
    s.add_argument("--json", type=Path, help="where to write the scores (default HELDOUT/scores.json)")

    v = sub.add_parser("evaluate", help="caption a split with a model (+ adapter) and score it; "
                       "other --key value pairs override the recipe")
    v.add_argument("--config", required=True, help="the recipe the adapter was trained with (model, dataset)")
    v.add_argument("--adapter", help="LoRA adapter folder (a run's output_dir); none: the base model")
    v.add_argument("--split", default="test")
    v.add_argument("--limit", type=positive_int, help="only the first N rows")
    v.add_argument("--batch-size", type=positive_int, default=16)
    v.add_argument("--max-new-tokens", type=positive_int, default=48)
    v.add_argument("--output", help="where to write (default ADAPTER/captions-SPLIT)")

    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "evaluate":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.recipe_overrides = extra  # evaluate: any recipe field, e.g. --dataset_name DIR (like vlm-tune eval)
    if args.command == "build" and args.train + args.val + args.test == 0:
        b.error("--train, --val and --test are all 0; ask for at least one scene")
    return args


def _build_main(args) -> int:
    if is_nonempty(args.output) and not args.overwrite:  # before rendering, so a refused run costs nothing
        raise FileExistsError(f"{args.output} exists and is not empty; pass --overwrite")
    dataset_dict = build_scenes(args.train, args.val, args.test, args.seed, args.image_size, args.num_proc)
    info = build_info(args.train, args.val, args.test, args.seed, args.image_size)
    save_scenes(dataset_dict, args.output, overwrite=args.overwrite, info=info)
    sizes = ", ".join(f"{split} {len(ds)}" for split, ds in dataset_dict.items())
    print(f"wrote {args.output} (rows: {sizes})")
    return 0


def _export_main(args) -> int:
    if is_nonempty(args.output) and not args.overwrite:
        raise FileExistsError(f"{args.output} exists and is not empty; pass --overwrite")
    export_images(args.dataset, args.split, args.output, overwrite=args.overwrite)
    n = len((args.output / "truth.jsonl").read_text(encoding="utf-8").splitlines())
    print(f"wrote {n} images to {args.output / 'images'} and {args.output / 'truth.jsonl'}")
    return 0


def _score_main(args) -> int:
    captions = read_diffusers_captions(args.heldout / "images", args.column)
    scores = score_captions(captions, args.heldout / "truth.jsonl")
    out = args.json or args.heldout / "scores.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(scores, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(format_scores(scores))
    if scores["missing"]:
        print(f"{len(scores['missing'])} image(s) have no caption (counted as saying nothing in 'combined')")
    if scores["unknown"]:
        print(f"{len(scores['unknown'])} caption row(s) name files not in truth.jsonl (ignored)")
    print(f"wrote {out}")
    return 0


COMMANDS = {"build": _build_main, "export": _export_main, "score": _score_main, "evaluate": _evaluate_main}


def main(argv=None) -> int:
    args = _parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (OSError, ValueError, UserError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
