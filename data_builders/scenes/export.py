"""A held-out folder from a scenes split: the images as a diffusion dataset would have them, plus truth.jsonl."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import datasets

from data_builders._common import InputNotFoundError, staged_replace
from data_builders.scenes.scene import caption_text, tags_text
from vlm_tune.core.errors import UserError

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
            raise InputNotFoundError(f"no saved dataset at {path} (dataset_dict.json missing)")
        dataset = datasets.load_from_disk(str(path))
    if split not in dataset:
        raise UserError(f"dataset has no split '{split}' (it has: {', '.join(dataset)})")
    ds = dataset[split]
    missing = [c for c in ("image", "scene") if c not in ds.column_names]
    if missing:
        raise UserError(f"split '{split}' lacks column(s) {', '.join(missing)}: not a scenes dataset")
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
