"""Reading an existing caption set as kohya sd-scripts or diffusers would, and everything wrong with it.

    entries, problems = read_caption_set("data/ver5")            # entries: [{"file", "captions"}]

Captions come from the kohya sidecars of one extension (`<stem>.txt` / `.caption` beside each image;
by default the most common one found) or from diffusers' `metadata.jsonl`. Problems are dicts
{"file", "level", "problem"[, "line"]}: unreadable, non-UTF-8, BOM or empty files, orphan captions,
images without a caption, bad metadata rows, mixed extensions. Nothing here raises on bad data: a
caption set is linted, not refused.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter, defaultdict
from pathlib import Path

from vlm_tune.caption.folder_checks import find_images_checked
from vlm_tune.core.images import is_image_name, safe_join

METADATA = "metadata.jsonl"
KNOWN_EXTENSIONS = (".caption", ".txt")  # sidecar extensions looked for; also the tie-break order
BOM = b"\xef\xbb\xbf"
LEVELS = ("error", "warning", "info")  # error: the trainer stops or misreads; info: worth knowing, harmless

_LINE_BREAK = re.compile(r"\r\n|\r|\n")  # what Python's text mode (kohya's open(..., "rt")) splits on


# --- problems --------------------------------------------------------------------------------
def problem(file: str, level: str, text: str, line: int | None = None) -> dict:
    """One problem of a caption set: {"file", "level", "problem"} and the line of metadata.jsonl if any."""
    item = {"file": file, "level": level, "problem": text}
    if line is not None:
        item["line"] = line
    return item


def sort_problems(problems: list[dict]) -> list[dict]:
    """Dataset-wide problems first, then by file, line and level (errors first)."""
    return sorted(problems, key=lambda p: (p["file"] != ".", p["file"], p.get("line", 0), LEVELS.index(p["level"]), p["problem"]))


def normalize_extension(extension: str | None) -> str | None:
    """A caption extension as asked ("txt", ".txt", "metadata.jsonl"): with its dot, or METADATA."""
    if not extension:
        return None
    if extension.lower() in (METADATA, "jsonl", ".jsonl"):
        return METADATA
    return extension if extension.startswith(".") else "." + extension


# --- files ----------------------------------------------------------------------------------
def _walk_files(root: Path) -> list[str]:
    """Every non-hidden file under root (relative POSIX), walked as find_images walks (no symlinked folders)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and not (here / d).is_symlink()]
        found += [(here / name).relative_to(root).as_posix() for name in filenames if not name.startswith(".")]
    return sorted(found)


def _decode(data: bytes, what: str, bom_effect: str) -> tuple[str, list[tuple[str, str]]]:
    """Text of a caption file as kohya/diffusers read it (UTF-8), and what is wrong with the bytes."""
    problems = []
    bom = data.startswith(BOM)
    if bom:
        problems.append(("warning", f"starts with a UTF-8 BOM: {bom_effect}; re-save as UTF-8 without BOM"))
        data = data[len(BOM):]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = exc.start + (len(BOM) if bom else 0)
        problems.append(("error", (f"not UTF-8: byte 0x{data[exc.start]:02x} at offset {offset} ({what} stops with "
                                   "UnicodeDecodeError); re-save the file as UTF-8")))
        text = data.decode("utf-8", errors="replace")
    if b"\r\n" in data:
        problems.append(("info", ("CRLF (Windows) line endings: kohya and diffusers read them fine; "
                                  "scripts that split on '\\n' keep a stray '\\r'")))
    return text, problems


def _read_sidecar(root: Path, rel: str) -> tuple[list[str], list[dict]]:
    """Captions of one kohya caption file (each non-empty line) and its problems."""
    try:
        data = safe_join(root, rel).read_bytes()
    except (OSError, ValueError) as exc:
        return [], [problem(rel, "error", f"cannot read: {getattr(exc, 'strerror', None) or exc}")]
    if not data:
        return [""], [problem(rel, "error", "empty caption file (0 bytes): kohya stops with 'caption file is empty'")]
    text, found = _decode(data, "kohya", "kohya keeps it as U+FEFF in the first token, so the trigger and "
                                         "keep_tokens don't match")
    problems = [problem(rel, level, msg) for level, msg in found]
    lines = [line.strip() for line in _LINE_BREAK.split(text)]
    captions = [line for line in lines if line]
    if not captions:
        problems.append(problem(rel, "warning", "blank caption file: the image trains with an empty caption"))
        return [""], problems
    if not lines[0]:
        problems.append(problem(rel, "warning", "first line is blank: kohya (without --enable_wildcard) trains "
                                                "this image with an empty caption"))
    if len(captions) > 1:
        problems.append(problem(rel, "info", f"{len(captions)} caption lines: kohya uses the first line only, or one "
                                             "random line per step with --enable_wildcard"))
    return captions, problems


def _read_metadata(root: Path, caption_column: str) -> tuple[dict[str, list[str]], list[dict], int]:
    """diffusers' metadata.jsonl: {image: captions}, problems naming line numbers, and the number of rows."""
    rel = METADATA
    try:
        data = (root / METADATA).read_bytes()
    except OSError as exc:
        return {}, [problem(rel, "error", f"cannot read: {exc.strerror or exc}")], 0
    text, found = _decode(data, "the JSON loader", "JSON readers may reject it (Python's json: 'Unexpected "
                                                   "UTF-8 BOM')")
    problems = [problem(rel, level, msg) for level, msg in found]
    captions_of: dict[str, list[str]] = {}
    first_line: dict[str, int] = {}
    n_rows = 0
    for number, line in enumerate(text.split("\n"), 1):
        line = line.strip()
        if not line:
            continue
        n_rows += 1
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(problem(rel, "error", f"line {number}: not JSON ({exc.msg}, column {exc.colno})", number))
            continue
        if not isinstance(row, dict):
            problems.append(problem(rel, "error", f"line {number}: not a JSON object", number))
            continue
        name = row.get("file_name")
        if not isinstance(name, str) or not name:
            problems.append(problem(rel, "error", f"line {number}: no \"file_name\"", number))
            continue
        try:
            path = safe_join(root, name)
        except ValueError:
            problems.append(problem(rel, "error", f"line {number}: file_name {name!r} escapes the dataset root", number))
            continue
        image = path.relative_to(root).as_posix()
        if not path.is_file():
            problems.append(problem(rel, "warning", f"line {number}: {name!r} does not exist", number))
            continue
        if not is_image_name(path.name):
            problems.append(problem(rel, "warning", f"line {number}: {name!r} is not an image file", number))
        if image in first_line:
            problems.append(problem(rel, "warning", f"line {number}: second row for {image!r} "
                                                    f"(first on line {first_line[image]})", number))
            continue
        first_line[image] = number
        if caption_column not in row:
            columns = ", ".join(sorted(row)) or "none"
            problems.append(problem(rel, "error", f"line {number}: no {caption_column!r} column (has: {columns}; "
                                                  "diffusers' --caption_column must name it)", number))
            continue
        value = row[caption_column]
        if isinstance(value, str):
            captions_of[image] = [value]
        elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            captions_of[image] = list(value)
        else:
            problems.append(problem(rel, "error", f"line {number}: {caption_column!r} is {type(value).__name__}, "
                                                  "not a string or a non-empty list of strings", number))
    return captions_of, problems, n_rows


# --- the caption set -------------------------------------------------------------------------
def _images_by_stem(images: list[str], problems: list[dict]) -> dict[str, list[str]]:
    """Images grouped by path without extension: kohya pairs an image with `<stem><caption extension>`."""
    stems: dict[str, list[str]] = defaultdict(list)
    for rel in images:
        stems[os.path.splitext(rel)[0]].append(rel)
    for stem, group in sorted(stems.items()):
        if len(group) > 1:
            problems.append(problem(group[0], "warning", f"{', '.join(group)} share the stem {stem!r}: kohya gives "
                                                         "them the same caption file"))
    return stems


def _find_sidecars(root: Path, stems: dict, extensions: set[str], problems: list[dict]) -> tuple[dict, list[str]]:
    """({stem: {extension as on disk: caption file}}, caption files without an image)."""
    sidecars: dict[str, dict[str, str]] = defaultdict(dict)
    orphans = []
    for rel in _walk_files(root):
        stem, ext = os.path.splitext(rel)
        if ext.lower() not in extensions:
            continue
        if stem in stems:
            sidecars[stem][ext] = rel
        else:
            orphans.append(rel)
            problems.append(problem(rel, "warning", "caption file without an image (renamed or deleted image?)"))
    return sidecars, orphans


def _choose_source(asked: str | None, ext_counts: Counter, has_metadata: bool, problems: list[dict]) -> str | None:
    """Which captions the trainer would read: the asked extension, else the most common one, else metadata.jsonl."""
    if asked:
        source = asked
    elif ext_counts:
        order = list(KNOWN_EXTENSIONS)
        source = min(ext_counts, key=lambda e: (-ext_counts[e], order.index(e) if e in order else len(order), e))
    else:
        source = METADATA if has_metadata else None

    if len(ext_counts) > 1:
        mix = ", ".join(f"{ext} ×{n}" for ext, n in sorted(ext_counts.items()))
        problems.append(problem(".", "warning", f"caption files in several extensions ({mix}): the trainer reads "
                                                "only its --caption_extension; keep one"))
    if asked and asked != METADATA and asked not in ext_counts and ext_counts:
        found = ", ".join(f"{ext} ({n})" for ext, n in sorted(ext_counts.items()))
        best = max(ext_counts, key=lambda e: (ext_counts[e], e))
        problems.append(problem(".", "warning", f"asked for {asked} caption files but the set has {found}: "
                                                f"pass --caption_extension {best} (to kohya and to caption-lint)"))
    return source


def _sidecar_entries(root: Path, stems: dict, sidecars: dict, source: str | None, problems: list[dict]) -> list[dict]:
    """Entries from the caption files of `source`; every caption file is checked, also those in another extension."""
    entries = []
    for stem in sorted(sidecars):
        for ext, rel in sorted(sidecars[stem].items()):
            captions, found = _read_sidecar(root, rel)
            problems += found
            if ext == source:
                entries += [{"file": image, "captions": captions} for image in stems[stem]]  # kohya: all of them
        if len(sidecars[stem]) > 1:
            problems.append(problem(stems[stem][0], "warning", "has caption files in several extensions: "
                                                               + ", ".join(sorted(sidecars[stem].values()))))
    return entries


def _metadata_entries(root: Path, caption_column: str, source: str | None, images: list[str],
                      problems: list[dict]) -> tuple[list[dict] | None, int]:
    """(entries from metadata.jsonl when it is the source, else None; its number of rows). Checked when present."""
    metadata_captions: dict[str, list[str]] = {}
    n_rows = 0
    if (root / METADATA).is_file():
        metadata_captions, found, n_rows = _read_metadata(root, caption_column)
        problems += found
        if source != METADATA:
            problems.append(problem(METADATA, "info", f"also present ({n_rows} rows, diffusers' layout); captions "
                                                      f"analysed from the {source or 'no'} caption files "
                                                      "(--caption_extension metadata.jsonl analyses it instead)"))
    elif source == METADATA:
        problems.append(problem(".", "error", "no metadata.jsonl at the dataset root"))
    if source != METADATA:
        return None, n_rows
    image_set = set(images)
    return [{"file": f, "captions": c} for f, c in sorted(metadata_captions.items()) if f in image_set], n_rows


def _uncaptioned(images: list[str], entries: list[dict], source: str | None, sidecars: dict) -> list[dict]:
    """A problem for each image the trainer would find no caption for."""
    problems = []
    captioned = {e["file"] for e in entries}
    for rel in images:
        if rel in captioned:
            continue
        if source == METADATA:
            problems.append(problem(rel, "warning", "no caption: no usable row in metadata.jsonl"))
        else:
            others = sorted(sidecars.get(os.path.splitext(rel)[0], {}).values())
            detail = f"no {source} file" + (f", but {', '.join(others)} exists" if others else " beside it") \
                if source else "no caption file and no metadata.jsonl row"
            problems.append(problem(rel, "warning", f"no caption: {detail} (kohya falls back to the folder's "
                                                    "class tokens; diffusers needs a row)"))
    return problems


def read_set(root: str | os.PathLike, caption_extension: str | None, caption_column: str) -> dict:
    """Everything read_caption_set and lint_folder need: entries, problems, the source chosen, sidecar counts."""
    root = Path(root)
    asked = normalize_extension(caption_extension)
    images, refused = find_images_checked(root, "caption-lint")  # a symlink loop: one line
    problems = [problem(rel, "warning", f"not used: {reason}") for rel, reason in refused]
    extensions = {e.lower() for e in KNOWN_EXTENSIONS} | ({asked.lower()} if asked and asked != METADATA else set())
    stems = _images_by_stem(images, problems)
    sidecars, orphans = _find_sidecars(root, stems, extensions, problems)
    ext_counts = Counter(ext for found in sidecars.values() for ext in found)
    source = _choose_source(asked, ext_counts, (root / METADATA).is_file(), problems)
    entries = _sidecar_entries(root, stems, sidecars, source, problems)
    metadata_entries, n_rows = _metadata_entries(root, caption_column, source, images, problems)
    if metadata_entries is not None:
        entries = metadata_entries
    problems += _uncaptioned(images, entries, source, sidecars)
    if not entries and not images:
        problems.append(problem(".", "warning", "no images found"))
    return {
        "entries": sorted(entries, key=lambda e: e["file"]),
        "problems": sort_problems(problems),
        "source": source,
        "ext_counts": dict(sorted(ext_counts.items())),
        "n_images": len(images),
        "n_refused": len(refused),
        "n_orphans": len(orphans),
        "n_metadata_rows": n_rows,
    }


def read_caption_set(
    root: str | os.PathLike, caption_extension: str | None = None, caption_column: str = "text"
) -> tuple[list[dict], list[dict]]:
    """(entries for analyze_captions, problems [{"file", "level", "problem"}]) of an existing caption set.

    Reads the kohya sidecars of `caption_extension` (None: the most common of .caption/.txt found) or,
    with no sidecars or caption_extension="metadata.jsonl", diffusers' metadata.jsonl. A multi-line
    sidecar gives one caption per non-empty line (kohya's --enable_wildcard layout)."""
    read = read_set(root, caption_extension, caption_column)
    return read["entries"], read["problems"]
