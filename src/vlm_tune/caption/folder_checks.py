"""What `vlm-tune caption` (and `caption-lint`) checks about an image folder's file system before writing,
and how a write that fails half way is reported.

    find_images_checked   images of a folder; a symlink loop is one line naming the link
    check_not_folders     a caption file or metadata.jsonl that is a folder: one line, before anything is read
    check_writable        a read-only folder where captions or the report go: one line, before the model
                          loads or anything is written
    writing               a write that fails while captioning (a full disk, a file system gone read-only)
                          becomes one line that says what is kept and how to continue

Every caption file is replaced atomically (`core.io`), so a failed write leaves whole files only: the
captions written before it are kept and a rerun continues with the rest.
"""

from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from pathlib import Path

from vlm_tune.core.errors import UserError
from vlm_tune.core.images import find_images
from vlm_tune.core.io import check_output_path


# --- reading the folder ----------------------------------------------------------------------
def _loop(exc: BaseException) -> bool:
    """A symlink loop: RuntimeError from pathlib.resolve (Python < 3.13), OSError ELOOP otherwise."""
    return ("loop" in str(exc).lower()) if isinstance(exc, RuntimeError) else getattr(exc, "errno", None) == errno.ELOOP


def find_images_checked(root: Path, command: str = "caption") -> tuple[list[str], list[tuple[str, str]]]:
    """core.images.find_images, with a symlink loop (a link that points back at itself) as one line."""
    try:
        return find_images(root)
    except (RuntimeError, OSError) as exc:
        if not _loop(exc):
            raise
        link = getattr(exc, "filename", None) or str(exc).rsplit(" ", 1)[-1].strip("'\"")
        raise UserError(f"{command}: {link} is a symlink loop (it leads back to itself); remove it or move it "
                        f"out of {root}") from None


# --- before writing --------------------------------------------------------------------------
def check_not_folders(sidecars: dict[str, Path], metadata: Path | None) -> None:
    """A caption path that is a folder (kohya `sidecars` {image: caption file}, diffusers' `metadata`):
    one UserError, before anything is read or written."""
    for image, sidecar in sidecars.items():
        if sidecar.is_dir():
            raise UserError(f"caption: {sidecar} is a folder, where the caption of {image} goes; rename or remove "
                            f"that folder (kohya reads a caption file there)")
    if metadata is not None and metadata.is_dir():
        raise UserError(f"caption: {metadata} is a folder; diffusers reads a metadata.jsonl file there")


def check_writable(folders: set[Path], report_dir: Path) -> None:
    """The folders this run writes captions in and the report folder: one UserError before anything is
    written when one is read-only (permissions, or a read-only file system) or the report folder cannot be one."""
    for folder in sorted(folders):
        if not os.access(folder, os.W_OK | os.X_OK):
            raise UserError(f"caption: cannot write in {folder} (read-only: permissions or a read-only file system); "
                            f"captions go beside the images: make it writable, or caption a writable copy")
    if report_dir.is_dir() and not os.access(report_dir, os.W_OK | os.X_OK):
        raise UserError(f"caption: cannot write the report in {report_dir} (read-only); pass --report_dir DIR")
    check_output_path(report_dir, "caption: --report_dir", folder=True)  # a file there, or under a file


# --- while writing ---------------------------------------------------------------------------
@contextmanager
def writing(root: Path, written: list):
    """An OSError of a write (ENOSPC, EROFS, EIO, …) as one line: what is kept, how to continue."""
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        where = f" ({exc.filename})" if exc.filename else ""
        raise UserError(f"caption: cannot write in {root}: {reason}{where}; the {len(written)} caption(s) written "
                        f"by this run are kept, every caption file is whole; fix it (free space, permissions) and "
                        f"run the same command again: it continues with the images left") from None
