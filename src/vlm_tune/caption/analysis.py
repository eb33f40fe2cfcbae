"""The analyses of a caption set: loops, empties, lengths, sameness, trigger coverage, top words and tags.

Captions written by a model are synthetic data: a captioner that loops ("a red a red a red"), goes
blank, or gives every image the same sentence teaches the diffusion LoRA nonsense, and training loss
does not show it. `analyze_captions(entries, trigger=..., counts=...)` turns a caption set into the QA
report (a JSON-serialisable dict) that `vlm_tune.caption.qa_report` writes for people.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from vlm_tune.core.text import find_loop, one_line

MIN_WORDS = 3  # a sentence caption shorter than this says next to nothing
MAX_WORDS = 75  # CLIP reads 77 tokens with BOS/EOS; kohya cuts the rest unless --max_token_length
# Word-count histogram bins [lower, next lower); the last one is open.
HISTOGRAM_EDGES = (0, 1, 3, 5, 10, 20, 40, 76, 151)
_STOPWORDS_TEXT = (
    "a an the and or but of in on at to with without is are was were be been being it its this that these those "
    "for by from as into onto over under near there here their his her he she they them we you i my your our "
    "has have had while which who whom whose what where when than then so such very"
)
STOPWORDS = frozenset(_STOPWORDS_TEXT.split())

_WORD = re.compile(r"\w+(?:['’]\w+)*")


# --- caption text ----------------------------------------------------------------------------
def words(text: str) -> list[str]:
    """Lowercased word tokens; punctuation is not a word, so "a red, a red" loops like "a red a red"."""
    return _WORD.findall(text.lower())


def normalize_caption(text: str) -> str:
    """The duplicate key: lowercase, punctuation/underscores/whitespace collapsed to one space."""
    return re.sub(r"[\W_]+", " ", text.lower()).strip()


def split_tags(text: str) -> list[str]:
    """Comma-separated tokens as kohya's keep_tokens/shuffle_caption see them, normalised for counting."""
    tags = (one_line(part.strip().strip(".;:")).lower() for part in text.split(","))
    return [tag for tag in tags if tag]


def is_tag_line(text: str, trigger: str | None = None) -> bool:
    """A tag line ("ohwx, 1girl, long hair, smile") rather than a sentence: short comma-separated tokens.

    A leading trigger token is left out, so "ohwx, a cat sitting." stays a sentence."""
    parts = [part for part in text.split(",") if part.strip()]
    if trigger and parts and parts[0].strip().lower() == trigger.lower():
        parts = parts[1:]
    lengths = [len(words(part)) for part in parts]
    return len(lengths) >= 2 and sum(lengths) / len(lengths) <= 3 and max(lengths) <= 5


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


def trigger_problem(caption: str, trigger: str) -> str | None:
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


def excerpt(text: str, limit: int = 100) -> str:
    text = one_line(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str, ensure_ascii=False))


# --- reading every caption once --------------------------------------------------------------
@dataclass
class _Tally:
    """What analyze_captions collects while it reads each caption once."""

    trigger: str | None
    min_words: int
    max_words: int
    suspicious: list[dict] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)
    loops: list[dict] = field(default_factory=list)
    missing_trigger: list[str] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    kinds: Counter = field(default_factory=Counter)
    word_counts: Counter = field(default_factory=Counter)
    tag_counts: Counter = field(default_factory=Counter)
    openings: Counter = field(default_factory=Counter)
    by_key: dict[str, list[tuple[str, int, str]]] = field(default_factory=lambda: defaultdict(list))

    def flag(self, file: str, kind: str, reason: str, caption: str, index: int, n_captions: int) -> None:
        prefix = f"caption {index + 1}: " if n_captions > 1 else ""
        self.suspicious.append({"file": file, "kind": kind, "reason": prefix + reason, "caption": excerpt(caption)})


def _tally_file(tally: _Tally, file: str, captions: list[str]) -> None:
    if not captions or any(not c.strip() for c in captions):
        tally.empty.append(file)
    if not captions:
        tally.flag(file, "empty", "empty caption (no caption at all)", "", 0, 1)
    triggered = [_tally_caption(tally, file, index, raw, len(captions)) for index, raw in enumerate(captions)]
    if tally.trigger and not (captions and all(triggered)):
        tally.missing_trigger.append(file)


def _tally_caption(tally: _Tally, file: str, index: int, raw: str, n_captions: int) -> bool:
    """Check one caption and count its words, tags and opening; False if it is empty or lacks the trigger."""
    trigger = tally.trigger
    text = raw.strip()
    tokens = words(text)
    tally.lengths.append(len(tokens))
    for reason in odd_characters(raw.strip(" \t")):
        tally.flag(file, "characters", reason, text, index, n_captions)
    if not text:
        tally.flag(file, "empty", "empty caption", "", index, n_captions)
        return False
    tags = is_tag_line(text, trigger)
    tally.kinds["tags" if tags else "sentence"] += 1
    tally.by_key[normalize_caption(text)].append((file, index, text))
    loop = find_loop(tokens)
    if loop:
        tally.loops.append({"file": file, "caption": index, "ngram": loop[0], "repeats": loop[1]})
        tally.flag(file, "loop", f"loop: {loop[0]!r} ×{loop[1]} in a row", text, index, n_captions)
    if not tags and len(tokens) < tally.min_words:
        tally.flag(file, "too_short", f"too short: {len(tokens)} word(s) (< {tally.min_words})", text, index, n_captions)
    if len(tokens) > tally.max_words:
        tally.flag(file, "too_long", f"too long: {len(tokens)} words (> {tally.max_words}; CLIP reads ~75 tokens, "
                                     "kohya cuts the rest unless --max_token_length)", text, index, n_captions)
    has_trigger = True
    if trigger:
        problem = trigger_problem(text, trigger)
        if problem:
            has_trigger = False
            tally.flag(file, "trigger", problem, text, index, n_captions)
    _count_words(tally, file, index, text, tokens, tags, n_captions)
    return has_trigger


def _count_words(tally: _Tally, file: str, index: int, text: str, tokens: list[str], tags: bool, n_captions: int):
    trigger_tokens = words(tally.trigger) if tally.trigger else []
    if tags:
        tag_list = split_tags(text)
        repeated = sorted(tag for tag, n in Counter(tag_list).items() if n > 1)
        if repeated:
            tally.flag(file, "repeated_tag", "repeated tag(s): " + ", ".join(repeated), text, index, n_captions)
        tally.tag_counts.update(tag for tag in set(tag_list) if tag != (tally.trigger or "").lower())
    else:
        starts_with_trigger = trigger_tokens and tokens[: len(trigger_tokens)] == trigger_tokens
        body = tokens[len(trigger_tokens):] if starts_with_trigger else tokens
        if len(body) >= 3:
            tally.openings[" ".join(body[:3])] += 1
    tally.word_counts.update(w for w in tokens if w not in STOPWORDS and w not in trigger_tokens)


# --- summaries -------------------------------------------------------------------------------
def _duplicate_groups(tally: _Tally, n_captions_of: dict[str, int]) -> list[dict]:
    """Files sharing one normalised caption (sameness = collapse); each of their captions is flagged."""
    groups = []
    for key, hits in tally.by_key.items():
        files = sorted({file for file, _, _ in hits})
        if len(files) > 1:
            groups.append({"caption": excerpt(hits[0][2], 200), "normalized": key, "files": files})
    groups.sort(key=lambda g: (-len(g["files"]), g["normalized"]))
    for group in groups:
        files = group["files"]
        for file, index, text in sorted(tally.by_key[group["normalized"]]):
            others = [f for f in files[:4] if f != file][:3]  # a few names; groups can hold thousands
            n_others = len(files) - 1
            shown = ", ".join(others) + (f" and {n_others - len(others)} more" if n_others > len(others) else "")
            tally.flag(file, "duplicate", f"same caption as {n_others} other file(s): {shown}", text, index,
                       n_captions_of[file])
    return groups


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


def _length_summary(lengths: list[int]) -> dict:
    ordered = sorted(lengths)
    return {
        "min": ordered[0] if ordered else None,
        "p50": _percentile(ordered, 50) if ordered else None,
        "p95": _percentile(ordered, 95) if ordered else None,
        "max": ordered[-1] if ordered else None,
        "mean": round(sum(ordered) / len(ordered), 2) if ordered else None,
        "histogram": _histogram(ordered),
    }


def _trigger_summary(trigger: str | None, n_files: int, missing: list[str]) -> dict | None:
    if not trigger:
        return None
    covered = n_files - len(missing)
    return {"word": trigger, "coverage": round(covered / n_files, 4) if n_files else None,
            "n_with_trigger": covered, "missing": missing}


def _top(counts: Counter, key: str, top_k: int, min_count: int = 1) -> list[dict]:
    ranked = sorted(counts.items(), key=lambda x: (-x[1], x[0]))[:top_k]
    return [{key: item, "count": n} for item, n in ranked if n >= min_count]


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
        file = entry["file"]
        rows.append((file.as_posix() if isinstance(file, PurePath) else str(file), captions))
    rows.sort(key=lambda row: row[0])
    tally = _Tally(trigger.strip() if trigger and trigger.strip() else None, min_words, max_words)
    for file, captions in rows:
        _tally_file(tally, file, captions)
    groups = _duplicate_groups(tally, {file: len(captions) for file, captions in rows})
    n_nonempty = sum(len(hits) for hits in tally.by_key.values())
    tally.suspicious.sort(key=lambda s: (s["file"], s["reason"]))
    return {
        "n_images": len(rows),
        "n_captions": sum(len(c) for _, c in rows),
        "counts": json_safe(dict(counts or {})),
        "caption_kinds": {"sentence": tally.kinds["sentence"], "tags": tally.kinds["tags"]},
        "length_words": _length_summary(tally.lengths),
        "empty": tally.empty,
        "loops": tally.loops,
        "duplicates": {
            "groups": groups,
            "n_files": len({f for g in groups for f in g["files"]}),
            "unique_ratio": round(len(tally.by_key) / n_nonempty, 4) if n_nonempty else None,
        },
        "trigger": _trigger_summary(tally.trigger, len(rows), tally.missing_trigger),
        "top_words": _top(tally.word_counts, "word", top_k),
        "top_tags": _top(tally.tag_counts, "tag", top_k),
        "top_openings": _top(tally.openings, "opening", top_k, min_count=2),
        "suspicious": tally.suspicious,
        "n_suspicious_files": len({s["file"] for s in tally.suspicious}),
        "settings": {"min_words": min_words, "max_words": max_words, "top_k": top_k},
    }
