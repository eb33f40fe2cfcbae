"""Several training processes (`accelerate launch --num_processes N`): the CPU/gloo switch, and an
opt-in trace of which rows each rank trained on (`VLM_TUNE_TRACE_BATCHES=DIR`, used by the tests)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

TRACE_ENV = "VLM_TUNE_TRACE_BATCHES"


# --- backend ---------------------------------------------------------------------------------
def use_gloo_without_gpu() -> None:
    """`accelerate launch --num_processes N` starts N processes through torchrun even without CUDA, but
    accelerate picks its CPU/gloo backend only when told the run is a CPU run (its `--cpu` flag starts a
    single process); otherwise every process would train alone on all the data. Must run before the
    TrainingArguments set up the distributed state."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")


# --- batch trace -----------------------------------------------------------------------------
def row_fingerprint(example: dict) -> str:
    """Identity of a training row from its prompt, answer and pixels (rows carry no id column)."""
    digest = hashlib.sha1(json.dumps([example.get("prompt"), example.get("completion")], default=str).encode())
    for image in example.get("images") or []:
        digest.update(image.tobytes() if hasattr(image, "tobytes") else repr(image).encode())
    return digest.hexdigest()[:16]


class BatchTrace:
    """Opt-in evidence of which rows each rank trained on (VLM_TUNE_TRACE_BATCHES=DIR): wraps the data
    collator and appends one JSON line per collated batch to DIR/rank-K.jsonl. Used by the multi-process
    test to check that ranks see different, disjoint data; off by default (it hashes every image)."""

    def __init__(self, collator, directory: str, rank: int):
        self.collator, self.rank, self.calls = collator, rank, 0
        self.path = Path(directory) / f"rank-{rank}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, examples: list[dict]):
        ids = [row_fingerprint(example) for example in examples]  # before the collator rewrites the rows
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"rank": self.rank, "batch": self.calls, "ids": ids}) + "\n")
        self.calls += 1
        return self.collator(examples)


def trace_batches_if_asked(trainer) -> None:
    """Wrap the trainer's collator in a BatchTrace when VLM_TUNE_TRACE_BATCHES names a folder."""
    directory = os.environ.get(TRACE_ENV)
    if directory:
        trainer.data_collator = BatchTrace(trainer.data_collator, directory, trainer.args.process_index)
