"""Tuning must learn from the pixels: a regression that drops the image or breaks the label mask fails here."""

from __future__ import annotations

import json

import pytest

from data_builders.chartqa import build_chartqa, build_info, save_chartqa
from vlm_tune.train import sft
from vlm_tune.core.errors import UserError

from helpers import sft_argv


@pytest.mark.slow
def test_tuning_beats_base_and_text_prior_on_an_easy_subset(tmp_path, tiny_model_dir):
    # "How many bars/points/slices?": the answer (2–6, uniform) is only in the image.
    data = save_chartqa(build_chartqa(160, 2, 40, seed=1, question_types=("count",)), tmp_path / "count")
    out = tmp_path / "run"
    summary = sft.main(sft_argv(tiny_model_dir, data, out, "--num_train_epochs", "6", "--learning_rate", "1e-3",
                                "--save_strategy", "no", "--eval_after_train", "true"))
    base, prior, tuned = (summary[f"eval_{k}_pct"] for k in ("base", "text_only_prior", "tuned"))
    assert tuned >= base + 25 and tuned >= prior + 25, (base, prior, tuned)
    metrics = json.loads((out / "eval" / "tuned" / "metrics.json").read_text())
    assert metrics["n"] == 40 and metrics["per_type"]["count"]["relaxed_accuracy"] == pytest.approx(tuned / 100)
    assert "| tuned |" in (out / "eval" / "table.md").read_text()


def test_stale_synthetic_data_is_refused_not_reused(tmp_path, tiny_model_dir):
    data = tmp_path / "synth"
    save_chartqa(build_chartqa(4, 1, 1, seed=0), data, info=build_info(4, 1, 1, 0, 160))
    argv = sft_argv(tiny_model_dir, data, tmp_path / "out", "--synthetic_dataset", "true",
                    "--synthetic_sizes", "8", "2", "2", "--max_steps", "1")
    with pytest.raises(UserError, match="was not built with this recipe's synthetic_\\* settings"):
        sft.main(argv)
    assert not (tmp_path / "out").exists()
