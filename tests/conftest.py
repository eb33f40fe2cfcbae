"""Shared fixtures: the tiny SmolVLM-architecture models (v1 and SmolVLM2) and a small synthetic ChartQA, built
once per run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from helpers import sft_argv

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may reach for the hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from vlm_tune.core.tiny_model import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-smolvlm", seed=0)


@pytest.fixture(scope="session")
def tiny_smolvlm2_dir(tmp_path_factory) -> Path:
    """The tiny model as SmolVLM2 (`--arch smolvlm2`: model_type smolvlm, SmolVLMProcessor)."""
    from vlm_tune.core.tiny_model import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-smolvlm2", seed=0, arch="smolvlm2")


@pytest.fixture(params=["idefics3", "smolvlm2"])
def tiny_arch_dir(request) -> Path:
    """The tiny model of each architecture (SmolVLM v1 = Idefics3, SmolVLM2): a test taking it runs on both."""
    return request.getfixturevalue("tiny_model_dir" if request.param == "idefics3" else "tiny_smolvlm2_dir")


@pytest.fixture(scope="session")
def tiny_chartqa_dir(tmp_path_factory) -> Path:
    from data_builders.chartqa import build_chartqa, save_chartqa

    path = tmp_path_factory.mktemp("data") / "chartqa"
    save_chartqa(build_chartqa(24, 8, 8, seed=0, num_proc=1), path)
    return path


@pytest.fixture(scope="session")
def tiny_run_dir(tmp_path_factory, tiny_model_dir, tiny_chartqa_dir) -> Path:
    """A 3-step tiny QLoRA run: an adapter to evaluate and load."""
    from vlm_tune.train import sft

    out = tmp_path_factory.mktemp("runs") / "tiny-run"
    sft.main(sft_argv(tiny_model_dir, tiny_chartqa_dir, out, "--max_steps", "3", "--save_strategy", "no"))
    return out
