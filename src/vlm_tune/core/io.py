"""Crash-safe writes: a file is either its old content or its complete new content, never half-written.

Write to a temporary file in the same folder, flush + fsync, then `os.replace` (atomic on POSIX and
Windows). A SIGKILL at any moment leaves at most a stray `.<name>.*.tmp` file, which readers ignore
(hidden) and the next write of that name cleans up. A set of files (a comparison: tables, plots,
pages) is written into a hidden staging folder and moved in only once all of it exists
(`staged_folder`); `check_output_path` refuses, before any work, a path that cannot be written.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from vlm_tune.core.errors import UserError

TMP_SUFFIX = ".tmp"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*{TMP_SUFFIX}"):  # left by a killed earlier write
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        # mkstemp makes the file private (0600); give it the mode a plain open() would (or the old file's).
        mode = path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_umask()
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """UTF-8, no BOM, '\\n' line endings on every platform (what kohya and diffusers read)."""
    atomic_write_bytes(path, text.encode("utf-8"))


# --- before writing --------------------------------------------------------------------------
def check_output_path(path: str | os.PathLike, what: str, folder: bool) -> None:
    """One UserError line if `path` cannot be written as a folder (`folder`) or a file: a file where a
    folder should be (or the reverse), a file among its parents, no permission in the nearest folder."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        kind = "a folder" if path.is_dir() else "a file"
        raise UserError(f"{what} {path} is {kind}; expected {'a folder' if folder else 'a file path'}")
    parent = path if folder else path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{what} {path}: {parent} is a file, so it cannot hold {'a folder' if folder else 'files'}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path}: no permission to write in {parent}")


# --- a set of files at once ------------------------------------------------------------------
@contextmanager
def staged_folder(final: str | os.PathLike):
    """Yield a hidden staging folder beside `final`; when the block ends without error, every file in it
    moves into `final` (each by an atomic rename, same file system). On an error nothing of it reaches
    `final`, and folders made only for it are removed again."""
    final = Path(final)
    made = [p for p in (final.parent, *final.parent.parents) if not p.exists()]
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=TMP_SUFFIX, dir=final.parent))
    try:
        yield staging
        for path in sorted(staging.rglob("*")):
            if path.is_file():
                target = final / path.relative_to(staging)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in made:  # innermost first
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    shutil.rmtree(staging, ignore_errors=True)
