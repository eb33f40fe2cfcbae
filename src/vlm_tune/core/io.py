"""Crash-safe writes: a file is either its old content or its complete new content, never half-written.

Write to a temporary file in the same folder, flush + fsync, then `os.replace` (atomic on POSIX and
Windows). A SIGKILL at any moment leaves at most a stray `.<name>.*.tmp` file, which readers ignore
(hidden) and the next write of that name cleans up.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

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
