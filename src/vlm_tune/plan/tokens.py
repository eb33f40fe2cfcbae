"""Tokens per sample for `vlm-tune plan`: a sample of the training split, formatted as `vlm-tune sft`
formats it, goes through TRL's own vision collator — image, text and answer tokens, tiles and sequence
lengths are the trained ones (and the image tokens also with the other tiling setting).
"""

from __future__ import annotations

import math
import os

import numpy as np

from vlm_tune.core.errors import UserError

SYNTHETIC_IMAGE_SIZE = 800  # stand-in charts when the dataset is missing: about ChartQA's typical width


# --- data sample -----------------------------------------------------------------------------
def _synthetic_split(script_args, n: int):
    from vlm_tune.data.assets import synthetic_builder

    builder = synthetic_builder(script_args.synthetic_builder)
    size = script_args.synthetic_image_size if script_args.synthetic_dataset else SYNTHETIC_IMAGE_SIZE
    types = script_args.synthetic_types or builder.QUESTION_TYPES
    return builder.build(n, 0, 0, seed=script_args.synthetic_seed, image_size=size, num_proc=1,
                         question_types=types)["train"], size


def _stand_in_allowed(script_args) -> bool:
    """Synthetic rows may stand in only for a dataset the recipe builds on first use, or for a hub
    dataset (`owner/name`) that is not on this machine; a local path that is missing or unreadable is an
    error — planning on made-up data would answer for a dataset that does not exist."""
    from vlm_tune.core.hub import is_hub_id

    name = script_args.dataset_name or ""
    if os.path.exists(os.path.expanduser(name)):
        return False
    return bool(script_args.synthetic_dataset) or is_hub_id(name)


def sample_rows(script_args, n: int) -> tuple[list[dict], str]:
    """`n` training rows spread evenly over the split, formatted as `vlm-tune sft` formats them. A dataset
    the recipe builds on first use, or a hub dataset not reachable from here, is replaced by synthetic
    rows, and said so (in the data line and a warning); a missing local dataset is an error."""
    from vlm_tune.data.rows import format_row, get_split, load_splits, undecoded_images

    try:
        splits = load_splits(script_args.dataset_name, script_args.dataset_config)
    except UserError as exc:
        if not _stand_in_allowed(script_args):
            raise
        split, size = _synthetic_split(script_args, n)
        reason = "the recipe builds it on first use" if script_args.synthetic_dataset else str(exc).split(" (")[0]
        source = f"synthetic {script_args.synthetic_builder} ({len(split)} rows, {size} px; dataset not used: {reason})"
        indices = list(range(len(split)))
    else:
        split = get_split(splits, script_args.dataset_train_split, script_args.dataset_name,
                          script_args.max_train_samples)
        picked = np.unique(np.linspace(0, len(split) - 1, num=min(n, len(split))).round().astype(int))
        indices = picked.tolist()
        split = split.select(indices)
        source = f"{script_args.dataset_name} [{script_args.dataset_train_split}]: {len(split)} rows spread over the split"
    where = f"{script_args.dataset_name} [{script_args.dataset_train_split}]"
    rows = [format_row(row, script_args.system_prompt, where, indices[index])
            for index, row in enumerate(undecoded_images(split))]
    return rows, source


# --- tokens ----------------------------------------------------------------------------------
def _collate_one(collator, row: dict) -> dict:
    return collator([{"images": list(row["images"]), "prompt": list(row["prompt"]),
                      "completion": list(row["completion"])}])


def _tiles_with_other_splitting(image_processor, rows: list[dict]) -> list[int]:
    """Tiles per row had the recipe's `do_image_splitting` been the other way (the processor is put back)."""
    splitting = bool(image_processor.do_image_splitting)
    image_processor.do_image_splitting = not splitting
    try:
        return [int(image_processor(images=[row["images"]], return_tensors="pt")["pixel_values"].shape[1])
                for row in rows]
    finally:
        image_processor.do_image_splitting = splitting


def count_tokens(processor, rows: list[dict], max_length: int | None) -> dict:
    """Per-row counts through TRL's collator: sequence, image, text and answer tokens, tiles; the image
    tokens also with the other splitting setting."""
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    collator = DataCollatorForVisionLanguageModeling(processor=processor, max_length=None, completion_only_loss=True)
    image_token_id = processor.image_token_id
    per_tile = processor.image_seq_len
    image_processor = processor.image_processor
    splitting = bool(image_processor.do_image_splitting)
    seq, image, tiles, answer = [], [], [], []
    for row in rows:
        out = _collate_one(collator, row)
        seq.append(out["input_ids"].shape[1])
        image.append(int((out["input_ids"] == image_token_id).sum()))
        tiles.append(int(out["pixel_values"].shape[1]) if "pixel_values" in out else 0)
        answer.append(int((out["labels"] != -100).sum()))
    other_tiles = _tiles_with_other_splitting(image_processor, rows)
    seq_a = np.array(seq)
    truncated = int((seq_a > max_length).sum()) if max_length is not None else 0
    on, off = (tiles, other_tiles) if splitting else (other_tiles, tiles)
    return {
        "samples": len(rows),
        "tokens_per_tile": per_tile,
        "do_image_splitting": splitting,
        "image_longest_edge": (image_processor.size or {}).get("longest_edge"),
        "tiles": _stats(tiles),
        "image_tokens": _stats(image),
        "image_tokens_splitting_on": _stats([t * per_tile for t in on]),
        "image_tokens_splitting_off": _stats([t * per_tile for t in off]),
        "text_tokens": _stats([s - i for s, i in zip(seq, image)]),
        "answer_tokens": _stats(answer),
        "sequence_length": {**_stats(seq), "p50": _pct(seq_a, 50), "p95": _pct(seq_a, 95), "p99": _pct(seq_a, 99)},
        "max_length": max_length,
        "truncated_samples": truncated,
        "sequence_lengths": seq,
    }


def _stats(values: list[int]) -> dict:
    a = np.array(values or [0])
    return {"min": int(a.min()), "mean": round(float(a.mean()), 1), "max": int(a.max())}


def _pct(a: np.ndarray, q: float) -> int:
    return math.ceil(np.percentile(a, q))
