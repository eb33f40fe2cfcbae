"""Task files: every bad line is one error naming file:line; missing or unreadable images are named at start."""

from __future__ import annotations

import json

import pytest

from rate_helpers import image_tasks, response_tasks, write_image, write_tasks
from vlm_tune.rate.tasks import IMAGE_RESPONSE_ID, TaskFileError, load_tasks


def test_response_mode_file(tmp_path):
    tasks = load_tasks(response_tasks(tmp_path, n_items=2))
    assert tasks.mode == "response"
    assert [item.line for item in tasks.items] == [1, 2]
    first = tasks.items[0]
    assert first.prompt == "describe picture 0" and first.group == "hidden-run"
    assert [text for _, text in first.responses][0] == "a caption 0"
    assert first.image_path == (tmp_path / "img" / "0.png").resolve()
    assert len({rid for rid, _ in first.responses}) == 3


def test_ids_are_content_hashes(tmp_path):
    """Moving lines keeps ids; ids reveal neither position nor text."""
    path = response_tasks(tmp_path, n_items=3)
    before = {item.item_id: [rid for rid, _ in item.responses] for item in load_tasks(path).items}
    lines = path.read_text().splitlines()
    path.write_text("\n".join(reversed(lines)) + "\n")
    after = {item.item_id: [rid for rid, _ in item.responses] for item in load_tasks(path).items}
    assert before == after
    assert all(rid not in ("0", "1", "2") for rids in after.values() for rid in rids)


def test_image_mode_file(tmp_path):
    tasks = load_tasks(image_tasks(tmp_path))
    assert tasks.mode == "image" and len(tasks.items) == 6
    assert all(item.responses == ((IMAGE_RESPONSE_ID, ""),) for item in tasks.items)
    empty = write_tasks(tmp_path / "empty-responses.jsonl", [{"image": "samples/ckpt-a/0.png", "prompt": "p", "responses": []}])
    assert load_tasks(empty).mode == "image"


def test_blank_lines_and_bom_are_fine(tmp_path):
    write_image(tmp_path / "a.png")
    path = tmp_path / "t.jsonl"
    path.write_bytes(b"\xef\xbb\xbf\n" + json.dumps({"image": "a.png", "prompt": "p"}).encode() + b"\n\n  \n")
    assert load_tasks(path).items[0].line == 2


BAD_LINES = [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "not a JSON object"),
    ('{"image": "a.png", "prompt": "p", "reponses": ["x", "y"]}', "unknown key(s) 'reponses'"),
    ('{"prompt": "p"}', "missing key 'image'"),
    ('{"image": "a.png"}', "missing key 'prompt'"),
    ('{"image": "a.png", "prompt": "  "}', "prompt must be a non-empty string"),
    ('{"image": "", "prompt": "p"}', "image must be a non-empty string"),
    ('{"image": "a.png", "prompt": "p", "responses": "x"}', "responses must be a list"),
    ('{"image": "a.png", "prompt": "p", "responses": ["x", 3]}', "response 2 must be a non-empty string"),
    ('{"image": "a.png", "prompt": "p", "responses": ["x", ""]}', "response 2 must be a non-empty string"),
    ('{"image": "a.png", "prompt": "p", "responses": ["x"]}', "one response has nothing to be compared with"),
    ('{"image": "a.png", "prompt": "p", "responses": ["x", "y", "x"]}', "response 3 repeats response 1"),
    ('{"image": "a.png", "prompt": "p", "group": 3}', "group must be a string"),
]


@pytest.mark.parametrize("line, message", BAD_LINES, ids=[m for _, m in BAD_LINES])
def test_bad_line_is_named(tmp_path, line, message):
    write_image(tmp_path / "a.png")
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"image": "a.png", "prompt": "fine"}) + "\n\n" + line + "\n")
    with pytest.raises(TaskFileError) as error:
        load_tasks(path)
    assert f"{path}:3: " in str(error.value) and message in str(error.value)
    assert "\n" not in str(error.value)


def test_mixed_modes_and_duplicates_are_refused(tmp_path):
    write_image(tmp_path / "a.png")
    mixed = write_tasks(tmp_path / "mixed.jsonl", [{"image": "a.png", "prompt": "p", "responses": ["x", "y"]},
                                                   {"image": "a.png", "prompt": "q"}])
    with pytest.raises(TaskFileError, match=r"mixed.jsonl:2: this item is image mode but line 1 is response mode"):
        load_tasks(mixed)
    twice = write_tasks(tmp_path / "twice.jsonl", [{"image": "a.png", "prompt": "p"}, {"image": "a.png", "prompt": "p"}])
    with pytest.raises(TaskFileError, match=r"twice.jsonl:2: the same image and prompt as line 1"):
        load_tasks(twice)


def test_missing_and_unreadable_images_are_all_named(tmp_path):
    write_image(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    path = write_tasks(tmp_path / "t.jsonl", [{"image": "ok.png", "prompt": "p"}, {"image": "gone.png", "prompt": "p"},
                                              {"image": "broken.png", "prompt": "p"}, {"image": "also-gone.jpg", "prompt": "p"}])
    with pytest.raises(TaskFileError) as error:
        load_tasks(path)
    text = str(error.value)
    assert "3 image(s) cannot be served" in text
    assert "gone.png (line 2): missing" in text and "also-gone.jpg (line 4): missing" in text
    assert "broken.png (line 3)" in text and "ok.png" not in text


def test_empty_unreadable_and_non_utf8_files(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n \n")
    with pytest.raises(TaskFileError, match="no items"):
        load_tasks(tmp_path / "empty.jsonl")
    with pytest.raises(TaskFileError, match="cannot read the task file"):
        load_tasks(tmp_path / "nope.jsonl")
    (tmp_path / "latin.jsonl").write_bytes(b'{"image": "a.png", "prompt": "p"}\n{"image": "\xe9.png"}\n')
    with pytest.raises(TaskFileError, match=r"latin.jsonl:2: not UTF-8"):
        load_tasks(tmp_path / "latin.jsonl")
