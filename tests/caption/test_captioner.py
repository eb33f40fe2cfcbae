"""`vlm-tune caption`: formats byte for byte, user captions kept, bad images, kill + resume, trigger first.

Most tests swap the model for a fake captioner (the caption names the image's colour) so they check the
file handling exactly and fast; one test runs the real tiny model end to end.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlm_tune.caption import captioner as caption
from vlm_tune.caption.captioner import clean_caption
from vlm_tune.core.prompts import DEFAULT_PROMPTS
from vlm_tune.core.errors import UserError
from vlm_tune.core.text import trim_loops

COLORS = {"red": (255, 0, 0), "green": (0, 160, 0), "blue": (0, 0, 255), "white": (255, 255, 255), "black": (0, 0, 0)}


def color_name(image) -> str:
    pixel = np.asarray(image.convert("RGB").resize((1, 1)), dtype=float)[0, 0]
    return min(COLORS, key=lambda name: float(((np.array(COLORS[name]) - pixel) ** 2).sum()))


def fake_generate(model, processor, images, queries, system_prompt=None, **kwargs):
    answers = []
    for image, query in zip(images, queries):
        name = color_name(image)
        answers.append(f"{name}, picture" if query == DEFAULT_PROMPTS["tags"] else f"a {name} picture")
    return answers


@pytest.fixture
def fake_model(monkeypatch):
    import vlm_tune.core.generation

    monkeypatch.setattr(caption, "load_captioner", lambda args, trained: (None, None))
    monkeypatch.setattr(vlm_tune.core.generation, "generate_answers", fake_generate)


def make_folder(root: Path) -> Path:
    """Nested folders, spaces and unicode in names, mixed extensions and case."""
    (root / "sub dir" / "deeper").mkdir(parents=True)
    Image.new("RGB", (40, 30), COLORS["red"]).save(root / "a.png")
    Image.new("RGB", (40, 30), COLORS["blue"]).save(root / "sub dir" / "ciel bleu é.JPG")
    Image.new("RGB", (30, 40), COLORS["green"]).save(root / "sub dir" / "deeper" / "草 1.webp")
    return root


def run(root, *args) -> int:
    return caption.main([str(root), "--model", "unused", *args])


# --- formats ---------------------------------------------------------------------------------
def test_kohya_sidecars_byte_for_byte(tmp_path, fake_model):
    root = make_folder(tmp_path / "data")
    assert run(root, "--format", "kohya", "--trigger", "sks") == 0
    assert (root / "a.txt").read_bytes() == b"sks, a red picture\n"
    assert (root / "sub dir" / "ciel bleu é.txt").read_bytes() == b"sks, a blue picture\n"
    assert (root / "sub dir" / "deeper" / "草 1.txt").read_bytes() == b"sks, a green picture\n"
    assert not (root / "metadata.jsonl").exists()
    assert oct((root / "a.txt").stat().st_mode & 0o777) != oct(0o600), "sidecars get normal permissions"


def test_caption_extension_is_respected(tmp_path, fake_model):
    root = make_folder(tmp_path / "data")
    assert run(root, "--caption_extension", "caption") == 0
    assert (root / "a.caption").read_text(encoding="utf-8") == "a red picture\n"
    assert not list(root.rglob("*.txt"))


def test_diffusers_metadata_byte_for_byte(tmp_path, fake_model):
    root = make_folder(tmp_path / "data")
    assert run(root, "--format", "diffusers", "--caption_column", "caption") == 0
    assert (root / "metadata.jsonl").read_bytes() == (
        '{"file_name": "a.png", "caption": "a red picture"}\n'
        '{"file_name": "sub dir/ciel bleu é.JPG", "caption": "a blue picture"}\n'
        '{"file_name": "sub dir/deeper/草 1.webp", "caption": "a green picture"}\n'
    ).encode()
    assert not list(root.rglob("*.txt"))


def test_dual_mode_layouts(tmp_path, fake_model):
    root = make_folder(tmp_path / "data")
    assert run(root, "--format", "both", "--mode", "dual", "--trigger", "sks") == 0
    # kohya: first line (read without --enable_wildcard) = tags; --enable_wildcard picks a line per step
    assert (root / "a.txt").read_text(encoding="utf-8") == "sks, red, picture\nsks, a red picture\n"
    rows = [json.loads(line) for line in (root / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]
    assert rows[0] == {"file_name": "a.png", "text": ["sks, red, picture", "sks, a red picture"]}


def test_diffusers_dataset_loads_the_metadata(tmp_path, fake_model):
    """What diffusers' train_text_to_image does: load_dataset('imagefolder') pairs images with captions."""
    import datasets

    root = make_folder(tmp_path / "data")
    run(root, "--format", "both")
    loaded = datasets.load_dataset("imagefolder", data_dir=str(root), split="train")
    assert sorted(loaded["text"]) == ["a blue picture", "a green picture", "a red picture"]


# --- user data is safe -----------------------------------------------------------------------
def test_existing_captions_kept_and_other_rows_kept(tmp_path, fake_model):
    root = make_folder(tmp_path / "data")
    (root / "a.txt").write_bytes("my own words, ünïcode\n".encode())
    other = {"file_name": "gone.png", "text": "row of an image elsewhere", "extra": 1}
    (root / "metadata.jsonl").write_text(json.dumps(other) + "\n", encoding="utf-8")
    assert run(root, "--format", "both") == 0
    assert (root / "a.txt").read_bytes() == "my own words, ünïcode\n".encode()
    rows = {r["file_name"]: r for r in map(json.loads, (root / "metadata.jsonl").read_text(encoding="utf-8").splitlines())}
    assert rows["gone.png"] == other
    assert rows["a.png"]["text"] == "my own words, ünïcode", "the missing format is filled from the user's caption"
    assert rows["sub dir/ciel bleu é.JPG"]["text"] == "a blue picture"

    assert run(root, "--format", "both", "--overwrite") == 0
    assert (root / "a.txt").read_text(encoding="utf-8") == "a red picture\n"
    assert json.loads((root / "metadata.jsonl").read_text(encoding="utf-8").splitlines()[0]) == other


def test_second_run_changes_nothing(tmp_path, fake_model):
    root = make_folder(tmp_path / "data")
    run(root, "--format", "both")
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and "caption_report" not in p.name}
    report = json.loads((root / "caption_report.json").read_text())
    assert report["counts"]["written"] == 3
    run(root, "--format", "both")
    after = {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and "caption_report" not in p.name}
    assert after == before
    assert json.loads((root / "caption_report.json").read_text())["counts"]["skipped_existing"] == 3


def test_broken_metadata_stops_before_anything_is_written(tmp_path, fake_model):
    root = make_folder(tmp_path / "data")
    (root / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "ok"}\n{broken\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"metadata.jsonl line 2: not valid JSON"):
        run(root, "--format", "both")
    assert not list(root.rglob("*.txt"))
    (root / "metadata.jsonl").write_text('{"file_name": "../outside.png", "text": "x"}\n', encoding="utf-8")
    with pytest.raises(UserError, match="escapes the dataset root"):
        run(root, "--format", "diffusers")


def test_other_caption_extension_refused(tmp_path, fake_model):
    root = make_folder(tmp_path / "data")
    (root / "a.caption").write_text("hand written\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"'.caption' captions .* pass --caption_extension .caption"):
        run(root)
    assert not list(root.rglob("*.txt"))


def test_same_stem_images_share_a_kohya_file(tmp_path, fake_model):
    root = tmp_path / "data"
    root.mkdir()
    Image.new("RGB", (20, 20), COLORS["red"]).save(root / "x.png")
    Image.new("RGB", (20, 20), COLORS["blue"]).save(root / "x.jpg")
    assert run(root) == 0
    assert (root / "x.txt").read_text(encoding="utf-8") == "a blue picture\n"  # x.jpg sorts first
    report = json.loads((root / "caption_report.json").read_text())
    assert [f["file"] for f in report["counts"]["failed_files"]] == ["x.png"]


# --- trigger and cleaning --------------------------------------------------------------------
def test_trigger_first_exactly_once():
    assert clean_caption("sks, a red picture", "caption", "sks") == "sks, a red picture"
    assert clean_caption("a red picture", "caption", "sks") == "sks, a red picture"
    assert clean_caption("red, red, blue,, circle.", "tags", "sks") == "sks, red, blue, circle"
    assert clean_caption("  \n", "caption", "sks") == "", "a trigger alone is not a caption"


def test_cleaning_cuts_loops_and_control_characters():
    assert trim_loops("a red a red a red a red circle") == "a red"
    assert trim_loops("a red circle and a red square") == "a red circle and a red square"
    assert clean_caption("Navy880880880880880\x1b\ufffd ok\nsecond line", "caption", None) == "Navy880 ok"


# --- bad images ------------------------------------------------------------------------------
def make_bad_images(root: Path) -> dict[str, str]:
    """Every odd case; value: 'ok' if it must be captioned (converted), else a word of the skip reason."""
    root.mkdir(parents=True)
    cases = {}
    Image.new("CMYK", (20, 20), (0, 255, 255, 0)).save(root / "cmyk.jpg")
    cases["cmyk.jpg"] = "ok"
    Image.fromarray(np.full((20, 20), 65535, dtype=np.uint16)).save(root / "grey16.png")
    cases["grey16.png"] = "ok"
    Image.new("RGB", (20, 20), COLORS["green"]).convert("P").save(root / "palette.png")
    cases["palette.png"] = "ok"
    Image.new("RGBA", (20, 20), (0, 0, 255, 255)).save(root / "rgba.png")
    cases["rgba.png"] = "ok"
    rotated = Image.new("RGB", (40, 20), COLORS["red"])
    exif = rotated.getexif()
    exif[0x0112] = 6
    rotated.save(root / "exif.jpg", exif=exif)
    cases["exif.jpg"] = "ok"
    (root / "zero.png").write_bytes(b"")
    cases["zero.png"] = "empty"
    (root / "text.png").write_text("not an image")
    cases["text.png"] = "not an image"
    buffer = io.BytesIO()
    Image.new("RGB", (200, 200), COLORS["red"]).save(buffer, "PNG")
    (root / "truncated.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    cases["truncated.png"] = "truncated"
    Image.new("1", (10_000, 10_000)).save(root / "bomb.png")  # 100 Mpx over PIL's 89 Mpx guard
    cases["bomb.png"] = "too large"
    return cases


def test_bad_images_converted_or_listed(tmp_path, fake_model, capsys):
    root = tmp_path / "bad"
    cases = make_bad_images(root)
    outside = tmp_path / "outside.png"
    Image.new("RGB", (10, 10)).save(outside)
    os.symlink(outside, root / "link.png")
    cases["link.png"] = "leaves the dataset root"
    assert run(root) == 0, "bad images do not fail the run without --strict"
    report = json.loads((root / "caption_report.json").read_text())
    failed = {f["file"]: f["reason"] for f in report["counts"]["failed_files"]}
    for name, expected in cases.items():
        if expected == "ok":
            assert (root / name).with_suffix(".txt").is_file(), name
            assert name not in failed
        else:
            assert expected in failed[name], (name, failed.get(name))
            assert not (root / name).with_suffix(".txt").exists()
    assert (root / "exif.txt").read_text() == "a red picture\n"
    assert (root / "rgba.txt").read_text() == "a blue picture\n"
    assert "skipped zero.png: empty file" in capsys.readouterr().out
    assert run(root, "--strict") == 1


# --- kill and resume -------------------------------------------------------------------------
SLOW_FAKE = """
import sys, time
import vlm_tune.core.generation as generation
from vlm_tune.caption import captioner as caption
sys.path.insert(0, {tests!r})
from test_captioner import fake_generate
def slow(*args, **kwargs):
    time.sleep(0.3)  # room for the test to kill us between batches (not a timing assertion)
    return fake_generate(*args, **kwargs)
generation.generate_answers = slow
caption.load_captioner = lambda args, trained: (None, None)
sys.exit(caption.main(sys.argv[1:]))
"""


def test_sigkill_leaves_no_partial_file_and_rerun_finishes(tmp_path):
    root = tmp_path / "many"
    root.mkdir()
    for i in range(24):
        Image.new("RGB", (16, 16), list(COLORS.values())[i % 5]).save(root / f"img {i:02d}.png")
    script = SLOW_FAKE.format(tests=str(Path(__file__).parent))
    argv = [sys.executable, "-c", script, str(root), "--format", "both", "--batch_size", "2", "--trigger", "sks"]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(root.glob("*.txt"))) < 6:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = sorted(root.glob("*.txt"))
    assert 6 <= len(done) < 24, "killed mid-run"
    for path in done:  # every file there is complete
        assert path.read_text(encoding="utf-8").startswith("sks, a ") and path.read_text().endswith("picture\n")
    for line in (root / "metadata.jsonl").read_text(encoding="utf-8").splitlines():
        json.loads(line)
    kept = {p.name: p.stat().st_mtime_ns for p in done}

    assert subprocess.run(argv, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300).returncode == 0
    assert len(list(root.glob("*.txt"))) == 24
    assert {p.name: p.stat().st_mtime_ns for p in done} == kept, "finished captions are not redone"
    rows = [json.loads(line) for line in (root / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sorted(r["file_name"] for r in rows) == sorted(p.name for p in root.glob("*.png"))
    assert not [p for p in root.iterdir() if p.name.endswith(".tmp")], "no temp file left after the rerun"


def test_a_full_disk_is_one_line_keeps_whole_captions_and_a_rerun_finishes(tmp_path, fake_model, capsys):
    """Kill test with a full disk: the write that finds no space fails alone (atomic writes: no half file,
    no temp file left), the error says what is kept and how to go on, the rerun finishes the set."""
    from helpers import assert_one_line_error
    from hostile_helpers import fill_disk, tmpfs

    from vlm_tune.core.errors import run_command

    with tmpfs(tmp_path / "disk", "256k") as root:
        for i in range(6):
            Image.new("RGB", (8, 8), COLORS["red"]).save(root / f"img{i}.png")
        filler = fill_disk(root, leave_pages=2)  # room for two caption files
        capsys.readouterr()
        code = run_command(caption.main, [str(root), "--model", "unused", "--batch_size", "1"])
        assert_one_line_error(code, capsys.readouterr().err, "caption: cannot write in", "No space left on device",
                              "2 caption(s) written by this run are kept", "run the same command again")
        done = sorted(root.glob("*.txt"))
        assert len(done) == 2 and all(p.read_text() == "a red picture\n" for p in done)
        assert not [p for p in root.iterdir() if p.name.endswith(".tmp")], "no half-written temp file"
        kept = {p.name: p.stat().st_mtime_ns for p in done}

        filler.unlink()  # space is back
        assert run(root, "--batch_size", "1") == 0
        assert len(list(root.glob("*.txt"))) == 6
        assert {p.name: p.stat().st_mtime_ns for p in done} == kept, "finished captions are not redone"
        assert (root / "caption_report.json").is_file()


def test_no_write_is_tried_in_a_read_only_folder(tmp_path, monkeypatch):
    """Refused before the model loads (the model is never asked for)."""
    from hostile_helpers import read_only_folder

    monkeypatch.setattr(caption, "load_captioner", lambda args, trained: pytest.fail("the model was loaded"))
    with read_only_folder(tmp_path / "ro", make_folder) as root:
        with pytest.raises(UserError, match="cannot write in .*read-only"):
            run(root)
        # captioned already, the report elsewhere: nothing to write in the folder, so it is fine
    root = make_folder(tmp_path / "done")
    for image in ("a.png", "sub dir/ciel bleu é.JPG", "sub dir/deeper/草 1.webp"):
        (root / image).with_suffix(".txt").write_text("kept\n")
    (tmp_path / "report").mkdir()
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) == tmp_path / "report")
    assert run(root, "--report_dir", str(tmp_path / "report")) == 0


# --- the real tiny model ---------------------------------------------------------------------
def test_tiny_model_end_to_end(tmp_path, tiny_model_dir):
    root = make_folder(tmp_path / "data")
    code = caption.main([str(root), "--model", str(tiny_model_dir), "--format", "both", "--batch_size", "2",
                         "--trigger", "sks", "--max_new_tokens", "8"])
    assert code == 0
    report = json.loads((root / "caption_report.json").read_text())
    counts = report["counts"]
    assert counts["written"] + counts["failed"] == 3
    for sidecar in root.rglob("*.txt"):  # whatever the random base model said, trigger first, one line
        text = sidecar.read_text(encoding="utf-8")
        assert text.startswith("sks, ") and text.count("\n") == 1
    assert (root / "caption_report.md").is_file()


def test_bad_arguments(tmp_path):
    with pytest.raises(UserError, match="images folder not found"):
        caption.main([str(tmp_path / "nope"), "--model", "x"])
    with pytest.raises(UserError, match="--trigger"):
        caption.main([str(tmp_path), "--trigger", "a, b"])
    with pytest.raises(UserError, match="no LoRA adapter"):
        caption.main([str(tmp_path), "--adapter", str(tmp_path)])


def test_flags_underscored_and_old_dashed_spellings_kept(capsys):
    """One flag style (underscores, as in help); the dashed spellings of older command lines still parse."""
    new = caption.parse_args(["d", "--caption_extension", "caption", "--batch_size", "2", "--max_new_tokens", "9",
                              "--report_dir", "r", "--keep_4bit", "--load_in_4bit", "false", "--tags_prompt", "t?"])
    old = caption.parse_args(["d", "--caption-extension", "caption", "--batch-size", "2", "--max-new-tokens", "9",
                              "--report-dir", "r", "--keep-4bit", "--load-in-4bit", "false", "--tags-prompt", "t?"])
    assert vars(new) == vars(old) and new.caption_extension == ".caption" and new.load_in_4bit is False
    with pytest.raises(UserError, match="--batch_size must be >= 1"):
        caption.parse_args(["d", "--batch-size", "0"])
    with pytest.raises(SystemExit):
        caption.parse_args(["--help"])
    shown = capsys.readouterr().out
    assert "--batch_size" in shown and "--caption_extension" in shown and "--max_new_tokens" in shown

