"""What every synthetic builder shares: its errors, argument types, the 'refuse to overwrite' check, the
per-row random stream, PNG bytes, the pooled split loop, the build-settings file and the staged
(all-or-nothing) save."""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import tempfile
from contextlib import nullcontext
from multiprocessing import Pool
from pathlib import Path

import datasets
import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from vlm_tune.core.errors import UserError

# --- errors: user input a builder refuses (one `error: ...` line through run_command) ---


class OutputExistsError(UserError, FileExistsError):
    """The output is a non-empty file or folder and --overwrite was not given."""


class InputNotFoundError(UserError, FileNotFoundError):
    """A dataset, truth or captions file the command reads is not there."""


# --- argument types and checks ---


def is_nonempty(path: Path) -> bool:
    """A file, or a folder with anything in it: user data a builder must not overwrite silently."""
    return path.exists() and (not path.is_dir() or any(path.iterdir()))


def refuse_nonempty(path: Path, overwrite: bool) -> None:
    """OutputExistsError unless `path` is empty/missing or overwrite is set; a command checks this
    before rendering, so a refused run costs nothing."""
    if is_nonempty(path) and not overwrite:
        raise OutputExistsError(f"{path} exists and is not empty; pass --overwrite")


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def check_build_args(sizes: dict[str, int], seed: int, question_types, known: tuple[str, ...]) -> tuple[str, ...]:
    """UserError for negative sizes or seed, or question types outside `known`; the types as a tuple."""
    if min(sizes.values()) < 0 or seed < 0:
        raise UserError(f"split sizes and seed must be non-negative, got {sizes} seed={seed}")
    question_types = tuple(question_types)
    unknown = [t for t in question_types if t not in known]
    if unknown or not question_types:
        raise UserError(f"question types must be a non-empty subset of {', '.join(known)}, got {list(question_types)}")
    return question_types


# --- rows: one random stream per row, PNG bytes ---

SPLITS = ("train", "val", "test")


def row_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Independent stream per (seed, split, row), so rows do not depend on worker scheduling."""
    return np.random.default_rng([seed, SPLITS.index(split), index])


def pick(rng: np.random.Generator, options) -> object:
    """One of `options`, uniformly (one draw of rng.integers)."""
    return options[int(rng.integers(len(options)))]


def encode_png(image: Image.Image) -> bytes:
    # PIL writes no timestamps or metadata unless asked, so equal pixels give equal bytes.
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# --- build: every split rendered by a pool of workers, in row order ---


def build_splits(
    sizes: dict[str, int], seed: int, extra: tuple, render_rows, num_proc: int, desc: str, unit: str, features,
    chunksize: int = 8,
) -> datasets.DatasetDict:
    """Every split: render_rows((seed, split, index, *extra)) -> a list of rows, for index in range(sizes[split]).

    imap keeps row order, so the output is the same for any num_proc; leaving the with-block
    terminates the workers (also on Ctrl-C). A pool is forked only when it can pay for itself.
    """
    use_pool = num_proc > 1 and sum(sizes.values()) > 1
    splits = {}
    with (Pool(num_proc) if use_pool else nullcontext()) as pool:
        for split, n in sizes.items():
            if n == 0:  # a 0-row split is left out: datasets saves it but cannot load it back
                continue
            tasks = [(seed, split, i, *extra) for i in range(n)]
            rows_iter = pool.imap(render_rows, tasks, chunksize=chunksize) if pool else map(render_rows, tasks)
            rows = [row for rows in tqdm(rows_iter, total=n, desc=f"{desc} {split}", unit=unit) for row in rows]
            columns = {name: [row[name] for row in rows] for name in features}
            splits[split] = datasets.Dataset.from_dict(columns, features=features)
    return datasets.DatasetDict(splits)


# --- save: staged, then renamed into place, with the build settings beside the data ---


BUILD_INFO = "synthetic_build.json"  # the settings a saved dataset was built with


def build_info(builder: str, sizes, seed: int, image_size: int, question_types, version: int | None = None) -> dict:
    """What vlm_tune.data.assets.ensure_assets compares to decide a saved dataset is this recipe's (else: stale)."""
    info = {"builder": builder, "sizes": list(sizes), "seed": seed, "image_size": image_size,
            "question_types": list(question_types)}
    if version is not None:  # bumped when the builder's output changes for the same settings
        info["version"] = version
    return info


def read_build_info(path) -> dict | None:
    info = Path(path) / BUILD_INFO
    return json.loads(info.read_text(encoding="utf-8")) if info.is_file() else None


def staged_replace(output: Path, overwrite: bool, write) -> Path:
    """write(folder) into a staging dir beside output, then rename it into place: an interrupted run
    leaves output as it was (a killed one a hidden `.NAME.tmp-*` folder, removed by the next run), and a
    non-empty output is only replaced with overwrite=True."""
    output = Path(output)
    refuse_nonempty(output, overwrite)
    output.parent.mkdir(parents=True, exist_ok=True)
    for stale in output.parent.iterdir():  # staging left by a run killed with SIGKILL (no finally ran)
        if stale.name.startswith(f".{output.name}.tmp-") and stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    try:
        write(staging / "new")
        if output.exists() or output.is_symlink():
            os.replace(output, staging / "old")  # removed with the staging dir below
        os.replace(staging / "new", output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output


def save_dataset(dataset_dict: datasets.DatasetDict, output_dir, overwrite: bool = False, info: dict | None = None) -> Path:
    """save_to_disk atomically (see staged_replace), with the build settings (info) beside it."""

    def write(folder: Path) -> None:
        dataset_dict.save_to_disk(str(folder))
        if info is not None:
            (folder / BUILD_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")

    return staged_replace(Path(output_dir), overwrite, write)
