"""Hostile set-ups shared by tests/test_hostile.py and the rooms' own tests: bases an adapter was not
trained on (derived from the tiny model in a second, no model build), and file systems that refuse writes
(a read-only folder, a full disk) made with a tmpfs when the tests run as root."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest


# --- other bases -----------------------------------------------------------------------------
def _rewrite_weights(src: Path, dst: Path, change) -> Path:
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    tensors = load_file(str(src / "model.safetensors"))
    save_file({name: change(name, tensor).contiguous() for name, tensor in tensors.items()},
              str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def other_weights(src: Path, dst: Path) -> Path:
    """The same architecture with other weights (what another seed, or another checkpoint, gives)."""
    import torch

    generator = torch.Generator().manual_seed(1)
    return _rewrite_weights(src, dst, lambda name, t: t + 0.05 * torch.randn(t.shape, generator=generator, dtype=t.dtype))


def other_architecture(src: Path, dst: Path, intermediate: int = 256) -> Path:
    """The tiny model with a narrower text MLP: another architecture, the adapter's MLP LoRA cannot fit."""
    def narrow(name: str, tensor):
        if ".text_model." in name and name.endswith(("gate_proj.weight", "up_proj.weight")):
            return tensor[:intermediate]
        if ".text_model." in name and name.endswith("down_proj.weight"):
            return tensor[:, :intermediate]
        return tensor

    _rewrite_weights(src, dst, narrow)
    config = json.loads((dst / "config.json").read_text())
    config["text_config"]["intermediate_size"] = intermediate
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    return dst


# --- file systems that refuse writes ---------------------------------------------------------
def _mount(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *argv], capture_output=True, text=True)


@contextmanager
def tmpfs(path: Path, size: str = "64k"):
    """A small tmpfs mounted at `path` (root only; the test is skipped where it cannot be mounted)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    done = _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextmanager
def read_only_folder(path: Path, fill):
    """`path` filled by `fill(path)`, then read-only: as root (who ignores permissions) a tmpfs remounted
    read-only, else a plain folder with mode 0555 (given back its write bit afterwards)."""
    if os.geteuid() == 0:
        with tmpfs(path, "1m"):
            fill(path)
            done = _mount("-o", "remount,ro", str(path))
            if done.returncode:
                pytest.skip(f"cannot remount read-only: {done.stderr.strip()}")
            yield path
        return
    path.mkdir(parents=True, exist_ok=True)
    fill(path)
    path.chmod(0o555)
    try:
        yield path
    finally:
        path.chmod(0o755)


def fill_disk(path: Path, leave_pages: int = 0) -> Path:
    """Fill the file system of `path` up, then free `leave_pages` pages again; returns the filler file
    (delete it to give the space back)."""
    page = os.statvfs(path).f_frsize
    filler = path / ".filler"
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * page)
        except OSError:  # ENOSPC: full
            pass
    size = filler.stat().st_size
    os.truncate(filler, max(size - leave_pages * page, 0))
    return filler
