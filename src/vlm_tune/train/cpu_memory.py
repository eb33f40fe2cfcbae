"""CPU training: freed tensor memory goes back to the OS, so peak RSS is what a step uses, not what
glibc's heap kept.

glibc's malloc gives a block of at least M_MMAP_THRESHOLD its own mapping and unmaps it on free, but
it raises that threshold (up to 32 MiB) each time such a block is freed — so after the first steps
most tensor buffers of a CPU step come from the heap, which keeps freed memory and fragments. Measured
on the SmolVLM-256M architecture (`vlm-tune dpo`, batch 2 pairs, 4-bit, fp32, CPU): peak RSS of
training 5.0 GB with the default, 3.2 GB with the threshold fixed at 256 KiB, and no slower
(docs/benchmarks.md, DPO section). This is `MALLOC_MMAP_THRESHOLD_=262144`, set from inside the process.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
THRESHOLD_BYTES = 256 * 1024
ENV = "MALLOC_MMAP_THRESHOLD_"


def give_freed_memory_back() -> bool:
    """On a Linux/glibc machine without CUDA, fix the mmap threshold (unless the environment sets it);
    True when set. Anywhere else a no-op."""
    import torch

    if not sys.platform.startswith("linux") or torch.cuda.is_available() or ENV in os.environ:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (e.g. musl)
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD_BYTES))
