"""The loop in miniature: a briefly trained captioner → candidates → five simulated raters through a real
`vlm-tune rate serve` process (HTTP API) → export → pairs → DPO → held-out re-captioning → loop_summary.json.
Also the pieces on their own: the team's taste, candidate de-duplication and the task file."""

from __future__ import annotations

import json

import pytest

from PIL import Image

from vlm_tune.caption.candidates import Candidates, captions_on_disk, generation_plan, parse_args, task_rows
from vlm_tune.core.errors import UserError
from vlm_tune.runs import loop
from vlm_tune.runs.simulated_team import TEAM, rate, taste_features, team_score

SCENE = {"background": "white", "style": "flat",
         "objects": [{"shape": "circle", "color": "red", "position": "left"},
                     {"shape": "square", "color": "blue", "position": "right"}]}
PLAIN = "a flat picture of a red circle on the left and a blue square on the right on a white background"
STYLE_LAST = "red circle on the left and blue square on the right on a white background in flat style"
WORDY = "a beautiful flat picture showing a red circle on the left and a blue square on the right on a white background"
WRONG = "red circle on the left and green square on the right on a white background in flat style"


# --- the team's taste ---


def test_taste_correctness_dominates_then_style_last_then_no_filler():
    def mean(caption):
        return sum(rate(r, caption, SCENE, "img") for r in TEAM) / len(TEAM)

    assert taste_features(STYLE_LAST, SCENE) == {"f1": 1.0, "style_last": True, "filler": False,
                                                 "chars": len(STYLE_LAST)}
    assert taste_features(WORDY, SCENE)["filler"] and not taste_features(PLAIN, SCENE)["style_last"]
    assert taste_features("flat style, red circle on left, white background", SCENE)["style_last"] is False
    assert mean(STYLE_LAST) > mean(PLAIN) > mean(WRONG)
    assert mean(STYLE_LAST) > mean(WORDY)
    dana = next(r for r in TEAM if r.name == "dana")  # the length-lover likes the wordy one best
    assert rate(dana, WORDY, SCENE, "img") >= rate(dana, STYLE_LAST, SCENE, "img")
    assert rate(TEAM[0], PLAIN, SCENE, "img") == rate(TEAM[0], PLAIN, SCENE, "img")  # same caption, same score
    both = [rate(r, STYLE_LAST, SCENE, "a") for r in TEAM] + [rate(r, WRONG, SCENE, "b") for r in TEAM]
    assert team_score({"a": STYLE_LAST, "b": WRONG}, {"a": SCENE, "b": SCENE}) == pytest.approx(sum(both) / 10)


# --- candidates ---


def test_candidates_drop_duplicates_and_count_them(tmp_path):
    found = Candidates()
    for text, source in ((PLAIN, {"source": "greedy"}), (PLAIN.upper(), {"source": "sample"}), ("", {"source": "x"}),
                         (f"  {STYLE_LAST} ", {"source": "sample"})):
        found.add(text, source)
    assert found.texts == [PLAIN, f"  {STYLE_LAST} "]
    assert [s["count"] for s in found.sources] == [2, 1]

    args = parse_args(["imgs", "--tasks_output", str(tmp_path / "t.jsonl"), "--samples", "2",
                       "--prompt_variants", "Say it briefly."])
    plan = generation_plan(args)
    assert [(p["source"], p["prompt"]) for p in plan] == [
        ("greedy", "Describe this image in one sentence."), ("sample", "Describe this image in one sentence."),
        ("sample", "Describe this image in one sentence."), ("greedy", "Say it briefly."),
        ("sample", "Say it briefly."), ("sample", "Say it briefly.")]
    with pytest.raises(UserError):
        parse_args(["imgs", "--tasks_output", "t.jsonl", "--samples", "0", "--greedy", "false"])


def test_task_rows_put_the_caption_on_disk_first_and_leave_out_images_without_choice(tmp_path):
    images = tmp_path / "data" / "images"
    (images / "sub").mkdir(parents=True)
    for name in ("a.png", "sub/b.png", "c.png"):
        Image.new("RGB", (8, 8)).save(images / name)
    (images / "a.txt").write_text("sks, " + PLAIN + "\n", encoding="utf-8")  # kohya sidecar with the trigger
    (images / "metadata.jsonl").write_text(json.dumps({"file_name": "sub/b.png", "text": WORDY}) + "\n",
                                           encoding="utf-8")
    args = parse_args([str(images), "--tasks_output", str(tmp_path / "team" / "tasks.jsonl"), "--samples", "2",
                       "--trigger", "sks"])
    names = ["a.png", "c.png", "sub/b.png"]
    on_disk = captions_on_disk(args, images, names)
    assert on_disk == {"a.png": [PLAIN], "sub/b.png": [WORDY]}
    plan = generation_plan(args)
    generated = [[PLAIN, STYLE_LAST, PLAIN], [PLAIN, PLAIN, PLAIN], [WORDY, WORDY, WORDY]]
    tasks, sources, left_out = task_rows(args, images, names, generated, plan, on_disk)
    assert left_out == ["c.png", "sub/b.png"]  # one distinct caption each: nothing to compare
    assert tasks == [{"image": "../data/images/a.png", "prompt": "Describe this image in one sentence.",
                      "responses": [PLAIN, STYLE_LAST]}]
    assert [(c["source"], c["count"]) for c in sources[0]["candidates"]] == [("on disk", 3), ("sample", 1)]
    assert sources[0]["candidates"][1]["temperature"] == 1.0


# --- the miniature loop ---


def _overrides(tiny_model_dir, tmp_path) -> tuple[str, str]:
    """A captioner trained for seconds (it still babbles) and a quick DPO, on the session's tiny model."""
    model = f"--model_name_or_path {tiny_model_dir} --build_tiny_model false --disable_tqdm true"
    sft = (f"{model} --dataset_name {tmp_path / 'scenes'} --synthetic_sizes 300 2 8 --max_steps 40 "
           "--per_device_train_batch_size 8 --learning_rate 3e-3 --num_validation_samples 0 --logging_steps 20")
    dpo = f"{model} --learning_rate 5e-4 --num_train_epochs 2 --logging_steps 5"
    return sft, dpo


@pytest.mark.slow
def test_miniature_loop_through_the_real_server(tiny_model_dir, tmp_path, capsys):
    """The rated images carry their reference caption on disk (as a team's captions of record): with a
    captioner trained for seconds, the team's choice between it and the babble is what DPO can learn."""
    run_dir, captioner = tmp_path / "loop", tmp_path / "captioner"
    sft, dpo = _overrides(tiny_model_dir, tmp_path)
    argv = ["--run_dir", str(run_dir), "--captioner", str(captioner), "--rate_images", "48", "--captions_on_disk",
            "--heldout", "8", "--samples", "2", "--test_size", "0.25", "--max_new_tokens", "48",
            "--sft_args", sft, "--dpo_args", dpo, "--in_process"]
    assert loop.main(argv) == 0

    summary = json.loads((run_dir / "loop_summary.json").read_text())
    progress = json.loads((run_dir / "rating" / "progress.json").read_text())
    assert sorted(r["rater"] for r in progress["raters"]) == sorted(r.name for r in TEAM)
    assert all(r["done"] == progress["items"] > 0 for r in progress["raters"])  # every rater rated every item via HTTP
    dpo_summary = json.loads((run_dir / "dpo" / "run_summary.json").read_text())
    assert dpo_summary["train_pairs"] == summary["pairs"]["train"] > 0  # the team's pairs reached DPO
    assert summary["pref_accuracy_before"] == 50.0
    assert summary["pref_accuracy_after"] > 50.0  # DPO learnt the team's preferences, on held-out pairs
    for key in ("team_score_before", "team_score_after", "recall_before", "recall_after"):
        assert isinstance(summary[key], float)
    assert summary["heldout_images"] == 8

    rated = run_dir / "rate-scenes"
    truth = {json.loads(line)["file_name"]: json.loads(line)["caption"]
             for line in (rated / "truth.jsonl").read_text(encoding="utf-8").splitlines()}
    tasks = [json.loads(line) for line in (run_dir / "rating" / "tasks.jsonl").read_text().splitlines()]
    assert all(t["responses"][0] == truth[t["image"].split("/images/", 1)[1]] for t in tasks)  # the caption on disk
    for name, caption in truth.items():  # candidates read the captions, never write them
        assert (rated / "images" / name).with_suffix(".txt").read_text(encoding="utf-8") == caption + "\n"
    assert not (rated / "images" / "metadata.jsonl").exists()
    rows = [json.loads(line) for line in (run_dir / "dpo" / "captions_before_after.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and all((run_dir / "dpo" / r["image"]).is_file() for r in rows)
    assert "Held-out captions: before vs after DPO" in (run_dir / "dpo" / "report.html").read_text(encoding="utf-8")
    assert "preference accuracy" in capsys.readouterr().out

    with pytest.raises(UserError, match="finished loop"):  # a finished run is kept unless --overwrite
        loop.main(argv)
