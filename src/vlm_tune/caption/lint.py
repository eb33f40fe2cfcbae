"""QA of caption sets: loops, empties, sameness, missing triggers, and kohya/diffusers format pitfalls.

Captions written by a model are synthetic data: a captioner that loops ("a red a red a red"), goes
blank, or gives every image the same sentence teaches the diffusion LoRA nonsense, and training loss
does not show it. So every caption set gets a report a human reads:

    report = analyze_captions(entries, trigger="ohwx", counts=run_counts)   # entries: [{"file", "captions"}]
    json_path, md_path = write_report(report, out_dir)                      # caption_report.json + .md
    report = lint_folder("data/ver5", trigger="ohwx")                       # an existing set, + pitfalls

`vlm-tune caption` calls the first two at the end of a run; `vlm-tune caption-lint DIR` is `main`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path, PurePath
from typing import Any

from vlm_tune.core.io import atomic_write_text
from vlm_tune.core.errors import UserError
from vlm_tune.core.images import find_images, is_image_name, safe_join

REPORT_JSON = "caption_report.json"
REPORT_MD = "caption_report.md"
METADATA = "metadata.jsonl"
TRAINER_EXTENSION = ".caption"  # kohya sd-scripts' default --caption_extension (its WD14 tagger writes .txt)
KNOWN_EXTENSIONS = (".caption", ".txt")  # sidecar extensions looked for; also the tie-break order
MIN_WORDS = 3  # a sentence caption shorter than this says next to nothing
MAX_WORDS = 75  # CLIP reads 77 tokens with BOS/EOS; kohya cuts the rest unless --max_token_length
LOOP_MAX_NGRAM = 16
BOM = b"\xef\xbb\xbf"
# Word-count histogram bins [lower, next lower); the last one is open.
HISTOGRAM_EDGES = (0, 1, 3, 5, 10, 20, 40, 76, 151)
_STOPWORDS_TEXT = (
    "a an the and or but of in on at to with without is are was were be been being it its this that these those "
    "for by from as into onto over under near there here their his her he she they them we you i my your our "
    "has have had while which who whom whose what where when than then so such very"
)
STOPWORDS = frozenset(_STOPWORDS_TEXT.split())
LEVELS = ("error", "warning", "info")  # error: the trainer stops or misreads; info: worth knowing, harmless

_WORD = re.compile(r"\w+(?:['’]\w+)*")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")  # what Python's text mode (kohya's open(..., "rt")) splits on


# --- text helpers ----------------------------------------------------------------------------
def words(text: str) -> list[str]:
    """Lowercased word tokens; punctuation is not a word, so "a red, a red" loops like "a red a red"."""
    return _WORD.findall(text.lower())


def normalize_caption(text: str) -> str:
    """The duplicate key: lowercase, punctuation/underscores/whitespace collapsed to one space."""
    return re.sub(r"[\W_]+", " ", text.lower()).strip()


def split_tags(text: str) -> list[str]:
    """Comma-separated tokens as kohya's keep_tokens/shuffle_caption see them, normalised for counting."""
    tags = (" ".join(part.strip().strip(".;:").split()).lower() for part in text.split(","))
    return [tag for tag in tags if tag]


def is_tag_line(text: str, trigger: str | None = None) -> bool:
    """A tag line ("ohwx, 1girl, long hair, smile") rather than a sentence: short comma-separated tokens.

    A leading trigger token is left out, so "ohwx, a cat sitting." stays a sentence."""
    parts = [part for part in text.split(",") if part.strip()]
    if trigger and parts and parts[0].strip().lower() == trigger.lower():
        parts = parts[1:]
    lengths = [len(words(part)) for part in parts]
    return len(lengths) >= 2 and sum(lengths) / len(lengths) <= 3 and max(lengths) <= 5


def _min_repeats(n: int) -> int:
    # One word 4× ("very very very very"), a 2–4-word n-gram 3×, a longer one 2×: prose repeats
    # phrases ("a red circle and a red square") but never back to back that often.
    return 4 if n == 1 else 3 if n <= 4 else 2


def find_loop(tokens: list[str], max_ngram: int = LOOP_MAX_NGRAM) -> tuple[str, int] | None:
    """(n-gram, repeats) of the back-to-back repetition covering most words, or None."""
    best: tuple[int, list[str], int] | None = None
    size = len(tokens)
    for n in range(1, min(max_ngram, size // 2) + 1):
        need, i = _min_repeats(n), 0
        while i + n * need <= size:
            gram = tokens[i : i + n]
            repeats = 1
            while tokens[i + repeats * n : i + (repeats + 1) * n] == gram:
                repeats += 1
            if repeats >= need and (best is None or repeats * n > best[0]):
                best = (repeats * n, gram, repeats)
            i += max(1, (repeats - 1) * n)  # rotations inside a run cover no more words
    return None if best is None else (" ".join(best[1]), best[2])


def odd_characters(text: str) -> list[str]:
    """Reasons for characters that don't belong in a caption (line breaks, controls, invisibles, U+FFFD)."""
    reasons, codes = [], []
    if "\n" in text or "\r" in text:
        reasons.append("line break inside the caption (kohya reads only the first line)")
    if "\ufffd" in text:
        reasons.append("replacement character U+FFFD (the text was decoded with the wrong encoding)")
    for ch in sorted(set(text)):
        if ch in "\n\r\t\ufffd":
            continue
        category = unicodedata.category(ch)
        if category in ("Cc", "Cf", "Co", "Cs"):
            name = unicodedata.name(ch, "")
            codes.append(f"U+{ord(ch):04X}" + (f" ({name})" if name else ""))
    if codes:
        reasons.append("control/invisible characters: " + ", ".join(codes))
    return reasons


def _excerpt(text: str, limit: int = 100) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _posix(file: Any) -> str:
    return file.as_posix() if isinstance(file, PurePath) else str(file)


def _percentile(sorted_values: list[int], p: float) -> int:
    """Nearest-rank percentile: a value that occurs in the data, stable for small sets."""
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def _histogram(lengths: list[int]) -> list[dict]:
    bins = []
    for lower, upper in zip(HISTOGRAM_EDGES, HISTOGRAM_EDGES[1:] + (None,)):
        label = f"{lower}+" if upper is None else str(lower) if upper - lower == 1 else f"{lower}-{upper - 1}"
        count = sum(1 for n in lengths if n >= lower and (upper is None or n < upper))
        bins.append({"words": label, "count": count})
    return bins


def _trigger_problem(caption: str, trigger: str) -> str | None:
    """Why `caption` does not start with `trigger` as its own comma-separated token (keep_tokens=1), or None."""
    first = caption.split(",")[0].strip()
    if first == trigger:
        return None
    if first.lower() == trigger.lower():
        return f"trigger written as {first!r}, not {trigger!r}"
    if first.split()[:1] == [trigger]:
        return f"trigger {trigger!r} not followed by a comma (keep_tokens counts comma-separated tokens)"
    if trigger.lower() in words(caption):
        return f"trigger {trigger!r} is not the first comma-separated token"
    return f"missing trigger {trigger!r}"


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str, ensure_ascii=False))


# --- analyze ---------------------------------------------------------------------------------
def analyze_captions(
    entries: Iterable[dict],
    trigger: str | None = None,
    counts: dict | None = None,
    top_k: int = 20,
    *,
    min_words: int = MIN_WORDS,
    max_words: int = MAX_WORDS,
) -> dict:
    """The QA report of a caption set (JSON-serialisable, deterministic: everything sorted).

    `entries`: [{"file": relative POSIX path, "captions": [str, ...]}]; two captions for a dual caption
    (a tag line and a sentence). `counts` (the captioning run's numbers) is copied into the report."""
    rows = []
    for entry in entries:
        captions = entry.get("captions") or []
        captions = [captions] if isinstance(captions, str) else [str(c) for c in captions]
        rows.append((_posix(entry["file"]), captions))
    rows.sort(key=lambda row: row[0])
    trigger = trigger.strip() if trigger and trigger.strip() else None
    trigger_tokens = words(trigger) if trigger else []

    suspicious: list[dict] = []
    empty, loops, missing_trigger = [], [], []
    lengths: list[int] = []
    kinds = Counter()
    word_counts, tag_counts, openings = Counter(), Counter(), Counter()
    by_key: dict[str, list[tuple[str, int, str]]] = defaultdict(list)

    def flag(file: str, kind: str, reason: str, caption: str, index: int, n_captions: int) -> None:
        prefix = f"caption {index + 1}: " if n_captions > 1 else ""
        suspicious.append({"file": file, "kind": kind, "reason": prefix + reason, "caption": _excerpt(caption)})

    for file, captions in rows:
        if not captions or any(not c.strip() for c in captions):
            empty.append(file)
        if not captions:
            flag(file, "empty", "empty caption (no caption at all)", "", 0, 1)
        has_trigger = bool(captions) and trigger is not None
        for index, raw in enumerate(captions):
            text = raw.strip()
            tokens = words(text)
            lengths.append(len(tokens))
            for reason in odd_characters(raw.strip(" \t")):
                flag(file, "characters", reason, text, index, len(captions))
            if not text:
                has_trigger = False
                flag(file, "empty", "empty caption", "", index, len(captions))
                continue
            tags = is_tag_line(text, trigger)
            kinds["tags" if tags else "sentence"] += 1
            by_key[normalize_caption(text)].append((file, index, text))
            loop = find_loop(tokens)
            if loop:
                loops.append({"file": file, "caption": index, "ngram": loop[0], "repeats": loop[1]})
                flag(file, "loop", f"loop: {loop[0]!r} ×{loop[1]} in a row", text, index, len(captions))
            if not tags and len(tokens) < min_words:
                flag(file, "too_short", f"too short: {len(tokens)} word(s) (< {min_words})", text, index, len(captions))
            if len(tokens) > max_words:
                flag(file, "too_long", f"too long: {len(tokens)} words (> {max_words}; CLIP reads ~75 tokens, "
                                       "kohya cuts the rest unless --max_token_length)", text, index, len(captions))
            if trigger:
                problem = _trigger_problem(text, trigger)
                if problem:
                    has_trigger = False
                    flag(file, "trigger", problem, text, index, len(captions))
            tag_list = split_tags(text)
            if tags:
                repeated = sorted(tag for tag, n in Counter(tag_list).items() if n > 1)
                if repeated:
                    flag(file, "repeated_tag", "repeated tag(s): " + ", ".join(repeated), text, index, len(captions))
                tag_counts.update(tag for tag in set(tag_list) if tag != (trigger or "").lower())
            else:
                body = tokens[len(trigger_tokens):] if trigger_tokens and tokens[: len(trigger_tokens)] == trigger_tokens else tokens
                if len(body) >= 3:
                    openings[" ".join(body[:3])] += 1
            word_counts.update(w for w in tokens if w not in STOPWORDS and w not in trigger_tokens)
        if trigger and not has_trigger:
            missing_trigger.append(file)

    # duplicates: files sharing one normalised caption (sameness = collapse)
    groups = []
    for key, hits in by_key.items():
        files = sorted({file for file, _, _ in hits})
        if len(files) > 1:
            groups.append({"caption": _excerpt(hits[0][2], 200), "normalized": key, "files": files})
    groups.sort(key=lambda g: (-len(g["files"]), g["normalized"]))
    n_captions_of = {file: len(captions) for file, captions in rows}
    for group in groups:
        files = group["files"]
        for file, index, text in sorted(by_key[group["normalized"]]):
            others = [f for f in files[:4] if f != file][:3]  # a few names; groups can hold thousands
            n_others = len(files) - 1
            shown = ", ".join(others) + (f" and {n_others - len(others)} more" if n_others > len(others) else "")
            flag(file, "duplicate", f"same caption as {n_others} other file(s): {shown}", text, index, n_captions_of[file])

    n_nonempty = sum(len(hits) for hits in by_key.values())
    ordered = sorted(lengths)
    length_words = {
        "min": ordered[0] if ordered else None,
        "p50": _percentile(ordered, 50) if ordered else None,
        "p95": _percentile(ordered, 95) if ordered else None,
        "max": ordered[-1] if ordered else None,
        "mean": round(sum(ordered) / len(ordered), 2) if ordered else None,
        "histogram": _histogram(ordered),
    }
    trigger_report = None
    if trigger:
        covered = len(rows) - len(missing_trigger)
        trigger_report = {
            "word": trigger,
            "coverage": round(covered / len(rows), 4) if rows else None,
            "n_with_trigger": covered,
            "missing": missing_trigger,
        }
    suspicious.sort(key=lambda s: (s["file"], s["reason"]))
    return {
        "n_images": len(rows),
        "n_captions": sum(len(c) for _, c in rows),
        "counts": _json_safe(dict(counts or {})),
        "caption_kinds": {"sentence": kinds["sentence"], "tags": kinds["tags"]},
        "length_words": length_words,
        "empty": empty,
        "loops": loops,
        "duplicates": {
            "groups": groups,
            "n_files": len({f for g in groups for f in g["files"]}),
            "unique_ratio": round(len(by_key) / n_nonempty, 4) if n_nonempty else None,
        },
        "trigger": trigger_report,
        "top_words": [{"word": w, "count": n} for w, n in sorted(word_counts.items(), key=lambda x: (-x[1], x[0]))[:top_k]],
        "top_tags": [{"tag": t, "count": n} for t, n in sorted(tag_counts.items(), key=lambda x: (-x[1], x[0]))[:top_k]],
        "top_openings": [{"opening": o, "count": n}
                         for o, n in sorted(openings.items(), key=lambda x: (-x[1], x[0]))[:top_k] if n > 1],
        "suspicious": suspicious,
        "n_suspicious_files": len({s["file"] for s in suspicious}),
        "settings": {"min_words": min_words, "max_words": max_words, "top_k": top_k},
    }


# --- report ----------------------------------------------------------------------------------
_MD_SPECIAL = re.compile(r"([\\`*<>\[\]|])")


def md_escape(text: Any) -> str:
    """Safe inside a Markdown table cell: one line, `|` and other markup characters backslash-escaped."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(md_escape(cell) for cell in row) + " |" for row in rows]
    return lines + [""]


def _scalar(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items()) or "—"
    return "—" if value is None else str(value)


def render_markdown(report: dict, title: str = "Caption QA report") -> str:
    """The human-readable report: counts, lengths, sameness, top words/tags, every flagged file."""
    out = [f"# {md_escape(title)}", ""]
    counts = report.get("counts") or {}
    summary = [["images analysed", report.get("n_images")], ["captions", report.get("n_captions")],
               ["files with suspicious captions", report.get("n_suspicious_files")],
               ["unique captions (ratio)", (report.get("duplicates") or {}).get("unique_ratio")]]
    if report.get("trigger"):
        trig = report["trigger"]
        summary.append([f"trigger {trig['word']!r} coverage", trig["coverage"]])
    if "pitfalls" in report:
        summary.append(["format pitfalls", len(report["pitfalls"])])
    summary += [[key, _scalar(value)] for key, value in counts.items() if not isinstance(value, list)]
    out += ["## Counts", ""] + _table(["what", "value"], summary)
    for key, value in counts.items():  # lists of files from the run (failed_files, notes)
        if isinstance(value, list) and value:
            rows = [[item.get("file", ""), item.get("reason", item.get("problem", ""))] if isinstance(item, dict)
                    else [item, ""] for item in value]
            out += [f"### {md_escape(key)}", ""] + _table(["file", "reason"], rows)

    length = report.get("length_words") or {}
    out += ["## Caption length (words)", ""]
    out += _table(["min", "p50", "p95", "max", "mean"], [[_scalar(length.get(k)) for k in ("min", "p50", "p95", "max", "mean")]])
    hist = length.get("histogram") or []
    top = max([b["count"] for b in hist] + [1])
    out += _table(["words", "captions", ""], [[b["words"], b["count"], "█" * round(20 * b["count"] / top)] for b in hist])
    kinds = report.get("caption_kinds") or {}
    out += [f"Sentences: {kinds.get('sentence', 0)}, tag lines: {kinds.get('tags', 0)}.", ""]

    if report.get("trigger"):
        trig = report["trigger"]
        out += ["## Trigger", "", (f"{trig['n_with_trigger']} of {report['n_images']} images start every caption "
                                   f"with `{trig['word']}` as the first comma-separated token "
                                   f"(coverage {trig['coverage']})."), ""]
        if trig["missing"]:
            out += _table(["missing the trigger"], [[f] for f in trig["missing"]])

    dup = report.get("duplicates") or {}
    out += ["## Sameness", "", (f"Unique-caption ratio: {dup.get('unique_ratio')}; "
                                f"{dup.get('n_files', 0)} file(s) share a caption with another."), ""]
    if dup.get("groups"):
        rows = [[len(g["files"]), g["caption"], ", ".join(g["files"][:20]) + (f" … and {len(g['files']) - 20} more"
                                                                              if len(g["files"]) > 20 else "")]
                for g in dup["groups"]]
        out += _table(["files", "caption", "which"], rows)
    if report.get("top_openings"):
        out += ["Most common sentence openings:", ""] + _table(["opening", "count"],
                                                              [[o["opening"], o["count"]] for o in report["top_openings"]])
    if report.get("top_words"):
        out += ["## Top words", ""] + _table(["word", "count"], [[w["word"], w["count"]] for w in report["top_words"]])
    if report.get("top_tags"):
        out += ["## Top tags", ""] + _table(["tag", "count"], [[t["tag"], t["count"]] for t in report["top_tags"]])

    suspicious = report.get("suspicious") or []
    out += ["## Suspicious captions", ""]
    out += _table(["file", "reason", "caption"], [[s["file"], s["reason"], s.get("caption", "")] for s in suspicious]) \
        if suspicious else ["None.", ""]
    if "pitfalls" in report:
        pitfalls = report["pitfalls"]
        out += ["## Format pitfalls (kohya sd-scripts / diffusers)", ""]
        out += _table(["file", "level", "problem"], [[p["file"], p.get("level", ""), p["problem"]] for p in pitfalls]) \
            if pitfalls else ["None.", ""]
    return "\n".join(out).rstrip() + "\n"


def write_report(report: dict, out_dir: str | os.PathLike, title: str = "Caption QA report") -> tuple[Path, Path]:
    """caption_report.json (everything) and caption_report.md (for people), each written atomically."""
    out_dir = Path(out_dir)
    json_path, md_path = out_dir / REPORT_JSON, out_dir / REPORT_MD
    atomic_write_text(json_path, json.dumps(_json_safe(report), indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(md_path, render_markdown(report, title))
    return json_path, md_path


# --- read a caption set ----------------------------------------------------------------------
def _problem(file: str, level: str, problem: str, line: int | None = None) -> dict:
    item = {"file": file, "level": level, "problem": problem}
    if line is not None:
        item["line"] = line
    return item


def _sort_problems(problems: list[dict]) -> list[dict]:
    return sorted(problems, key=lambda p: (p["file"] != ".", p["file"], p.get("line", 0), LEVELS.index(p["level"]), p["problem"]))


def _normalize_extension(extension: str | None) -> str | None:
    if not extension:
        return None
    if extension.lower() in (METADATA, "jsonl", ".jsonl"):
        return METADATA
    return extension if extension.startswith(".") else "." + extension


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
        return [], [_problem(rel, "error", f"cannot read: {getattr(exc, 'strerror', None) or exc}")]
    if not data:
        return [""], [_problem(rel, "error", "empty caption file (0 bytes): kohya stops with 'caption file is empty'")]
    text, found = _decode(data, "kohya", "kohya keeps it as U+FEFF in the first token, so the trigger and "
                                         "keep_tokens don't match")
    problems = [_problem(rel, level, msg) for level, msg in found]
    lines = [line.strip() for line in _LINE_BREAK.split(text)]
    captions = [line for line in lines if line]
    if not captions:
        problems.append(_problem(rel, "warning", "blank caption file: the image trains with an empty caption"))
        return [""], problems
    if not lines[0]:
        problems.append(_problem(rel, "warning", "first line is blank: kohya (without --enable_wildcard) trains "
                                                 "this image with an empty caption"))
    if len(captions) > 1:
        problems.append(_problem(rel, "info", f"{len(captions)} caption lines: kohya uses the first line only, or one "
                                              "random line per step with --enable_wildcard"))
    return captions, problems


def _read_metadata(root: Path, caption_column: str) -> tuple[dict[str, list[str]], list[dict], int]:
    """diffusers' metadata.jsonl: {image: captions}, problems naming line numbers, and the number of rows."""
    rel = METADATA
    try:
        data = (root / METADATA).read_bytes()
    except OSError as exc:
        return {}, [_problem(rel, "error", f"cannot read: {exc.strerror or exc}")], 0
    text, found = _decode(data, "the JSON loader", "JSON readers may reject it (Python's json: 'Unexpected "
                                                   "UTF-8 BOM')")
    problems = [_problem(rel, level, msg) for level, msg in found]
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
            problems.append(_problem(rel, "error", f"line {number}: not JSON ({exc.msg}, column {exc.colno})", number))
            continue
        if not isinstance(row, dict):
            problems.append(_problem(rel, "error", f"line {number}: not a JSON object", number))
            continue
        name = row.get("file_name")
        if not isinstance(name, str) or not name:
            problems.append(_problem(rel, "error", f"line {number}: no \"file_name\"", number))
            continue
        try:
            path = safe_join(root, name)
        except ValueError:
            problems.append(_problem(rel, "error", f"line {number}: file_name {name!r} escapes the dataset root", number))
            continue
        image = path.relative_to(root).as_posix()
        if not path.is_file():
            problems.append(_problem(rel, "warning", f"line {number}: {name!r} does not exist", number))
            continue
        if not is_image_name(path.name):
            problems.append(_problem(rel, "warning", f"line {number}: {name!r} is not an image file", number))
        if image in first_line:
            problems.append(_problem(rel, "warning", f"line {number}: second row for {image!r} "
                                                     f"(first on line {first_line[image]})", number))
            continue
        first_line[image] = number
        if caption_column not in row:
            columns = ", ".join(sorted(row)) or "none"
            problems.append(_problem(rel, "error", f"line {number}: no {caption_column!r} column (has: {columns}; "
                                                   "diffusers' --caption_column must name it)", number))
            continue
        value = row[caption_column]
        if isinstance(value, str):
            captions_of[image] = [value]
        elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            captions_of[image] = list(value)
        else:
            problems.append(_problem(rel, "error", f"line {number}: {caption_column!r} is {type(value).__name__}, "
                                                   "not a string or a non-empty list of strings", number))
    return captions_of, problems, n_rows


def _read(root: str | os.PathLike, caption_extension: str | None, caption_column: str) -> dict:
    """Everything read_caption_set and lint_folder need: entries, problems, the source chosen, sidecar counts."""
    root = Path(root)
    asked = _normalize_extension(caption_extension)
    images, refused = find_images(root)
    problems = [_problem(rel, "warning", f"not used: {reason}") for rel, reason in refused]
    extensions = {e.lower() for e in KNOWN_EXTENSIONS} | ({asked.lower()} if asked and asked != METADATA else set())

    stems: dict[str, list[str]] = defaultdict(list)
    for rel in images:
        stems[os.path.splitext(rel)[0]].append(rel)
    for stem, group in sorted(stems.items()):
        if len(group) > 1:
            problems.append(_problem(group[0], "warning", f"{', '.join(group)} share the stem {stem!r}: kohya gives "
                                                          "them the same caption file"))
    sidecars: dict[str, dict[str, str]] = defaultdict(dict)  # stem -> {extension as on disk: caption file}
    orphans = []
    for rel in _walk_files(root):
        stem, ext = os.path.splitext(rel)
        if ext.lower() not in extensions:
            continue
        if stem in stems:
            sidecars[stem][ext] = rel
        else:
            orphans.append(rel)
            problems.append(_problem(rel, "warning", "caption file without an image (renamed or deleted image?)"))
    ext_counts = Counter(ext for found in sidecars.values() for ext in found)
    has_metadata = (root / METADATA).is_file()

    # which captions the trainer would read: the asked extension, else the most common one, else metadata.jsonl
    if asked:
        source = asked
    elif ext_counts:
        order = list(KNOWN_EXTENSIONS)
        source = min(ext_counts, key=lambda e: (-ext_counts[e], order.index(e) if e in order else len(order), e))
    else:
        source = METADATA if has_metadata else None

    if len(ext_counts) > 1:
        mix = ", ".join(f"{ext} ×{n}" for ext, n in sorted(ext_counts.items()))
        problems.append(_problem(".", "warning", f"caption files in several extensions ({mix}): the trainer reads "
                                                 "only its --caption_extension; keep one"))
    if asked and asked != METADATA and asked not in ext_counts and ext_counts:
        found = ", ".join(f"{ext} ({n})" for ext, n in sorted(ext_counts.items()))
        best = max(ext_counts, key=lambda e: (ext_counts[e], e))
        problems.append(_problem(".", "warning", f"asked for {asked} caption files but the set has {found}: "
                                                 f"pass --caption_extension {best} (to kohya and to caption-lint)"))

    entries = []
    for stem in sorted(sidecars):  # every caption file is checked, also those in the other extension
        for ext, rel in sorted(sidecars[stem].items()):
            captions, found = _read_sidecar(root, rel)
            problems += found
            if ext == source:
                entries += [{"file": image, "captions": captions} for image in stems[stem]]  # kohya: all of them
        if len(sidecars[stem]) > 1:
            problems.append(_problem(stems[stem][0], "warning", "has caption files in several extensions: "
                                                                + ", ".join(sorted(sidecars[stem].values()))))
    metadata_captions: dict[str, list[str]] = {}
    n_rows = 0
    if has_metadata:
        metadata_captions, found, n_rows = _read_metadata(root, caption_column)
        problems += found
        if source != METADATA:
            problems.append(_problem(METADATA, "info", f"also present ({n_rows} rows, diffusers' layout); captions "
                                                       f"analysed from the {source or 'no'} caption files "
                                                       "(--caption-extension metadata.jsonl analyses it instead)"))
    elif source == METADATA:
        problems.append(_problem(".", "error", "no metadata.jsonl at the dataset root"))
    if source == METADATA:
        image_set = set(images)
        entries = [{"file": f, "captions": c} for f, c in sorted(metadata_captions.items()) if f in image_set]

    captioned = {e["file"] for e in entries}
    for rel in images:
        if rel in captioned:
            continue
        if source == METADATA:
            problems.append(_problem(rel, "warning", "no caption: no usable row in metadata.jsonl"))
        else:
            others = sorted(sidecars.get(os.path.splitext(rel)[0], {}).values())
            detail = f"no {source} file" + (f", but {', '.join(others)} exists" if others else " beside it") \
                if source else "no caption file and no metadata.jsonl row"
            problems.append(_problem(rel, "warning", f"no caption: {detail} (kohya falls back to the folder's "
                                                     "class tokens; diffusers needs a row)"))
    if not entries and not images:
        problems.append(_problem(".", "warning", "no images found"))
    return {
        "entries": sorted(entries, key=lambda e: e["file"]),
        "problems": _sort_problems(problems),
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
    read = _read(root, caption_extension, caption_column)
    return read["entries"], read["problems"]


# --- lint ------------------------------------------------------------------------------------
def lint_folder(
    root: str | os.PathLike,
    caption_extension: str | None = None,
    caption_column: str = "text",
    trigger: str | None = None,
    trainer_extension: str = TRAINER_EXTENSION,
    *,
    top_k: int = 20,
    min_words: int = MIN_WORDS,
    max_words: int = MAX_WORDS,
) -> dict:
    """analyze_captions of an existing set plus `pitfalls`: what kohya sd-scripts or diffusers would trip on."""
    root = Path(root)
    read = _read(root, caption_extension, caption_column)
    pitfalls = list(read["problems"])
    source, trainer_extension = read["source"], _normalize_extension(trainer_extension) or TRAINER_EXTENSION
    if caption_extension is None and source not in (None, METADATA) and source != trainer_extension:
        pitfalls.append(_problem(".", "warning", f"caption files are {source} but kohya's trainer default "
                                                 f"--caption_extension is {trainer_extension}: pass --caption_extension "
                                                 f"{source} to sd-scripts (its WD14 tagger writes .txt)"))
    pitfalls = _sort_problems(pitfalls)
    counts = {
        "images": read["n_images"],
        "captioned": len(read["entries"]),
        "caption_source": source,
        "caption_files": read["ext_counts"],
        "metadata_rows": read["n_metadata_rows"],
        "orphan_caption_files": read["n_orphans"],
        "refused": read["n_refused"],
        "pitfalls": {level: sum(p["level"] == level for p in pitfalls) for level in LEVELS},
    }
    report = analyze_captions(read["entries"], trigger=trigger, counts=counts, top_k=top_k,
                              min_words=min_words, max_words=max_words)
    report["root"] = str(root)
    report["caption_source"] = source
    report["pitfalls"] = pitfalls
    return report


# --- command ---------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one `error: ...` line through the CLI, exit 2
        raise UserError(f"caption-lint: {message}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = _Parser(prog="vlm-tune caption-lint",
                description="QA of an existing caption set (kohya sidecars or diffusers metadata.jsonl).")
    p.add_argument("dir", metavar="DIR", help="dataset root; images are found recursively")
    p.add_argument("--caption-extension", help="kohya sidecar extension to check, e.g. .txt (default: the one found); "
                                               "metadata.jsonl checks diffusers' layout")
    p.add_argument("--caption-column", default="text", help="caption column of metadata.jsonl (diffusers' --caption_column)")
    p.add_argument("--trigger", help="trigger word every caption must start with (as its own comma-separated token)")
    p.add_argument("--trainer-extension", default=TRAINER_EXTENSION,
                   help=f"the extension the trainer will read (default {TRAINER_EXTENSION}, kohya's default)")
    p.add_argument("--report-dir", help="where caption_report.json/.md go (default: DIR)")
    p.add_argument("--max-words", type=int, default=MAX_WORDS, help="flag captions longer than this")
    p.add_argument("--strict", action="store_true", help="exit 1 if any caption is suspicious or any pitfall "
                                                         "(not info) is found")
    return p.parse_args(argv)


def failing(report: dict) -> bool:
    """--strict fails on any suspicious caption or any pitfall above `info`."""
    return bool(report.get("suspicious")) or any(p["level"] != "info" for p in report.get("pitfalls", []))


def summary_lines(report: dict, md_path: Path, json_path: Path, limit: int = 8) -> list[str]:
    counts = report["counts"]
    length = report["length_words"]
    source = report.get("caption_source") or "none"
    lines = [(f"{report['root']}: {counts['images']} image(s), {counts['captioned']} captioned from {source}, "
              f"{report['n_captions']} caption(s); words p50 {length['p50']}, p95 {length['p95']}, "
              f"max {length['max']}")]
    kinds = Counter(s["kind"] for s in report["suspicious"])
    lines.append(f"  suspicious: {report['n_suspicious_files']} file(s)"
                 + (" — " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) if kinds else ""))
    if report.get("trigger"):
        lines.append(f"  trigger {report['trigger']['word']!r}: coverage {report['trigger']['coverage']}")
    levels = counts["pitfalls"]
    lines.append("  pitfalls: " + ", ".join(f"{levels[level]} {level}" for level in LEVELS))
    ranked = [p for level in LEVELS[:2] for p in report["pitfalls"] if p["level"] == level]
    shown = [f"    {p['level']:7} {p['file']}: {p['problem']}" for p in ranked]
    shown += [f"    caption {s['file']}: {s['reason']}" for s in report["suspicious"]]
    lines += shown[:limit] + ([f"    … and {len(shown) - limit} more in the report"] if len(shown) > limit else [])
    lines.append(f"report: {md_path} and {json_path}")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = Path(args.dir)
    if not root.exists():
        raise UserError(f"caption-lint: folder not found: {args.dir}")
    if not root.is_dir():
        raise UserError(f"caption-lint: not a folder: {args.dir}")
    if args.max_words < 1:
        raise UserError("caption-lint: --max-words must be >= 1")
    report = lint_folder(root, args.caption_extension, args.caption_column, args.trigger, args.trainer_extension,
                         max_words=args.max_words)
    try:
        json_path, md_path = write_report(report, Path(args.report_dir) if args.report_dir else root,
                                          title=f"Caption QA report — {root}")
    except OSError as exc:
        raise UserError(f"caption-lint: cannot write the report to {args.report_dir or root}: {exc.strerror or exc}")
    print("\n".join(summary_lines(report, md_path, json_path)))
    return 1 if args.strict and failing(report) else 0
