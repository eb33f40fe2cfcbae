"""Tiny QLoRA DPO on CPU: LoRA trains, base stays, the reference is no second model, accuracy before/after."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import torch
from transformers import TrainerCallback

from data_builders.chartqa import build_chartqa
from vlm_tune.train import dpo

REPO = Path(__file__).resolve().parents[2]
DPO_RECIPE = REPO / "recipes" / "tiny" / "dpo_ratings.yaml"
MESSAGES = [{"role": datasets.Value("string"), "content": datasets.Value("string")}]
PAIR_FEATURES = datasets.Features(
    {"images": datasets.List(datasets.Image()), "prompt": MESSAGES, "chosen": MESSAGES, "rejected": MESSAGES}
)


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory) -> Path:
    """Preference pairs on synthetic charts: a short correct answer beats a hedged one."""
    charts = build_chartqa(32, 0, 8, seed=3, question_types=("count", "line_color"))

    def pairs(split):
        return datasets.Dataset.from_dict(
            {
                "images": [[row["image"]] for row in split],
                "prompt": [[{"role": "user", "content": row["query"]}] for row in split],
                "chosen": [[{"role": "assistant", "content": row["label"][0]}] for row in split],
                "rejected": [[{"role": "assistant", "content": f"Maybe {row['label'][0]}, I am not sure."}]
                             for row in split],
            },
            features=PAIR_FEATURES,
        )

    path = tmp_path_factory.mktemp("pairs") / "pairs"
    datasets.DatasetDict(train=pairs(charts["train"]), test=pairs(charts["test"])).save_to_disk(str(path))
    return path


def dpo_argv(model_dir, pairs, out, *extra):
    return ["--config", str(DPO_RECIPE), "--model_name_or_path", str(model_dir), "--build_tiny_model", "false",
            "--ratings_file", "", "--dataset_name", str(pairs), "--output_dir", str(out), "--disable_tqdm", "true",
            "--logging_steps", "1", *extra]


class Snapshot(TrainerCallback):
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.before = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        self.adapters = set(getattr(model, "peft_config", {}))

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.after = {n: p.detach().clone() for n, p in model.named_parameters()}


def test_fresh_lora_dpo_trains_only_lora_against_adapters_disabled(tiny_model_dir, pairs_dir, tmp_path):
    snapshot = Snapshot()
    out = tmp_path / "dpo"
    summary = dpo.main(dpo_argv(tiny_model_dir, pairs_dir, out, "--max_steps", "8"), callbacks=[snapshot])
    assert snapshot.adapters == {"default"}, "a fresh adapter needs no reference copy: adapters off = reference"
    changed = {n for n in snapshot.before if not torch.equal(snapshot.before[n], snapshot.after[n])}
    assert any("lora_B" in n for n in changed)
    assert not (changed - snapshot.trainable), sorted(changed - snapshot.trainable)[:3]
    assert all("lora_" in n for n in snapshot.trainable)
    # before: policy == reference, every pair ties (50 %); after: the team's preference is learnt
    assert summary["pref_accuracy_before_pct"] == 50.0 and summary["mean_margin_before"] == 0.0
    assert summary["pref_accuracy_after_pct"] > 50.0 and summary["mean_margin_after"] > 0
    evaluation = json.loads((out / "preference_eval.json").read_text())
    assert evaluation["after"]["n"] == 8
    assert (out / "adapter_model.safetensors").is_file() and "beta: 0.1" in (out / "recipe.yaml").read_text()


def test_dpo_from_an_sft_adapter(tiny_model_dir, tiny_run_dir, pairs_dir, tmp_path):
    from safetensors.torch import load_file

    snapshot = Snapshot()
    out = tmp_path / "dpo-from-sft"
    summary = dpo.main(dpo_argv(tiny_model_dir, pairs_dir, out, "--max_steps", "4", "--sft_adapter", str(tiny_run_dir)),
                       callbacks=[snapshot])
    assert snapshot.adapters == {"default", "ref"}, "the frozen SFT adapter copy is the reference"
    sft = load_file(tiny_run_dir / "adapter_model.safetensors")
    start = {n.replace(".default", ""): p for n, p in snapshot.before.items() if ".default." in n}
    for name, value in sft.items():  # training starts from the exact SFT weights (no bf16 rounding)
        key = "base_model.model." + name.removeprefix("base_model.model.")
        assert torch.equal(start[key.replace(".weight", ".weight")].float(), value.float()), name
    assert summary["pref_accuracy_before_pct"] == 50.0
    assert not (out / "ref").exists(), "the reference copy is not saved with the result"


def test_missing_sft_adapter_is_one_clear_error(tiny_model_dir, pairs_dir, tmp_path):
    from vlm_tune.core.errors import UserError

    with pytest.raises(UserError, match="sft_adapter: no LoRA adapter in"):
        dpo.main(dpo_argv(tiny_model_dir, pairs_dir, tmp_path / "x", "--sft_adapter", str(tmp_path)))


def test_recipe_path_from_sample_ratings_to_dpo(tiny_model_dir, tmp_path):
    """What `make dpo` does on first use: sample ratings → pairs (with report) → DPO."""
    ratings = tmp_path / "ratings" / "ratings.csv"
    pairs = tmp_path / "pairs"
    summary = dpo.main(dpo_argv(tiny_model_dir, pairs, tmp_path / "out", "--ratings_file", str(ratings),
                                "--sample_ratings", "true", "--sample_charts", "16", "--max_steps", "2"))
    assert ratings.is_file() and (pairs / "dataset_dict.json").is_file()
    report = json.loads((pairs / "report.json").read_text())
    assert summary["train_pairs"] == report["pairs"]["train"] > 0
    assert report["rows_read"] == report["rows_used"] + sum(report["dropped"].values())
    assert summary["steps"] == 2
