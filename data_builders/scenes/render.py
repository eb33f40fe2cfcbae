"""Drawing a scene: silhouettes, outlines, stripes and grain, as an RGB image."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from data_builders.scenes.scene import BACKGROUND_COLORS, OBJECT_COLORS, SceneObject, SceneSpec

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
