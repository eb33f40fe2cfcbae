"""`vlm-tune` errors: one line naming the file/key/path, exit code 2, no traceback, nothing written."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from vlm_tune.cli import main

from helpers import REPO, sft_argv


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: ") and "Traceback" not in "\n".join(err)
    return err[-1]


def test_usage_and_unknown_command(capsys):
    assert main([]) == 2
    assert "sft --config RECIPE.yaml" in capsys.readouterr().out
    assert _error(capsys, ["train"]) == "error: unknown command 'train' (see vlm-tune --help)"


def test_recipe_errors(capsys, tmp_path):
    assert _error(capsys, ["sft", "--config", "nope.yaml"]) == "error: recipe file not found: nope.yaml"
    bad = tmp_path / "bad.yaml"
    bad.write_text("lora_rank: 8\n")
    assert f"{bad}: unknown key 'lora_rank'" in _error(capsys, ["sft", "--config", str(bad)])


def test_model_path_missing(capsys, tmp_path, tiny_chartqa_dir):
    argv = sft_argv(tmp_path / "no-model", tiny_chartqa_dir, tmp_path / "out")
    assert f"model path not found: {tmp_path / 'no-model'}" in _error(capsys, ["sft", *argv])
    assert not (tmp_path / "out").exists()


def test_dataset_missing_columns(capsys, tmp_path, tiny_model_dir):
    import datasets

    datasets.Dataset.from_dict({"question": ["q"], "answer": ["a"]}).to_parquet(tmp_path / "d.parquet")
    argv = sft_argv(tiny_model_dir, tmp_path / "d.parquet", tmp_path / "out")
    assert "lacks column(s) image, query, label" in _error(capsys, ["sft", *argv])
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a CPU-only machine")
def test_bf16_on_cpu(capsys, tmp_path, tiny_model_dir, tiny_chartqa_dir):
    argv = sft_argv(tiny_model_dir, tiny_chartqa_dir, tmp_path / "out", "--bf16", "true")
    assert "bf16: true but this machine has no CUDA GPU" in _error(capsys, ["sft", *argv])


def test_real_recipe_without_hub_fails_fast_and_clearly():
    """The SmolVLM recipes are real: here they fail only because the hub is unreachable."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # nothing listens: as unreachable as the hub is here
    done = subprocess.run(
        [sys.executable, "-m", "vlm_tune.cli", "sft", "--config", "recipes/smolvlm-256m/sft_chartqa.yaml"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot load 'HuggingFaceTB/SmolVLM-256M-Instruct'")
    assert "hf download" in last and "Traceback" not in done.stderr


@pytest.mark.gpu
def test_tiny_qlora_sft_on_cuda_bf16(tmp_path, tiny_model_dir, tiny_chartqa_dir):
    from vlm_tune.train import sft

    summary = sft.main(sft_argv(tiny_model_dir, tiny_chartqa_dir, tmp_path / "gpu", "--max_steps", "3",
                                "--bf16", "true", "--save_strategy", "no"))
    assert summary["steps"] == 3 and summary["peak_gpu_mb"] > 0
