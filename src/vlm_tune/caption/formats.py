"""The two caption layouts `vlm-tune caption` reads and writes: kohya sidecars and diffusers' metadata.jsonl.

kohya sd-scripts: a sidecar `<stem><extension>` beside each image (UTF-8, first line read, every line
with --enable_wildcard). diffusers: `metadata.jsonl` at the root, rows `{"file_name", <column>}`.
Reading is strict where a rewrite could lose data (a broken metadata.jsonl stops the run); every
write replaces its file atomically, so a killed run leaves complete files only.
"""

from __future__ import annotations

import json
from pathlib import Path

from vlm_tune.core.errors import UserError
from vlm_tune.core.io import atomic_write_text

METADATA = "metadata.jsonl"
OTHER_CAPTION_EXTENSIONS = (".txt", ".caption")  # kohya's trainer default is .caption, its taggers write .txt


# --- existing captions -----------------------------------------------------------------------
def read_metadata(path: Path, column: str) -> list[dict]:
    """Rows of an existing metadata.jsonl, in order; a broken file stops the run (rewriting it would lose rows)."""
    if not path.is_file():
        return []
    rows = []
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 (byte {exc.start}); fix it before captioning, it is rewritten in place")
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path} line {number}: not valid JSON ({exc.msg}); fix it before captioning") from None
        if not isinstance(row, dict) or not isinstance(row.get("file_name"), str):
            raise UserError(f"{path} line {number}: a row needs a \"file_name\" string")
        rows.append(row)
    return rows


def caption_lines(value) -> list[str] | None:
    """A caption cell (str, or list of str for dual captions) as non-empty lines; None if there is none."""
    values = value if isinstance(value, list) else [value]
    lines = [line.strip() for v in values if isinstance(v, str) for line in v.splitlines() if line.strip()]
    return lines or None


def read_sidecar(path: Path) -> tuple[list[str] | None, str | None]:
    """(lines, problem) of an existing kohya caption file."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return None, f"{path.name} is not UTF-8 (byte {exc.start})"
    return caption_lines(text), None


def sidecar_of(root: Path, rel: str, extension: str) -> Path:
    """kohya's caption file of an image: same folder and stem, the caption extension."""
    return (root / rel).with_suffix(extension)


def check_extensions(root: Path, images: list[str], extension: str) -> None:
    """Refuse to start a mixed set: sidecars in another caption extension mean the user asked for the wrong one."""
    for other in OTHER_CAPTION_EXTENSIONS:
        if other == extension:
            continue
        found = [rel for rel in images if sidecar_of(root, rel, other).is_file()]
        if found:
            raise UserError(
                f"{root}: {len(found)} image(s) already have '{other}' captions (e.g. {sidecar_of(root, found[0], other)}) "
                f"but --caption_extension is '{extension}'; pass --caption_extension {other} so the set stays in one format"
            )


# --- write -----------------------------------------------------------------------------------
def write_sidecar(path: Path, lines: list[str]) -> None:
    """kohya reads the first line (all lines, one at random per step, with --enable_wildcard)."""
    atomic_write_text(path, "\n".join(lines) + "\n")


def write_metadata(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def metadata_value(lines: list[str]):
    """A metadata.jsonl caption cell: the caption, or the list of them (dual captions; diffusers picks one per step)."""
    return lines[0] if len(lines) == 1 else list(lines)
