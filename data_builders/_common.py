"""Small pieces every builder's command line shares: argument types and the 'refuse to overwrite' check."""

from __future__ import annotations

import argparse
from pathlib import Path


def is_nonempty(path: Path) -> bool:
    """A file, or a folder with anything in it: user data a builder must not overwrite silently."""
    return path.exists() and (not path.is_dir() or any(path.iterdir()))


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
