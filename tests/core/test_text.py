"""Text helpers: one scan for repeats, used to cut loops (captioner) and to report them (caption QA)."""

from __future__ import annotations

from vlm_tune.core.text import (
    collapse_char_loops,
    find_loop,
    one_line,
    printable,
    repeat_count,
    repeated_runs,
    trim_loops,
)


def test_whitespace_and_control_characters():
    assert one_line("  a\tred\n\ncircle  ") == "a red circle"
    assert printable("a\x1b red\ufffd\x07circle\n") == "a red circle"
    assert printable("ünï cödé — ok") == "ünï cödé — ok"


def test_repeated_runs_skip_rotations_inside_a_run():
    tokens = "x a red a red a red y".split()
    assert repeat_count(tokens, 1, 2) == 3 and repeat_count(tokens, 0, 2) == 1
    assert list(repeated_runs(tokens, 2, 3)) == [(1, 3)]  # not also (2, 2): "red a red a" is the same run
    assert list(repeated_runs(tokens, 1, 2)) == []
    assert list(repeated_runs("a a b b b".split(), 1, 2)) == [(0, 2), (2, 3)]


def test_find_loop_reports_and_trim_loops_cuts():
    looping = "a photo of a red a red a red a red"
    assert find_loop(looping.split()) == ("a red", 4)
    assert trim_loops(looping) == "a photo of a red"
    prose = "a red circle and a red square"
    assert find_loop(prose.split()) is None and trim_loops(prose) == prose
    # reporting is lenient with one word 3x (prose says "very very very"); generated text is cut at 3x
    assert find_loop("very very very good".split()) is None and trim_loops("very very very good") == "very"
    assert find_loop("go go go go".split(), max_ngram=1) == ("go", 4)
    assert trim_loops("go go go", max_repeats=3) == "go go go"


def test_character_loops_inside_a_word():
    assert collapse_char_loops("Navy880880880880880") == "Navy880"
    assert collapse_char_loops("hahahaha") == "ha"
    assert collapse_char_loops("banana") == "banana"
