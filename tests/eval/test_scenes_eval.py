"""`vlm-tune eval` on a scenes split (the captioner's data): attribute recall / precision of the captions,
predictions.jsonl + scores.json, the prior's and the model's tables."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from data_builders.scenes import build_scenes, save_scenes
from vlm_tune.cli import main
from vlm_tune.eval.scenes import is_scenes_split

from helpers import REPO

CAPTIONER_RECIPE = REPO / "recipes" / "tiny" / "sft_captioner.yaml"


@pytest.fixture(scope="module")
def scenes_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "scenes"
    save_scenes(build_scenes(3, 2, 2, seed=0, image_size=64, num_proc=1), path)
    return path


def test_scenes_splits_are_told_from_chartqa_splits(tiny_chartqa_dir):
    assert is_scenes_split(build_scenes(0, 1, 0, seed=0, image_size=64)["val"])
    assert not is_scenes_split(datasets.load_from_disk(str(tiny_chartqa_dir))["test"])


@pytest.mark.parametrize("with_adapter", [False, True])
def test_eval_command_scores_captions_on_a_scenes_split(with_adapter, tmp_path, tiny_model_dir, scenes_dir,
                                                         tiny_run_dir, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the base model's default output folder is relative: runs/scenes-base/...
    argv = ["eval", "--config", str(CAPTIONER_RECIPE), "--model_name_or_path", str(tiny_model_dir),
            "--dataset_name", str(scenes_dir), "--limit", "3", "--max-new-tokens", "4"]
    if with_adapter:
        out = tmp_path / "eval"
        argv += ["--adapter", str(tiny_run_dir), "--output_dir", str(out)]
    else:
        out = Path("runs/scenes-base/captions-test")  # under tmp_path (the working directory)
    assert main(argv) == 0
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(records) == 3
    assert set(records[0]) == {"row", "type", "label", "prediction", "missed", "wrong"}
    result = json.loads((out / "scores.json").read_text(encoding="utf-8"))
    assert set(result) == {"adapter", "split", "scores", "prior_scores"}
    assert result["adapter"] == (str(tiny_run_dir) if with_adapter else None) and result["split"] == "test"
    assert result["scores"]["combined"]["n_images"] == 2  # 3 rows: both rows of scene 0, one of scene 1
    assert 0.0 < result["prior_scores"]["combined"]["recall"] <= 1.0  # the most common caption says something
    shown = capsys.readouterr().out
    assert "text-only prior\n| captions |" in shown
    assert ("tuned" if with_adapter else "base") + "\n| captions |" in shown
    assert f"wrote {out / 'predictions.jsonl'} and {out / 'scores.json'}" in shown
