"""`vlm-tune eval` on ChartQA rows: predictions.jsonl, metrics.json and the table, base or tuned."""

from __future__ import annotations

import json

import pytest

from vlm_tune.cli import main

from helpers import TINY_RECIPE


@pytest.mark.parametrize("with_adapter", [False, True])
def test_eval_command_writes_predictions_and_metrics(with_adapter, tmp_path, tiny_model_dir, tiny_chartqa_dir,
                                                     tiny_run_dir, capsys):
    argv = ["eval", "--config", str(TINY_RECIPE), "--model_name_or_path", str(tiny_model_dir),
            "--dataset_name", str(tiny_chartqa_dir), "--limit", "5", "--output_dir", str(tmp_path / "eval")]
    if with_adapter:
        argv += ["--adapter", str(tiny_run_dir)]
    assert main(argv) == 0
    records = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 5
    assert set(records[0]) == {"question", "type", "labels", "prediction", "correct"}
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["n"] == 5 and metrics["split"] == "test" and 0.0 <= metrics["relaxed_accuracy"] <= 1.0
    assert metrics["relaxed_accuracy"] == pytest.approx(sum(r["correct"] for r in records) / 5)
    assert metrics["adapter"] == (str(tiny_run_dir) if with_adapter else None)
    assert ("| tuned |" if with_adapter else "| base |") in capsys.readouterr().out


def test_eval_refuses_a_folder_without_adapter(tmp_path, tiny_model_dir, tiny_chartqa_dir, capsys):
    argv = ["eval", "--config", str(TINY_RECIPE), "--model_name_or_path", str(tiny_model_dir),
            "--dataset_name", str(tiny_chartqa_dir), "--adapter", str(tmp_path)]
    assert main(argv) == 2
    assert f"no LoRA adapter in {tmp_path}" in capsys.readouterr().err
