"""CPU training of a real-sized model: freed tensor memory goes back to the OS, so peak RSS is what a step
uses, not what glibc's heap kept.

glibc's malloc gives a block of at least M_MMAP_THRESHOLD its own mapping and unmaps it on free, but
it raises that threshold (up to 32 MiB) each time such a block is freed — so after the first steps
most tensor buffers of a CPU step come from the heap, which keeps freed memory and fragments. Measured
on the SmolVLM-256M architecture (`vlm-tune dpo`, batch 2 pairs, 4-bit, fp32, CPU): peak RSS of
training 5.0 GB with the default, 3.2 GB with the threshold fixed at 256 KiB (docs/benchmarks.md, DPO
section). This is `MALLOC_MMAP_THRESHOLD_=262144`, set from inside the process.

Not for small models: every mapped buffer is zero-filled page by page when first touched, and the tiny
model's steps are short enough for that to dominate — its DPO (`make dpo`, 40 steps, 1 thread) took
56–62 s with the fixed threshold vs 35–36 s without. A checkpoint folder under SMALL_CHECKPOINT_BYTES
keeps glibc's default; so does any machine with CUDA, a non-glibc libc, or MALLOC_MMAP_THRESHOLD_ set.
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
THRESHOLD_BYTES = 256 * 1024
ENV = "MALLOC_MMAP_THRESHOLD_"
SMALL_CHECKPOINT_BYTES = 100 * 1024**2  # the tiny model: 7 MB; SmolVLM-256M: 489 MB


def is_small_checkpoint(model_name_or_path: str) -> bool:
    """A local model folder whose safetensors add up to less than SMALL_CHECKPOINT_BYTES (a hub name: no)."""
    folder = Path(model_name_or_path)
    if not folder.is_dir():
        return False
    return sum(f.stat().st_size for f in folder.glob("*.safetensors")) < SMALL_CHECKPOINT_BYTES


def give_freed_memory_back(model_name_or_path: str) -> bool:
    """On a Linux/glibc machine without CUDA, for a model that is not small, fix the mmap threshold (unless
    the environment sets it); True when set. Anywhere else a no-op."""
    import torch

    if not sys.platform.startswith("linux") or torch.cuda.is_available() or ENV in os.environ:
        return False
    if is_small_checkpoint(model_name_or_path):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (e.g. musl)
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD_BYTES))
