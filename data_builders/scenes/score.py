"""Scoring captions against known scenes, text only: a caption is parsed back into atomic attributes with
the scene vocabulary and compared with what was drawn (recall: what it got right of what is there;
precision: how much of what it said is true)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import datasets

from data_builders._common import InputNotFoundError
from data_builders.scenes.export import unique_scenes
from data_builders.scenes.scene import BACKGROUND_COLORS, OBJECT_COLORS, POSITIONS, SHAPES
from vlm_tune.core.errors import UserError
from vlm_tune.core.markdown import md_table

# --- vocabularies of captions ---

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
GROUPS = ("sentence", "tags", "combined")


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


def score_predictions(split: datasets.Dataset, predictions: list[str]) -> tuple[list[dict], dict]:
    """Per-row predictions of a scenes split → (records, scores), scenes keyed by their first row.
    Text only: the answers come from elsewhere (`vlm-tune eval`, the merged-model check)."""
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


# --- files: truth.jsonl and the captioner's metadata.jsonl ---


def read_truth(truth_path) -> dict[str, dict]:
    """truth.jsonl → {file_name: scene}."""
    path = Path(truth_path)
    if not path.is_file():
        raise InputNotFoundError(f"truth file not found: {path}")
    truths = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            truths[str(row["file_name"])] = row["scene"]
            scene_attributes(row["scene"])  # a malformed scene fails here, by line
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{path} line {n}: bad truth row ({type(exc).__name__}: {exc})") from None
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
        raise InputNotFoundError(f"no captions: {path} not found (caption the folder first)")
    captions: dict[str, list[str]] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            name, value = row["file_name"], row[column]
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{path} line {n}: bad row, need file_name and {column} "
                            f"({type(exc).__name__}: {exc})") from None
        texts = [value] if isinstance(value, str) else value
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise UserError(f"{path} line {n}: {column} must be a string or a list of strings")
        captions.setdefault(str(name), []).extend(texts)
    return captions


# --- table ---


def format_scores(scores: dict) -> str:
    """A small table: recall / precision (%) per attribute kind, one row per caption group."""

    def percent(value) -> str:
        return "–" if value is None else f"{100 * value:.1f}"

    header = ["captions", "n", "recall", "precision"] + list(ATTRIBUTE_KINDS)
    rows = []
    for group in GROUPS:
        s = scores[group]
        cells = [group, str(s["n_images"]), percent(s["recall"]), percent(s["precision"])]
        cells += [f"{percent(s['per_kind'][k]['recall'])} / {percent(s['per_kind'][k]['precision'])}"
                  for k in ATTRIBUTE_KINDS]
        rows.append(cells)
    table = "\n".join(md_table(header, rows))
    return table + "\n\nAttribute recall / precision (%); kind columns show recall / precision."
