"""Caption-set QA: loops, empties, sameness, trigger coverage, reports, and kohya/diffusers pitfalls."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
from PIL import Image

from vlm_tune.caption.analysis import analyze_captions, words
from vlm_tune.caption.caption_set import read_caption_set
from vlm_tune.caption.lint import lint_folder, main
from vlm_tune.caption.qa_report import write_report
from vlm_tune.core.errors import UserError
from vlm_tune.core.markdown import md_escape
from vlm_tune.core.text import find_loop


def _png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (200, 30, 30)).save(path)


def _entries(captions: dict) -> list[dict]:
    return [{"file": f, "captions": c if isinstance(c, list) else [c]} for f, c in captions.items()]


def _reasons(report: dict, file: str) -> list[str]:
    return [s["reason"] for s in report["suspicious"] if s["file"] == file]


def _problems(report: dict, file: str) -> list[str]:
    return [p["problem"] for p in report["pitfalls"] if p["file"] == file]


# --- analyze ---------------------------------------------------------------------------------
def test_loops_flagged_but_ordinary_repeats_not():
    assert find_loop(words("a red a red a red")) == ("a red", 3)
    assert find_loop(words("cat cat cat cat sitting")) == ("cat", 4)
    assert find_loop(words("the girl smiles at us. the girl smiles at us.")) == ("the girl smiles at us", 2)
    for fine in ("a red circle and a red square", "very very very good", "a red, a blue and a red hat"):
        assert find_loop(words(fine)) is None, fine
    report = analyze_captions(_entries({
        "loop.png": "a photo of a red a red a red a red",
        "legit.png": "a red circle and a red square",
        "tagloop.png": "1girl, solo, 1girl, solo, 1girl, solo",
    }))
    loops = {item["file"]: item for item in report["loops"]}
    assert set(loops) == {"loop.png", "tagloop.png"}
    assert loops["loop.png"]["ngram"] == "a red" and loops["loop.png"]["repeats"] == 4
    assert loops["tagloop.png"]["ngram"] == "1girl solo"
    assert any("'a red'" in r for r in _reasons(report, "loop.png"))
    assert _reasons(report, "legit.png") == []


def test_empty_short_long_and_odd_characters():
    report = analyze_captions(_entries({
        "blank.png": "   ",
        "none.png": [],
        "short.png": "a cat",
        "long.png": " ".join(f"w{i}" for i in range(90)),
        "bell.png": "a cat\x07 on a mat\u200b",
        "ok.png": "a dog on a rug",
    }), max_words=75)
    assert report["empty"] == ["blank.png", "none.png"]
    assert any("empty" in r for r in _reasons(report, "blank.png"))
    assert any("too short: 2 word" in r for r in _reasons(report, "short.png"))
    assert any("too long: 90 words" in r for r in _reasons(report, "long.png"))
    assert any("U+0007" in r and "U+200B" in r for r in _reasons(report, "bell.png"))
    assert _reasons(report, "ok.png") == []
    length = report["length_words"]
    assert (length["min"], length["max"]) == (0, 90)
    assert sum(b["count"] for b in length["histogram"]) == report["n_captions"] == 5 and length["histogram"][0] == {
        "words": "0", "count": 1}
    json.dumps(report)  # serialisable


def test_duplicates_grouped_after_normalisation():
    report = analyze_captions(_entries({
        "a.png": "A cat, sitting.",
        "b.png": "a  CAT sitting!",
        "c.png": "a cat_sitting",
        "d.png": "a dog running on grass",
        "e.png": "a dog running on grass",
        "f.png": "something else entirely",
    }))
    groups = report["duplicates"]["groups"]
    assert [g["files"] for g in groups] == [["a.png", "b.png", "c.png"], ["d.png", "e.png"]]
    assert report["duplicates"]["unique_ratio"] == round(3 / 6, 4)
    assert any("same caption as 2 other file(s): b.png, c.png" in r for r in _reasons(report, "a.png"))
    assert _reasons(report, "f.png") == []


def test_trigger_coverage_and_dual_captions():
    report = analyze_captions(_entries({
        "1.png": ["ohwx, 1girl, long hair, smile", "ohwx, a girl with long hair smiling"],
        "2.png": ["ohwx, 1girl, short hair", "ohwx, a girl with short hair"],
        "3.png": ["1girl, red hair", "ohwx, a girl with red hair"],  # tag line lacks the trigger
        "4.png": "ohwx, a woman in a field",
        "5.png": "ohwx woman in a field",  # no comma: keep_tokens=1 would keep the whole clause
    }), trigger="ohwx")
    trig = report["trigger"]
    assert trig["coverage"] == 0.6 and trig["missing"] == ["3.png", "5.png"]
    assert any(r.startswith("caption 1: missing trigger 'ohwx'") for r in _reasons(report, "3.png"))
    assert any("not followed by a comma" in r for r in _reasons(report, "5.png"))
    assert report["caption_kinds"] == {"sentence": 5, "tags": 3}
    assert "ohwx" not in {w["word"] for w in report["top_words"]}


def test_top_tags_and_words():
    report = analyze_captions(_entries({
        "a.png": "1girl, smile, long hair, outdoors",
        "b.png": "1girl, long hair, indoors",
        "c.png": "1boy, smile, short hair",
        "d.png": "a man walking a dog in the park",
    }), top_k=3)
    assert report["top_tags"] == [{"tag": "1girl", "count": 2}, {"tag": "long hair", "count": 2},
                                  {"tag": "smile", "count": 2}]
    assert report["top_words"][0] == {"word": "hair", "count": 3}
    assert len(report["top_words"]) == 3


def test_report_is_deterministic_and_counts_are_kept():
    captions = {f"img{i:02d}.png": f"a {'red' if i % 3 else 'blue'} thing number {i % 4}" for i in range(20)}
    entries = _entries(captions)
    first = analyze_captions(entries, counts={"written": 20, "failed_files": [{"file": "x.png", "reason": "corrupt"}]})
    random.Random(0).shuffle(entries)
    second = analyze_captions(entries, counts={"written": 20, "failed_files": [{"file": "x.png", "reason": "corrupt"}]})
    assert first == second
    assert first["counts"]["written"] == 20 and first["n_images"] == 20


# --- report ----------------------------------------------------------------------------------
def test_write_report_escapes_pipes_and_lists_every_suspicious_file(tmp_path):
    report = analyze_captions(_entries({
        "we|ird.png": "",
        "sub dir/ünï cödé.png": "a red a red a red",
        "fine.png": "a cat | a dog on a mat",
    }), counts={"written": 2, "failed_files": [{"file": "broken.png", "reason": "truncated file"}]})
    json_path, md_path = write_report(report, tmp_path / "out", title="QA")
    assert json.loads(json_path.read_text(encoding="utf-8")) == report
    md = md_path.read_text(encoding="utf-8")
    for item in report["suspicious"]:
        assert md_escape(item["file"]) in md
    assert "we\\|ird.png" in md and "broken.png" in md and "truncated file" in md
    # every table row has as many unescaped cell separators as its header
    for block in re.findall(r"(?:^\|.*\|\n)+", md, flags=re.MULTILINE):
        rows = block.strip("\n").split("\n")
        widths = {len(re.findall(r"(?<!\\)\|", row)) for row in rows}
        assert len(widths) == 1, rows
    assert not list((tmp_path / "out").glob(".*.tmp"))


# --- lint ------------------------------------------------------------------------------------
def _messy_set(root: Path, outside: Path) -> dict:
    """A kohya set with .txt sidecars and most of the mistakes users make, plus a broken metadata.jsonl."""
    for name in ("a.png", "b.png", "c.png", "d.png", "e.png", "my photo ü.png", "sub/g.png", "sub/deeper/f.png"):
        _png(root / name)
    (root / "a.txt").write_text("ohwx, a red a red a red", encoding="utf-8")
    (root / "b.txt").write_bytes(b"")
    latin = "ohwx, a café terrace at night".encode("latin-1")
    (root / "d.txt").write_bytes(latin)
    (root / "e.txt").write_bytes(b"\xef\xbb\xbfohwx, a dog on a beach")
    (root / "my photo ü.txt").write_bytes(b"ohwx, 1girl, smile\r\nohwx, a girl smiling at the camera\r\n")
    (root / "sub" / "g.txt").write_text("ohwx, a cat sitting on a sofa\n", encoding="utf-8")
    (root / "sub" / "deeper" / "f.txt").write_text("ohwx, a cat sitting on a sofa\n", encoding="utf-8")
    (root / "orphan.txt").write_text("ohwx, nobody's caption", encoding="utf-8")
    (root / "metadata.jsonl").write_text(
        '{"file_name": "a.png", "text": "x"}\n'
        "{not json\n"
        '{"file_name": "../x.png", "text": "escape"}\n'
        '{"file_name": "missing.png", "text": "m"}\n'
        '{"file_name": "a.png", "text": "again"}\n'
        '{"file_name": "c.png", "caption": "wrong column"}\n',
        encoding="utf-8",
    )
    _png(outside / "elsewhere.png")
    (root / "link.png").symlink_to(outside / "elsewhere.png")
    return {"latin_offset": latin.index(b"\xe9")}


def test_lint_finds_kohya_and_diffusers_pitfalls(tmp_path):
    root, outside = tmp_path / "set", tmp_path / "outside"
    facts = _messy_set(root, outside)
    report = lint_folder(root, trigger="ohwx")
    json.dumps(report)

    assert report["caption_source"] == ".txt" and report["counts"]["images"] == 8
    dataset = " ".join(_problems(report, "."))
    assert ".txt" in dataset and ".caption" in dataset and "--caption_extension .txt" in dataset
    assert any("0 bytes" in p for p in _problems(report, "b.txt"))
    assert any(p.startswith("no caption") for p in _problems(report, "c.png"))
    assert any("without an image" in p for p in _problems(report, "orphan.txt"))
    assert any(f"not UTF-8: byte 0xe9 at offset {facts['latin_offset']}" in p for p in _problems(report, "d.txt"))
    assert any("BOM" in p for p in _problems(report, "e.txt"))
    crlf = _problems(report, "my photo ü.txt")
    assert any("CRLF" in p for p in crlf) and any("2 caption lines" in p for p in crlf)
    assert any("leaves the dataset root" in p for p in _problems(report, "link.png"))
    meta = {p["line"]: p["problem"] for p in report["pitfalls"] if p["file"] == "metadata.jsonl" and "line" in p}
    assert "not JSON" in meta[2] and "escapes the dataset root" in meta[3] and "does not exist" in meta[4]
    assert "second row" in meta[5] and "first on line 1" in meta[5] and "no 'text' column" in meta[6]
    levels = {p["file"]: p["level"] for p in report["pitfalls"]}
    assert levels["b.txt"] == levels["d.txt"] == "error"

    entries = {e["file"]: e["captions"] for e in read_caption_set(root)[0]}
    assert entries["my photo ü.png"] == ["ohwx, 1girl, smile", "ohwx, a girl smiling at the camera"]
    assert "sub/deeper/f.png" in entries and "c.png" not in entries and "link.png" not in entries
    assert report["loops"][0]["file"] == "a.png"
    assert report["empty"] == ["b.png"]
    assert ["sub/deeper/f.png", "sub/g.png"] in [g["files"] for g in report["duplicates"]["groups"]]
    assert "b.png" in report["trigger"]["missing"] and "e.png" not in report["trigger"]["missing"]
    assert any("U+FFFD" in r for r in _reasons(report, "d.png"))

    json_path, md_path = write_report(report, root)
    md = md_path.read_text(encoding="utf-8")
    for file in {s["file"] for s in report["suspicious"]} | {p["file"] for p in report["pitfalls"]}:
        assert md_escape(file) in md, file
    assert json.loads(json_path.read_text(encoding="utf-8"))["pitfalls"] == report["pitfalls"]


def test_lint_asked_extension_differs_from_the_set(tmp_path):
    for name in ("x.png", "y.png"):
        _png(tmp_path / name)
        (tmp_path / name).with_suffix(".txt").write_text("ohwx, a quiet street at dawn", encoding="utf-8")
    report = lint_folder(tmp_path, caption_extension=".caption")
    assert report["n_images"] == 0 and report["counts"]["captioned"] == 0
    dataset = " ".join(_problems(report, "."))
    assert "asked for .caption" in dataset and "--caption_extension .txt" in dataset
    assert any("no .caption file, but x.txt exists" in p for p in _problems(report, "x.png"))


def test_clean_caption_set_has_no_pitfalls(tmp_path):
    for i, text in enumerate(["ohwx, a quiet street at dawn", "ohwx, a busy market at noon"]):
        _png(tmp_path / f"{i}.png")
        (tmp_path / f"{i}.caption").write_text(text + "\n", encoding="utf-8")
    report = lint_folder(tmp_path, trigger="ohwx")
    assert report["pitfalls"] == [] and report["suspicious"] == [] and report["trigger"]["coverage"] == 1.0


def test_read_diffusers_metadata_set(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        _png(tmp_path / name)
    rows = [{"file_name": "a.png", "caption": "ohwx, a lighthouse on a cliff"},
            {"file_name": "./b.png", "caption": ["ohwx, sea, cliff", "ohwx, a stormy sea below a cliff"]},
            {"file_name": "c.png", "caption": None}]
    (tmp_path / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    entries, problems = read_caption_set(tmp_path, caption_column="caption")
    assert entries == [{"file": "a.png", "captions": ["ohwx, a lighthouse on a cliff"]},
                       {"file": "b.png", "captions": ["ohwx, sea, cliff", "ohwx, a stormy sea below a cliff"]}]
    text = {(p["file"], p["problem"]) for p in problems}
    assert any(f == "metadata.jsonl" and "line 3" in p and "NoneType" in p for f, p in text)
    assert any(f == "c.png" and "no usable row" in p for f, p in text)


# --- command ---------------------------------------------------------------------------------
def test_main_exit_codes_and_report_dir(tmp_path, capsys):
    clean = tmp_path / "clean"
    _png(clean / "a.png")
    (clean / "a.caption").write_text("ohwx, a quiet street at dawn", encoding="utf-8")
    assert main([str(clean), "--strict", "--trigger", "ohwx"]) == 0
    assert (clean / "caption_report.md").is_file() and (clean / "caption_report.json").is_file()

    dirty = tmp_path / "dirty"
    _png(dirty / "a.png")
    _png(dirty / "b.png")
    (dirty / "a.txt").write_text("a red a red a red", encoding="utf-8")
    reports = tmp_path / "reports"
    assert main([str(dirty), "--report_dir", str(reports)]) == 0
    out = capsys.readouterr().out
    assert "suspicious: 1 file(s)" in out and str(reports / "caption_report.md") in out
    assert not (dirty / "caption_report.md").exists()
    assert main([str(dirty), "--strict", "--report_dir", str(reports)]) == 1

    with pytest.raises(UserError, match="folder not found"):
        main([str(tmp_path / "nope")])
    with pytest.raises(UserError, match="not a folder"):
        main([str(dirty / "a.txt")])


def test_lint_flags_underscored_and_old_dashed_spellings_kept():
    from vlm_tune.caption.lint import parse_args

    new = parse_args(["d", "--caption_extension", ".txt", "--caption_column", "c", "--trainer_extension", ".txt",
                      "--report_dir", "r", "--max_words", "9"])
    old = parse_args(["d", "--caption-extension", ".txt", "--caption-column", "c", "--trainer-extension", ".txt",
                      "--report-dir", "r", "--max-words", "9"])
    assert vars(new) == vars(old) and new.max_words == 9
    with pytest.raises(UserError, match="caption-lint: .*--nope"):
        parse_args(["d", "--nope"])
    with pytest.raises(UserError, match="--max_words must be >= 1"):
        main(["."] + ["--max-words", "0"])

