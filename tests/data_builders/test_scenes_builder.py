"""Tests for data_builders.scenes: determinism, schema, prompts, export, attribute scoring, CLI."""

import json
import subprocess
import sys

import datasets
import numpy as np
import pytest
from PIL import Image

from data_builders.scenes import (
    ATTRIBUTE_KINDS,
    BACKGROUND_COLORS,
    OBJECT_COLORS,
    QUESTION_TYPES,
    SceneObject,
    SceneSpec,
    build_info,
    build_scenes,
    caption_attributes,
    caption_layout,
    caption_text,
    export_images,
    main,
    read_build_info,
    read_diffusers_captions,
    render_scene,
    row_rng,
    sample_scene,
    save_scenes,
    scene_attributes,
    score_captions,
    score_predictions,
    tags_text,
)
from vlm_tune.core.errors import UserError, run_command
from vlm_tune.core.prompts import DEFAULT_PROMPTS

from helpers import REPO

SIZES = (5, 2, 3)
SCENE = {
    "background": "pink",
    "style": "flat",
    "objects": [{"shape": "circle", "color": "red", "position": "left"},
                {"shape": "square", "color": "blue", "position": "right"}],
}
SENTENCE = "a flat picture of a red circle on the left and a blue square on the right on a pink background"
TAGS = "flat style, red circle on left, blue square on right, pink background"


# --- helpers ---


def _rows(dataset_dict):
    """split -> list of (query, label, type, scene, png bytes), images left undecoded."""
    out = {}
    for split, ds in dataset_dict.items():
        raw = ds.cast_column("image", datasets.Image(decode=False))
        out[split] = [(r["query"], r["label"], r["type"], r["scene"], r["image"]["bytes"]) for r in raw]
    return out


@pytest.fixture(scope="module")
def built():
    return build_scenes(*SIZES, seed=0, image_size=64, num_proc=1)


def _truth_file(tmp_path, scenes: dict) -> str:
    path = tmp_path / "truth.jsonl"
    path.write_text("".join(json.dumps({"file_name": k, "scene": s}) + "\n" for k, s in scenes.items()), encoding="utf-8")
    return path


# --- determinism ---


def test_same_seed_same_rows_for_any_num_proc(built):
    assert _rows(build_scenes(*SIZES, seed=0, image_size=64, num_proc=2)) == _rows(built)


def test_seed_and_split_change_the_rows(built):
    rows = _rows(built)
    assert _rows(build_scenes(*SIZES, seed=1, image_size=64, num_proc=1))["train"] != rows["train"]
    assert {r[4] for r in rows["test"]}.isdisjoint(r[4] for r in rows["train"])


# --- schema ---


def test_schema_rows_and_exact_prompts(built):
    assert list(built) == ["train", "val", "test"]
    for split, n_scenes in zip(built, SIZES):
        ds = built[split]
        assert list(ds.features) == ["image", "query", "label", "type", "scene"]
        assert isinstance(ds.features["image"], datasets.Image)
        assert ds.features["label"] == datasets.List(datasets.Value("string"))
        assert len(ds) == n_scenes * len(QUESTION_TYPES)
        rows = list(ds)
        for caption_row, tags_row in zip(rows[::2], rows[1::2]):  # one caption + one tags row per scene
            scene = json.loads(caption_row["scene"])
            assert caption_row["scene"] == tags_row["scene"]
            assert np.array_equal(np.asarray(caption_row["image"]), np.asarray(tags_row["image"]))
            assert (caption_row["type"], caption_row["query"]) == ("caption", DEFAULT_PROMPTS["caption"])
            assert (tags_row["type"], tags_row["query"]) == ("tags", DEFAULT_PROMPTS["tags"])
            assert caption_row["label"] == [caption_text(scene)] and tags_row["label"] == [tags_text(scene)]
            assert caption_row["image"].size == (64, 64) and caption_row["image"].mode == "RGB"
            assert set(scene) == {"background", "style", "objects"} and 1 <= len(scene["objects"]) <= 2


def test_question_types_restrict_rows_and_empty_split_is_left_out():
    ds = build_scenes(3, 0, 2, seed=0, image_size=64, question_types=["tags"])
    assert list(ds) == ["train", "test"]
    assert ds["train"]["type"] == ["tags"] * 3
    with pytest.raises(UserError):
        build_scenes(1, 0, 0, question_types=["caption", "color"])


def test_scene_content_is_valid_and_distinct():
    for i in range(200):
        spec = sample_scene(row_rng(0, "train", i))
        objects = spec.objects
        assert spec.background in BACKGROUND_COLORS and all(o.color in OBJECT_COLORS for o in objects)
        assert len({o.shape for o in objects}) == len({o.color for o in objects}) == len(objects)
        assert [o.position for o in objects] in (["center"], ["left", "right"], ["top", "bottom"])


def test_styles_show_in_pixels():
    def scene(style):
        return SceneSpec("white", style, (SceneObject("square", "red", "center", 0.5, 0.5, 0.6),), noise_seed=1)

    size = 128
    flat, outline, striped, grainy = (np.asarray(render_scene(scene(s), size)).astype(int)
                                      for s in ("flat", "outline", "striped", "grainy"))
    red, white = OBJECT_COLORS["red"], BACKGROUND_COLORS["white"]
    assert tuple(flat[64, 64]) == red and tuple(outline[64, 64]) == white  # outline: hollow
    assert tuple(outline[64, 64 - 32]) == red  # ... with a red edge
    inside = {tuple(p) for p in striped[50:78, 50:78].reshape(-1, 3)}
    assert inside == {red, white}  # stripes: colour and ground alternate inside the shape
    assert grainy[:20, :20].std() > 20 and flat[:20, :20].std() == 0


# --- save ---


def test_save_refuses_to_overwrite_and_keeps_build_info(tmp_path, built):
    out = tmp_path / "scenes"
    info = build_info(*SIZES, seed=0, image_size=64)
    save_scenes(built, out, info=info)
    assert read_build_info(out) == info and info["builder"] == "data_builders.scenes"
    with pytest.raises(FileExistsError):
        save_scenes(built, out)
    save_scenes(built, out, overwrite=True)
    assert datasets.load_from_disk(str(out))["train"]["query"] == built["train"]["query"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scenes"]  # no staging dir left behind


# --- export ---


def test_export_writes_nested_unicode_names_and_truth(tmp_path, built):
    out = export_images(built, "train", tmp_path / "heldout")
    truth = [json.loads(line) for line in (out / "truth.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(truth) == SIZES[0]  # one per scene, not per row
    names = [t["file_name"] for t in truth]
    assert any("/" in n for n in names) and any(n.count("/") >= 2 for n in names)
    assert any(" " in n for n in names) and any(not n.isascii() for n in names)
    scenes = [json.loads(s) for s in built["train"]["scene"][::2]]
    for row, scene in zip(truth, scenes):
        assert row["scene"] == scene and row["caption"] == caption_text(scene) and row["tags"] == tags_text(scene)
        assert Image.open(out / "images" / row["file_name"]).size == (64, 64)
    with pytest.raises(FileExistsError):
        export_images(built, "train", out)
    export_images(built, "test", out, overwrite=True)
    assert len((out / "truth.jsonl").read_text(encoding="utf-8").splitlines()) == SIZES[2]


# --- attributes and scores ---


def test_reference_texts_parse_back_to_the_scene():
    assert caption_text(SCENE) == SENTENCE and tags_text(SCENE) == TAGS
    assert scene_attributes(SCENE) == {
        "background:pink", "style:flat", "shape:circle", "shape:square", "color:red", "color:blue",
        "object:red circle", "object:blue square", "position:circle left", "position:square right"}
    for i in range(300):
        scene = sample_scene(row_rng(0, "test", i)).content()
        assert caption_attributes(caption_text(scene)) == scene_attributes(scene)
        assert caption_attributes(tags_text(scene)) == scene_attributes(scene)
    assert {a.split(":")[0] for a in scene_attributes(SCENE)} == set(ATTRIBUTE_KINDS)


def test_trigger_prefix_and_layouts():
    assert caption_attributes("sks, " + SENTENCE) == caption_attributes(SENTENCE)
    assert caption_attributes("sks, " + TAGS) == scene_attributes(SCENE)
    assert caption_layout(SENTENCE) == caption_layout("sks, " + SENTENCE) == "sentence"
    assert caption_layout(TAGS) == caption_layout("sks, " + TAGS) == "tags"
    assert caption_attributes("A grey background with a Red Circle in the middle, noisy") == {
        "background:gray", "object:red circle", "shape:circle", "color:red", "position:circle center", "style:grainy"}


def test_score_captions_recall_and_precision(tmp_path):
    truth = _truth_file(tmp_path, {"a.png": SCENE, "sub/b é.png": SCENE})
    perfect = score_captions({"a.png": [SENTENCE, TAGS], "sub/b é.png": ["sks, " + SENTENCE]}, truth)
    for group in ("sentence", "tags", "combined"):
        assert perfect[group]["recall"] == 1.0 and perfect[group]["precision"] == 1.0
    assert perfect["sentence"]["n_images"] == 2 and perfect["tags"]["n_images"] == 1

    no_background = score_captions({"a.png": [SENTENCE.replace(" on a pink background", "")]}, truth)["sentence"]
    assert no_background["recall"] == 0.9 and no_background["precision"] == 1.0
    assert no_background["per_kind"]["background"]["recall"] == 0.0

    wrong_colour = score_captions({"a.png": [SENTENCE.replace("red circle", "green circle")]}, truth)["sentence"]
    assert wrong_colour["precision"] == 0.8 and wrong_colour["recall"] == 0.8
    assert wrong_colour["per_kind"]["object"]["precision"] == 0.5
    assert wrong_colour["per_kind"]["position"]["precision"] == 1.0

    partial = score_captions({"a.png": [TAGS]}, truth)
    assert partial["missing"] == ["sub/b é.png"] and partial["combined"]["recall"] == 0.5


def test_score_predictions_groups_rows_by_scene(built):
    split = built["val"]
    records, scores = score_predictions(split, [label[0] for label in split["label"]])
    assert scores["combined"]["n_images"] == SIZES[1] and scores["combined"]["recall"] == 1.0
    assert all(not r["missed"] and not r["wrong"] for r in records)


def test_read_diffusers_captions(tmp_path):
    (tmp_path / "metadata.jsonl").write_text(
        json.dumps({"file_name": "a.png", "text": SENTENCE}) + "\n\n"
        + json.dumps({"file_name": "d/é b.png", "text": [SENTENCE, TAGS]}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert read_diffusers_captions(tmp_path) == {"a.png": [SENTENCE], "d/é b.png": [SENTENCE, TAGS]}
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.png"}\n', encoding="utf-8")
    with pytest.raises(UserError, match="line 1"):
        read_diffusers_captions(tmp_path)
    with pytest.raises(FileNotFoundError):
        read_diffusers_captions(tmp_path / "nowhere")


def test_captions_fit_the_captioner_token_budget():
    from vlm_tune.core.tiny_model import build_tokenizer

    tokenizer = build_tokenizer()
    longest = max(len(tokenizer(text(sample_scene(row_rng(0, "train", i)).content()))["input_ids"])
                  for i in range(300) for text in (caption_text, tags_text))
    assert longest + 1 <= 48  # + the end-of-utterance token


# --- command line ---


def test_cli_build_export_score(tmp_path, capsys):
    data, heldout = tmp_path / "data", tmp_path / "heldout"
    assert main(["build", "--output", str(data), "--train", "2", "--val", "0", "--test", "3", "--image-size", "64",
                 "--num-proc", "1"]) == 0
    assert read_build_info(data)["sizes"] == [2, 0, 3]
    assert run_command(main, ["build", "--output", str(data), "--train", "1", "--num-proc", "1"]) == 2
    assert "error:" in capsys.readouterr().err
    assert main(["export", "--dataset", str(data), "--split", "test", "--output", str(heldout)]) == 0
    assert run_command(main, ["export", "--dataset", str(data), "--split", "test", "--output", str(heldout)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err

    assert run_command(main, ["score", "--heldout", str(heldout)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "metadata.jsonl" in err and len(err.strip().splitlines()) == 1
    truth = [json.loads(line) for line in (heldout / "truth.jsonl").read_text(encoding="utf-8").splitlines()]
    rows = [{"file_name": t["file_name"], "text": [t["caption"], t["tags"]]} for t in truth]
    (heldout / "images" / "metadata.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    assert main(["score", "--heldout", str(heldout)]) == 0
    scores = json.loads((heldout / "scores.json").read_text(encoding="utf-8"))
    assert scores["sentence"]["recall"] == scores["tags"]["precision"] == scores["combined"]["recall"] == 1.0
    assert "| sentence |" in capsys.readouterr().out


def test_cli_errors(tmp_path, capsys):
    assert run_command(main, ["export", "--dataset", str(tmp_path / "none"), "--output", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.startswith("error: no saved dataset")
    assert run_command(main, ["build", "--output", str(tmp_path / "x"), "--train", "0", "--val", "0", "--test", "0"]) == 2
    assert capsys.readouterr().err.startswith("error:")
    assert not (tmp_path / "x").exists()


def test_evaluate_moved_to_vlm_tune_eval(capsys):
    argv = ["evaluate", "--config", "recipes/tiny/sft_captioner.yaml", "--adapter", "runs/x", "--max-new-tokens", "8"]
    assert run_command(main, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "vlm-tune eval --config" in err and len(err.strip().splitlines()) == 1


def test_module_entry_point_runs_main_through_run_command():
    """`python -m data_builders.scenes`: one error line, exit 2 (here: the moved evaluate sub-command)."""
    scenes = subprocess.run([sys.executable, "-m", "data_builders.scenes", "evaluate", "--config", "x.yaml"],
                            cwd=REPO, capture_output=True, text=True)
    assert scenes.returncode == 2 and scenes.stderr.startswith("error:") and "vlm-tune eval" in scenes.stderr
    assert len(scenes.stderr.strip().splitlines()) == 1


# --- caption phrasings (the `make loop` captioner) ---


def test_every_phrasing_states_exactly_the_scene():
    from data_builders.scenes import PHRASINGS, phrase

    for i in range(100):
        scene = sample_scene(row_rng(0, "train", i)).content()
        for name in PHRASINGS:
            text = phrase(scene, name)
            assert caption_attributes(text) == scene_attributes(scene), (name, text)
            assert caption_layout(text) == "sentence"
    assert phrase(SCENE, "plain") == SENTENCE == caption_text(SCENE)
    assert phrase(SCENE, "subject_first") == ("red circle on the left and blue square on the right on a pink "
                                              "background in flat style")


def test_phrasings_question_type_keeps_images_and_records_its_settings(built):
    from data_builders.scenes import PHRASING_WEIGHTS, PHRASINGS, phrase, pick_phrasing

    varied = build_scenes(*SIZES, seed=0, image_size=64, num_proc=1, question_types=["caption_phrasings", "tags"])
    for split, n_scenes in zip(varied, SIZES):
        rows, default_rows = _rows(varied)[split], _rows(built)[split]
        assert [r[4] for r in rows] == [r[4] for r in default_rows]  # the same images and scenes
        assert [r[2] for r in rows] == ["caption", "tags"] * n_scenes  # phrasing rows are caption rows
        for index, row in enumerate(rows[::2]):
            scene = json.loads(row[3])
            assert row[0] == DEFAULT_PROMPTS["caption"]
            assert row[1] == [phrase(scene, pick_phrasing(0, ("train", "val", "test").index(split), index))]
    labels = [pick_phrasing(0, 0, i) for i in range(2000)]
    assert {name: labels.count(name) / 2000 for name in PHRASINGS} == pytest.approx(PHRASING_WEIGHTS, abs=0.03)

    default_info = build_info(2000, 20, 200, 0, 128)
    assert default_info == {"builder": "data_builders.scenes", "sizes": [2000, 20, 200], "seed": 0, "image_size": 128,
                            "question_types": ["caption", "tags"], "version": 2}  # make caption's data stays current
    varied_info = build_info(2000, 20, 200, 0, 128, ["caption_phrasings", "tags"])
    assert varied_info["phrasings"]["weights"] == PHRASING_WEIGHTS and "version" in varied_info["phrasings"]


def test_cli_builds_phrasings_and_rejects_unknown_types(tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["build", "--output", str(data), "--train", "3", "--val", "0", "--test", "0", "--image_size", "64",
                 "--num_proc", "1", "--question_types", "caption_phrasings"]) == 0
    info = read_build_info(data)
    assert info["question_types"] == ["caption_phrasings"] and "phrasings" in info
    assert datasets.load_from_disk(str(data))["train"]["type"] == ["caption"] * 3
    assert run_command(main, ["build", "--output", str(tmp_path / "x"), "--question_types", "poems"]) == 2
    assert "error:" in capsys.readouterr().err
