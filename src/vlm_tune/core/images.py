"""Image folders of diffusion-LoRA datasets: find images safely, open odd ones, say why a bad one is skipped.

    images, refused = find_images(root)        # relative POSIX paths in a stable order; (path, reason) refused
    image, note = open_image(root / rel)       # RGB image (+ what was converted) or (None, why it is unusable)

Shared by `vlm-tune caption` and `vlm-tune caption-lint`.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# PIL's own decompression-bomb limit (~89 Mpx): larger files are refused before they are decoded.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485


# --- find ------------------------------------------------------------------------------------
def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def find_images(root: str | os.PathLike) -> tuple[list[str], list[tuple[str, str]]]:
    """Images under `root`, recursively, sorted by relative path; hidden files/folders are ignored.

    Returns (relative POSIX paths, [(relative path, reason)] refused). A symlink whose target lies
    outside the root is refused; symlinked folders are not followed (they could loop or escape)."""
    root = Path(root)
    real_root = root.resolve()
    images: list[str] = []
    refused: list[tuple[str, str]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        for name in list(dirnames):
            if name.startswith("."):
                dirnames.remove(name)
            elif (here / name).is_symlink():
                dirnames.remove(name)
                rel = (here / name).relative_to(root).as_posix()
                target = (here / name).resolve()
                reason = "symlink leaves the dataset root" if not _inside(target, real_root) else "symlinked folder not followed"
                refused.append((rel + "/", reason))
        for name in filenames:
            if not is_image_name(name):
                continue
            path = here / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink() and not _inside(path.resolve(), real_root):
                refused.append((rel, "symlink leaves the dataset root"))
                continue
            images.append(rel)
    images.sort()
    refused.sort()
    return images, refused


def safe_join(root: str | os.PathLike, relative: str) -> Path:
    """root / relative, refusing absolute paths, '..' and symlinks that would escape the root."""
    if not relative or os.path.isabs(relative) or ".." in Path(relative).parts or "\\" in relative:
        raise ValueError(f"path escapes the dataset root: {relative!r}")
    path = Path(root) / relative
    if not _inside(path.resolve(), Path(root).resolve()):
        raise ValueError(f"path escapes the dataset root: {relative!r}")
    return path


# --- open ------------------------------------------------------------------------------------
def _to_rgb(image: Image.Image) -> tuple[Image.Image, list[str]]:
    notes = []
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit/float greyscale: scale to 8 bit (a plain convert clips everything above 255 to white).
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or array.max() > 255 else 255.0
        array = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        image = Image.fromarray(array, mode="L")
        notes.append(f"converted from {mode} (16-bit/float)")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        notes.append("converted from palette with transparency")
    if image.mode in ("RGBA", "LA", "PA"):
        # Transparent pixels become white, as most viewers (and captioners' training data) show them.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
        notes.append(f"alpha ({mode}) composited on white")
    if image.mode != "RGB":
        if not notes:
            notes.append(f"converted from {image.mode}")
        image = image.convert("RGB")
    return image, notes


def open_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> tuple[Image.Image | None, str]:
    """(RGB image, note of conversions or '') or (None, reason it can't be used). Never raises for bad files."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        return None, f"cannot read: {exc.strerror or exc}"
    if size == 0:
        return None, "empty file (0 bytes)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as raw:
                width, height = raw.size
                if width * height > max_pixels:
                    return None, f"too large: {width}×{height} px is over the {max_pixels:,}-pixel limit (decompression bomb guard)"
                raw.load()
                exif_notes = []
                oriented = ImageOps.exif_transpose(raw)
                if oriented is not None and oriented.size != raw.size or raw.getexif().get(0x0112, 1) not in (1, None):
                    exif_notes.append(f"EXIF orientation {raw.getexif().get(0x0112)} applied")
                image, notes = _to_rgb(oriented if oriented is not None else raw)
    except UnidentifiedImageError:
        return None, "not an image (unrecognised format)"
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return None, f"too large: {exc}"
    except (OSError, SyntaxError, ValueError) as exc:
        text = str(exc)
        if "truncated" in text.lower():
            return None, "truncated file"
        return None, f"corrupt image ({type(exc).__name__}: {text[:120]})"
    if image.width < 1 or image.height < 1:
        return None, "image has no pixels"
    return image, "; ".join(exif_notes + notes)
