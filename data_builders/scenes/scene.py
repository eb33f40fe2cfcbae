"""What a scene is: the vocabularies, the sampled spec (content + geometry) and its reference texts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data_builders._common import pick

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
    n = int(pick(rng, OBJECT_COUNTS))
    positions = pick(rng, LAYOUTS[n])
    shapes = [str(s) for s in rng.choice(SHAPES, size=n, replace=False)]
    colors = [str(c) for c in rng.choice(tuple(OBJECT_COLORS), size=n, replace=False)]
    background = str(pick(rng, tuple(BACKGROUND_COLORS)))
    style = str(pick(rng, STYLES))
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
