"""Task files: what a team rates, one JSON object per line.

    {"image": "samples/a.png", "prompt": "a cat on a roof", "responses": ["caption 1", "caption 2"], "group": "run-3"}

`image` is relative to the task file's folder; `responses` absent or empty makes the item an *image* to score
itself (image mode: e.g. samples of several diffusion checkpoints, `group` = checkpoint). `group` is never
shown to raters. A file is wholly response mode or wholly image mode (the ratings builder reads one mode per
file). Any bad line is one TaskFileError naming `file:line`; every missing or unreadable image is named at
once, before the server starts.

Ids are content hashes, so the same item keeps its id when lines move, a changed item is a new item, and
a response's id says nothing about its position or the model that wrote it (raters stay blind).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from vlm_tune.core.errors import UserError
from vlm_tune.core.images import open_image

ALLOWED_KEYS = ("image", "prompt", "responses", "group")
IMAGE_RESPONSE_ID = "image"  # image mode: the one "response" standing for the image itself
MAX_RESPONSES = 9  # keyboard flow: one screen of candidates
MAX_TEXT_CHARS = 20_000  # a prompt or response longer than this is almost surely a mistake
SHOWN_PROBLEMS = 10


class TaskFileError(UserError):
    """A task file that cannot be served; the message names the file (and line)."""


@dataclass(frozen=True)
class TaskItem:
    item_id: str
    line: int
    image: str  # as written in the task file
    image_path: Path  # resolved absolute path
    prompt: str
    responses: tuple[tuple[str, str], ...]  # (response_id, text) in task-file order
    group: str | None


@dataclass(frozen=True)
class TaskFile:
    path: Path
    sha256: str
    content: bytes
    mode: str  # "response" or "image"
    items: tuple[TaskItem, ...]


# --- ids ---


def item_id_of(image: str, prompt: str, responses: list[str]) -> str:
    return hashlib.sha256(json.dumps([image, prompt, responses], ensure_ascii=False).encode("utf-8")).hexdigest()[:16]


def response_id_of(item_id: str, text: str) -> str:
    return hashlib.sha256(f"{item_id}\0{text}".encode("utf-8")).hexdigest()[:10]


# --- one line ---


def _text(value, what: str, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise TaskFileError(f"{where}: {what} must be a non-empty string, got {json.dumps(value)[:60]}")
    if len(value) > MAX_TEXT_CHARS:
        raise TaskFileError(f"{where}: {what} is {len(value):,} characters (at most {MAX_TEXT_CHARS:,})")
    return value


def _responses(value, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise TaskFileError(f"{where}: responses must be a list of strings")
    if len(value) > MAX_RESPONSES:
        raise TaskFileError(f"{where}: {len(value)} responses (at most {MAX_RESPONSES} per item)")
    texts = [_text(v, f"response {k + 1}", where) for k, v in enumerate(value)]
    for k, text in enumerate(texts):
        if text in texts[:k]:
            raise TaskFileError(f"{where}: response {k + 1} repeats response {texts.index(text) + 1}")
    if len(texts) == 1:
        raise TaskFileError(f"{where}: one response has nothing to be compared with; give two or more, "
                            "or none to rate the image itself")
    return texts


def _parse_line(text: str, where: str) -> dict:
    try:
        row = json.loads(text)
    except ValueError as exc:
        raise TaskFileError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(row, dict):
        raise TaskFileError(f"{where}: not a JSON object")
    unknown = [k for k in row if k not in ALLOWED_KEYS]
    if unknown:
        raise TaskFileError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))} (allowed: {', '.join(ALLOWED_KEYS)})")
    if "image" not in row:
        raise TaskFileError(f"{where}: missing key 'image'")
    if "prompt" not in row:
        raise TaskFileError(f"{where}: missing key 'prompt'")
    image = _text(row["image"], "image", where).strip().replace("\\", "/")
    group = row.get("group")
    if group is not None and not isinstance(group, str):
        raise TaskFileError(f"{where}: group must be a string")
    return {"image": image, "prompt": _text(row["prompt"], "prompt", where),
            "responses": _responses(row.get("responses"), where), "group": group or None}


# --- the file ---


def _lines(path: Path, content: bytes) -> list[tuple[int, str]]:
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = content[: exc.start].count(b"\n") + 1
        raise TaskFileError(f"{path}:{line}: not UTF-8 text") from None
    lines = [(number, line) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise TaskFileError(f"{path}: no items (the file is empty)")
    return lines


def _check_images(path: Path, items: list[TaskItem]) -> None:
    """Every image exists and opens; otherwise one error naming them all (the first few, then a count)."""
    problems, seen = [], set()
    for item in items:
        if item.image_path in seen:
            continue
        seen.add(item.image_path)
        if not item.image_path.is_file():
            problems.append(f"{item.image} (line {item.line}): missing")
            continue
        image, why = open_image(item.image_path)
        if image is None:
            problems.append(f"{item.image} (line {item.line}): {why}")
    if problems:
        shown = "; ".join(problems[:SHOWN_PROBLEMS])
        more = f"; and {len(problems) - SHOWN_PROBLEMS} more" if len(problems) > SHOWN_PROBLEMS else ""
        raise TaskFileError(f"{path}: {len(problems)} image(s) cannot be served: {shown}{more}")


def _item(path: Path, number: int, row: dict) -> TaskItem:
    item_id = item_id_of(row["image"], row["prompt"], row["responses"])
    responses = tuple((response_id_of(item_id, t), t) for t in row["responses"]) or ((IMAGE_RESPONSE_ID, ""),)
    return TaskItem(item_id, number, row["image"], (path.parent / row["image"]).resolve(), row["prompt"],
                    responses, row["group"])


def load_tasks(path, check_images: bool = True) -> TaskFile:
    """Read and check a task file; TaskFileError names the first bad line (or every bad image)."""
    path = Path(path)
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise TaskFileError(f"{path}: cannot read the task file ({exc.strerror or exc})") from None
    items, first_of, mode = [], {}, None
    for number, text in _lines(path, content):
        where = f"{path}:{number}"
        row = _parse_line(text, where)
        row_mode = "response" if row["responses"] else "image"
        if mode is None:
            mode, mode_line = row_mode, number
        elif row_mode != mode:
            raise TaskFileError(f"{where}: this item is {row_mode} mode but line {mode_line} is {mode} mode; "
                                "a task file lists responses for every item or for none")
        key = (row["image"], row["prompt"])
        if key in first_of:
            raise TaskFileError(f"{where}: the same image and prompt as line {first_of[key]} (one item per image + prompt)")
        first_of[key] = number
        items.append(_item(path, number, row))
    if check_images:
        _check_images(path, items)
    return TaskFile(path.resolve(), hashlib.sha256(content).hexdigest(), content, mode, tuple(items))
