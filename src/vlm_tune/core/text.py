"""Text helpers for generated text: one line of plain whitespace, no control characters, no loops.

A small model that degenerates repeats itself: words ("a red a red a red") or characters inside a
word ("880880880880"). One scan finds those repeats (`repeated_runs`); the captioner cuts them
(`trim_loops`, `collapse_char_loops`) and the caption QA reports them (`find_loop`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

# --- whitespace and control characters -------------------------------------------------------
# Control characters and U+FFFD (a byte-level token cut mid-character) never belong in a caption.
_UNPRINTABLE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ufffd]")


def one_line(text: str) -> str:
    """Every run of whitespace (line breaks included) as one space, no leading or trailing space."""
    return " ".join(text.split())


def printable(text: str) -> str:
    """`one_line` with control characters and U+FFFD turned into spaces first."""
    return one_line(_UNPRINTABLE.sub(" ", text))


# --- loops -----------------------------------------------------------------------------------
# A 2–12-character unit repeated 4+ times in a row inside a word ("880880880880", "hahahaha").
_CHAR_LOOP = re.compile(r"(.{2,12}?)\1{3,}")
LOOP_MAX_NGRAM = 16


def collapse_char_loops(text: str) -> str:
    """Keep one copy of a 2–12-character unit repeated 4+ times in a row ("Navy880880880880" -> "Navy880")."""
    return _CHAR_LOOP.sub(r"\1", text)


def repeat_count(tokens: list[str], start: int, n: int) -> int:
    """How many copies of the n-gram at `start` follow each other from there (1: no repeat)."""
    gram = tokens[start : start + n]
    repeats = 1
    while tokens[start + repeats * n : start + (repeats + 1) * n] == gram:
        repeats += 1
    return repeats


def repeated_runs(tokens: list[str], n: int, min_repeats: int) -> Iterator[tuple[int, int]]:
    """(start, repeats) of every back-to-back run of ≥ `min_repeats` copies of an n-gram, left to right.

    After a position the scan jumps over the rest of its run: rotations inside a run ("red a red a")
    never repeat more often than the run itself, so no longer run is skipped."""
    i = 0
    while i + n * min_repeats <= len(tokens):
        repeats = repeat_count(tokens, i, n)
        if repeats >= min_repeats:
            yield i, repeats
        i += max(1, (repeats - 1) * n)


def _min_repeats(n: int) -> int:
    # One word 4× ("very very very very"), a 2–4-word n-gram 3×, a longer one 2×: prose repeats
    # phrases ("a red circle and a red square") but never back to back that often.
    return 4 if n == 1 else 3 if n <= 4 else 2


def find_loop(tokens: list[str], max_ngram: int = LOOP_MAX_NGRAM) -> tuple[str, int] | None:
    """(n-gram, repeats) of the back-to-back repetition covering most words, or None; the first on a tie."""
    best: tuple[int, list[str], int] | None = None
    for n in range(1, min(max_ngram, len(tokens) // 2) + 1):
        for start, repeats in repeated_runs(tokens, n, _min_repeats(n)):
            if best is None or repeats * n > best[0]:
                best = (repeats * n, tokens[start : start + n], repeats)
    return None if best is None else (" ".join(best[1]), best[2])


def trim_loops(text: str, max_repeats: int = 2) -> str:
    """Cut a degenerate tail: an n-gram (1–4 words) repeated more than `max_repeats` times in a row.
    One copy is kept; the loop and whatever followed it are dropped."""
    words = text.split()
    for n in range(1, 5):
        first = next(repeated_runs(words, n, max_repeats + 1), None)
        if first is not None:
            words = words[: first[0] + n]
    return " ".join(words)
